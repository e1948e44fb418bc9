// TLS between nodes and clients (caf::openssl, configured from ds-node flags / ds.toml):
// a two-node cluster whose members and clients authenticate each other through one CA, a
// plain client refused, and bad TLS settings rejected at start with the setting named.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "actors/client.h"
#include "node_process.h"

namespace ds {
namespace {

using namespace std::chrono_literals;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (std::filesystem::temp_directory_path() / "ds-tls-XXXXXX").string();
    dir_ = mkdtemp(t.data());
    // A CA, then certificates it signs (node, client) and one from another CA.
    const std::string d = dir_;
    const std::string script =
        "cd " + d + " && "
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ds-test-ca && "
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=other-ca && "
        "for n in node client; do "
        "  openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr -subj /CN=$n && "
        "  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 || exit 1; "
        "done && "
        "openssl pkey -in node.key -aes256 -passout pass:s3cret -out node_enc.key "
        "> openssl.log 2>&1";
    have_openssl_ = std::system(script.c_str()) == 0;
  }
  void TearDown() override {
    nodes_.clear();
    std::filesystem::remove_all(dir_);
  }
  std::vector<std::string> node_tls(const std::string& key = "node.key") const {
    return {"--tls-certificate", dir_ + "/node.pem", "--tls-key", dir_ + "/" + key, "--tls-cafile", dir_ + "/ca.pem"};
  }
  test::Node& start(std::vector<std::string> extra) {
    std::vector<std::string> args = {"--model", std::string(DS_SHARED_MODELS) + "/stories260K.gguf", "--threads", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    nodes_.push_back(std::make_unique<test::Node>(dir_, args));
    return *nodes_.back();
  }
  ClientOptions client_tls(const test::Node& n) const {
    ClientOptions o;
    o.port = n.port();
    o.connect_timeout = 3s;
    o.tls = TlsOptions{dir_ + "/client.pem", dir_ + "/client.key", "", dir_ + "/ca.pem", ""};
    return o;
  }

  std::string dir_;
  bool have_openssl_ = false;
  std::vector<std::unique_ptr<test::Node>> nodes_;
};

TEST_F(TlsTest, ClusterAndClientsAuthenticateThroughOneCa) {
  ASSERT_TRUE(have_openssl_) << test::slurp_file(dir_ + "/openssl.log");
  test::Node& a = start(node_tls());
  ASSERT_TRUE(a.ready()) << a.process().err();
  EXPECT_NE(a.process().err().find("TLS on"), std::string::npos);
  auto b_args = node_tls("node_enc.key");  // an encrypted key, its passphrase from the environment
  b_args.insert(b_args.end(), {"--join", a.address()});
  ::setenv("DS_TLS_PASSPHRASE", "s3cret", 1);
  test::Node& b = start(b_args);
  ::unsetenv("DS_TLS_PASSPHRASE");
  ASSERT_TRUE(b.ready()) << b.process().err();

  auto c = Client::Connect(client_tls(b));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const auto end = std::chrono::steady_clock::now() + 20s;
  size_t up = 0;
  while (std::chrono::steady_clock::now() < end && up != 2) {
    up = 0;
    auto v = (*c)->members();
    if (v.ok())
      for (const auto& m : v->members) up += m.state == "up" ? 1 : 0;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(up, 2u) << "the TLS members did not see each other";
  GenerateRequest r;
  r.prompt = "Once upon a time";
  r.max_tokens = 16;
  auto res = (*c)->generate(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->tokens.size(), 16u);

  // A client without TLS, or with a certificate of another CA, is refused (not hung).
  ClientOptions plain;
  plain.port = a.port();
  plain.connect_timeout = 3s;
  EXPECT_EQ(Client::Connect(plain).status().code(), StatusCode::kIOError);
  ClientOptions stranger = client_tls(a);
  stranger.tls = TlsOptions{dir_ + "/other.pem", dir_ + "/other.key", "", dir_ + "/other.pem", ""};
  EXPECT_EQ(Client::Connect(stranger).status().code(), StatusCode::kIOError);
  // ds-client speaks TLS through its flags.
  const std::string cmd = std::string(DS_BUILD_DIR) + "/ds-client --connect " + a.address() + " --tls-certificate " + dir_ +
                          "/client.pem --tls-key " + dir_ + "/client.key --tls-cafile " + dir_ +
                          "/ca.pem generate --max-tokens 5 'Once upon' > " + dir_ + "/out.txt 2>&1";
  EXPECT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 0) << test::slurp_file(dir_ + "/out.txt");
  const std::string plain_cmd = std::string(DS_BUILD_DIR) + "/ds-client --connect " + a.address() +
                                " generate --max-tokens 5 'Once upon' > " + dir_ + "/out2.txt 2>&1";
  EXPECT_EQ(WEXITSTATUS(std::system(plain_cmd.c_str())), 3) << test::slurp_file(dir_ + "/out2.txt");
}

TEST_F(TlsTest, BadSettingsAreRefusedAtStartNamingTheSetting) {
  ASSERT_TRUE(have_openssl_) << test::slurp_file(dir_ + "/openssl.log");
  struct Case {
    std::vector<std::string> args;
    std::string want;
  };
  const std::vector<Case> cases = {
      {{"--tls-certificate", dir_ + "/node.pem"}, "tls-key: required"},
      {{"--tls-certificate", dir_ + "/node.pem", "--tls-key", dir_ + "/node.key"}, "tls-cafile: required"},
      {{"--tls-certificate", dir_ + "/missing.pem", "--tls-key", dir_ + "/node.key", "--tls-cafile", dir_ + "/ca.pem"},
       "tls-certificate: '"},
      {{"--tls-certificate", dir_ + "/node.pem", "--tls-key", dir_ + "/client.key", "--tls-cafile", dir_ + "/ca.pem"},
       "does not belong to the certificate"},
      {{"--tls-certificate", dir_ + "/node.pem", "--tls-key", dir_ + "/node_enc.key", "--tls-cafile", dir_ + "/ca.pem"},
       "give tls-passphrase"},
      {{"--tls-certificate", dir_ + "/node.pem", "--tls-key", dir_ + "/node_enc.key", "--tls-passphrase", "wrong", "--tls-cafile",
        dir_ + "/ca.pem"},
       "wrong tls-passphrase"},
      {{"--tls-certificate", dir_ + "/node.pem", "--tls-key", dir_ + "/node.key", "--tls-cafile", dir_ + "/node.key"},
       "tls-cafile: '"},
  };
  for (const Case& c : cases) {
    test::Node& n = start(c.args);
    EXPECT_EQ(n.process().wait_exit(20s), 2) << c.want;
    EXPECT_NE(n.process().err().find(c.want), std::string::npos) << "want '" << c.want << "' in:\n" << n.process().err();
  }
}

}  // namespace
}  // namespace ds
