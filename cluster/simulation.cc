#include "cluster/simulation.h"

#include <cassert>
#include <algorithm>
#include <cstdio>

namespace ds::cluster {

Simulation::Simulation(MembershipOptions options, NetworkOptions net, uint64_t seed)
    : options_(std::move(options)), net_(net), rng_(seed) {
  assert(validate(options_).ok());
  assert(net.loss >= 0 && net.loss < 1 && net.delay_min <= net.delay_max);
  options_.seed = seed;
}

int Simulation::add_node(std::vector<WorkerSummary> workers) {
  const int i = size();
  char id[16], address[32];
  std::snprintf(id, sizeof id, "n%04d", i);
  std::snprintf(address, sizeof address, "10.%d.%d.%d:4242", (i >> 16) & 255, (i >> 8) & 255, i & 255);
  Node n;
  n.id = id;
  n.address = address;
  n.workers = std::move(workers);
  nodes_.push_back(std::move(n));
  by_address_[nodes_.back().address] = i;
  return i;
}

void Simulation::start(int i) {
  Node& n = nodes_[i];
  assert(!n.membership);
  ++n.incarnation;
  ++n.epoch;
  n.paused = false;
  n.inbox.clear();
  MembershipOptions o = options_;
  o.seed = options_.seed * 1000003 + static_cast<uint64_t>(i) * 7919 + n.incarnation;
  n.membership = std::make_unique<Membership>(o, SelfInfo{n.id, n.incarnation, n.address, "", n.workers});
  std::uniform_int_distribution<int64_t> phase(0, options_.tick_interval.count() - 1);
  schedule_tick(i, Duration(phase(rng_)));
}

void Simulation::found(int i) {
  start(i);
  dispatch(i, nodes_[i].membership->found(now_));
}

void Simulation::join(int i, const std::vector<int>& seeds) {
  start(i);
  std::vector<std::string> addresses;
  for (int s : seeds) addresses.push_back(nodes_[s].address);
  dispatch(i, nodes_[i].membership->join(addresses, now_));
}

void Simulation::crash(int i) {
  Node& n = nodes_[i];
  if (n.membership) n.incarnation = std::max(n.incarnation, n.membership->self().incarnation);
  n.membership.reset();
  n.paused = false;
  for (int32_t m : n.inbox) free_.push_back(m);
  n.inbox.clear();
  ++n.epoch;
}

void Simulation::pause(int i) {
  if (running(i)) nodes_[i].paused = true;
}

void Simulation::resume(int i) {
  Node& n = nodes_[i];
  if (!n.membership || !n.paused) return;
  n.paused = false;
  std::vector<int32_t> inbox = std::move(n.inbox);
  n.inbox.clear();
  for (int32_t m : inbox) deliver(i, m);
  if (n.membership) {
    dispatch(i, n.membership->tick(now_));
    ++n.epoch;  // drop the tick chain that stopped; start a new one
    schedule_tick(i, options_.tick_interval);
  }
}

void Simulation::leave(int i) {
  if (!running(i)) return;
  dispatch(i, nodes_[i].membership->leave(now_));
  dispatch(i, nodes_[i].membership->shutdown(now_));
  crash(i);
}

void Simulation::set_partition(const std::vector<int>& side) {
  for (int i = 0; i < size(); ++i) nodes_[i].side = i < static_cast<int>(side.size()) ? side[i] : 0;
}

void Simulation::set_link(int a, int b, bool up) {
  const auto key = std::minmax(a, b);
  if (up) cut_links_.erase({key.first, key.second});
  else cut_links_.insert({key.first, key.second});
}

void Simulation::with_node(int i, const std::function<Output(Membership&, TimePoint)>& call) {
  assert(running(i));
  dispatch(i, call(*nodes_[i].membership, now_));
}

void Simulation::schedule_tick(int i, Duration after) {
  queue_.push(Event{now_ + after, seq_++, i, nodes_[i].epoch, -1});
}

int32_t Simulation::store(ClusterMessage m) {
  if (!free_.empty()) {
    const int32_t idx = free_.back();
    free_.pop_back();
    pool_[idx] = std::move(m);
    return idx;
  }
  pool_.push_back(std::move(m));
  return static_cast<int32_t>(pool_.size() - 1);
}

void Simulation::dispatch(int from, Output out) {
  if (on_event) {
    for (const MemberEvent& e : out.events) on_event(from, e);
  }
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int64_t> delay(net_.delay_min.count(), net_.delay_max.count());
  for (Outgoing& o : out.messages) {
    ++stats_.messages;
    stats_.entries += message_entry_count(o.message);
    stats_.bytes += approx_wire_bytes(o.message);
    ++stats_.by_kind[message_kind_name(o.message)];
    auto it = by_address_.find(o.to_address);
    const bool lost = net_.loss > 0 && unit(rng_) < net_.loss;
    const bool cut = it != by_address_.end() && !cut_links_.empty() &&
                     cut_links_.count({std::min(from, it->second), std::max(from, it->second)}) > 0;
    if (it == by_address_.end() || lost || cut || nodes_[it->second].side != nodes_[from].side) {
      ++stats_.dropped;
      continue;
    }
    queue_.push(Event{now_ + Duration(delay(rng_)), seq_++, it->second, 0, store(std::move(o.message))});
  }
}

void Simulation::deliver(int i, int32_t message) {
  Node& n = nodes_[i];
  if (!n.membership) {
    ++stats_.dropped;
    free_.push_back(message);
    return;
  }
  if (n.paused) {
    n.inbox.push_back(message);
    return;
  }
  Output out = n.membership->on_message(pool_[message], now_);
  free_.push_back(message);
  dispatch(i, std::move(out));
}

void Simulation::step(const Event& e) {
  now_ = e.at;
  if (e.message >= 0) {
    deliver(e.node, e.message);
    return;
  }
  Node& n = nodes_[e.node];
  if (e.epoch != n.epoch || !n.membership || n.paused) return;  // a dead, restarted or stopped process
  dispatch(e.node, n.membership->tick(now_));
  if (n.membership && n.epoch == e.epoch) schedule_tick(e.node, options_.tick_interval);
}

void Simulation::run_for(Duration d) {
  const TimePoint end = now_ + d;
  while (!queue_.empty() && queue_.top().at <= end) {
    const Event e = queue_.top();
    queue_.pop();
    step(e);
  }
  now_ = end;
}

bool Simulation::run_until(const std::function<bool()>& pred, Duration limit, Duration check_every) {
  const TimePoint end = now_ + limit;
  while (now_ < end) {
    if (pred()) return true;
    run_for(std::min<Duration>(check_every, end - now_));
  }
  return pred();
}

}  // namespace ds::cluster
