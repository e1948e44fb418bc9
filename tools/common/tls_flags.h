// tools/common/tls_flags.h: the --tls-* flags of the client tools (ds-client, ds-admin,
// ds-bench load), each also read from its DS_TLS_* environment variable, as ds-node names them.
#pragma once

#include <CLI/CLI.hpp>

#include <iostream>

#include "actors/client.h"
#include "tools/common/cli_util.h"

namespace ds::cli {

inline void add_tls_flags(CLI::App& app, TlsOptions* t) {
  app.add_option("--tls-certificate", t->certificate, "TLS: this client's PEM certificate (signed by the nodes' CA)")
      ->envname("DS_TLS_CERTIFICATE");
  app.add_option("--tls-key", t->key, "TLS: its PEM private key")->envname("DS_TLS_KEY");
  app.add_option("--tls-passphrase", t->passphrase, "TLS: passphrase of an encrypted key (prefer DS_TLS_PASSPHRASE)")
      ->envname("DS_TLS_PASSPHRASE");
  app.add_option("--tls-cafile", t->cafile, "TLS: PEM file of the CA that signs the nodes")->envname("DS_TLS_CAFILE");
  app.add_option("--tls-capath", t->capath, "TLS: directory of CA certificates, instead of --tls-cafile")->envname("DS_TLS_CAPATH");
}

// Connects with opts; prints the error and sets *rc (usage error for bad TLS settings,
// cannot-connect otherwise) when it fails.
inline std::unique_ptr<Client> connect_or_report(const ClientOptions& opts, const char* tool, int* rc) {
  auto c = Client::Connect(opts);
  if (c.ok()) return std::move(c).value();
  std::cerr << tool << ": " << c.status().message() << "\n";
  *rc = c.status().code() == StatusCode::kInvalidArgument ? kExitUsage : kExitConnect;
  return nullptr;
}

}  // namespace ds::cli
