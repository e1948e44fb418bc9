// actors/tls.h: TLS for every ds connection (node <-> node, client <-> node), through CAF 0.17's
// caf::openssl module, configured from ds.toml / flags / DS_* (never from CAF's INI file).
//
// TLS is on when a certificate is given; then the key and a CA (cafile or capath) are required
// too: every peer must present a certificate signed by that CA (mutual authentication), so a
// node only talks to nodes and clients of the same deployment. A plain client that connects to
// a TLS node fails its handshake (ds-client exit 3), it never hangs.
//
// validate_tls() checks the files before CAF sees them, because CAF reacts badly to a bad key
// or passphrase (its TLS middleman actor dies at the first connection and connects hang).
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/expected.hpp>
#include <caf/io/middleman_actor.hpp>

#include <string>

#include "model/status.h"

namespace ds {

struct TlsOptions {
  std::string certificate;  // PEM certificate (chain) of this node or client
  std::string key;          // its PEM private key
  std::string passphrase;   // for an encrypted key; empty = none
  std::string cafile;       // PEM file of the CA(s) that sign every peer
  std::string capath;       // or a directory of CA certificates (c_rehash layout)
  bool enabled() const { return !certificate.empty() || !key.empty() || !cafile.empty() || !capath.empty(); }
};

// OK when TLS is off or every file is usable: all-or-nothing settings, readable files, the key
// decrypts with the passphrase and matches the certificate, the CA file holds a certificate.
// Errors name the setting as `<prefix>certificate`, `<prefix>key`, ... ("tls-" for flags).
Status validate_tls(const TlsOptions& t, const std::string& prefix = "tls-");

// Loads caf::openssl::manager into cfg and sets openssl.* from t. No-op when TLS is off.
void apply_tls(caf::actor_system_config& cfg, const TlsOptions& t);

// The middleman actor to connect or publish through: the TLS one when the openssl module is
// loaded, else the plain one.
caf::io::middleman_actor connector(caf::actor_system& sys);

// Publishes `a` on port (bind: nullptr = any) through connector(): the bound port or an error.
caf::expected<uint16_t> publish_actor(const caf::actor& a, uint16_t port, const char* bind);

}  // namespace ds
