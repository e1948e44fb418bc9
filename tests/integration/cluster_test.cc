// Several ds-node processes on 127.0.0.1 forming a cluster: joining through seeds,
// cluster-wide routing, and failover of in-flight streams when a node is killed.
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdio>
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
  // Waits until `members` members are up and each of them sees exactly that many live members.
  bool converged(Client& c, size_t members, std::chrono::seconds timeout = 20s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      auto cs = c.cluster_status();
      if (cs.ok()) {
        size_t up = 0;
        bool agree = true;
        for (const auto& n : cs->nodes) {
          if (n.state != "up") continue;
          ++up;
          agree = agree && n.members == static_cast<int>(members) && n.reachable;
        }
        if (up == members && agree) return true;
      }
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  // Waits until every started node's own view has `members` members, all up. (converged()
  // reads one node's status, where a member's count includes joining members: a node that
  // still sees some as joining counts fewer voters, and with a stale view a pair of nodes
  // cut off from three can hold a "majority" of the voters it knows.)
  bool every_view_up(size_t members, std::chrono::seconds timeout = 20s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    std::vector<std::unique_ptr<Client>> clients;
    for (const auto& n : nodes_) clients.push_back(connect(*n));
    while (std::chrono::steady_clock::now() < end) {
      bool all = true;
      for (auto& c : clients) {
        auto v = c ? c->members() : Result<MemberView>(Status::IOError("not connected"));
        size_t up = 0;
        if (v.ok())
          for (const auto& m : v->members) up += m.state == "up" ? 1 : 0;
        all = all && v.ok() && up == members && v->members.size() == members;
      }
      if (all) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  // The member `id` as c's node sees it (state "" when absent).
  NodeStatus member(Client& c, const std::string& id) {
    auto cs = c.cluster_status();
    if (cs.ok())
      for (const auto& n : cs->nodes)
        if (n.node_id == id) return n;
    return NodeStatus{};
  }
  // Runs n concurrent requests through client; `midway` runs once `after_chunks` chunks arrived.
  std::vector<Result<GenerateResult>> run_all(Client& client, int n, int tokens, const std::string& prefix,
                                              std::function<void()> midway = nullptr, int after_chunks = 0) {
    std::vector<Result<GenerateResult>> res(n, Status::Internal("not run"));
    std::atomic<int> chunks{0}, done{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < n; ++i) {
      ts.emplace_back([&, i] {
        GenerateRequest r;
        r.prompt = prefix + " number " + std::to_string(i);
        r.max_tokens = tokens;
        r.temperature = i % 2 ? 0.8f : 0.0f;  // greedy and seeded sampling both resume exactly
        r.seed = 100 + i;
        res[i] = client.generate(r, [&](const TokenChunk&) { ++chunks; });
        ++done;
      });
    }
    if (midway) {
      // Until enough chunks came; requests that all end first (failed) or a stall end the wait too,
      // so that a failure is reported, not waited on until ctest's timeout.
      const auto end = std::chrono::steady_clock::now() + 120s;
      while (chunks.load() < after_chunks && done.load() < n && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(2ms);
      EXPECT_GE(chunks.load(), after_chunks) << "the requests ended or stalled before " << after_chunks << " chunks";
      midway();
    }
    for (auto& t : ts) t.join();
    return res;
  }
  static std::string id_of(const test::Node& n) { return "n" + std::to_string(n.port()); }
  // Three nodes joined through the first, and a client of the first once all are up.
  std::unique_ptr<Client> start_three() {
    test::Node& a = start();
    start(a.address());
    start(a.address());
    auto client = connect(a);
    if (client && converged(*client, 3)) return client;
    // What each node logged, for the failure to be understood (membership lines above all).
    ADD_FAILURE() << "the three nodes did not converge within 20 s";
    for (const auto& n : nodes_) {
      const std::string err = n->process().err();
      std::printf("---- %s's log (last 3000 bytes) ----\n%s\n", id_of(*n).c_str(),
                  err.substr(err.size() > 3000 ? err.size() - 3000 : 0).c_str());
    }
    return nullptr;
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
  // The seed says so too (its log line may trail the stranger's exit by a moment).
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (seed.process().err().find("refused-join") == std::string::npos && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(20ms);
  EXPECT_NE(seed.process().err().find("refused-join"), std::string::npos) << seed.process().err();
}

TEST_F(ClusterTest, KillNineMidStreamEveryRequestCompletesExactly) {
  auto client = start_three();
  ASSERT_TRUE(client);
  test::Node& a = *nodes_[0];

  const int kRequests = 9, kTokens = 500;
  const auto undisturbed = run_all(*client, kRequests, kTokens, "story");
  // Routers place by the larger of their own count and the gossiped load, which trails by up
  // to ~2 s (load_publish_interval + gossip): let the first run's loads settle, so that a's
  // router spreads the second run over all three nodes.
  std::this_thread::sleep_for(2500ms);
  // Kill a node that runs some of the requests (c unless only b does): placement is random,
  // and a victim with nothing to fail over would test nothing.
  test::Node* victim = nodes_[2].get();
  const auto disturbed = run_all(*client, kRequests, kTokens, "story", [&] {
    auto cs = client->cluster_status();
    auto active = [&](const test::Node& n) {
      int k = 0;
      if (cs.ok())
        for (const auto& ns : cs->nodes)
          if (ns.node_id == id_of(n))
            for (const auto& w : ns.workers) k += w.active + w.queued;
      return k;
    };
    if (active(*nodes_[2]) == 0 && active(*nodes_[1]) > 0) victim = nodes_[1].get();
    victim->process().signal(SIGKILL);
  }, kRequests * 50);
  test::Node& c = *victim;
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(undisturbed[i].ok()) << undisturbed[i].status().ToString();
    ASSERT_TRUE(disturbed[i].ok()) << "request " << i << ": " << disturbed[i].status().ToString();  // includes the seq check
    EXPECT_EQ(disturbed[i]->finish_reason, "length") << disturbed[i]->error;
    EXPECT_EQ(disturbed[i]->tokens, undisturbed[i]->tokens) << "request " << i;
    EXPECT_EQ(disturbed[i]->chunks, static_cast<uint32_t>(kTokens));
  }
  EXPECT_NE(a.process().err().find("member " + id_of(c) + " is gone"), std::string::npos);
  EXPECT_NE(a.process().err().find("resumed on another worker"), std::string::npos) << "no request ran on the killed node?";
  // The membership marks it down (its detectors and a majority agree) and a, the oldest, leads.
  ASSERT_TRUE(converged(*client, 2));
  EXPECT_EQ(member(*client, id_of(c)).state, "down");
  auto cs = client->cluster_status();
  ASSERT_TRUE(cs.ok());
  EXPECT_EQ(cs->leader, id_of(a));
  EXPECT_TRUE(cs->has_quorum) << cs->quorum;
  for (const auto& n : cs->nodes) EXPECT_EQ(n.leader, n.node_id == id_of(a)) << n.node_id;
}

TEST_F(ClusterTest, FrozenNodeIsDownedItsStreamsMoveAndItRejoinsAsANewIncarnation) {
  // SIGSTOP keeps the TCP connections open: only the failure detector can tell (defaults).
  auto client = start_three();
  ASSERT_TRUE(client);
  test::Node& a = *nodes_[0];
  test::Node& c = *nodes_[2];
  const uint64_t old_incarnation = member(*client, id_of(c)).incarnation;
  ASSERT_GT(old_incarnation, 0u);
  const uint64_t healthy_incarnation[2] = {member(*client, id_of(a)).incarnation,
                                           member(*client, id_of(*nodes_[1])).incarnation};

  const auto want = run_all(*client, 6, 800, "frozen");
  const auto stopped = std::make_shared<std::chrono::steady_clock::time_point>();
  const auto got = run_all(*client, 6, 800, "frozen", [&] {
    c.process().signal(SIGSTOP);
    *stopped = std::chrono::steady_clock::now();
  }, 150);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - *stopped).count();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(want[i].ok() && got[i].ok()) << got[i].status().ToString();
    EXPECT_NE(got[i]->finish_reason, "error") << got[i]->error;
    EXPECT_EQ(got[i]->tokens, want[i]->tokens) << "request " << i;
  }
  EXPECT_EQ(member(*client, id_of(c)).state, "down");
  EXPECT_NE(a.process().err().find("member " + id_of(c) + " is gone: declared down by the cluster"), std::string::npos)
      << a.process().err();
  EXPECT_NE(a.process().err().find("resumed on another worker"), std::string::npos) << "nothing ran on the frozen node?";
  std::printf("[ info ] all streams done %.1f s after SIGSTOP\n", secs);

  // Frozen for 10 s in all, as the issue asks: long enough for CAF's connection timeout (10 s)
  // to close the other nodes' connections to it too, the harder path for its return. (12 s:
  // past that timeout for sure.)
  const auto thaw = *stopped + 12s;
  if (std::chrono::steady_clock::now() < thaw) std::this_thread::sleep_until(thaw);
  c.process().signal(SIGCONT);
  // It learns it was declared down, drops the old incarnation's work and rejoins.
  const auto end = std::chrono::steady_clock::now() + 20s;
  NodeStatus now;
  while (std::chrono::steady_clock::now() < end) {
    now = member(*client, id_of(c));
    if (now.state == "up" && now.incarnation > old_incarnation) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(now.state, "up");
  EXPECT_GT(now.incarnation, old_incarnation);
  EXPECT_NE(c.process().err().find("self-downed"), std::string::npos) << c.process().err();
  ASSERT_TRUE(converged(*client, 3));
  // Waking up a zombie (down, not told yet, its connections being redialled), it must not have
  // cost a healthy member its incarnation (cluster/README.md, "Zombies").
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(member(*client, id_of(*nodes_[i])).incarnation, healthy_incarnation[i]) << id_of(*nodes_[i]);
    EXPECT_EQ(nodes_[i]->process().err().find("self-downed"), std::string::npos) << nodes_[i]->process().err();
  }
  // It gets work again: a's router spreads 9 streams over the three workers.
  const auto again = run_all(*client, 9, 200, "again");
  for (const auto& r : again) ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto cc = connect(c);
  ASSERT_TRUE(cc);
  auto st = cc->status();
  ASSERT_TRUE(st.ok());
  EXPECT_GT(st->workers.at(0).tokens_per_s, 0.0) << "the rejoined node got no work";
}

TEST_F(ClusterTest, DrainUnderLoadLosesNothing) {
  auto client = start_three();
  ASSERT_TRUE(client);
  test::Node& a = *nodes_[0];
  test::Node& c = *nodes_[2];
  const auto want = run_all(*client, 9, 400, "drain");
  int admin_rc = -1;
  const auto got = run_all(*client, 9, 400, "drain", [&] {
    admin_rc = std::system((std::string(DS_BUILD_DIR) + "/ds-admin --connect " + a.address() + " node drain " + id_of(c) +
                            " --timeout 60 > " + dir_ + "/drain.out 2>&1").c_str());
  }, 9 * 40);
  for (int i = 0; i < 9; ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].status().ToString();
    EXPECT_EQ(got[i]->finish_reason, want[i]->finish_reason) << got[i]->error;
    EXPECT_EQ(got[i]->tokens, want[i]->tokens) << "request " << i;
  }
  EXPECT_EQ(WEXITSTATUS(admin_rc), 0) << test::slurp_file(dir_ + "/drain.out");
  EXPECT_EQ(c.process().wait_exit(30s), 0) << c.process().err();
  EXPECT_NE(c.process().err().find("operator asked this node to drain"), std::string::npos);
  const std::string left = member(*client, id_of(c)).state;
  EXPECT_TRUE(left == "down" || left == "removed") << left;  // the leader removes it 30 s after
  // A dead member can be forgotten; a live one cannot be removed.
  EXPECT_TRUE(client->remove_node(id_of(c)).ok());
  EXPECT_EQ(member(*client, id_of(c)).state, "removed");
  const Status live = client->remove_node(id_of(a));
  EXPECT_FALSE(live.ok());
  EXPECT_NE(live.message().find("drain it"), std::string::npos) << live.message();
  EXPECT_EQ(client->drain_node("nobody").code(), StatusCode::kNotFound);
}

TEST_F(ClusterTest, ClientMovesToAnotherMemberWhenItsNodeDies) {
  test::Node& a = start();
  test::Node& b = start(a.address());
  auto client = connect(b);
  ASSERT_TRUE(client);
  ASSERT_TRUE(converged(*client, 2));
  ASSERT_TRUE(client->members().ok());  // learns a's address
  b.process().signal(SIGKILL);
  GenerateRequest r;
  r.prompt = "after the crash";
  r.max_tokens = 20;
  auto res = client->generate(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->tokens.size(), 20u);
  EXPECT_EQ(client->node_address(), a.address());
}

// The node the client streams through dies (SIGKILL) mid-stream: the client resumes each
// stream on another member after the tokens it received, so every stream still completes
// exactly (same tokens as undisturbed, one chunk per token, no gap: the seq check).
TEST_F(ClusterTest, KillingTheClientsOwnNodeMidStreamLosesNoStream) {
  auto client = start_three();
  ASSERT_TRUE(client);
  test::Node& a = *nodes_[0];
  ASSERT_TRUE(client->members().ok());  // learns b's and c's addresses
  const int kRequests = 6, kTokens = 400;
  const auto undisturbed = run_all(*client, kRequests, kTokens, "story");
  const auto disturbed =
      run_all(*client, kRequests, kTokens, "story", [&] { a.process().signal(SIGKILL); }, kRequests * 40);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(undisturbed[i].ok()) << undisturbed[i].status().ToString();
    ASSERT_TRUE(disturbed[i].ok()) << "request " << i << ": " << disturbed[i].status().ToString();
    EXPECT_EQ(disturbed[i]->finish_reason, "length") << disturbed[i]->error;
    EXPECT_EQ(disturbed[i]->tokens, undisturbed[i]->tokens) << "request " << i;
    EXPECT_EQ(disturbed[i]->text, undisturbed[i]->text) << "request " << i;
    EXPECT_EQ(disturbed[i]->chunks, static_cast<uint32_t>(kTokens));
  }
  EXPECT_NE(client->node_address(), a.address());
  bool resumed = false;
  for (size_t i = 1; i < nodes_.size(); ++i)
    resumed = resumed || nodes_[i]->process().err().find("accepted as a resume") != std::string::npos;
  EXPECT_TRUE(resumed) << "no stream was resumed on another member";
}

TEST_F(ClusterTest, MinorityWithoutQuorumRefusesWorkAndRecovers) {
  // Freeze 3 of 5: the 2 left are a minority. They must not declare the majority down (they
  // cannot gather majority evidence) and must refuse new work, saying why.
  test::Node& a = start();
  for (int i = 0; i < 4; ++i) start(a.address());
  ClientOptions o;
  o.port = a.port();
  o.connect_timeout = 1s;  // it tries the other members when a says no_quorum; 3 are frozen
  auto connected = Client::Connect(o);
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
  auto client = std::move(connected).value();
  ASSERT_TRUE(converged(*client, 5));
  ASSERT_TRUE(every_view_up(5));
  for (int i = 2; i < 5; ++i) nodes_[i]->process().signal(SIGSTOP);
  GenerateRequest r;
  r.prompt = "minority";
  r.max_tokens = 10;
  Status refused;
  const auto end = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < end) {
    auto res = client->generate(r);
    if (!res.ok()) {
      refused = res.status();
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_NE(refused.message().find("no_quorum"), std::string::npos) << refused.ToString();
  EXPECT_NE(refused.message().find("2 of 5"), std::string::npos) << refused.ToString();
  auto cs = client->cluster_status();
  ASSERT_TRUE(cs.ok());
  EXPECT_FALSE(cs->has_quorum);
  for (const auto& n : cs->nodes) EXPECT_NE(n.state, "down") << n.node_id << " downed by a minority";
  for (int i = 2; i < 5; ++i) nodes_[i]->process().signal(SIGCONT);
  const auto end2 = std::chrono::steady_clock::now() + 20s;
  Result<GenerateResult> ok = Status::Internal("not run");
  while (std::chrono::steady_clock::now() < end2) {
    ok = client->generate(r);
    if (ok.ok()) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->tokens.size(), 10u);
}

TEST_F(ClusterTest, SeedDeathDoesNotStopServingOrJoining) {
  // Three members: without the seed, two of three are still a majority.
  test::Node& seed = start();
  test::Node& b = start(seed.address());
  start(seed.address());
  auto cb = connect(b);
  ASSERT_TRUE(converged(*cb, 3));
  seed.process().signal(SIGKILL);
  ASSERT_TRUE(converged(*cb, 2));
  EXPECT_EQ(member(*cb, id_of(seed)).state, "down");
  GenerateRequest r;
  r.prompt = "still here";
  r.max_tokens = 20;
  auto res = cb->generate(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->tokens.size(), 20u);
  // Clients take a node list too: the dead seed first.
  const std::string out = dir_ + "/client.out";
  const int rc = std::system((std::string(DS_BUILD_DIR) + "/ds-client --connect " + seed.address() + "," + b.address() +
                              " generate --max-tokens 5 'still here' > " + out + " 2>&1").c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 0) << test::slurp_file(out);
  test::Node& d = start(seed.address() + "," + b.address());  // the dead seed first
  auto cd = connect(d);
  EXPECT_TRUE(converged(*cd, 3));
}

}  // namespace
}  // namespace ds
