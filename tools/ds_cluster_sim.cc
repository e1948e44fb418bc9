// ds-cluster-sim: drives the pure membership + failure detector logic (cluster/) with a simulated
// network of many nodes, deterministically (one seed), and reports how it scales:
//
//   ds-cluster-sim [--nodes 1000] [--seed 1] [--loss 0.01] [--delay-ms 5..50] [--json]
//
// Scenarios, in order, on one cluster:
//   join         every node joins through a few seeds; time until every node lists every member up
//   join-one     one more node joins the converged cluster; time until every node lists it up
//   steady       messages (and entries carried) per node per second in a healthy idle cluster
//   crash        SIGKILL one node (the leader first), several times: time until the first monitor
//                and until every node marks it down (p50/p99); leader re-election time; restart
//   pause        SIGSTOP one node (same measurements), SIGCONT: it learns it was declared down
//                and rejoins as a new incarnation
//   false-pos    healthy nodes under delay jitter and loss: false downs per node-hour, at the
//                given network and at a harsh one (5% loss, 5..200 ms, 1% of nodes stalled
//                0.3-0.6 s every second)
//   partition    cut a random 40% off: time until every minority node reports no quorum, until
//                the majority has marked them all down, and (after healing) until all are up again
// Exit codes: 0 ok, 1 a scenario did not converge in its time limit, 2 usage error.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cluster/simulation.h"

namespace {

using ds::cluster::Duration;
using ds::cluster::EventKind;
using ds::cluster::MemberEvent;
using ds::cluster::MemberState;
using ds::cluster::MembershipOptions;
using ds::cluster::NetworkOptions;
using ds::cluster::Simulation;
using ds::cluster::TimePoint;
using std::chrono::milliseconds;
using Json = nlohmann::ordered_json;

double sec(Duration d) { return std::chrono::duration<double>(d).count(); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  return v[i];
}

Json summary(const std::vector<double>& v) {
  return Json{{"n", v.size()}, {"p50_s", percentile(v, 50)}, {"p99_s", percentile(v, 99)},
              {"max_s", v.empty() ? -1 : *std::max_element(v.begin(), v.end())}};
}

struct Harness {
  Simulation sim;
  int n;
  std::mt19937_64 rng;
  bool failed = false;
  // Filled by on_event.
  std::map<std::string, TimePoint> first_down;                  // victim id -> first decision
  std::map<std::string, std::vector<TimePoint>> down_seen;      // victim id -> when each node learned
  uint64_t decided_downs = 0;                                   // by any node
  uint64_t self_downed = 0;
  std::set<int> minority;                                       // partition side 1
  uint64_t minority_decisions_on_majority = 0;
  TimePoint partition_t0{};

  Harness(const MembershipOptions& o, const NetworkOptions& net, int nodes, uint64_t seed)
      : sim(o, net, seed), n(nodes), rng(seed ^ 0xabcdef) {
    for (int i = 0; i < nodes; ++i) sim.add_node({{"w0", "m", 0, 0, 8, true}});
    sim.on_event = [this](int node, const MemberEvent& e) {
      if (e.kind == EventKind::kMemberDown) {
        auto& seen = down_seen[e.node_id];
        seen.push_back(sim.now());
        if (e.decided_here) {
          ++decided_downs;
          if (!first_down.count(e.node_id)) first_down[e.node_id] = sim.now();
          if (minority.count(node) && !minority.count(index_of(e.node_id))) {
            ++minority_decisions_on_majority;
            std::cerr << "minority node " << node << " downed " << e.node_id << " at t0+" << sec(sim.now() - partition_t0)
                      << ": " << e.reason << "\n";
          }
        }
      }
      if (e.kind == EventKind::kSelfDowned) ++self_downed;
    };
  }

  static int index_of(const std::string& id) { return std::stoi(id.substr(1)); }

  std::vector<int> running() const {
    std::vector<int> out;
    for (int i = 0; i < sim.size(); ++i) {
      if (sim.running(i)) out.push_back(i);
    }
    return out;
  }

  // Every running, unpaused node lists every running node (current incarnation) as up.
  bool all_up() const {
    const std::vector<int> live = running();
    for (int i : live) {  // cheap necessary condition first
      if (!sim.paused(i) && sim.view(i).up_count() < live.size()) return false;
    }
    for (int i : live) {
      if (sim.paused(i)) continue;
      const auto& v = sim.view(i);
      for (int j : live) {
        const auto* e = v.find(sim.node_id(j));
        if (!e || e->state != MemberState::kUp || (!sim.paused(j) && e->incarnation != sim.incarnation(j))) {
          return false;
        }
      }
    }
    return true;
  }

  bool all_see_down(int victim, uint64_t incarnation) const {
    for (int i : running()) {
      if (i == victim || sim.paused(i)) continue;
      const auto* e = sim.view(i).find(sim.node_id(victim));
      if (e && e->incarnation == incarnation && ds::cluster::is_live(e->state)) return false;
    }
    return true;
  }

  std::string common_leader() const {
    std::string leader;
    for (int i : running()) {
      if (sim.paused(i)) continue;
      const auto l = sim.view(i).leader();
      if (!l) return "";
      if (leader.empty()) leader = *l;
      if (*l != leader) return "";
    }
    return leader;
  }

  bool wait(const std::function<bool()>& pred, Duration limit, const char* what) {
    if (sim.run_until(pred, limit)) return true;
    std::cerr << "ds-cluster-sim: " << what << " did not converge within " << sec(limit) << " s\n";
    failed = true;
    return false;
  }
};

Json scenario_join(Harness& h, int seeds, Duration join_window) {
  Simulation& sim = h.sim;
  sim.found(0);
  for (int s = 1; s < seeds; ++s) sim.join(s, {0});
  h.wait([&] { return h.all_up(); }, std::chrono::seconds(10), "seed join");
  sim.run_for(milliseconds(500));
  const TimePoint start = sim.now();
  std::vector<int> seed_list;
  for (int s = 0; s < seeds; ++s) seed_list.push_back(s);
  const int batches = 10;
  int next = seeds;
  for (int b = 0; b < batches; ++b) {
    const int until = seeds + (h.n - seeds) * (b + 1) / batches;
    for (; next < until; ++next) {
      std::vector<int> order = seed_list;
      std::shuffle(order.begin(), order.end(), h.rng);
      sim.join(next, order);
    }
    sim.run_for(join_window / batches);
  }
  const TimePoint last_join = sim.now() - join_window / batches;
  h.wait([&] { return h.all_up(); }, std::chrono::seconds(60), "bulk join");
  Json j{{"nodes", h.n},
         {"seeds", seeds},
         {"join_window_s", sec(join_window)},
         {"converged_after_first_join_s", sec(sim.now() - start)},
         {"converged_after_last_join_s", sec(sim.now() - last_join)}};
  sim.run_for(std::chrono::seconds(3));  // let rumours settle before the next scenario
  return j;
}

Json scenario_join_one(Harness& h) {
  Simulation& sim = h.sim;
  const int i = sim.add_node({{"w0", "m", 0, 0, 8, true}});
  const TimePoint start = sim.now();
  sim.join(i, {1, 2, 0});
  h.wait([&] { return h.all_up(); }, std::chrono::seconds(30), "single join");
  Json j{{"converged_s", sec(sim.now() - start)}};
  sim.run_for(std::chrono::seconds(2));
  return j;
}

Json scenario_steady(Harness& h, Duration length) {
  Simulation& sim = h.sim;
  sim.reset_stats();
  sim.run_for(length);
  const double node_s = static_cast<double>(h.running().size()) * sec(length);
  // How old each node's liveness evidence of each voter is (what the downing rule relies on).
  std::vector<double> ages;
  for (int i = 0; i < sim.size(); i += 7) {
    for (int j = 0; j < sim.size(); ++j) {
      if (i != j && sim.running(i) && sim.running(j)) {
        ages.push_back(sec(sim.now() - sim.view(i).last_known_alive(sim.node_id(j))));
      }
    }
  }
  Json kinds = Json::object();
  for (const auto& [k, v] : sim.stats().by_kind) kinds[k] = static_cast<double>(v) / node_s;
  return Json{{"seconds", sec(length)},
              {"messages_per_node_s", static_cast<double>(sim.stats().messages) / node_s},
              {"entries_per_node_s", static_cast<double>(sim.stats().entries) / node_s},
              {"bytes_per_node_s", static_cast<double>(sim.stats().bytes) / node_s},
              {"by_kind_per_node_s", kinds},
              {"evidence_age", summary(ages)}};
}

// Crash (or pause) `victim`, measure detection, then bring it back and wait until all are up.
void fault_once(Harness& h, int victim, bool pause, std::vector<double>* first, std::vector<double>* all,
                std::vector<double>* per_node, std::vector<double>* leader_change, std::vector<double>* recovery) {
  Simulation& sim = h.sim;
  const std::string id = sim.node_id(victim);
  const uint64_t inc = sim.incarnation(victim);
  const bool was_leader = h.common_leader() == id;
  h.first_down.erase(id);
  h.down_seen.erase(id);
  const TimePoint t0 = sim.now();
  if (pause) {
    sim.pause(victim);
  } else {
    sim.crash(victim);
  }
  if (h.wait([&] { return h.all_see_down(victim, inc); }, std::chrono::seconds(20), "down detection")) {
    all->push_back(sec(sim.now() - t0));
    if (h.first_down.count(id)) first->push_back(sec(h.first_down[id] - t0));
    for (TimePoint t : h.down_seen[id]) per_node->push_back(sec(t - t0));
  }
  if (was_leader) {
    h.wait([&] { const auto l = h.common_leader(); return !l.empty() && l != id; }, std::chrono::seconds(20),
           "leader re-election");
    leader_change->push_back(sec(sim.now() - t0));
  }
  sim.run_for(milliseconds(300));
  const TimePoint back = sim.now();
  if (pause) {
    sim.resume(victim);  // it learns it was declared down and rejoins as incarnation + 1
  } else {
    sim.restart(victim, {1, 2, 0});
  }
  if (h.wait([&] { return h.all_up(); }, std::chrono::seconds(30), "rejoin")) recovery->push_back(sec(sim.now() - back));
  sim.run_for(milliseconds(500));
}

Json scenario_faults(Harness& h, int count, bool pause) {
  std::vector<double> first, all, per_node, leader_change, recovery;
  for (int c = 0; c < count && !h.failed; ++c) {
    int victim;
    if (c == 0) {
      victim = Harness::index_of(h.common_leader());
    } else {
      do {
        victim = static_cast<int>(h.rng() % static_cast<uint64_t>(h.sim.size()));
      } while (victim < 3 || !h.sim.running(victim));
    }
    fault_once(h, victim, pause, &first, &all, &per_node, &leader_change, &recovery);
  }
  return Json{{"faults", count},
              {"first_monitor_down", summary(first)},
              {"all_nodes_down", summary(all)},
              {"per_node_down", summary(per_node)},
              {"leader_reelected", summary(leader_change)},
              {"rejoined_all_up", summary(recovery)}};
}

Json scenario_false_positives(Harness& h, const NetworkOptions& net, Duration length, double stall_fraction) {
  Simulation& sim = h.sim;
  sim.set_network(net);
  const uint64_t downs0 = h.decided_downs;
  const uint64_t self0 = h.self_downed;
  std::vector<std::pair<TimePoint, int>> stalled;
  std::uniform_int_distribution<int> stall_ms(300, 600);
  uint64_t stalls = 0;
  const TimePoint end = sim.now() + length;
  sim.reset_stats();
  while (sim.now() < end) {
    if (stall_fraction > 0) {
      const int k = std::max(1, static_cast<int>(stall_fraction * h.n));
      for (int s = 0; s < k; ++s) {
        const int i = static_cast<int>(h.rng() % static_cast<uint64_t>(sim.size()));
        if (!sim.running(i) || sim.paused(i)) continue;
        sim.pause(i);
        stalled.emplace_back(sim.now() + milliseconds(stall_ms(h.rng)), i);
        ++stalls;
      }
    }
    for (int step = 0; step < 10; ++step) {
      sim.run_for(milliseconds(100));
      for (auto it = stalled.begin(); it != stalled.end();) {
        if (it->first <= sim.now()) {
          sim.resume(it->second);
          it = stalled.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
  for (auto& [t, i] : stalled) sim.resume(i);
  const double node_hours = static_cast<double>(h.running().size()) * sec(length) / 3600.0;
  const uint64_t false_downs = h.decided_downs - downs0;
  const double node_s = static_cast<double>(h.running().size()) * sec(length);
  Json j{{"loss", net.loss},
         {"delay_ms", std::to_string(std::chrono::duration_cast<milliseconds>(net.delay_min).count()) + ".." +
                          std::to_string(std::chrono::duration_cast<milliseconds>(net.delay_max).count())},
         {"stalls_0.3_0.6_s", stalls},
         {"node_hours", node_hours},
         {"false_downs", false_downs},
         {"false_downs_per_node_hour", static_cast<double>(false_downs) / node_hours},
         {"self_downed_rejoins", h.self_downed - self0},
         {"messages_per_node_s", static_cast<double>(sim.stats().messages) / node_s}};
  h.wait([&] { return h.all_up(); }, std::chrono::seconds(30), "recovery after false-positive run");
  return j;
}

Json scenario_partition(Harness& h, double minority_fraction) {
  Simulation& sim = h.sim;
  std::vector<int> side(sim.size(), 0);
  std::vector<int> all = h.running();
  std::shuffle(all.begin(), all.end(), h.rng);
  const size_t m = static_cast<size_t>(minority_fraction * static_cast<double>(all.size()));
  h.minority.clear();
  for (size_t k = 0; k < m; ++k) {
    side[all[k]] = 1;
    h.minority.insert(all[k]);
  }
  h.minority_decisions_on_majority = 0;
  const TimePoint t0 = sim.now();
  h.partition_t0 = t0;
  sim.set_partition(side);
  uint64_t majority_lost_quorum_checks = 0;
  std::vector<char> done(sim.size(), 0);  // majority node i has every minority node down
  double minority_no_quorum_s = -1, majority_downed_all_s = -1;
  const TimePoint limit = t0 + std::chrono::seconds(20);
  while (sim.now() < limit && (minority_no_quorum_s < 0 || majority_downed_all_s < 0)) {
    sim.run_for(milliseconds(10));
    bool minority_out = true, majority_done = majority_downed_all_s < 0;
    for (int i : h.running()) {
      const auto& v = sim.view(i);
      if (h.minority.count(i)) {
        minority_out &= !v.has_quorum();
        continue;
      }
      if (!v.has_quorum()) ++majority_lost_quorum_checks;
      if (!majority_done || done[i]) continue;
      for (auto j = h.minority.begin(); majority_done && j != h.minority.end(); ++j) {
        const auto* e = v.find(sim.node_id(*j));
        majority_done = !(e && ds::cluster::is_live(e->state));  // stop at the first one still live
      }
      done[i] = majority_done;
    }
    if (minority_out && minority_no_quorum_s < 0) minority_no_quorum_s = sec(sim.now() - t0);
    if (majority_done && majority_downed_all_s < 0) majority_downed_all_s = sec(sim.now() - t0);
  }
  if (minority_no_quorum_s < 0 || majority_downed_all_s < 0) {
    std::cerr << "ds-cluster-sim: partition did not settle within 20 s\n";
    h.failed = true;
  }
  sim.run_for(std::chrono::seconds(2));
  const TimePoint healed = sim.now();
  sim.heal();
  h.minority.clear();
  h.wait([&] { return h.all_up(); }, std::chrono::seconds(60), "partition heal");
  return Json{{"minority_nodes", m},
              {"minority_all_without_quorum_s", minority_no_quorum_s},
              {"majority_marked_minority_down_s", majority_downed_all_s},
              {"majority_quorum_lost_observations", majority_lost_quorum_checks},
              {"downs_decided_by_minority_on_majority", h.minority_decisions_on_majority},
              {"healed_all_up_s", sec(sim.now() - healed)}};
}

bool parse_delay(const std::string& s, NetworkOptions* net) {
  const auto dots = s.find("..");
  try {
    const int lo = std::stoi(s.substr(0, dots));
    const int hi = dots == std::string::npos ? lo : std::stoi(s.substr(dots + 2));
    if (lo < 0 || hi < lo) return false;
    net->delay_min = milliseconds(lo);
    net->delay_max = milliseconds(hi);
    return true;
  } catch (...) {
    return false;
  }
}

void print_table(const Json& r) {
  auto line = [](const std::string& what, const std::string& value) {
    std::printf("  %-44s %s\n", what.c_str(), value.c_str());
  };
  auto num = [](double v, const char* unit = " s") {
    char b[64];
    std::snprintf(b, sizeof b, "%.3f%s", v, unit);
    return std::string(b);
  };
  auto dist = [&](const Json& d) {
    char b[128];
    std::snprintf(b, sizeof b, "p50 %.2f s  p99 %.2f s  max %.2f s  (n=%d)", d["p50_s"].get<double>(),
                  d["p99_s"].get<double>(), d["max_s"].get<double>(), d["n"].get<int>());
    return std::string(b);
  };
  std::printf("ds-cluster-sim: %d nodes, seed %llu, loss %.3f, delay %s ms, %.1f s wall\n", r["nodes"].get<int>(),
              static_cast<unsigned long long>(r["seed"].get<uint64_t>()), r["loss"].get<double>(),
              r["delay_ms"].get<std::string>().c_str(), r["wall_s"].get<double>());
  std::printf("options: %s\n", r["options"].dump().c_str());
  const Json& j = r["join"];
  std::printf("join\n");
  line("all list all up, after the first join", num(j["converged_after_first_join_s"]));
  line("all list all up, after the last join", num(j["converged_after_last_join_s"]));
  line("one more node: all list it up", num(r["join_one"]["converged_s"]));
  std::printf("steady state (idle, healthy)\n");
  line("messages per node per second", num(r["steady"]["messages_per_node_s"], ""));
  line("entries carried per node per second", num(r["steady"]["entries_per_node_s"], ""));
  line("bytes sent per node per second (approx.)", num(r["steady"]["bytes_per_node_s"], ""));
  line("age of liveness evidence (node, voter)", dist(r["steady"]["evidence_age"]));
  for (const char* f : {"crash", "pause"}) {
    const Json& c = r[f];
    std::printf("%s (SIG%s), %d faults\n", f, std::string(f) == "crash" ? "KILL" : "STOP", c["faults"].get<int>());
    line("first monitor declares it down", dist(c["first_monitor_down"]));
    line("every node has it down", dist(c["all_nodes_down"]));
    line("each node has it down (all samples)", dist(c["per_node_down"]));
    line("leader re-elected (leader as victim)", dist(c["leader_reelected"]));
    line("back: every node lists all up", dist(c["rejoined_all_up"]));
  }
  for (const Json& f : r["false_positives"]) {
    std::printf("false positives: loss %.3f, delay %s ms, %llu stalls\n", f["loss"].get<double>(),
                f["delay_ms"].get<std::string>().c_str(),
                static_cast<unsigned long long>(f["stalls_0.3_0.6_s"].get<uint64_t>()));
    line("false downs / node-hours", std::to_string(f["false_downs"].get<uint64_t>()) + " / " +
                                         num(f["node_hours"], " node-h"));
    line("false downs per node-hour", num(f["false_downs_per_node_hour"], ""));
    line("messages per node per second", num(f["messages_per_node_s"], ""));
  }
  const Json& p = r["partition"];
  std::printf("partition: %d nodes cut off\n", p["minority_nodes"].get<int>());
  line("every minority node reports no quorum", num(p["minority_all_without_quorum_s"]));
  line("majority has every minority node down", num(p["majority_marked_minority_down_s"]));
  line("majority quorum-lost observations", std::to_string(p["majority_quorum_lost_observations"].get<uint64_t>()));
  line("downs decided by the minority on the majority",
       std::to_string(p["downs_decided_by_minority_on_majority"].get<uint64_t>()));
  line("healed: every node lists all up", num(p["healed_all_up_s"]));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds-cluster-sim: the cluster membership and failure detector on a simulated network"};
  int nodes = 1000, seeds = 3, crashes = 6;
  uint64_t seed = 1;
  double loss = 0.01, steady_s = 10, fp_s = 20, minority = 0.4;
  std::string delay = "5..50";
  bool json = false;
  MembershipOptions o;
  int heartbeat_ms = 200, pause_ms = 1000;
  app.add_option("--nodes", nodes, "Simulated nodes")->check(CLI::Range(5, 100000));
  app.add_option("--seed", seed, "Random seed (same seed, same run)");
  app.add_option("--loss", loss, "Message loss probability")->check(CLI::Range(0.0, 0.5));
  app.add_option("--delay-ms", delay, "One-way delay range in ms, uniform: MIN..MAX");
  app.add_option("--seeds", seeds, "Seed nodes everyone joins through")->check(CLI::Range(1, 100));
  app.add_option("--faults", crashes, "Crashes and pauses to measure (each)")->check(CLI::Range(1, 1000));
  app.add_option("--steady-s", steady_s, "Simulated seconds of steady state to count messages");
  app.add_option("--fp-s", fp_s, "Simulated seconds per false-positive run");
  app.add_option("--minority", minority, "Fraction of nodes cut off by the partition")->check(CLI::Range(0.05, 0.49));
  app.add_option("--heartbeat-ms", heartbeat_ms, "Heartbeat interval")->check(CLI::Range(10, 10000));
  app.add_option("--threshold", o.detector.threshold, "Phi threshold");
  app.add_option("--pause-ms", pause_ms, "Acceptable heartbeat pause")->check(CLI::Range(0, 60000));
  app.add_option("--monitors", o.monitors_per_node, "Monitors per node (k)")->check(CLI::Range(1, 64));
  app.add_option("--fanout", o.gossip_fanout, "Gossip fan-out")->check(CLI::Range(1, 64));
  app.add_flag("--json", json, "Print the results as JSON instead of a table");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  NetworkOptions net;
  net.loss = loss;
  if (!parse_delay(delay, &net)) {
    std::cerr << "ds-cluster-sim: --delay-ms wants MIN..MAX in ms (e.g. 5..50), got '" << delay << "'\n";
    return 2;
  }
  o.heartbeat_interval = milliseconds(heartbeat_ms);
  o.detector.first_heartbeat_estimate = milliseconds(heartbeat_ms);
  o.detector.acceptable_heartbeat_pause = milliseconds(pause_ms);
  if (const ds::Status s = ds::cluster::validate(o); !s.ok()) {
    std::cerr << "ds-cluster-sim: " << s.message() << "\n";
    return 2;
  }
  seeds = std::min(seeds, nodes);

  const auto wall0 = std::chrono::steady_clock::now();
  Harness h(o, net, nodes, seed);
  Json r;
  r["nodes"] = nodes;
  r["seed"] = seed;
  r["loss"] = loss;
  r["delay_ms"] = delay;
  r["options"] = Json{{"heartbeat_ms", heartbeat_ms},
                      {"threshold", o.detector.threshold},
                      {"acceptable_pause_ms", pause_ms},
                      {"min_std_ms", std::chrono::duration_cast<milliseconds>(o.detector.min_std_deviation).count()},
                      {"monitors", o.monitors_per_node},
                      {"fanout", o.gossip_fanout},
                      {"gossip_ms", std::chrono::duration_cast<milliseconds>(o.gossip_interval).count()},
                      {"tick_ms", std::chrono::duration_cast<milliseconds>(o.tick_interval).count()}};
  auto timed = [&](const char* name, auto&& fn) {
    const auto t = std::chrono::steady_clock::now();
    r[name] = fn();
    r["wall_by_scenario_s"][name] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  timed("join", [&] { return scenario_join(h, seeds, std::chrono::seconds(1)); });
  if (!h.failed) timed("join_one", [&] { return scenario_join_one(h); });
  if (!h.failed) timed("steady", [&] { return scenario_steady(h, std::chrono::duration_cast<Duration>(std::chrono::duration<double>(steady_s))); });
  if (!h.failed) timed("crash", [&] { return scenario_faults(h, crashes, false); });
  if (!h.failed) timed("pause", [&] { return scenario_faults(h, crashes, true); });
  if (!h.failed) {
    timed("false_positives", [&] {
      const Duration len = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(fp_s));
      Json runs = Json::array();
      runs.push_back(scenario_false_positives(h, net, len, 0.0));
      NetworkOptions harsh{0.05, milliseconds(5), milliseconds(200)};
      runs.push_back(scenario_false_positives(h, harsh, len, 0.01));
      h.sim.set_network(net);
      return runs;
    });
  }
  if (!h.failed) timed("partition", [&] { return scenario_partition(h, minority); });
  r["wall_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  if (json || h.failed) {
    std::cout << r.dump(2) << "\n";
  } else {
    print_table(r);
  }
  return h.failed ? 1 : 0;
}
