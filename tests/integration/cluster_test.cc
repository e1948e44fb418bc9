// Several ds-node processes on 127.0.0.1 forming a cluster: joining through seeds,
// cluster-wide routing, and failover of in-flight streams when a node is killed.
#include <nlohmann/json.hpp>

#include <atomic>
#include <thread>

#include "actors/client.h"
#include "node_process.h"

namespace ds {
namespace {

using namespace std::chrono_literals;

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (std::filesystem::temp_directory_path() / "ds-cluster-XXXXXX").string();
    dir_ = mkdtemp(t.data());
    // A model slow enough that a 500-token stream lasts about a second.
    model_ = dir_ + "/slow.gguf";
    ASSERT_EQ(std::system((std::string(DS_BUILD_DIR) + "/ds-mkmodel -q --dim 256 --layers 6 --heads 4 --kv-heads 4 --ffn 1024 "
                                                       "--vocab 4000 --ctx 4096 --type f32 -o " + model_).c_str()),
              0);
  }
  void TearDown() override {
    nodes_.clear();
    std::filesystem::remove_all(dir_);
  }
  test::Node& start(const std::string& join = "", std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--model", model_, "--max-tokens-limit", "4000", "--threads", "1"};
    if (!join.empty()) args.insert(args.end(), {"--join", join});
    args.insert(args.end(), extra.begin(), extra.end());
    nodes_.push_back(std::make_unique<test::Node>(dir_, args));
    EXPECT_TRUE(nodes_.back()->ready()) << nodes_.back()->process().err();
    return *nodes_.back();
  }
  std::unique_ptr<Client> connect(const test::Node& n) { return test::connect_client(n); }
  // Waits until the node's view holds `members` up members.
  bool converged(Client& c, size_t members, std::chrono::seconds timeout = 20s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      auto cs = c.cluster_status();
      if (cs.ok() && cs->nodes.size() == members) {
        bool all_up = true;
        for (const auto& n : cs->nodes) all_up = all_up && n.state == "up" && n.members == static_cast<int>(members);
        if (all_up) return true;
      }
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  std::string dir_, model_;
  std::vector<std::unique_ptr<test::Node>> nodes_;
};

TEST_F(ClusterTest, FiveNodesJoinThroughOneSeedAndThroughDifferentSeeds) {
  test::Node& seed = start();
  start(seed.address());
  start(seed.address());
  test::Node& n3 = start(nodes_[1]->address());               // through a non-seed member
  start("127.0.0.1:1," + n3.address());                        // first seed unreachable
  for (auto& n : nodes_) {
    auto c = connect(*n);
    ASSERT_TRUE(c);
    EXPECT_TRUE(converged(*c, 5)) << "node " << n->address();
  }
}

TEST_F(ClusterTest, WrongClusterNameIsRefusedOnBothSides) {
  test::Node& seed = start();
  test::Node& stranger = start(seed.address(), {"--cluster-name", "other"});
  (void)stranger;
  EXPECT_EQ(nodes_.back()->process().wait_exit(20s), 1);
  EXPECT_NE(nodes_.back()->process().err().find("refused"), std::string::npos) << nodes_.back()->process().err();
  EXPECT_NE(seed.process().err().find("refused join"), std::string::npos) << seed.process().err();
}

TEST_F(ClusterTest, KillNineMidStreamEveryRequestCompletesExactly) {
  test::Node& a = start();
  test::Node& b = start(a.address());
  test::Node& c = start(a.address());
  auto client = connect(a);
  ASSERT_TRUE(client);
  ASSERT_TRUE(converged(*client, 3));

  const int kRequests = 9, kTokens = 500;
  auto run_all = [&](std::function<void()> midway) {
    std::vector<Result<GenerateResult>> res(kRequests, Status::Internal("not run"));
    std::atomic<int> chunks{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < kRequests; ++i) {
      ts.emplace_back([&, i] {
        GenerateRequest r;
        r.prompt = "story number " + std::to_string(i);
        r.max_tokens = kTokens;
        r.temperature = i % 2 ? 0.8f : 0.0f;  // greedy and seeded sampling both resume exactly
        r.seed = 100 + i;
        res[i] = client->generate(r, [&](const TokenChunk&) { ++chunks; });
      });
    }
    if (midway) {
      while (chunks.load() < kRequests * 50) std::this_thread::sleep_for(2ms);
      midway();
    }
    for (auto& t : ts) t.join();
    return res;
  };
  const auto undisturbed = run_all(nullptr);
  const auto disturbed = run_all([&] { c.process().signal(SIGKILL); });
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(undisturbed[i].ok()) << undisturbed[i].status().ToString();
    ASSERT_TRUE(disturbed[i].ok()) << "request " << i << ": " << disturbed[i].status().ToString();  // includes the seq check
    EXPECT_EQ(disturbed[i]->finish_reason, "length") << disturbed[i]->error;
    EXPECT_EQ(disturbed[i]->tokens, undisturbed[i]->tokens) << "request " << i;
    EXPECT_EQ(disturbed[i]->chunks, static_cast<uint32_t>(kTokens));
  }
  EXPECT_NE(a.process().err().find("is down"), std::string::npos);
  EXPECT_NE(a.process().err().find("resumed on another worker"), std::string::npos) << "no request ran on the killed node?";
  auto cs = client->cluster_status();
  ASSERT_TRUE(cs.ok());
  EXPECT_EQ(cs->nodes.size(), 2u);
  for (const auto& n : cs->nodes) EXPECT_EQ(n.leader, n.node_id == "n" + std::to_string(a.port())) << n.node_id;  // a, the oldest, leads
  (void)b;
}

TEST_F(ClusterTest, FrozenNodeIsDetectedAndItsStreamsMove) {
  // SIGSTOP keeps the TCP connection open: only heartbeats can tell. With a 250 ms
  // heartbeat and a 2 s silence limit the frozen node's work moves within ~2 s.
  const std::vector<std::string> fast = {"--heartbeat-interval-ms", "250", "--connection-timeout-ms", "2000"};
  test::Node& a = start("", fast);
  start(a.address(), fast);
  test::Node& c = start(a.address(), fast);
  auto client = connect(a);
  ASSERT_TRUE(client);
  ASSERT_TRUE(converged(*client, 3));
  auto run = [&](bool freeze, double* secs) {
    std::vector<Result<GenerateResult>> res(6, Status::Internal("not run"));
    std::atomic<int> chunks{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 6; ++i) {
      ts.emplace_back([&, i] {
        GenerateRequest r;
        r.prompt = "frozen " + std::to_string(i);
        r.max_tokens = 800;
        res[i] = client->generate(r, [&](const TokenChunk&) { ++chunks; });
      });
    }
    auto stopped = std::chrono::steady_clock::now();
    if (freeze) {
      while (chunks.load() < 150) std::this_thread::sleep_for(2ms);
      c.process().signal(SIGSTOP);
      stopped = std::chrono::steady_clock::now();
    }
    for (auto& t : ts) t.join();
    *secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
    return res;
  };
  double secs = 0;
  const auto want = run(false, &secs);
  const auto got = run(true, &secs);
  c.process().signal(SIGCONT);
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(want[i].ok() && got[i].ok()) << got[i].status().ToString();
    EXPECT_NE(got[i]->finish_reason, "error") << got[i]->error;
    EXPECT_EQ(got[i]->tokens, want[i]->tokens) << "request " << i;
  }
  EXPECT_NE(a.process().err().find("is down"), std::string::npos) << a.process().err();
  EXPECT_NE(a.process().err().find("resumed on another worker"), std::string::npos) << "nothing ran on the frozen node?";
  std::printf("[ info ] all streams done %.1f s after SIGSTOP\n", secs);
}

TEST_F(ClusterTest, SeedDeathDoesNotStopServingOrJoining) {
  test::Node& seed = start();
  test::Node& b = start(seed.address());
  auto cb = connect(b);
  ASSERT_TRUE(converged(*cb, 2));
  seed.process().signal(SIGKILL);
  ASSERT_TRUE(converged(*cb, 1));
  GenerateRequest r;
  r.prompt = "still here";
  r.max_tokens = 20;
  auto res = cb->generate(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->tokens.size(), 20u);
  test::Node& c = start(seed.address() + "," + b.address());  // the dead seed first
  auto cc = connect(c);
  EXPECT_TRUE(converged(*cc, 2));
}

}  // namespace
}  // namespace ds
