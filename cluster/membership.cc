#include "cluster/membership.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdio>
#include <utility>

namespace ds::cluster {

namespace {

double to_ms(Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string seconds_text(Duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", to_ms(d) / 1000.0);
  return buf;
}

std::string phi_text(double phi) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", phi);
  return buf;
}

bool positive(Duration d) { return d > Duration::zero(); }

EventKind state_event(MemberState s) {
  switch (s) {
    case MemberState::kJoining: return EventKind::kMemberJoining;
    case MemberState::kUp: return EventKind::kMemberUp;
    case MemberState::kLeaving: return EventKind::kMemberLeaving;
    case MemberState::kDown: return EventKind::kMemberDown;
    case MemberState::kRemoved: return EventKind::kMemberRemoved;
  }
  return EventKind::kMemberJoining;
}

}  // namespace

Status validate(const MembershipOptions& o) {
  DS_RETURN_IF_ERROR(validate(o.detector));
  if (o.cluster_name.empty()) return Status::InvalidArgument("cluster name must not be empty");
  const std::pair<const char*, Duration> durations[] = {
      {"tick_interval", o.tick_interval},       {"heartbeat_interval", o.heartbeat_interval},
      {"gossip_interval", o.gossip_interval},   {"load_publish_interval", o.load_publish_interval},
      {"sync_interval", o.sync_interval},       {"join_retry_interval", o.join_retry_interval},
      {"join_retry_max", o.join_retry_max},
      {"quorum_window", o.quorum_window},       {"self_pause_threshold", o.self_pause_threshold},
      {"decision_window", o.decision_window},
  };
  for (const auto& [name, d] : durations) {
    if (!positive(d)) return Status::InvalidArgument(std::string("membership ") + name + " must be > 0");
  }
  if (o.join_retry_max < o.join_retry_interval) {
    return Status::InvalidArgument("membership join_retry_max must be >= join_retry_interval");
  }
  if (o.monitors_per_node < 1) return Status::InvalidArgument("membership monitors_per_node must be >= 1");
  if (o.gossip_fanout < 1) return Status::InvalidArgument("membership gossip_fanout must be >= 1");
  if (!(o.rumor_rounds_factor > 0)) return Status::InvalidArgument("membership rumor_rounds_factor must be > 0");
  if (o.load_rumor_rounds < 0) return Status::InvalidArgument("membership load_rumor_rounds must be >= 0");
  if (o.down_after < Duration::zero() || o.evidence_slack < Duration::zero() || o.eager_push_gap < Duration::zero() ||
      o.remove_after < Duration::zero() || o.hop_allowance < Duration::zero() || o.pause_grace < Duration::zero()) {
    return Status::InvalidArgument(
        "membership down_after, evidence_slack, eager_push_gap, remove_after, hop_allowance, pause_grace must be >= 0");
  }
  if (o.quorum_window <= 4 * o.gossip_interval) {
    return Status::InvalidArgument("membership quorum_window (" + seconds_text(o.quorum_window) +
                                   ") must exceed four gossip intervals (" + seconds_text(o.gossip_interval) +
                                   " each), or healthy members look silent");
  }
  if (o.self_pause_threshold <= 2 * o.tick_interval) {
    return Status::InvalidArgument("membership self_pause_threshold must exceed two tick intervals");
  }
  return Status::Ok();
}

size_t Membership::RefHash::operator()(const NodeRef& r) const {
  return std::hash<std::string>()(r.node_id) ^ (r.incarnation * 0x9e3779b97f4a7c15ULL);
}

Membership::Membership(MembershipOptions options, SelfInfo self)
    : options_(std::move(options)), self_info_(std::move(self)), liveness_(options_.hop_allowance) {
  assert(validate(options_).ok());
  assert(!self_info_.node_id.empty() && self_info_.incarnation > 0);
  rng_.seed(options_.seed ^ node_hash(self_info_.node_id) ^ (self_info_.incarnation * 0x9e3779b97f4a7c15ULL));
  workers_ = self_info_.workers;
  bool created = false;
  Slot& s = slot_for(self_info_.node_id, &created);
  self_idx_ = lookup(self_info_.node_id);
  MemberEntry e;
  e.node_id = self_info_.node_id;
  e.incarnation = self_info_.incarnation;
  e.state = MemberState::kJoining;
  e.version = 1;
  e.details = std::make_shared<const MemberDetails>(
      MemberDetails{self_info_.cluster_address, self_info_.http_address, workers_, {}});
  s.entry = std::move(e);
  view_hash_ = entry_hash(s.entry);
  ring_.emplace(node_hash(s.entry.node_id), self_idx_);
  s.in_ring = true;
}

// ---- view -------------------------------------------------------------------------------------

uint32_t Membership::lookup(std::string_view id) const {
  return index_.find(id, [this](uint32_t slot) -> std::string_view { return slots_[slot].entry.node_id; });
}

Membership::Slot& Membership::slot_for(const NodeId& id, bool* created) {
  const uint32_t found = lookup(id);
  *created = found == NodeIndex::kNone;
  if (!*created) return slots_[found];
  index_.insert(id, static_cast<uint32_t>(slots_.size()));
  slots_.emplace_back();
  hot_.emplace_back();
  slots_.back().entry.node_id = id;
  slots_.back().entry.details = empty_details();
  return slots_.back();
}

Membership::Slot* Membership::find_slot(const NodeId& id) {
  const uint32_t i = lookup(id);
  return i == NodeIndex::kNone ? nullptr : &slots_[i];
}

const Membership::Slot* Membership::find_slot(const NodeId& id) const {
  const uint32_t i = lookup(id);
  return i == NodeIndex::kNone ? nullptr : &slots_[i];
}

const MemberEntry& Membership::self() const { return slots_[self_idx_].entry; }

const MemberEntry* Membership::find(const NodeId& id) const {
  const Slot* s = find_slot(id);
  return s && s->entry.incarnation != 0 ? &s->entry : nullptr;
}

void Membership::merge(const MemberEntry& e, Source src, TimePoint now) {
  if (e.node_id.empty() || e.incarnation == 0 || !e.details) return;  // malformed: ignore
  if (e.node_id == self_info_.node_id) {
    merge_self(e, now);
    return;
  }
  uint32_t idx = lookup(e.node_id);
  if (idx != NodeIndex::kNone && !supersedes(e, slots_[idx].entry)) return;
  if (idx == NodeIndex::kNone) {
    bool created = false;
    slot_for(e.node_id, &created);
    idx = static_cast<uint32_t>(slots_.size() - 1);
  }
  apply(idx, e, src, now);
}

void Membership::merge_self(const MemberEntry& e, TimePoint now) {
  const MemberEntry& mine = slots_[self_idx_].entry;
  if (e.incarnation < mine.incarnation || !supersedes(e, mine)) return;
  if (e.incarnation > mine.incarnation) {
    event(EventKind::kSuperseded, e.node_id, e.incarnation,
          "node id '" + e.node_id + "' is in use by a newer incarnation (" + std::to_string(e.incarnation) + " > " +
              std::to_string(mine.incarnation) + "): this process must stop");
    phase_ = Phase::kStopped;
    return;
  }
  if (!is_live(e.state)) {
    std::string reason = "the cluster declared this node " + std::string(member_state_name(e.state)) +
                         " (incarnation " + std::to_string(mine.incarnation) + "); its in-flight work is dead";
    if (options_.auto_rejoin && phase_ == Phase::kMember) {
      event(EventKind::kSelfDowned, mine.node_id, mine.incarnation,
            reason + "; rejoining as incarnation " + std::to_string(mine.incarnation + 1));
      rejoin(now);
    } else {
      event(EventKind::kSelfDowned, mine.node_id, mine.incarnation, reason + "; stopping");
      phase_ = Phase::kStopped;
    }
    return;
  }
  // An observer moved this node forward (the leader promoted it): adopt state and up number,
  // keep our own details, and republish so that our version wins from now on.
  MemberEntry next = mine;
  next.state = e.state;
  next.up_number = e.up_number;
  next.version = std::max(e.version, mine.version) + 1;
  apply(self_idx_, std::move(next), Source::kLocal, now);
}

void Membership::apply(uint32_t idx, MemberEntry e, Source src, TimePoint now, std::string_view reason,
                       bool force_news) {
  Slot& s = slots_[idx];
  const MemberEntry old = s.entry;  // copy: shared details, small strings
  s.before_verdict.reset();  // decide_downs() sets it again after its own apply
  const bool known = old.incarnation != 0;
  const bool new_incarnation = known && old.incarnation != e.incarnation;
  const bool was_live = known && is_live(old.state);
  const bool now_live = is_live(e.state);

  if (known) view_hash_ ^= entry_hash(old);
  view_hash_ ^= entry_hash(e);

  // Failure observations this member publishes (only a live member's count).
  const bool obs_changed = was_live != now_live ||
                           (old.details != e.details && old.info().unreachable != e.info().unreachable);
  std::vector<NodeId> touched;
  if (obs_changed) {
    if (was_live) add_observations(old, -1, &touched);
    if (now_live) add_observations(e, +1, &touched);
  }

  if (new_incarnation) s.evidence = TimePoint::min();
  if (is_voter(e.state) && !(known && !new_incarnation && is_voter(old.state)) && s.evidence == TimePoint::min()) {
    s.evidence = now;  // first seen as a voter (just promoted): alive until its stamps arrive
  }
  liveness_.ensure(e.up_number);

  // Ring, gossip targets, counters.
  if (was_live != now_live || new_incarnation) ring_dirty_ = true;
  if (now_live && !s.in_ring) {
    ring_.emplace(node_hash(e.node_id), idx);
    s.in_ring = true;
  } else if (!now_live && s.in_ring) {
    ring_.erase(std::make_pair(node_hash(e.node_id), idx));
    s.in_ring = false;
  }
  if (idx != self_idx_) {
    if (now_live && s.live_index == UINT32_MAX) {
      s.live_index = static_cast<uint32_t>(live_peers_.size());
      live_peers_.push_back(idx);
    } else if (!now_live && s.live_index != UINT32_MAX) {
      const uint32_t moved = live_peers_.back();
      live_peers_[s.live_index] = moved;
      slots_[moved].live_index = s.live_index;
      live_peers_.pop_back();
      s.live_index = UINT32_MAX;
    }
  }
  // The quorum line counts voters: recounted at the next tick, not at the next heartbeat
  // round (a status right after a promotion said "2 of 2" with 3 members up).
  if (!known || new_incarnation || is_voter(old.state) != is_voter(e.state)) voters_changed_ = true;
  if (known && old.state == MemberState::kUp) --up_count_;
  if (e.state == MemberState::kUp) ++up_count_;
  if (e.up_number < LivenessTable::kMaxUpNumber) max_up_number_ = std::max(max_up_number_, e.up_number);
  if (e.state == MemberState::kDown && (!known || old.state != MemberState::kDown || new_incarnation)) {
    s.down_since = now;
  }
  const bool state_news = !known || new_incarnation || old.state != e.state || old.up_number != e.up_number;
  if (state_news) leader_dirty_ = true;

  report_transition(known ? &old : nullptr, e, src, reason);
  s.entry = std::move(e);

  refresh_flag(idx);
  sync_hot(idx);
  for (const NodeId& id : touched) {
    const uint32_t i = lookup(id);
    if (i != NodeIndex::kNone) refresh_flag(i);
  }

  // Rumours: what changed here or came as a rumour is passed on; sync and join answers are not.
  if (src == Source::kLocal || src == Source::kRumor) {
    const bool news = state_news || obs_changed || force_news;
    const int rounds = news ? rumor_rounds_for_news() : options_.load_rumor_rounds;
    if (rounds > s.rumor_rounds) {
      if (s.rumor_rounds == 0) rumors_.push_back(idx);
      s.rumor_rounds = rounds;
    }
    if (news && positive(options_.eager_push_gap) && !s.urgent) {
      s.urgent = true;
      urgent_.push_back(idx);
    }
  }
}

void Membership::add_observations(const MemberEntry& observer, int delta, std::vector<NodeId>* touched) {
  for (const NodeRef& r : observer.info().unreachable) {
    if (r.node_id == observer.node_id) continue;
    auto it = observed_.find(r);
    if (it == observed_.end()) {
      if (delta <= 0) continue;
      it = observed_.emplace(r, 0).first;
    }
    it->second += delta;
    if (it->second <= 0) observed_.erase(it);
    touched->push_back(r.node_id);
  }
}

void Membership::refresh_flag(uint32_t idx) {
  Slot& s = slots_[idx];
  const bool live = is_live(s.entry.state);
  const bool flagged = idx != self_idx_ && live && observed_.count(s.entry.ref()) > 0;
  if (flagged == s.flagged) return;
  s.flagged = flagged;
  hot_[idx].flagged = flagged;
  if (!live) return;  // going down: the state event says it
  if (flagged) {
    event(EventKind::kUnreachable, s.entry.node_id, s.entry.incarnation, "a member's failure detector reports it");
  } else {
    event(EventKind::kReachable, s.entry.node_id, s.entry.incarnation, "no member reports it unreachable now");
  }
}

void Membership::report_transition(const MemberEntry* old, const MemberEntry& e, Source src, std::string_view reason) {
  if (old && old->incarnation != e.incarnation && is_live(old->state)) {
    event(EventKind::kMemberRestarted, e.node_id, old->incarnation,
          "incarnation " + std::to_string(old->incarnation) + " replaced by " + std::to_string(e.incarnation) +
              ": the old incarnation's work is dead");
  }
  if (old && old->incarnation == e.incarnation && old->state == e.state) return;
  if (src == Source::kJoin) return;  // the seed's whole view: kJoined reports it once
  const bool decided_here = src == Source::kLocal && e.node_id != self_info_.node_id;
  event(state_event(e.state), e.node_id, e.incarnation, std::string(reason), decided_here);
}

void Membership::note_direct(const Sender& from, TimePoint now) {
  Slot* s = find_slot(from.node_id);
  if (!s || s->entry.incarnation != from.incarnation) return;
  s->evidence = std::max(s->evidence, now);  // not relayed: only stamps travel (no laundering)
  hot_[s - slots_.data()].evidence = s->evidence;
}

void Membership::sync_hot(uint32_t idx) {
  const Slot& s = slots_[idx];
  hot_[idx] = Hot{s.evidence, s.entry.up_number, s.entry.state, s.flagged};
}

TimePoint Membership::evidence_of(const Slot& s) const {
  return std::max(s.evidence, liveness_.evidence(s.entry.up_number));
}

LivenessVector Membership::liveness_vector(TimePoint now) {
  return liveness_.make(now, max_up_number_, slots_[self_idx_].entry.up_number);
}

std::vector<MemberEntry> Membership::members() const {
  std::vector<MemberEntry> out;
  out.reserve(slots_.size());
  for (const Slot& s : slots_) {
    if (s.entry.incarnation != 0) out.push_back(s.entry);
  }
  std::sort(out.begin(), out.end(), [](const MemberEntry& a, const MemberEntry& b) { return a.node_id < b.node_id; });
  return out;
}

std::vector<MemberEntry> Membership::up_members() const {
  std::vector<MemberEntry> out = members();
  std::erase_if(out, [](const MemberEntry& e) { return e.state != MemberState::kUp; });
  return out;
}

std::optional<NodeId> Membership::leader() const {
  if (leader_dirty_) {
    const Slot* best = nullptr;
    for (const Slot& s : slots_) {
      if (s.entry.state != MemberState::kUp) continue;
      if (!best || std::tie(s.entry.up_number, s.entry.node_id) < std::tie(best->entry.up_number, best->entry.node_id)) {
        best = &s;
      }
    }
    leader_cache_ = best ? std::optional<NodeId>(best->entry.node_id) : std::nullopt;
    leader_dirty_ = false;
  }
  return leader_cache_;
}

bool Membership::is_leader() const {
  const auto l = leader();
  return l && *l == self_info_.node_id;
}

bool Membership::is_reachable(const NodeId& id) const {
  const Slot* s = find_slot(id);
  return s && s->entry.incarnation != 0 && is_live(s->entry.state) && !s->flagged;
}

TimePoint Membership::last_known_alive(const NodeId& id) const {
  const Slot* s = find_slot(id);
  return s && s != &slots_[self_idx_] ? evidence_of(*s) : TimePoint::min();
}

std::vector<NodeId> Membership::watched() const {
  std::vector<NodeId> out;
  for (const auto& [id, w] : watches_) out.push_back(id);
  return out;
}

// ---- own entry ----------------------------------------------------------------------------------

Sender Membership::sender() const {
  return {self_info_.node_id, slots_[self_idx_].entry.incarnation, self_info_.cluster_address};
}

void Membership::publish_self(TimePoint now, bool force_news) {
  MemberEntry next = slots_[self_idx_].entry;
  ++next.version;
  MemberDetails d{self_info_.cluster_address, self_info_.http_address, workers_, {}};
  for (const auto& [id, w] : watches_) {
    if (w.unavailable) d.unreachable.push_back({id, w.incarnation});
  }
  if (!(d == next.info())) next.details = std::make_shared<const MemberDetails>(std::move(d));
  if (workers_dirty_) last_load_publish_ = now;
  workers_dirty_ = false;
  apply(self_idx_, std::move(next), Source::kLocal, now, {}, force_news);
}

void Membership::set_self_state(MemberState state, TimePoint now, std::string_view reason) {
  MemberEntry next = slots_[self_idx_].entry;
  next.state = state;
  ++next.version;
  apply(self_idx_, std::move(next), Source::kLocal, now, reason);
}

void Membership::rejoin(TimePoint now) {
  MemberEntry next;
  next.node_id = self_info_.node_id;
  next.incarnation = slots_[self_idx_].entry.incarnation + 1;
  next.state = MemberState::kJoining;
  next.version = 1;
  next.details = std::make_shared<const MemberDetails>(
      MemberDetails{self_info_.cluster_address, self_info_.http_address, workers_, {}});
  self_info_.incarnation = next.incarnation;
  watches_.clear();
  ring_dirty_ = true;
  apply(self_idx_, std::move(next), Source::kLocal, now, "rejoining as a new incarnation");
  // The cluster declared this node down, and it did not know: the down verdicts it reached
  // since may be a zombie's (its silence was its own). The others dropped them (from_zombie);
  // withdraw them here too, or the new incarnation would spread them. A verdict the cluster
  // did share comes back by anti-entropy (its entry supersedes the one restored).
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (i == self_idx_ || !slots_[i].before_verdict) continue;
    MemberEntry before = std::move(*slots_[i].before_verdict);
    apply(i, std::move(before), Source::kSync, now,
          "down verdict withdrawn: this node learned it was itself declared down, so the verdict may be a zombie's");
  }
}

// ---- life cycle -----------------------------------------------------------------------------------

void Membership::start_timers(TimePoint now) {
  next_heartbeat_ = now;
  next_gossip_ = now + options_.gossip_interval;
  next_sync_ = now + options_.sync_interval;
  next_eager_ = now;
  ring_dirty_ = true;
}

Output Membership::found(TimePoint now) {
  assert(phase_ == Phase::kIdle);
  observe_clock(now);
  phase_ = Phase::kMember;
  MemberEntry next = slots_[self_idx_].entry;
  next.state = MemberState::kUp;
  next.up_number = max_up_number_ + 1;
  ++next.version;
  apply(self_idx_, std::move(next), Source::kLocal, now, "founded the cluster");
  event(EventKind::kJoined, self_info_.node_id, self_info_.incarnation,
        "founded cluster '" + options_.cluster_name + "' (no other seed to join)");
  start_timers(now);
  recount_quorum(now);
  return finish(now);
}

Output Membership::join(const std::vector<std::string>& seed_addresses, TimePoint now) {
  assert(phase_ == Phase::kIdle);
  seeds_.clear();
  for (const std::string& a : seed_addresses) {
    if (!a.empty() && a != self_info_.cluster_address) seeds_.push_back(a);
  }
  if (seeds_.empty()) return found(now);
  observe_clock(now);
  phase_ = Phase::kJoining;
  join_attempt_ = rng_() % seeds_.size();  // spread joiners over the seeds
  join_unanswered_ = 0;
  try_join(now);
  return finish(now);
}

void Membership::try_join(TimePoint now) {
  const std::string& seed = seeds_[join_attempt_ % seeds_.size()];
  ++join_attempt_;
  send({}, seed, JoinRequest{options_.cluster_name, slots_[self_idx_].entry});
  // Backoff while no seed answers at all (none reachable yet): double the interval after each
  // full pass over the seeds. A seed that answers (even "retry later") resets it.
  const size_t passes = join_unanswered_++ / seeds_.size();
  Duration interval = options_.join_retry_interval;
  for (size_t p = 0; p < passes && interval < options_.join_retry_max; ++p) interval *= 2;
  next_join_ = now + std::min(interval, options_.join_retry_max);
}

Output Membership::leave(TimePoint now) {
  observe_clock(now);
  const MemberState s = self().state;
  if (phase_ == Phase::kMember && (s == MemberState::kJoining || s == MemberState::kUp)) {
    set_self_state(MemberState::kLeaving, now, "leaving: draining its work");
  }
  return finish(now);
}

Output Membership::shutdown(TimePoint now) {
  observe_clock(now);
  if (phase_ != Phase::kMember) return finish(now);
  set_self_state(MemberState::kDown, now, "left the cluster");
  next_eager_ = now;  // tell peers now, whatever the gap
  Output out = finish(now);
  phase_ = Phase::kStopped;
  return out;
}

Result<Output> Membership::remove(const NodeId& id, TimePoint now) {
  observe_clock(now);
  const uint32_t idx = lookup(id);
  if (idx == NodeIndex::kNone || slots_[idx].entry.incarnation == 0) {
    return Status::NotFound("no member '" + id + "' in this node's view");
  }
  if (id == self_info_.node_id) {
    return Status::InvalidArgument("a node cannot remove itself; use leave, then shut it down");
  }
  const MemberEntry& cur = slots_[idx].entry;
  if (cur.state != MemberState::kRemoved) {
    MemberEntry next = cur;
    next.state = MemberState::kRemoved;
    ++next.version;
    next.details = std::make_shared<const MemberDetails>(
        MemberDetails{cur.info().cluster_address, cur.info().http_address, {}, {}});
    apply(idx, std::move(next), Source::kLocal, now, "removed by the operator");
  }
  return finish(now);
}

Output Membership::update_workers(std::vector<WorkerSummary> workers, TimePoint now) {
  observe_clock(now);
  bool structural = workers.size() != workers_.size();
  for (size_t i = 0; !structural && i < workers.size(); ++i) {
    const WorkerSummary &a = workers[i], &b = workers_[i];
    structural = a.worker_id != b.worker_id || a.model != b.model || a.healthy != b.healthy || a.capacity != b.capacity;
  }
  workers_ = std::move(workers);
  workers_dirty_ = true;
  if (phase_ == Phase::kMember && structural) publish_self(now, /*force_news=*/true);
  return finish(now);
}

// ---- messages -------------------------------------------------------------------------------------

Output Membership::on_message(const ClusterMessage& message, TimePoint now) {
  observe_clock(now);
  std::visit([&](const auto& m) { handle(m, now); }, message);
  return finish(now);
}

bool Membership::check_cluster(const std::string& name, const Sender& from) {
  if (name == options_.cluster_name) return true;
  if (foreign_reported_.emplace(from.node_id, true).second) {
    event(EventKind::kForeignCluster, from.node_id, from.incarnation,
          "dropped a message from node '" + from.node_id + "' (" + from.address + ") of cluster '" + name +
              "': this node belongs to cluster '" + options_.cluster_name + "'");
  }
  return false;
}

void Membership::handle(const JoinRequest& r, TimePoint now) {
  const MemberEntry& j = r.joiner;
  const std::string address = j.details ? j.info().cluster_address : std::string();
  const std::string me = "seed '" + self_info_.node_id + "' (" + self_info_.cluster_address + ")";
  auto refuse = [&](bool retriable, std::string reason, uint64_t min_incarnation = 0) {
    event(EventKind::kRefusedJoin, j.node_id, j.incarnation, reason);
    if (!address.empty()) {
      send(j.node_id, address,
           JoinReply{sender(), options_.cluster_name, false, retriable, std::move(reason), min_incarnation, {}, {}});
    }
  };
  if (j.node_id.empty() || j.incarnation == 0 || address.empty()) {
    return refuse(false, "malformed join request (a node id, an incarnation > 0 and a cluster address are required)");
  }
  if (r.cluster_name != options_.cluster_name) {
    return refuse(false, "cluster name mismatch: node '" + j.node_id + "' asked to join cluster '" + r.cluster_name +
                             "', but " + me + " belongs to cluster '" + options_.cluster_name + "'; start it with " +
                             "--cluster-name " + options_.cluster_name + ", or --join a seed of cluster '" +
                             r.cluster_name + "'");
  }
  if (phase_ != Phase::kMember) {
    return refuse(true, me + " is not a cluster member yet; try another seed");
  }
  if (j.node_id == self_info_.node_id) {
    return refuse(false, "node id '" + j.node_id + "' is already used by the live member at " +
                             self_info_.cluster_address + "; give every node a unique --node-id");
  }
  if (const Slot* s = find_slot(j.node_id); s && s->entry.incarnation != 0) {
    if (s->entry.incarnation > j.incarnation) {
      return refuse(false,
                    "stale incarnation: '" + j.node_id + "' is known with incarnation " +
                        std::to_string(s->entry.incarnation) + " > " + std::to_string(j.incarnation) +
                        "; a restarted node needs a higher incarnation",
                    s->entry.incarnation + 1);
    }
    if (s->entry.incarnation == j.incarnation && !is_live(s->entry.state)) {
      return refuse(false,
                    "incarnation " + std::to_string(j.incarnation) + " of '" + j.node_id + "' was declared " +
                        member_state_name(s->entry.state) + "; it must rejoin as a new incarnation",
                    j.incarnation + 1);
    }
  }
  const QuorumStatus q = majority_heard_since(now - options_.quorum_window, nullptr);
  if (!q.has_quorum) {
    return refuse(true, me + " cannot admit members: only " + std::to_string(q.reachable) + " of " +
                            std::to_string(q.voters) + " voting members reachable (minority partition?); try another seed");
  }
  MemberEntry joiner = j;
  joiner.state = MemberState::kJoining;
  joiner.up_number = 0;
  merge(joiner, Source::kRumor, now);
  if (Slot* s = find_slot(j.node_id); s && s->entry.incarnation == j.incarnation) {
    s->evidence = now;
    sync_hot(static_cast<uint32_t>(s - slots_.data()));
  }
  std::vector<uint32_t> all;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].entry.incarnation != 0) all.push_back(i);
  }
  send(j.node_id, address,
       JoinReply{sender(), options_.cluster_name, true, false, {}, 0, entries_of(all), liveness_vector(now)});
}

void Membership::handle(const JoinReply& m, TimePoint now) {
  if (phase_ != Phase::kJoining) {
    if (phase_ == Phase::kMember && m.accepted && m.cluster_name == options_.cluster_name) {
      for (const MemberEntry& e : m.members) merge(e, Source::kSync, now);
    }
    return;
  }
  join_unanswered_ = 0;  // a seed answered: retry at the base interval
  if (!m.accepted) {
    if (m.retriable) {
      event(EventKind::kJoinRetry, m.from.node_id, m.from.incarnation, m.reason);
    } else if (m.min_incarnation > self().incarnation && options_.auto_rejoin) {
      // Our incarnation was declared down (say, while a lost reply kept us waiting): go on as a
      // new one, as a restart would.
      event(EventKind::kJoinRetry, m.from.node_id, m.from.incarnation,
            m.reason + "; retrying as incarnation " + std::to_string(m.min_incarnation));
      MemberEntry next = self();
      next.incarnation = m.min_incarnation;
      next.version = 1;
      self_info_.incarnation = next.incarnation;
      apply(self_idx_, std::move(next), Source::kSync, now);
      next_join_ = now;
    } else {
      phase_ = Phase::kRefused;
      event(EventKind::kJoinRefused, m.from.node_id, m.from.incarnation, m.reason);
    }
    return;
  }
  phase_ = Phase::kMember;
  for (const MemberEntry& e : m.members) merge(e, Source::kJoin, now);
  liveness_.merge(m.liveness, now);
  note_direct(m.from, now);
  event(EventKind::kJoined, self_info_.node_id, self_info_.incarnation,
        "accepted by seed '" + m.from.node_id + "' (" + m.from.address + "); " + std::to_string(live_count()) +
            " live members known");
  start_timers(now);
  recount_quorum(now);
}

// A process declared down that has not learned it yet (it was stopped, cut off, or its links are
// still coming back) keeps gossiping its own view, with its own verdicts: it may have declared
// healthy members down, or mark them unreachable, from its silence. Those entries are not
// merged, nor its liveness evidence; it learns its fate from the anti-entropy answers it gets
// (SyncDigest and the entries it asks for are still answered) and rejoins as a new incarnation.
bool Membership::from_zombie(const Sender& from) const {
  const Slot* s = find_slot(from.node_id);
  if (s == nullptr || s->entry.incarnation == 0 || from.node_id == self_info_.node_id) return false;
  return from.incarnation < s->entry.incarnation || (from.incarnation == s->entry.incarnation && !is_live(s->entry.state));
}

void Membership::handle(const Gossip& g, TimePoint now) {
  if (!check_cluster(g.cluster_name, g.from) || phase_ != Phase::kMember || from_zombie(g.from)) return;
  for (const MemberEntry& e : g.entries) merge(e, Source::kRumor, now);
  liveness_.merge(g.liveness, now);
  note_direct(g.from, now);
}

void Membership::handle(const SyncDigest& d, TimePoint now) {
  if (!check_cluster(d.cluster_name, d.from) || phase_ != Phase::kMember) return;
  note_direct(d.from, now);
  if (!d.full) {
    if (d.hash == view_hash_) return;
    SyncDigest answer{sender(), options_.cluster_name, view_hash_, true, {}};
    answer.headers.reserve(slots_.size());
    for (const Slot& s : slots_) {
      if (s.entry.incarnation != 0) answer.headers.push_back(header_of(s.entry));
    }
    send(d.from.node_id, d.from.address, std::move(answer));
    return;
  }
  std::vector<char> seen(slots_.size(), 0);
  std::vector<uint32_t> give;
  std::vector<NodeId> want;
  for (const EntryHeader& h : d.headers) {
    const uint32_t i = lookup(h.node_id);
    if (i == NodeIndex::kNone || slots_[i].entry.incarnation == 0) {
      want.push_back(h.node_id);
      continue;
    }
    seen[i] = 1;
    const MemberEntry& mine = slots_[i].entry;
    if (!differs(mine, h)) continue;
    if (header_supersedes(h, mine)) {
      want.push_back(h.node_id);
    } else {
      give.push_back(i);
    }
  }
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (!seen[i] && slots_[i].entry.incarnation != 0) give.push_back(i);
  }
  if (give.empty() && want.empty()) return;
  send(d.from.node_id, d.from.address, SyncEntries{sender(), options_.cluster_name, entries_of(give), std::move(want)});
}

void Membership::handle(const SyncEntries& m, TimePoint now) {
  if (!check_cluster(m.cluster_name, m.from) || phase_ != Phase::kMember) return;
  if (!from_zombie(m.from)) {
    note_direct(m.from, now);
    for (const MemberEntry& e : m.entries) merge(e, Source::kSync, now);
  }
  if (m.wanted.empty()) return;
  std::vector<uint32_t> give;
  for (const NodeId& id : m.wanted) {
    const uint32_t i = lookup(id);
    if (i != NodeIndex::kNone && slots_[i].entry.incarnation != 0) give.push_back(i);
  }
  if (!give.empty()) send(m.from.node_id, m.from.address, SyncEntries{sender(), options_.cluster_name, entries_of(give), {}});
}

void Membership::handle(const Heartbeat& h, TimePoint now) {
  // A joiner answers too: a seed may have accepted it while the answer is still on its way.
  if ((phase_ != Phase::kMember && phase_ != Phase::kJoining) || h.to_incarnation > self().incarnation) return;
  send(h.from.node_id, h.from.address, HeartbeatAck{sender(), h.seq});
}

void Membership::handle(const HeartbeatAck& a, TimePoint now) {
  if (phase_ != Phase::kMember) return;
  auto it = watches_.find(a.from.node_id);
  if (it == watches_.end() || it->second.incarnation != a.from.incarnation) return;
  Watch& w = it->second;
  Slot& s = slots_[w.slot];  // direct evidence, without a lookup: this runs k times per interval
  if (s.entry.incarnation == a.from.incarnation) {
    s.evidence = std::max(s.evidence, now);
    hot_[w.slot].evidence = s.evidence;
  }
  if (now >= w.detector.last_heartbeat()) w.detector.heartbeat(now);
  w.answered = true;
  if (a.seq == w.last_ping_seq) liveness_.on_round_trip(now - w.last_ping_sent);
}

// ---- periodic work --------------------------------------------------------------------------------

Output Membership::tick(TimePoint now) {
  observe_clock(now);
  if (phase_ == Phase::kJoining && now >= next_join_) try_join(now);
  if (phase_ != Phase::kMember) return finish(now);

  refresh_watches(now);
  const bool heartbeat_round = now >= next_heartbeat_;
  if (heartbeat_round) {
    for (auto& [id, w] : watches_) {
      w.last_ping_seq = ++heartbeat_seq_;
      w.last_ping_sent = now;
      send(id, w.address, Heartbeat{sender(), w.incarnation, w.last_ping_seq});
    }
    next_heartbeat_ += options_.heartbeat_interval;
    if (next_heartbeat_ <= now) next_heartbeat_ = now + options_.heartbeat_interval;
  }
  evaluate_watches(now);
  decide_downs(now);
  refresh_watches(now);

  // O(N): at heartbeat rounds, and at the tick after who votes changed (a gossiped promotion
  // or verdict; the leader's own promotions are counted right after leader_duties below).
  if (heartbeat_round || voters_changed_) recount_quorum(now);
  // Reported for a joining member too: once accepted it admits work (the router reads
  // has_quorum), so a joiner cut off before it saw itself up must say why it refuses.
  if (quorum_.has_quorum != reported_quorum_) {
    reported_quorum_ = quorum_.has_quorum;
    // Back from a minority side (a partition healed): the majority has probably declared this
    // node down, and it has not heard yet; links come back one by one. No verdicts for a while.
    if (quorum_.has_quorum && phase_ == Phase::kMember) grace_until_ = std::max(grace_until_, now + options_.pause_grace);
    event(quorum_.has_quorum ? EventKind::kQuorumRegained : EventKind::kQuorumLost, self_info_.node_id,
          self().incarnation, quorum_.reason);
  }
  leader_duties(now);
  if (voters_changed_) recount_quorum(now);  // a status read before the next tick sees them
  if (const auto l = leader(); l != reported_leader_) {
    reported_leader_ = l;
    event(EventKind::kLeaderChanged, l.value_or(""), 0, l ? "the oldest up member" : "no member is up");
  }

  if (workers_dirty_ && now - last_load_publish_ >= options_.load_publish_interval) publish_self(now, false);
  if (now >= next_gossip_) {
    gossip_round(now);
    next_gossip_ += options_.gossip_interval;
    if (next_gossip_ <= now) next_gossip_ = now + options_.gossip_interval;
  }
  if (now >= next_sync_) {
    sync_round(now);
    next_sync_ += options_.sync_interval;
    if (next_sync_ <= now) next_sync_ = now + options_.sync_interval;
  }
  return finish(now);
}

void Membership::observe_clock(TimePoint now) {
  if (started_clock_ && phase_ == Phase::kMember && now - last_input_ > options_.self_pause_threshold) {
    for (auto& [id, w] : watches_) w.detector.reset(now);
    grace_until_ = now + options_.pause_grace;
    event(EventKind::kSelfPaused, self_info_.node_id, self().incarnation,
          "no input for " + seconds_text(now - last_input_) +
              " (process stopped or overloaded): failure detectors restarted, no verdicts for " +
              seconds_text(options_.pause_grace) + "; peers may have declared this node down");
  }
  if (!started_clock_ || now > last_input_) last_input_ = now;
  started_clock_ = true;
}

void Membership::refresh_watches(TimePoint now) {
  if (!ring_dirty_) return;
  ring_dirty_ = false;
  std::vector<std::pair<NodeId, uint32_t>> want;
  const Slot& me = slots_[self_idx_];
  if (phase_ == Phase::kMember && me.in_ring && ring_.size() > 1) {
    auto it = ring_.find(std::make_pair(node_hash(me.entry.node_id), self_idx_));
    assert(it != ring_.end());
    const size_t k = std::min<size_t>(static_cast<size_t>(options_.monitors_per_node), ring_.size() - 1);
    for (size_t i = 0; i < k; ++i) {
      if (it == ring_.begin()) it = ring_.end();
      --it;
      want.emplace_back(slots_[it->second].entry.node_id, it->second);
    }
  }
  bool observations_changed = false;
  for (auto it = watches_.begin(); it != watches_.end();) {
    const bool keep = std::any_of(want.begin(), want.end(), [&](const auto& w) {
      return w.first == it->first && slots_[w.second].entry.incarnation == it->second.incarnation;
    });
    if (keep) {
      ++it;
    } else {
      observations_changed |= it->second.unavailable;
      it = watches_.erase(it);
    }
  }
  for (const auto& [id, idx] : want) {
    if (watches_.count(id)) continue;
    const MemberEntry& e = slots_[idx].entry;
    Watch w{idx, e.incarnation, e.info().cluster_address, PhiAccrualDetector(options_.detector, now)};
    w.since = now;
    watches_.emplace(id, std::move(w));
  }
  if (observations_changed) publish_self(now, false);
}

void Membership::evaluate_watches(TimePoint now) {
  bool changed = false;
  // Right after a stall of this process its silence is its own, and its links may still be
  // coming back: no peer is found unavailable before the grace ends.
  const bool grace = now < grace_until_;
  for (auto& [id, w] : watches_) {
    // A member never heard from yet (it just joined or restarted, or this node just started to
    // watch it) gets pause_grace: the connections to a new process are still being set up
    // (a rolling restart saw a restarted node and a peer down each other 1.8 s after it came up).
    const bool new_watch = !w.answered && now - w.since < options_.pause_grace;
    const bool available = grace || new_watch || w.detector.is_available(now);
    if (!available && !w.unavailable) {
      w.unavailable = true;
      w.unavailable_since = now;
      changed = true;
    } else if (available && w.unavailable) {
      w.unavailable = false;
      changed = true;
    }
  }
  if (changed) publish_self(now, false);
}

void Membership::decide_downs(TimePoint now) {
  struct Decision {
    uint32_t idx;
    std::string reason;
  };
  std::vector<Decision> decisions;
  if (!quorum_.has_quorum) return;  // a minority downs no one; kQuorumLost says so
  if (now < grace_until_) return;    // just woke from a stall: maybe a zombie, links coming back
  for (const auto& [id, w] : watches_) {
    if (!w.unavailable || now - w.unavailable_since < options_.down_after) continue;
    const uint32_t idx = lookup(id);
    if (idx == NodeIndex::kNone) continue;
    const MemberEntry& e = slots_[idx].entry;
    if (e.incarnation != w.incarnation || !is_live(e.state)) continue;
    // Keep-majority: only a side that knows a majority alive *after* X went silent, and
    // recently, may down X. A side cut off from the majority at t0 holds no evidence of it newer
    // than t0; X's last answer came at most evidence_slack before t0 unless heartbeats were lost
    // several times in a row, and the detector fires more than decision_window after t0 unless X
    // had already been silent for a while. README.md, "Partitions", has the numbers.
    const TimePoint since =
        std::max(w.detector.last_heartbeat() + options_.evidence_slack, now - options_.decision_window);
    const QuorumStatus q = majority_heard_since(since, &id);
    if (!q.has_quorum) continue;
    decisions.push_back({idx, "no heartbeat answer for " + seconds_text(now - w.detector.last_heartbeat()) +
                                         " (phi " + phi_text(w.detector.phi(now)) + " >= " +
                                         phi_text(options_.detector.threshold) + "); " + std::to_string(q.reachable) +
                                         " of " + std::to_string(q.voters) + " voting members heard from since"});
  }
  for (Decision& d : decisions) {
    MemberEntry before = slots_[d.idx].entry;
    MemberEntry next = before;
    next.state = MemberState::kDown;
    ++next.version;
    apply(d.idx, std::move(next), Source::kLocal, now, d.reason);
    slots_[d.idx].before_verdict = std::move(before);
  }
}

void Membership::leader_duties(TimePoint now) {
  if (!quorum_.has_quorum || !is_leader()) return;
  std::vector<uint32_t> holder(max_up_number_ + 1, UINT32_MAX);  // up_number -> voter slot
  std::vector<uint32_t> renumber;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.entry.state == MemberState::kJoining && !s.flagged && i != self_idx_) {
      MemberEntry next = s.entry;
      next.state = MemberState::kUp;
      next.up_number = max_up_number_ + 1;
      ++next.version;
      apply(i, std::move(next), Source::kLocal, now, "moved to up by the leader");
    } else if (s.entry.state == MemberState::kDown && now - s.down_since >= options_.remove_after) {
      MemberEntry next = s.entry;
      next.state = MemberState::kRemoved;
      ++next.version;
      next.details = std::make_shared<const MemberDetails>(
          MemberDetails{s.entry.info().cluster_address, s.entry.info().http_address, {}, {}});
      apply(i, std::move(next), Source::kLocal, now,
            "removed by the leader after being down for " + seconds_text(now - s.down_since));
    } else if (is_voter(s.entry.state) && s.entry.up_number < holder.size()) {
      // Two leaders in a row may hand out one number twice; the liveness vector needs it unique.
      uint32_t& h = holder[s.entry.up_number];
      if (h == UINT32_MAX) {
        h = i;
      } else {
        const bool younger = slots_[h].entry.node_id < s.entry.node_id;
        renumber.push_back(younger ? i : h);
        if (!younger) h = i;
      }
    }
  }
  for (uint32_t i : renumber) {
    MemberEntry next = slots_[i].entry;
    next.up_number = max_up_number_ + 1;
    ++next.version;
    apply(i, std::move(next), Source::kLocal, now, "up number was shared; renumbered by the leader");
  }
}

void Membership::gossip_round(TimePoint now) {
  std::vector<uint32_t> batch;
  batch.reserve(rumors_.size());
  size_t keep = 0;
  for (uint32_t idx : rumors_) {
    Slot& s = slots_[idx];
    if (s.rumor_rounds <= 0) continue;
    batch.push_back(idx);
    if (--s.rumor_rounds > 0) rumors_[keep++] = idx;
  }
  rumors_.resize(keep);
  // Sent even with no rumour: the liveness vector must keep flowing.
  const std::vector<uint32_t> peers = pick_peers(options_.gossip_fanout);
  if (peers.empty()) return;
  const std::vector<MemberEntry> entries = entries_of(batch);
  const LivenessVector liveness = liveness_vector(now);
  for (uint32_t p : peers) {
    const MemberEntry& e = slots_[p].entry;
    send(e.node_id, e.info().cluster_address, Gossip{sender(), options_.cluster_name, entries, liveness});
  }
}

void Membership::eager_push(TimePoint now) {
  if (urgent_.empty() || now < next_eager_) return;
  for (uint32_t idx : urgent_) slots_[idx].urgent = false;
  const std::vector<MemberEntry> entries = entries_of(urgent_);
  urgent_.clear();
  next_eager_ = now + options_.eager_push_gap;
  const LivenessVector liveness = liveness_vector(now);
  for (uint32_t p : pick_peers(options_.gossip_fanout)) {
    const MemberEntry& e = slots_[p].entry;
    send(e.node_id, e.info().cluster_address, Gossip{sender(), options_.cluster_name, entries, liveness});
  }
}

void Membership::sync_round(TimePoint now) {
  const std::vector<uint32_t> peers = pick_peers(1);
  if (peers.empty()) return;
  const MemberEntry& p = slots_[peers[0]].entry;
  send(p.node_id, p.info().cluster_address, SyncDigest{sender(), options_.cluster_name, view_hash_, false, {}});
}

Output Membership::finish(TimePoint now) {
  if (phase_ == Phase::kMember) eager_push(now);
  return std::exchange(out_, {});
}

// ---- helpers -------------------------------------------------------------------------------------

int Membership::rumor_rounds_for_news() const {
  const double n = static_cast<double>(live_count()) + 1.0;
  const double rounds = options_.rumor_rounds_factor * std::log(n) / std::log(options_.gossip_fanout + 1.0);
  return std::max(1, static_cast<int>(std::ceil(rounds)));
}

std::vector<uint32_t> Membership::pick_peers(int n) {
  std::vector<uint32_t> out;
  const size_t m = live_peers_.size();
  if (m == 0 || n <= 0) return out;
  if (m <= static_cast<size_t>(n)) return live_peers_;
  // Prefer peers nobody reports unreachable; give up on that after a few draws.
  for (int tries = 0; static_cast<int>(out.size()) < n && tries < 8 * n; ++tries) {
    const uint32_t idx = live_peers_[rng_() % m];
    if (std::find(out.begin(), out.end(), idx) != out.end()) continue;
    if (slots_[idx].flagged && tries < 4 * n) continue;
    out.push_back(idx);
  }
  return out;
}

void Membership::recount_quorum(TimePoint now) {
  quorum_ = majority_heard_since(now - options_.quorum_window, nullptr);
  voters_changed_ = false;
}

QuorumStatus Membership::majority_heard_since(TimePoint since, const NodeId* exclude) const {
  QuorumStatus q;
  const Slot* oldest = nullptr;
  bool oldest_alive = false;
  const uint32_t excluded = exclude ? lookup(*exclude) : NodeIndex::kNone;
  for (uint32_t i = 0; i < hot_.size(); ++i) {
    const Hot& h = hot_[i];
    if (!is_voter(h.state)) continue;
    ++q.voters;
    const TimePoint ev = std::max(h.evidence, liveness_.evidence(h.up_number));
    const bool alive = i == self_idx_ || (!h.flagged && ev >= since && i != excluded);
    if (alive) ++q.reachable;
    if (!oldest || h.up_number < oldest->entry.up_number ||
        (h.up_number == oldest->entry.up_number && slots_[i].entry.node_id < oldest->entry.node_id)) {
      oldest = &slots_[i];
      oldest_alive = alive;
    }
  }
  const int majority = q.voters / 2 + 1;
  q.has_quorum = q.voters > 0 && (2 * q.reachable > q.voters || (2 * q.reachable == q.voters && oldest_alive));
  if (q.has_quorum) {
    q.reason = std::to_string(q.reachable) + " of " + std::to_string(q.voters) + " voting members reachable";
  } else if (q.voters == 0) {
    q.reason = "no voting member in this view (not joined yet)";
  } else {
    q.reason = "only " + std::to_string(q.reachable) + " of " + std::to_string(q.voters) +
               " voting members reachable (a majority is " + std::to_string(majority) +
               "): this node is on a minority side and must not admit work that needs the cluster";
  }
  return q;
}

void Membership::send(const NodeId& to, const std::string& address, ClusterMessage m) {
  out_.messages.push_back(Outgoing{to, address, std::move(m)});
}

std::vector<MemberEntry> Membership::entries_of(const std::vector<uint32_t>& idx) const {
  std::vector<MemberEntry> out;
  out.reserve(idx.size());
  for (uint32_t i : idx) out.push_back(slots_[i].entry);
  return out;
}

void Membership::event(EventKind k, const NodeId& id, uint64_t inc, std::string reason, bool decided_here) {
  out_.events.push_back(MemberEvent{k, id, inc, std::move(reason), decided_here});
}

}  // namespace ds::cluster
