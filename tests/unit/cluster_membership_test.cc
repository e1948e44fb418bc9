// Membership scenarios on the deterministic simulator (cluster/simulation.h) and, where two
// nodes suffice, by passing messages by hand. No CAF, no sockets, no sleeping: simulated time.
#include "cluster/membership.h"

#include <gtest/gtest.h>

#include <set>

#include "cluster/simulation.h"

namespace ds::cluster {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr uint64_t kSeed = 20240601;  // every scenario is deterministic for this seed

NetworkOptions lan() { return NetworkOptions{0.0, milliseconds(1), milliseconds(5)}; }

double secs(Duration d) { return std::chrono::duration<double>(d).count(); }

// Records what every node reported.
struct Log {
  struct Entry {
    TimePoint at;
    int node;
    MemberEvent e;
  };
  std::vector<Entry> entries;
  void attach(Simulation& sim) {
    sim.on_event = [this, &sim](int node, const MemberEvent& e) { entries.push_back({sim.now(), node, e}); };
  }
  int count(EventKind k, const std::string& about = "", bool decided_here_only = false) const {
    int n = 0;
    for (const Entry& x : entries) {
      if (x.e.kind == k && (about.empty() || x.e.node_id == about) && (!decided_here_only || x.e.decided_here)) ++n;
    }
    return n;
  }
  const Entry* first(EventKind k, int node = -1) const {
    for (const Entry& x : entries) {
      if (x.e.kind == k && (node < 0 || x.node == node)) return &x;
    }
    return nullptr;
  }
};

// Every running node lists exactly the running nodes (at their current incarnation) as up.
bool all_up(const Simulation& sim) {
  for (int i = 0; i < sim.size(); ++i) {
    if (!sim.running(i) || sim.paused(i)) continue;
    for (int j = 0; j < sim.size(); ++j) {
      if (!sim.running(j)) continue;
      const MemberEntry* e = sim.view(i).find(sim.node_id(j));
      if (!e || e->state != MemberState::kUp || e->incarnation != sim.incarnation(j)) return false;
    }
  }
  return true;
}

// Every running node (or those in `only`) other than `subject` holds it at `at_least` (or a newer
// incarnation).
bool all_see(const Simulation& sim, int subject, uint64_t incarnation, MemberState at_least,
             const std::set<int>& only = {}) {
  for (int i = 0; i < sim.size(); ++i) {
    if (i == subject || !sim.running(i) || sim.paused(i) || (!only.empty() && !only.count(i))) continue;
    const MemberEntry* e = sim.view(i).find(sim.node_id(subject));
    if (!e || (e->incarnation == incarnation && e->state < at_least)) return false;
  }
  return true;
}

// A cluster of n nodes that all joined through node 0, converged.
struct Cluster {
  Simulation sim;
  Log log;
  explicit Cluster(int n, NetworkOptions net = lan(), MembershipOptions o = {}, uint64_t seed = kSeed)
      : sim(o, net, seed) {
    log.attach(sim);
    for (int i = 0; i < n; ++i) sim.add_node();
    sim.found(0);
    for (int i = 1; i < n; ++i) sim.join(i, {0});
    EXPECT_TRUE(sim.run_until([&] { return all_up(sim); }, seconds(10)));
    sim.run_for(seconds(2));  // a few detector samples everywhere
  }
};

TEST(ClusterMembership, FiveNodesJoinThroughOneSeedAndConverge) {
  Cluster c(5);
  const auto& v0 = c.sim.view(0);
  for (int i = 0; i < 5; ++i) {
    const Membership& v = c.sim.view(i);
    EXPECT_EQ(v.up_count(), 5u);
    EXPECT_EQ(v.view_hash(), v0.view_hash()) << "node " << i << " holds a different view";
    EXPECT_EQ(v.leader(), std::optional<NodeId>("n0000"));
    EXPECT_TRUE(v.has_quorum()) << v.quorum().reason;
    EXPECT_EQ(v.members().size(), 5u);
  }
  // Every member is known with its addresses and workers.
  const MemberEntry* e = v0.find("n0003");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->info().cluster_address, "10.0.0.3:4242");
  EXPECT_EQ(c.log.count(EventKind::kJoined), 5);
  EXPECT_EQ(c.log.count(EventKind::kQuorumLost), 0);  // joiners too: no false alarm while joining
}

// The quorum line ("N of M voting members reachable") counts the voters the view holds: the
// leader promotes joiners itself, so its count is never behind its member list (it used to be,
// until the next heartbeat round: a status right after a join read "2 of 2" with 3 members up).
TEST(ClusterMembership, LeadersQuorumCountKeepsUpWithPromotions) {
  Simulation sim(MembershipOptions{}, lan(), kSeed);
  for (int i = 0; i < 5; ++i) sim.add_node();
  sim.found(0);
  for (int i = 1; i < 5; ++i) sim.join(i, {0});
  int checks = 0, behind = 0;
  const bool up = sim.run_until(
      [&] {
        const Membership& v = sim.view(0);
        int voters = 0;
        for (const MemberEntry& e : v.members()) voters += is_voter(e.state) ? 1 : 0;
        ++checks;
        if (v.quorum().voters != voters) ++behind;
        return all_up(sim);
      },
      seconds(10), milliseconds(1));
  ASSERT_TRUE(up);
  EXPECT_GT(checks, 20);
  EXPECT_EQ(behind, 0) << "the leader's quorum count lagged its member list at " << behind << " of " << checks << " steps";
  EXPECT_EQ(sim.view(0).quorum().reason, "5 of 5 voting members reachable");
}

TEST(ClusterMembership, NodesJoinThroughDifferentSeeds) {
  Simulation sim(MembershipOptions{}, lan(), kSeed);
  Log log;
  log.attach(sim);
  for (int i = 0; i < 5; ++i) sim.add_node();
  sim.found(0);
  // A chain: each node's only seed is the previous one, which may still be joining itself: it
  // answers "not a member yet" and the joiner retries.
  for (int i = 1; i < 5; ++i) sim.join(i, {i - 1});
  ASSERT_TRUE(sim.run_until([&] { return all_up(sim); }, seconds(15)));
  // Anti-entropy brings every copy of every entry (versions included) to the same digest.
  EXPECT_TRUE(sim.run_until(
      [&] {
        for (int i = 1; i < 5; ++i) {
          if (sim.view(i).view_hash() != sim.view(0).view_hash()) return false;
        }
        return true;
      },
      seconds(5)));
  EXPECT_GT(log.count(EventKind::kJoinRetry), 0);
}

TEST(ClusterMembership, JoinBacksOffWhileNoSeedAnswers) {
  // Two seeds that never answer: 1 s between tries for the first pass, then the interval
  // doubles after each pass over both seeds, up to join_retry_max (8 s).
  Membership m(MembershipOptions{}, SelfInfo{"n1", 1, "10.0.0.1:4242", "", {}});
  const TimePoint t0{};
  std::vector<double> sent;  // seconds since t0
  auto collect = [&](const Output& out, TimePoint now) {
    for (const Outgoing& o : out.messages)
      if (std::holds_alternative<JoinRequest>(o.message)) sent.push_back(std::chrono::duration<double>(now - t0).count());
  };
  collect(m.join({"10.0.0.8:4242", "10.0.0.9:4242"}, t0), t0);
  for (TimePoint now = t0; now < t0 + seconds(47); now += milliseconds(50)) collect(m.tick(now), now);
  std::vector<double> gaps;
  for (size_t i = 1; i < sent.size(); ++i) gaps.push_back(sent[i] - sent[i - 1]);
  const std::vector<double> want = {1, 1, 2, 2, 4, 4, 8, 8, 8};
  ASSERT_GE(gaps.size(), want.size()) << "only " << sent.size() << " join requests";
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(gaps[i], want[i], 0.06) << "gap " << i;
  EXPECT_EQ(m.phase(), Phase::kJoining);
}

TEST(ClusterMembership, JoinGoesThroughAnyReachableSeed) {
  Simulation sim(MembershipOptions{}, lan(), kSeed);
  for (int i = 0; i < 5; ++i) sim.add_node();
  sim.found(0);
  sim.join(1, {0});
  sim.join(2, {0});
  ASSERT_TRUE(sim.run_until([&] { return all_up(sim); }, seconds(5)));
  sim.crash(0);  // the first seed is dead; node 1 answers
  sim.join(3, {0, 1});
  sim.join(4, {0, 1});
  EXPECT_TRUE(sim.run_until(
      [&] { return sim.view(3).phase() == Phase::kMember && sim.view(4).phase() == Phase::kMember; }, seconds(5)));
  EXPECT_TRUE(sim.run_until([&] { return all_up(sim); }, seconds(5)));
}

TEST(ClusterMembership, CrashedNodeIsMarkedDownByAllWithinTarget) {
  Cluster c(5);
  const uint64_t inc = c.sim.incarnation(3);
  const TimePoint t0 = c.sim.now();
  c.sim.crash(3);
  ASSERT_TRUE(c.sim.run_until([&] { return all_see(c.sim, 3, inc, MemberState::kDown); }, seconds(10)));
  const double took = secs(c.sim.now() - t0);
  EXPECT_LT(took, 3.0) << "SIGKILL target: down everywhere within 3 s";
  EXPECT_GT(took, 1.0) << "faster than the acceptable pause means false downs on a busy node";
  EXPECT_GE(c.log.count(EventKind::kMemberDown, "n0003", /*decided_here_only=*/true), 1);
  const auto* decided = c.log.first(EventKind::kMemberDown);
  ASSERT_NE(decided, nullptr);
  EXPECT_NE(decided->e.reason.find("phi"), std::string::npos) << decided->e.reason;
  // The leader removes it later.
  ASSERT_TRUE(c.sim.run_until([&] { return all_see(c.sim, 3, inc, MemberState::kRemoved); }, seconds(40)));
}

TEST(ClusterMembership, StoppedNodeIsMarkedDownAndRejoinsAsNewIncarnation) {
  Cluster c(5);
  const uint64_t inc = c.sim.incarnation(4);
  const TimePoint t0 = c.sim.now();
  c.sim.pause(4);  // SIGSTOP
  ASSERT_TRUE(c.sim.run_until([&] { return all_see(c.sim, 4, inc, MemberState::kDown); }, seconds(10)));
  EXPECT_LT(secs(c.sim.now() - t0), 3.0);
  c.sim.run_for(seconds(3));
  c.sim.resume(4);  // SIGCONT: it learns it was declared down, reports it, rejoins as inc + 1
  ASSERT_TRUE(c.sim.run_until([&] { return all_up(c.sim); }, seconds(10)));
  EXPECT_EQ(c.sim.incarnation(4), inc + 1);
  EXPECT_EQ(c.log.count(EventKind::kSelfDowned, "n0004"), 1);
  EXPECT_GE(c.log.count(EventKind::kSelfPaused, "n0004"), 1);
  // Nobody declared anyone else down because of the stall.
  EXPECT_EQ(c.log.count(EventKind::kMemberDown, "", true), c.log.count(EventKind::kMemberDown, "n0004", true));
}

// A node stopped long enough to be declared down (and for the other nodes to close their
// connections to it) wakes up a zombie: it does not know yet that it is down, its detectors
// restart, and its links come back one by one as connections are redialled. No healthy member
// may lose its incarnation because of what it concludes meanwhile (ds-bench failover --signal
// stop --stop-seconds 12 saw thawed nodes down healthy peers whose links came back last, and
// the verdicts spread: 3 false downs in 6 rounds). Here: n4 is stopped 12 s; on waking its
// links stay cut 1.9 s, then come back except the one to n2, which stays cut 3 s more (so n2
// and n4's new incarnation cannot hear each other: one of them is downed, and it must be n4).
TEST(ClusterMembership, AZombieWakingFromAStopCostsNoHealthyMemberItsIncarnation) {
  for (uint64_t seed : {1, 2, 3, 4, 5, 6}) {
    Cluster c(5, NetworkOptions{0.0, milliseconds(5), milliseconds(50)}, {}, seed);
    const uint64_t inc = c.sim.incarnation(4);
    std::vector<uint64_t> incarnations;
    for (int i = 0; i < 4; ++i) incarnations.push_back(c.sim.incarnation(i));
    c.sim.pause(4);
    ASSERT_TRUE(c.sim.run_until([&] { return all_see(c.sim, 4, inc, MemberState::kDown); }, seconds(10)));
    c.sim.run_for(seconds(10));
    for (int i = 0; i < 4; ++i) c.sim.set_link(4, i, false);
    c.sim.resume(4);
    c.sim.run_for(milliseconds(1900));
    for (int i : {0, 1, 3}) c.sim.set_link(4, i, true);
    c.sim.run_for(seconds(3));
    c.sim.set_link(4, 2, true);
    ASSERT_TRUE(c.sim.run_until([&] { return all_up(c.sim); }, seconds(20))) << "seed " << seed;
    // (Its new incarnation may be downed once more by n2, which cannot hear it for 3 s.)
    EXPECT_GT(c.sim.incarnation(4), inc) << "seed " << seed;
    // No healthy member lost its incarnation: whatever n4 concluded while it was a zombie
    // (before it learned its own fate) was dropped by the others and withdrawn by n4.
    std::string downs;
    for (const auto& x : c.log.entries)
      if (x.e.kind == EventKind::kMemberDown && x.e.decided_here)
        downs += c.sim.node_id(x.node) + " downed " + x.e.node_id + " at " + std::to_string(secs(x.at.time_since_epoch())) +
                 " s: " + x.e.reason + "\n";
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(c.log.count(EventKind::kSelfDowned, c.sim.node_id(i)), 0) << "seed " << seed << ":\n" << downs;
      EXPECT_EQ(c.sim.incarnation(i), incarnations[i]) << "seed " << seed;
    }
  }
}

// The same after a partition: n3 and n4 are cut off 12 s (the majority downs them); when it
// heals, their links to n2 come back 3 s after the others. Zombies both, they regain quorum
// from n0 and n1 while n2 is still silent to them; neither may cost n2 its incarnation, not
// even by way of the other (a netns chaos run saw p4 down p3 that way, and p5, which had
// accepted it, carry the verdict into its new incarnation).
TEST(ClusterMembership, ZombiesBackFromAPartitionCostNoHealthyMemberItsIncarnation) {
  for (uint64_t seed : {1, 2, 3, 4, 5, 6}) {
    Cluster c(5, NetworkOptions{0.0, milliseconds(5), milliseconds(50)}, {}, seed);
    std::vector<uint64_t> incarnations;
    for (int i = 0; i < 3; ++i) incarnations.push_back(c.sim.incarnation(i));
    c.sim.set_partition({0, 0, 0, 1, 1});
    c.sim.run_for(seconds(12));
    for (int z : {3, 4}) c.sim.set_link(z, 2, false);
    c.sim.heal();
    c.sim.run_for(seconds(3));
    for (int z : {3, 4}) c.sim.set_link(z, 2, true);
    ASSERT_TRUE(c.sim.run_until([&] { return all_up(c.sim); }, seconds(20))) << "seed " << seed;
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(c.log.count(EventKind::kSelfDowned, c.sim.node_id(i)), 0) << "seed " << seed << " n" << i;
      EXPECT_EQ(c.sim.incarnation(i), incarnations[i]) << "seed " << seed;
    }
  }
}

// A restarted node (same id and address, a new incarnation) whose connections to one peer take
// 3 s to come back: neither may declare the other down meanwhile (a rolling restart under load
// saw a restarted node and a peer down each other 1.8 s after it came up). A member never heard
// from gets pause_grace.
TEST(ClusterMembership, ARestartedNodeAndAPeerStillConnectingDoNotDownEachOther) {
  for (uint64_t seed : {1, 2, 3, 4}) {
    Cluster c(5, NetworkOptions{0.0, milliseconds(5), milliseconds(50)}, {}, seed);
    const uint64_t inc = c.sim.incarnation(2);
    c.sim.crash(2);
    ASSERT_TRUE(c.sim.run_until([&] { return all_see(c.sim, 2, inc, MemberState::kDown); }, seconds(10)));
    c.log.entries.clear();
    c.sim.set_link(2, 4, false);
    c.sim.join(2, {0});
    c.sim.run_for(seconds(3));
    c.sim.set_link(2, 4, true);
    ASSERT_TRUE(c.sim.run_until([&] { return all_up(c.sim); }, seconds(20))) << "seed " << seed;
    EXPECT_EQ(c.log.count(EventKind::kMemberDown, "", true), 0) << "seed " << seed;
    EXPECT_EQ(c.sim.incarnation(2), inc + 1) << "seed " << seed;
  }
}

TEST(ClusterMembership, RestartedNodeReplacesItsOldIncarnation) {
  Cluster c(5);
  const uint64_t old_inc = c.sim.incarnation(2);
  c.sim.restart(2, {0, 1});  // SIGKILL and start again at once, before anyone noticed
  ASSERT_TRUE(c.sim.run_until([&] { return all_up(c.sim); }, seconds(10)));
  EXPECT_GT(c.sim.incarnation(2), old_inc);
  // Every other node was told that the old incarnation (and its work) is dead.
  std::set<int> told;
  for (const auto& x : c.log.entries) {
    if (x.e.kind == EventKind::kMemberRestarted && x.e.node_id == "n0002") {
      EXPECT_EQ(x.e.incarnation, old_inc);
      told.insert(x.node);
    }
  }
  EXPECT_EQ(told, (std::set<int>{0, 1, 3, 4}));
}

TEST(ClusterMembership, LeaderIsTheOldestUpMemberAndIsReelected) {
  Cluster c(5);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(c.sim.view(i).leader(), std::optional<NodeId>("n0000"));
  // The next oldest: the member with the second smallest up number.
  std::vector<MemberEntry> up = c.sim.view(1).up_members();
  std::sort(up.begin(), up.end(), [](const MemberEntry& a, const MemberEntry& b) { return a.up_number < b.up_number; });
  const NodeId next = up[1].node_id;
  c.sim.crash(0);
  ASSERT_TRUE(c.sim.run_until(
      [&] {
        for (int i = 1; i < 5; ++i) {
          if (c.sim.view(i).leader() != std::optional<NodeId>(next)) return false;
        }
        return true;
      },
      seconds(5)));
  // The new leader does the leader's work: it moves a new joiner to up.
  c.sim.add_node();
  c.sim.join(5, {1});
  EXPECT_TRUE(c.sim.run_until([&] { return all_up(c.sim); }, seconds(5)));
}

TEST(ClusterMembership, MinorityPartitionLosesQuorumAndSaysSo) {
  Cluster c(5);
  const uint64_t inc3 = c.sim.incarnation(3), inc4 = c.sim.incarnation(4);
  c.sim.set_partition({0, 0, 0, 1, 1});  // {0,1,2} | {3,4}
  ASSERT_TRUE(c.sim.run_until(
      [&] {
        return !c.sim.view(3).has_quorum() && !c.sim.view(4).has_quorum() &&
               all_see(c.sim, 3, inc3, MemberState::kDown, {0, 1, 2}) &&
               all_see(c.sim, 4, inc4, MemberState::kDown, {0, 1, 2});
      },
      seconds(10)));
  for (int i : {3, 4}) {
    EXPECT_NE(c.sim.view(i).quorum().reason.find("minority"), std::string::npos) << c.sim.view(i).quorum().reason;
    EXPECT_EQ(c.sim.view(i).quorum().voters, 5);  // the last stable membership
  }
  for (int i : {0, 1, 2}) {
    EXPECT_TRUE(c.sim.view(i).has_quorum()) << c.sim.view(i).quorum().reason;
    EXPECT_EQ(c.sim.view(i).find("n0004")->state, MemberState::kDown);
  }
  // The minority declared no one down; the majority was never without quorum.
  for (const auto& x : c.log.entries) {
    if (x.e.kind == EventKind::kMemberDown && x.e.decided_here) {
      EXPECT_LT(x.node, 3) << x.e.node_id;
    }
    if (x.e.kind == EventKind::kQuorumLost) {
      EXPECT_GE(x.node, 3);
    }
  }
  EXPECT_GE(c.log.count(EventKind::kQuorumLost), 2);
  // The minority stays without quorum for as long as the partition lasts.
  c.sim.run_for(seconds(20));
  EXPECT_FALSE(c.sim.view(3).has_quorum());
  EXPECT_EQ(c.sim.view(3).find("n0000")->state, MemberState::kUp);  // it cannot down the majority

  // Heal: the minority learns it was declared down and rejoins as new incarnations.
  c.sim.heal();
  ASSERT_TRUE(c.sim.run_until([&] { return all_up(c.sim); }, seconds(10)));
  EXPECT_GT(c.sim.incarnation(3), inc3);
  EXPECT_GT(c.sim.incarnation(4), inc4);
  EXPECT_TRUE(c.sim.run_until(
      [&] {
        for (int i = 0; i < 5; ++i) {
          if (!c.sim.view(i).has_quorum()) return false;
        }
        return true;
      },
      seconds(2)));
}

// Two nodes accepted by the seed but cut off before they learn that the leader marked them
// up (their own view still says "joining"): they admit work once accepted, so they must lose
// quorum and say so like any member (the CI flake of PartitionTest: no quorum-lost line).
TEST(ClusterMembership, JoinersCutOffBeforeTheySeeThemselvesUpLoseQuorumAndSaySo) {
  Cluster c(3);
  const int a = c.sim.add_node(), b = c.sim.add_node();
  c.sim.join(a, {0});
  c.sim.join(b, {0});
  ASSERT_TRUE(c.sim.run_until(
      [&] {
        for (int i : {a, b}) {
          const Membership& v = c.sim.view(i);
          if (v.phase() != Phase::kMember || v.self().state != MemberState::kJoining) return false;
        }
        return true;
      },
      seconds(5)));
  c.sim.set_partition({0, 0, 0, 1, 1});
  ASSERT_TRUE(c.sim.run_until([&] { return !c.sim.view(a).has_quorum() && !c.sim.view(b).has_quorum(); },
                              seconds(10)));
  c.sim.run_for(seconds(1));
  for (int i : {a, b}) {
    bool reported = false;
    for (const auto& x : c.log.entries) reported |= x.node == i && x.e.kind == EventKind::kQuorumLost;
    EXPECT_TRUE(reported) << "node " << i << " lost quorum silently: " << c.sim.view(i).quorum().reason;
  }
  for (int i : {0, 1, 2}) EXPECT_TRUE(c.sim.view(i).has_quorum()) << c.sim.view(i).quorum().reason;
}

TEST(ClusterMembership, EvenSplitGoesToTheSideWithTheOldestMember) {
  Cluster c(4);
  c.sim.set_partition({0, 0, 1, 1});  // n0000 (the oldest) and n0001 | n0002, n0003
  ASSERT_TRUE(c.sim.run_until([&] { return !c.sim.view(2).has_quorum() && !c.sim.view(3).has_quorum(); },
                              seconds(10)));
  c.sim.run_for(seconds(3));
  EXPECT_TRUE(c.sim.view(0).has_quorum());
  EXPECT_TRUE(c.sim.view(1).has_quorum());
  EXPECT_EQ(c.sim.view(0).find("n0002")->state, MemberState::kDown);
  EXPECT_EQ(c.sim.view(2).find("n0000")->state, MemberState::kUp);
}

// Two nodes by hand: the seed belongs to "prod", the joiner asks for "staging".
TEST(ClusterMembership, ClusterNameMismatchIsRefusedOnBothSides) {
  const TimePoint t = TimePoint{} + seconds(100);
  MembershipOptions prod, staging;
  prod.cluster_name = "prod";
  staging.cluster_name = "staging";
  Membership seed(prod, SelfInfo{"seed", 1, "10.0.0.1:4242", "10.0.0.1:8080", {}});
  Membership joiner(staging, SelfInfo{"j", 1, "10.0.0.2:4242", "", {}});
  (void)seed.found(t);
  Output out = joiner.join({"10.0.0.1:4242"}, t);
  ASSERT_EQ(out.messages.size(), 1u);
  EXPECT_EQ(out.messages[0].to_address, "10.0.0.1:4242");

  Output at_seed = seed.on_message(out.messages[0].message, t);
  ASSERT_EQ(at_seed.events.size(), 1u);
  EXPECT_EQ(at_seed.events[0].kind, EventKind::kRefusedJoin);
  ASSERT_EQ(at_seed.messages.size(), 1u);
  const auto* reply = std::get_if<JoinReply>(&at_seed.messages[0].message);
  ASSERT_NE(reply, nullptr);
  EXPECT_FALSE(reply->accepted);
  EXPECT_FALSE(reply->retriable);

  Output at_joiner = joiner.on_message(at_seed.messages[0].message, t);
  ASSERT_EQ(at_joiner.events.size(), 1u);
  const MemberEvent& e = at_joiner.events[0];
  EXPECT_EQ(e.kind, EventKind::kJoinRefused);
  for (const char* word : {"cluster name mismatch", "'staging'", "'prod'", "--cluster-name prod"}) {
    EXPECT_NE(e.reason.find(word), std::string::npos) << e.reason;
    EXPECT_NE(at_seed.events[0].reason.find(word), std::string::npos) << at_seed.events[0].reason;
  }
  EXPECT_EQ(joiner.phase(), Phase::kRefused);
  // No retry after a refusal for good.
  EXPECT_TRUE(joiner.tick(t + seconds(5)).messages.empty());
  EXPECT_EQ(seed.live_count(), 1u);
}

TEST(ClusterMembership, DuplicateNodeIdOfTheSeedIsRefused) {
  const TimePoint t = TimePoint{} + seconds(100);
  Membership seed(MembershipOptions{}, SelfInfo{"a", 1, "10.0.0.1:4242", "", {}});
  Membership twin(MembershipOptions{}, SelfInfo{"a", 2, "10.0.0.2:4242", "", {}});
  (void)seed.found(t);
  Output out = twin.join({"10.0.0.1:4242"}, t);
  Output at_seed = seed.on_message(out.messages.at(0).message, t);
  Output at_twin = twin.on_message(at_seed.messages.at(0).message, t);
  ASSERT_EQ(at_twin.events.size(), 1u);
  EXPECT_EQ(at_twin.events[0].kind, EventKind::kJoinRefused);
  EXPECT_NE(at_twin.events[0].reason.find("unique --node-id"), std::string::npos);
}

TEST(ClusterMembership, JoinWithoutOtherSeedsFoundsTheCluster) {
  const TimePoint t = TimePoint{} + seconds(100);
  Membership m(MembershipOptions{}, SelfInfo{"a", 1, "10.0.0.1:4242", "", {}});
  (void)m.join({"10.0.0.1:4242"}, t);  // only itself in the seed list
  EXPECT_EQ(m.phase(), Phase::kMember);
  EXPECT_EQ(m.self().state, MemberState::kUp);
  EXPECT_TRUE(m.is_leader());
  EXPECT_TRUE(m.has_quorum());
}

TEST(ClusterMembership, LeaveAnnouncesDownWithoutWaitingForTheDetector) {
  Cluster c(5);
  const uint64_t inc = c.sim.incarnation(2);
  const TimePoint t0 = c.sim.now();
  c.sim.leave(2);
  ASSERT_TRUE(c.sim.run_until([&] { return all_see(c.sim, 2, inc, MemberState::kDown); }, seconds(5)));
  EXPECT_LT(secs(c.sim.now() - t0), 0.5);
  EXPECT_GE(c.log.count(EventKind::kMemberLeaving, "n0002"), 1);
}

TEST(ClusterMembership, OperatorRemoval) {
  Cluster c(4);
  c.sim.crash(3);
  c.sim.with_node(0, [](Membership& m, TimePoint now) {
    Result<Output> r = m.remove("n0003", now);
    EXPECT_TRUE(r.ok());
    EXPECT_FALSE(m.remove("nope", now).ok());
    EXPECT_EQ(m.remove("n0000", now).status().code(), StatusCode::kInvalidArgument);
    return r.ok() ? std::move(r).value() : Output{};
  });
  EXPECT_TRUE(c.sim.run_until([&] { return all_see(c.sim, 3, c.sim.incarnation(3), MemberState::kRemoved); },
                              seconds(3)));
}

TEST(ClusterMembership, WorkersAndLoadReachEveryNode) {
  Cluster c(5);
  c.sim.with_node(2, [](Membership& m, TimePoint now) {
    return m.update_workers({{"gpu0", "deepseek-7b", 3, 5, 8, true}}, now);
  });
  ASSERT_TRUE(c.sim.run_until(
      [&] {
        for (int i = 0; i < 5; ++i) {
          const auto& w = c.sim.view(i).find("n0002")->info().workers;
          if (w.size() != 1 || w[0].model != "deepseek-7b") return false;
        }
        return true;
      },
      seconds(2)));
  // A load-only change arrives within about a publish interval.
  c.sim.with_node(2, [](Membership& m, TimePoint now) {
    return m.update_workers({{"gpu0", "deepseek-7b", 0, 1, 8, true}}, now);
  });
  EXPECT_TRUE(c.sim.run_until(
      [&] {
        for (int i = 0; i < 5; ++i) {
          if (c.sim.view(i).find("n0002")->info().workers[0].in_flight != 1) return false;
        }
        return true;
      },
      seconds(3)));
}

TEST(ClusterMembership, HealthyClusterUnderLossAndJitterHasNoFalseDowns) {
  Cluster c(12, NetworkOptions{0.05, milliseconds(5), milliseconds(200)});
  c.log.entries.clear();
  c.sim.run_for(seconds(300));
  EXPECT_EQ(c.log.count(EventKind::kMemberDown), 0);
  EXPECT_EQ(c.log.count(EventKind::kQuorumLost), 0);
  EXPECT_TRUE(all_up(c.sim));
}

TEST(ClusterMembership, ShortStallsOfBusyNodesCauseNoFalseDowns) {
  Cluster c(8);
  // Each node in turn stops for 0.6 s (a GC-like stall, under the 1 s acceptable pause).
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < 8; ++i) {
      c.sim.pause(i);
      c.sim.run_for(milliseconds(600));
      c.sim.resume(i);
      c.sim.run_for(milliseconds(400));
    }
  }
  EXPECT_EQ(c.log.count(EventKind::kMemberDown), 0);
}

TEST(ClusterMembership, SameSeedSameHistory) {
  auto run = [] {
    Simulation sim(MembershipOptions{}, NetworkOptions{0.02, milliseconds(5), milliseconds(50)}, kSeed);
    std::string trace;
    sim.on_event = [&](int node, const MemberEvent& e) {
      trace += std::to_string(sim.now().time_since_epoch().count()) + " " + std::to_string(node) + " " +
               event_kind_name(e.kind) + " " + e.node_id + "\n";
    };
    for (int i = 0; i < 8; ++i) sim.add_node();
    sim.found(0);
    for (int i = 1; i < 8; ++i) sim.join(i, {0, 1});
    sim.run_for(seconds(3));
    sim.crash(5);
    sim.run_for(seconds(5));
    return trace + std::to_string(sim.stats().messages);
  };
  const std::string a = run();
  EXPECT_EQ(a, run());
  EXPECT_GT(a.size(), 100u);
}

TEST(ClusterMembership, ValidateRejectsBadOptions) {
  MembershipOptions o;
  EXPECT_TRUE(validate(o).ok());
  o.cluster_name = "";
  EXPECT_FALSE(validate(o).ok());
  o = {};
  o.gossip_fanout = 0;
  EXPECT_NE(validate(o).message().find("gossip_fanout"), std::string::npos);
  o = {};
  o.quorum_window = milliseconds(500);
  EXPECT_NE(validate(o).message().find("quorum_window"), std::string::npos);
}

}  // namespace
}  // namespace ds::cluster
