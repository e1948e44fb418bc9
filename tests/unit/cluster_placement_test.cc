// Worker placement: power of two choices on gossiped load, local preferred at equal load.
#include "cluster/placement.h"

#include <gtest/gtest.h>

#include <map>

#include "cluster/simulation.h"

namespace ds::cluster {
namespace {

constexpr uint64_t kSeed = 42;

WorkerCandidate remote(const char* node, double load) { return {node, "w0", load, false, true}; }

TEST(ClusterPlacement, PowerOfTwoPicksTheLessLoaded) {
  std::mt19937_64 rng(kSeed);
  const std::vector<WorkerCandidate> c = {remote("a", 0.9), remote("b", 0.1)};
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(pick_worker(c, rng), 1u);
}

TEST(ClusterPlacement, NeverPicksTheMostLoadedOfMany) {
  std::mt19937_64 rng(kSeed);
  std::vector<WorkerCandidate> c;
  for (int i = 0; i < 10; ++i) c.push_back(remote("n", 0.1 * i));  // candidate 9 is the busiest
  std::map<size_t, int> picks;
  for (int i = 0; i < 20000; ++i) ++picks[*pick_worker(c, rng)];
  EXPECT_EQ(picks.count(9), 0u);
  EXPECT_GT(picks[0], picks[8]);  // less loaded, more often: P(pick i) = 2 (9 - i) / 90
  EXPECT_NEAR(picks[0] / 20000.0, 18.0 / 90.0, 0.02);
}

TEST(ClusterPlacement, LocalPreferredAtEqualLoad) {
  std::mt19937_64 rng(kSeed);
  std::vector<WorkerCandidate> c = {remote("a", 0.5), remote("b", 0.5), remote("c", 0.5)};
  c.push_back({"self", "w0", 0.5, true, true});
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(pick_worker(c, rng), 3u);
}

TEST(ClusterPlacement, LocalLosesWhenBusier) {
  std::mt19937_64 rng(kSeed);
  const std::vector<WorkerCandidate> c = {{"self", "w0", 0.8, true, true}, remote("a", 0.2)};
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(pick_worker(c, rng), 1u);
}

TEST(ClusterPlacement, NeverPicksAnIneligibleWorker) {
  std::mt19937_64 rng(kSeed);
  std::vector<WorkerCandidate> c = {remote("a", 0.9), remote("down", 0.0), remote("b", 0.7)};
  c[1].eligible = false;
  c.push_back({"self", "w0", 0.0, true, false});  // an unhealthy local worker
  for (int i = 0; i < 1000; ++i) {
    const auto p = pick_worker(c, rng);
    ASSERT_TRUE(p.has_value());
    EXPECT_TRUE(*p == 0 || *p == 2);
  }
  for (auto& x : c) x.eligible = false;
  EXPECT_FALSE(pick_worker(c, rng).has_value());
  EXPECT_FALSE(pick_worker({}, rng).has_value());
}

// From a real (simulated) view: a crashed node's workers become ineligible once it is down.
TEST(ClusterPlacement, CandidatesSkipWorkersOnDownNodes) {
  MembershipOptions o;
  Simulation sim(o, NetworkOptions{0.0, std::chrono::milliseconds(1), std::chrono::milliseconds(5)}, kSeed);
  for (int i = 0; i < 3; ++i) sim.add_node({{"w0", "llama", 1, 1, 4, true}, {"w1", "qwen", 0, 0, 4, true}});
  sim.found(0);
  sim.join(1, {0});
  sim.join(2, {0});
  ASSERT_TRUE(sim.run_until([&] { return sim.view(0).up_count() == 3; }, std::chrono::seconds(10)));
  sim.run_for(std::chrono::seconds(1));

  auto c = worker_candidates(sim.view(0), "llama");
  ASSERT_EQ(c.size(), 3u);
  for (const auto& w : c) {
    EXPECT_TRUE(w.eligible);
    EXPECT_EQ(w.worker_id, "w0");
    EXPECT_DOUBLE_EQ(w.load, 0.5);
    EXPECT_EQ(w.local, w.node_id == "n0000");
  }
  EXPECT_EQ(worker_candidates(sim.view(0), "").size(), 6u);

  sim.crash(2);
  ASSERT_TRUE(sim.run_until([&] { return sim.view(0).find("n0002")->state == MemberState::kDown; },
                            std::chrono::seconds(5)));
  std::mt19937_64 rng(kSeed);
  c = worker_candidates(sim.view(0), "llama");
  for (const auto& w : c) EXPECT_EQ(w.eligible, w.node_id != "n0002");
  for (int i = 0; i < 200; ++i) EXPECT_NE(c[*pick_worker(c, rng)].node_id, "n0002");
}

}  // namespace
}  // namespace ds::cluster
