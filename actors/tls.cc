#include "actors/tls.h"

#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <filesystem>
#include <memory>

namespace ds {
namespace {

std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  if (e == 0) return "no PEM data";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

struct BioCloser {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioCloser>;

Status open_file(const std::string& path, const std::string& name, Bio* out) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return Status::InvalidArgument(name + ": '" + path + "' is not a readable file");
  out->reset(BIO_new_file(path.c_str(), "r"));
  if (!*out) return Status::InvalidArgument(name + ": cannot open '" + path + "'");
  return Status::Ok();
}

}  // namespace

Status validate_tls(const TlsOptions& t, const std::string& prefix) {
  if (!t.enabled()) return Status::Ok();
  if (t.certificate.empty()) return Status::InvalidArgument(prefix + "certificate: required when any TLS setting is given");
  if (t.key.empty()) return Status::InvalidArgument(prefix + "key: required with " + prefix + "certificate");
  if (t.cafile.empty() && t.capath.empty()) {
    return Status::InvalidArgument(prefix + "cafile: required with " + prefix +
                                   "certificate (or " + prefix + "capath): peers are authenticated by this CA");
  }
  ERR_clear_error();
  Bio b;
  DS_RETURN_IF_ERROR(open_file(t.certificate, prefix + "certificate", &b));
  std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr), X509_free);
  if (!cert) return Status::InvalidArgument(prefix + "certificate: '" + t.certificate + "' holds no PEM certificate (" + openssl_error() + ")");
  DS_RETURN_IF_ERROR(open_file(t.key, prefix + "key", &b));
  // With a null callback, OpenSSL takes the last argument as the passphrase.
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(b.get(), nullptr, nullptr, const_cast<char*>(t.passphrase.c_str())), EVP_PKEY_free);
  if (!key) {
    return Status::InvalidArgument(prefix + "key: cannot load the private key in '" + t.key + "'" +
                                   (t.passphrase.empty() ? " (encrypted? give " + prefix + "passphrase)" : " (wrong " + prefix + "passphrase?)") +
                                   ": " + openssl_error());
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return Status::InvalidArgument(prefix + "key: '" + t.key + "' does not belong to the certificate '" + t.certificate + "'");
  }
  if (!t.cafile.empty()) {
    DS_RETURN_IF_ERROR(open_file(t.cafile, prefix + "cafile", &b));
    std::unique_ptr<X509, decltype(&X509_free)> ca(PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr), X509_free);
    if (!ca) return Status::InvalidArgument(prefix + "cafile: '" + t.cafile + "' holds no PEM certificate (" + openssl_error() + ")");
  }
  if (!t.capath.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(t.capath, ec)) return Status::InvalidArgument(prefix + "capath: '" + t.capath + "' is not a directory");
  }
  return Status::Ok();
}

void apply_tls(caf::actor_system_config& cfg, const TlsOptions& t) {
  if (!t.enabled()) return;
  cfg.load<caf::openssl::manager>();
  cfg.set("openssl.certificate", t.certificate);
  cfg.set("openssl.key", t.key);
  if (!t.passphrase.empty()) cfg.set("openssl.passphrase", t.passphrase);
  if (!t.cafile.empty()) cfg.set("openssl.cafile", t.cafile);
  if (!t.capath.empty()) cfg.set("openssl.capath", t.capath);
}

caf::io::middleman_actor connector(caf::actor_system& sys) {
  return sys.has_openssl_manager() ? sys.openssl_manager().actor_handle() : sys.middleman().actor_handle();
}

caf::expected<uint16_t> publish_actor(const caf::actor& a, uint16_t port, const char* bind) {
  auto& sys = a.home_system();
  if (sys.has_openssl_manager()) return caf::openssl::publish(a, port, bind, true);
  return sys.middleman().publish(a, port, bind, true);
}

}  // namespace ds
