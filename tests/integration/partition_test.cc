// A real network partition: 5 ds-nodes, each in its own network namespace, on two bridges
// joined by one link (n1..n3 on one, n4 and n5 on the other). Taking that link down cuts the
// cluster 3 | 2 while every process keeps running and every TCP connection stays open (the
// packets just vanish). Needs root (CAP_NET_ADMIN) and `ip`; skipped otherwise.
//
// What must happen: the majority side declares the two cut-off nodes down and keeps serving;
// the minority side has no quorum, downs nobody and refuses new work with no_quorum; when the
// link comes back, the two rejoin as new incarnations and everyone agrees again.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "actors/client.h"
#include "actors/dial.h"
#include "node_process.h"

namespace ds {
namespace {

using namespace std::chrono_literals;

class PartitionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
      if (ip_bin_.empty() && ::access(p, X_OK) == 0) ip_bin_ = p;
    if (::geteuid() != 0 || ip_bin_.empty()) GTEST_SKIP() << "needs root and iproute2";
    if (!std::filesystem::exists(std::string(DS_SHARED_MODELS) + "/stories260K.gguf")) GTEST_SKIP() << "no shared models";
    std::string t = (std::filesystem::temp_directory_path() / "ds-partition-XXXXXX").string();
    dir_ = mkdtemp(t.data());
    tag_ = "ds" + std::to_string(::getpid() % 100000);
    // Bridges A (n1..n3, and this process at .1) and B (n4, n5), joined by the link tag-ab/tag-ba.
    std::string sh = "set -e; ip link add " + br('a') + " type bridge; ip link add " + br('b') + " type bridge; " +
                     "ip link add " + tag_ + "ab type veth peer name " + tag_ + "ba; " +
                     "ip link set " + tag_ + "ab master " + br('a') + "; ip link set " + tag_ + "ba master " + br('b') + "; " +
                     "ip addr add 10.77.0.1/24 dev " + br('a') + "; " +
                     "for l in " + br('a') + " " + br('b') + " " + tag_ + "ab " + tag_ + "ba; do ip link set $l up; done; ";
    for (int i = 1; i <= 5; ++i) {
      const std::string ns = ns_name(i), v = tag_ + "v" + std::to_string(i);
      sh += "ip netns add " + ns + "; ip link add " + v + " type veth peer name eth0 netns " + ns + "; " +
            "ip link set " + v + " master " + br(i <= 3 ? 'a' : 'b') + "; ip link set " + v + " up; " +
            "ip -n " + ns + " addr add " + ip(i) + "/24 dev eth0; ip -n " + ns + " link set eth0 up; ip -n " + ns +
            " link set lo up; ";
    }
    created_ = true;
    if (std::system(("(" + sh + ") >" + dir_ + "/net.log 2>&1").c_str()) != 0) {
      GTEST_SKIP() << "cannot create network namespaces here: " << test::slurp_file(dir_ + "/net.log");
    }
  }
  void TearDown() override {
    nodes_.clear();
    if (created_) {
      std::string sh;
      for (int i = 1; i <= 5; ++i) sh += "ip netns del " + ns_name(i) + "; ";
      sh += "ip link del " + br('a') + "; ip link del " + br('b') + "; ip link del " + tag_ + "ab; ";
      std::system(("(" + sh + ") >/dev/null 2>&1").c_str());
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::string br(char side) const { return tag_ + "br" + side; }
  std::string ns_name(int i) const { return tag_ + "n" + std::to_string(i); }
  static std::string ip(int i) { return "10.77.0." + std::to_string(10 + i); }
  static std::string address(int i) { return ip(i) + ":4242"; }
  static std::string id(int i) { return std::string("p") + std::to_string(i); }

  void start(int i) {
    std::vector<std::string> argv = {ip_bin_, "netns", "exec", ns_name(i), std::string(DS_BUILD_DIR) + "/ds-node",
                                     "--model", std::string(DS_SHARED_MODELS) + "/stories260K.gguf", "--bind", ip(i),
                                     "--port", "4242", "--node-id", id(i), "--data-dir", dir_ + "/d" + std::to_string(i),
                                     "--http-port", "0", "--threads", "1"};
    if (i > 1) argv.insert(argv.end(), {"--join", address(1)});
    nodes_.push_back(std::make_unique<test::Process>(argv, dir_ + "/node-" + std::to_string(i)));
  }
  // Runs ds-client inside node i's namespace against node j; its exit code and output.
  int client_in(int i, int j, std::string* out) {
    const std::string o = dir_ + "/client.out";
    const int st = std::system(("timeout 60 ip netns exec " + ns_name(i) + " " + std::string(DS_BUILD_DIR) +
                                "/ds-client --connect " + address(j) + " generate --max-tokens 8 'Once upon' >" + o + " 2>&1")
                                   .c_str());
    *out = test::slurp_file(o);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  // The states of all members in node `via`'s view, by node id (from this namespace: n1..n3).
  std::map<std::string, MemberInfo> view(Client& c) {
    std::map<std::string, MemberInfo> m;
    auto v = c.members();
    if (v.ok())
      for (auto& x : v->members) m[x.node_id] = x;
    return m;
  }
  bool wait_for(const std::function<bool()>& cond, std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (cond()) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  std::string dir_, tag_, ip_bin_;
  bool created_ = false;
  std::vector<std::unique_ptr<test::Process>> nodes_;
};

TEST_F(PartitionTest, MinorityOfTwoStopsAdmittingMajorityDownsItThenItRejoins) {
  for (int i = 1; i <= 5; ++i) {
    start(i);
    if (i == 1) std::this_thread::sleep_for(300ms);
  }
  ClientOptions o;
  o.host = ip(1);
  o.port = 4242;
  o.connect_timeout = 3s;
  std::unique_ptr<Client> c;
  ASSERT_TRUE(wait_for([&] {
    auto r = Client::Connect(o);
    if (r.ok()) c = std::move(r).value();
    return c != nullptr;
  }, 30s)) << test::slurp_file(dir_ + "/node-1.err");
  auto up_count = [&] {
    int up = 0;
    for (auto& [nid, m] : view(*c)) up += m.state == "up" ? 1 : 0;
    return up;
  };
  ASSERT_TRUE(wait_for([&] { return up_count() == 5; }, 30s)) << test::slurp_file(dir_ + "/node-1.err");
  const uint64_t inc4 = view(*c)[id(4)].incarnation;

  // Reach p4 from here once, so that this namespace knows its link address: across the cut,
  // packets to it are then dropped silently (as in a real partition) rather than failing ARP.
  ASSERT_TRUE(probe_tcp(ip(4), 4242, 2s).ok());

  // Cut the link between the bridges: {p1, p2, p3} | {p4, p5}.
  ASSERT_EQ(std::system(("ip link set " + tag_ + "ab down").c_str()), 0);
  const auto cut_at = std::chrono::steady_clock::now();
  // The majority downs the two and keeps serving.
  EXPECT_TRUE(wait_for([&] {
    auto v = view(*c);
    return v[id(4)].state == "down" && v[id(5)].state == "down";
  }, 20s));
  std::string out;
  EXPECT_EQ(client_in(2, 1, &out), 0) << out;
  // A client whose first node is across the cut moves on to the next one in its list: the
  // dial into the partition must not hold up the next dial (actors/dial.h).
  {
    ClientOptions o2 = o;
    o2.host = ip(4);
    o2.more_nodes = {address(2)};
    o2.connect_timeout = 2s;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = Client::Connect(o2);
    EXPECT_TRUE(r.ok()) << r.status().message();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 8s);
  }
  // The minority refuses new work and says why; it downs nobody.
  int rc = -1;
  EXPECT_TRUE(wait_for([&] {
    rc = client_in(4, 5, &out);
    return rc == 4 && out.find("no_quorum") != std::string::npos;
  }, 20s)) << "rc " << rc << ": " << out;
  // The minority node that refused says so in its log too: p4 or p5 (the client may have moved
  // to p4). A node cut off before it saw itself up (still "joining" in its own view) reports it
  // as well: it admits work once accepted (ClusterMembership.JoinersCutOff... in the unit tests).
  std::string log4, log5;
  EXPECT_TRUE(wait_for([&] {
    log4 = test::slurp_file(dir_ + "/node-4.err");
    log5 = test::slurp_file(dir_ + "/node-5.err");
    return log4.find("quorum-lost") != std::string::npos || log5.find("quorum-lost") != std::string::npos;
  }, 20s)) << log4 << "\n" << log5;
  EXPECT_EQ(log4.find("member-down p1 (incarnation"), std::string::npos) << "the minority downed a majority member:\n" << log4;
  EXPECT_EQ(log5.find("member-down p1 (incarnation"), std::string::npos) << "the minority downed a majority member:\n" << log5;

  // Keep the link cut past the connection timeout (10 s), so that the connections across it
  // close and healing needs new dials. (CAF's middleman connects with a blocking connect():
  // a dial into the partition used to hold up every later dial of its node until the kernel's
  // next SYN retransmission, 15-60 s after the heal; CI once saw p4 still "not joined yet"
  // 50 s after it.)
  std::this_thread::sleep_until(cut_at + 14s);

  // Heal: the two learn they were declared down and rejoin as new incarnations.
  ASSERT_EQ(std::system(("ip link set " + tag_ + "ab up").c_str()), 0);
  const bool rejoined = wait_for([&] { return up_count() == 5 && view(*c)[id(4)].incarnation > inc4; }, 20s);
  EXPECT_TRUE(rejoined) << "p4:\n" << test::slurp_file(dir_ + "/node-4.err") << "\np1:\n"
                        << test::slurp_file(dir_ + "/node-1.err");
  EXPECT_TRUE(wait_for([&] { return client_in(4, 4, &out) == 0; }, 20s)) << out;
  EXPECT_NE(test::slurp_file(dir_ + "/node-4.err").find("self-downed"), std::string::npos);
}

}  // namespace
}  // namespace ds
