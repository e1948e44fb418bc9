// cluster/simulation.h: a deterministic discrete-event simulation of N Membership instances on a
// simulated network (FoundationDB-style: one seeded RNG, simulated time, faults as data).
//
// Each node is a Membership ticked every tick_interval (with a random phase) whose outgoing
// messages are delivered after a uniform random delay in [delay_min, delay_max], or dropped
// with probability `loss`, or dropped when sender and receiver are on different partition
// sides. Faults: crash (the process is gone; messages to it vanish), pause/resume (SIGSTOP:
// messages queue and are handled on resume, ticks stop), restart (same node id, next
// incarnation, joins through seeds), partition/heal. The same seed gives the same run.
//
// Used by the unit tests (tests/unit/cluster_*_test.cc) and by ds-cluster-sim; nothing here
// sleeps or reads a clock. Thread-safety: none.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "cluster/membership.h"

namespace ds::cluster {

struct NetworkOptions {
  double loss = 0.0;                                 // probability that a message is dropped
  Duration delay_min = std::chrono::milliseconds(5); // one-way delay, uniform in [min, max]
  Duration delay_max = std::chrono::milliseconds(50);
};

struct SimStats {
  uint64_t messages = 0;  // sent (before loss)
  uint64_t entries = 0;   // member entries or headers carried by them
  uint64_t bytes = 0;     // approx_wire_bytes() summed
  uint64_t dropped = 0;   // lost, cut by a partition, or addressed to a dead process
  std::map<std::string, uint64_t> by_kind;  // message_kind_name() -> sent
};

class Simulation {
 public:
  // `options` is every node's MembershipOptions (the seed is replaced per node).
  // REQUIRES: validate(options).ok(), 0 <= net.loss < 1, net.delay_min <= net.delay_max
  Simulation(MembershipOptions options, NetworkOptions net, uint64_t seed);

  // Adds a node that is not running yet; returns its index. Its id is "n0000", "n0001", ...
  int add_node(std::vector<WorkerSummary> workers = {});
  // Start node i's process (incarnation + 1) founding a cluster / joining through `seeds`.
  void found(int i);
  void join(int i, const std::vector<int>& seeds);
  // SIGKILL: the process is gone. restart() starts it again with the next incarnation.
  void crash(int i);
  void restart(int i, const std::vector<int>& seeds) {
    crash(i);
    join(i, seeds);
  }
  // SIGSTOP / SIGCONT.
  void pause(int i);
  void resume(int i);
  // A clean exit: leave, then shutdown.
  void leave(int i);
  // Nodes on different sides cannot reach each other; `side[i]` for node i (missing = 0).
  void set_partition(const std::vector<int>& side);
  void heal() { set_partition({}); }
  // Cut (or restore) the link between nodes a and b alone, both ways: a connection that is down
  // or being re-established (CAF's connections close after their timeout and are redialled).
  void set_link(int a, int b, bool up);
  void set_network(const NetworkOptions& net) { net_ = net; }
  // Call a member of node i directly (remove(), update_workers() ...) and deliver its output.
  void with_node(int i, const std::function<Output(Membership&, TimePoint)>& call);

  void run_for(Duration d);
  // Runs until pred() holds (checked every check_every) or `limit` passes; true when it held.
  bool run_until(const std::function<bool()>& pred, Duration limit,
                 Duration check_every = std::chrono::milliseconds(10));

  TimePoint now() const { return now_; }
  int size() const { return static_cast<int>(nodes_.size()); }
  bool running(int i) const { return nodes_[i].membership != nullptr; }
  bool paused(int i) const { return nodes_[i].paused; }
  // REQUIRES: running(i)
  const Membership& view(int i) const { return *nodes_[i].membership; }
  const NodeId& node_id(int i) const { return nodes_[i].id; }
  // The incarnation node i runs now (it moves on by itself when the node rejoins after being
  // declared down), or ran last.
  uint64_t incarnation(int i) const {
    return running(i) ? nodes_[i].membership->self().incarnation : nodes_[i].incarnation;
  }
  const SimStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

  // Every event of every node, as it happens (node index, event).
  std::function<void(int, const MemberEvent&)> on_event;

 private:
  struct Node {
    NodeId id;
    std::string address;
    std::vector<WorkerSummary> workers;
    uint64_t incarnation = 0;
    std::unique_ptr<Membership> membership;
    bool paused = false;
    uint32_t epoch = 0;            // bumped per process start; stale ticks are dropped
    std::vector<int32_t> inbox;    // messages that arrived while paused
    int side = 0;
  };
  struct Event {
    TimePoint at;
    uint64_t seq;
    int node;
    uint32_t epoch;
    int32_t message;  // index into pool_, or -1 for a tick
    bool operator>(const Event& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };

  void start(int i);
  void schedule_tick(int i, Duration after);
  void deliver(int i, int32_t message);
  void dispatch(int from, Output out);
  int32_t store(ClusterMessage m);
  void step(const Event& e);

  MembershipOptions options_;
  NetworkOptions net_;
  std::mt19937_64 rng_;
  TimePoint now_{};
  uint64_t seq_ = 0;
  std::vector<Node> nodes_;
  std::set<std::pair<int, int>> cut_links_;  // (min, max) node pairs
  std::unordered_map<std::string, int> by_address_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> queue_;
  std::vector<ClusterMessage> pool_;
  std::vector<int32_t> free_;
  SimStats stats_;
};

}  // namespace ds::cluster
