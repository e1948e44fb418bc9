// cluster/membership.h: cluster membership as a pure state machine: join through seeds,
// gossip dissemination, failure detection, keep-majority quorum and the leader.
//
// One Membership per node, owned by the membership actor. Every input carries `now`; every
// call returns an Output (messages to send, events to log). No clock, socket, thread or global
// RNG inside: randomness comes from a generator seeded by MembershipOptions::seed, so a test or
// the simulator (cluster/simulation.h) replays any history exactly.
//
// How it works (cluster/README.md has the reasoning and the measured figures):
//  - View: one MemberEntry per node id, merged by supersedes() (member.h), so views converge.
//  - Dissemination of changes only: an entry changed here or learned from a rumour is pushed to
//    `gossip_fanout` random live peers each `gossip_interval`, for rumor_rounds_factor *
//    log_{F+1}(N) rounds (a load-only change: load_rumor_rounds). Membership news (state,
//    incarnation, reachability) is also pushed at once (at most once per eager_push_gap), so
//    it crosses the cluster in ~log_F(N) network hops. Anti-entropy: every sync_interval one
//    random peer compares a 64-bit digest of the view; only when digests differ do they swap
//    headers and then the differing entries. An idle cluster gossips no entries at all.
//  - Liveness: every gossip message carries a LivenessVector (messages.h): per voter, its
//    newest stamp and how long ago the sender learned it, aged over the relays' own clocks (no
//    clock sync). So every node knows when each voter was last alive ("evidence") for 4 bytes
//    per voter per message.
//  - Failure detection: members sit on a ring ordered by node_hash(); each node monitors its
//    `monitors_per_node` predecessors with Heartbeat/HeartbeatAck and a phi-accrual detector,
//    so each member is watched by k others and heartbeat traffic is O(k) per node. A verdict is
//    published in the observer's entry (details.unreachable).
//  - Downing (keep-majority): a monitor declares X down when X has been unavailable for
//    down_after AND a majority of the voters (up + leaving members, this node's view) is known
//    alive *after* X was last heard from (+ evidence_slack) and within the last
//    decision_window, ties going to the side holding the oldest voter. A minority side cannot
//    gather that evidence, so it never downs the majority, and reports has_quorum() == false:
//    the owner stops admitting cluster work.
//  - Leader: the up member with the smallest (up_number, node_id) (the oldest). With quorum, it
//    moves joining members to up and down members to removed after remove_after.
//  - Zombies: a node that resumes from a stall, or regains quorum, reaches no verdict for
//    pause_grace; entries from
//    an incarnation known down (or older than known) are not merged; a node that learns it was
//    declared down withdraws its own down verdicts before rejoining (README.md, "Zombies").
//  - Incarnations: a restarted node (same id, higher incarnation) replaces the old record
//    (kMemberRestarted: the old work is dead). A node that learns it was declared down rejoins
//    as incarnation + 1 (auto_rejoin) after telling its owner (kSelfDowned).
//
// Thread-safety: none; one owner calls it from one thread (an actor).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cluster/liveness.h"
#include "cluster/member.h"
#include "cluster/messages.h"
#include "cluster/node_index.h"
#include "cluster/phi_detector.h"
#include "model/status.h"

namespace ds::cluster {

using std::chrono::milliseconds;

struct MembershipOptions {
  std::string cluster_name = "ds";      // joins and gossip from another name are refused
  PhiDetectorOptions detector;          // first_heartbeat_estimate should be heartbeat_interval
  Duration tick_interval = milliseconds(50);       // how often the owner calls tick()
  Duration heartbeat_interval = milliseconds(200); // monitor -> monitored ping
  int monitors_per_node = 5;                       // k: each member is watched by k others
  Duration gossip_interval = milliseconds(200);    // one rumour round
  int gossip_fanout = 3;                           // F: peers per round and per eager push
  double rumor_rounds_factor = 1.0;                // membership news: factor * log_{F+1}(N + 1) rounds
  int load_rumor_rounds = 1;                       // a load-only change: rounds each relay forwards it
  Duration load_publish_interval = milliseconds(1000);  // min gap between load-only publishes
  Duration eager_push_gap = milliseconds(20);      // min gap between immediate pushes of news; 0 = off
  Duration hop_allowance = milliseconds(5);        // min transit added per hop to relayed liveness ages
                                                   // (it grows to the measured one-way delay bound)
  Duration sync_interval = milliseconds(1000);     // anti-entropy with one random peer
  Duration join_retry_interval = milliseconds(1000);
  Duration join_retry_max = milliseconds(8000);    // backoff: the interval doubles after each pass
                                                   // over all seeds that none answered, up to this
  Duration down_after = milliseconds(0);           // extra wait after the detector gives up
  Duration evidence_slack = milliseconds(800);     // see "Downing" above (README: why 0.8 s)
  Duration decision_window = milliseconds(1200);   // downing: the majority must also be heard within this
  Duration quorum_window = milliseconds(3000);     // has_quorum(): voters heard within this window
  Duration remove_after = milliseconds(30000);     // leader: down -> removed
  Duration self_pause_threshold = milliseconds(700);  // no input for this long = this process stalled
  Duration pause_grace = milliseconds(5000);       // after such a stall, or on regaining quorum: no
                                                   // verdicts (unreachable, down) for this long. The process
                                                   // may be a zombie (declared down meanwhile, not told yet)
                                                   // whose links come back one by one as connections are
                                                   // redialled
  bool auto_rejoin = true;                         // rejoin as a new incarnation when declared down
  uint64_t seed = 1;                               // the RNG (gossip targets, seed order)
};

// OK, or InvalidArgument naming the bad field and its constraint.
Status validate(const MembershipOptions& o);

// Who this node is. The incarnation must grow across restarts of one node id (ds-node: start
// time in ms), so that a restarted node replaces its old record.
struct SelfInfo {
  NodeId node_id;
  uint64_t incarnation = 1;
  std::string cluster_address;
  std::string http_address;
  std::vector<WorkerSummary> workers;
};

struct QuorumStatus {
  bool has_quorum = false;
  int voters = 0;      // up + leaving members in this view
  int reachable = 0;   // voters heard within quorum_window and not reported unreachable (self included)
  std::string reason;  // "3 of 5 voting members reachable", or why there is no quorum
};

enum class Phase {
  kIdle,      // constructed; call found() or join()
  kJoining,   // asking seeds
  kMember,    // in the cluster (its own state may be joining, up, leaving)
  kRefused,   // join refused for good (kJoinRefused carried the reason)
  kStopped,   // left, superseded, or declared down without auto_rejoin
};

class Membership {
 public:
  // REQUIRES: validate(options).ok(), !self.node_id.empty()
  Membership(MembershipOptions options, SelfInfo self);

  // ---- life cycle -------------------------------------------------------------------------
  // Found a new cluster: this node is up, the leader, up_number 1. REQUIRES: phase() == kIdle.
  Output found(TimePoint now);
  // Join through the seeds (cluster addresses), trying them in turn every join_retry_interval
  // (doubling after each pass over all seeds that none answered, up to join_retry_max) until
  // one accepts or one refuses for good (kJoinRefused). This node's own address is
  // skipped; with no other seed left it founds the cluster. REQUIRES: phase() == kIdle.
  Output join(const std::vector<std::string>& seed_addresses, TimePoint now);
  // Start leaving: this node's state becomes leaving (routers stop sending it work; it still
  // votes). Call shutdown() when drained. No-op unless a member.
  Output leave(TimePoint now);
  // Announce this node down (a clean exit) and stop. Its monitors would find out anyway.
  Output shutdown(TimePoint now);
  // Operator removal of another member (ds-admin): it becomes removed at once, whatever its
  // state. Use it for a member that will not come back. NotFound for an unknown id,
  // InvalidArgument for this node itself.
  Result<Output> remove(const NodeId& id, TimePoint now);

  // ---- inputs -------------------------------------------------------------------------------
  // This node's workers changed. A load-only change is published at most once per
  // load_publish_interval; a change of the worker set, a model or health at once.
  Output update_workers(std::vector<WorkerSummary> workers, TimePoint now);
  Output on_message(const ClusterMessage& message, TimePoint now);
  // Call every tick_interval: heartbeats, detector verdicts, downing, leader duties, gossip.
  Output tick(TimePoint now);

  // ---- queries (as of the last input) ------------------------------------------------------
  Phase phase() const { return phase_; }
  const MemberEntry& self() const;
  const MemberEntry* find(const NodeId& id) const;
  // Every member this view holds, tombstones included, sorted by node id.
  std::vector<MemberEntry> members() const;
  std::vector<MemberEntry> up_members() const;
  size_t up_count() const { return up_count_; }
  size_t live_count() const { return live_peers_.size() + (is_live(self().state) ? 1 : 0); }
  // The oldest up member, or nullopt when none is up (this node still joining).
  std::optional<NodeId> leader() const;
  bool is_leader() const;
  // As evaluated at the last tick.
  const QuorumStatus& quorum() const { return quorum_; }
  bool has_quorum() const { return quorum_.has_quorum; }
  // Live, and no live member reports it unreachable (this node itself: always).
  bool is_reachable(const NodeId& id) const;
  // The transit time added to each relayed liveness age (liveness.h).
  Duration hop_allowance() const { return liveness_.hop_allowance(); }
  // When this node last knew `id` alive (a direct message or a relayed liveness age); min() when
  // never. For this node itself: min() (it is always alive to itself).
  TimePoint last_known_alive(const NodeId& id) const;
  // The members this node monitors (its ring predecessors), sorted.
  std::vector<NodeId> watched() const;
  // The membership digest (XOR of membership_hash over the view): equal views, equal digests.
  uint64_t view_hash() const { return view_hash_; }
  const MembershipOptions& options() const { return options_; }

 private:
  enum class Source { kLocal, kRumor, kSync, kJoin };

  struct Slot {
    MemberEntry entry;
    TimePoint evidence = TimePoint::min();  // last direct message from this incarnation
    TimePoint down_since{};         // when this view learned it is down
    int rumor_rounds = 0;           // gossip rounds left for this entry
    bool flagged = false;           // a live member reports it unreachable
    bool urgent = false;            // queued for the next eager push
    bool in_ring = false;
    uint32_t live_index = UINT32_MAX;  // position in live_peers_
    // The entry before this node declared the member down, until any other change to it: if
    // this node learns it was itself declared down, the verdict may be a zombie's and is
    // withdrawn (rejoin()); a sound one comes back from the others by anti-entropy.
    std::optional<MemberEntry> before_verdict;
  };

  // What the O(N) quorum scan reads, packed (a copy of Slot fields, kept by sync_hot()).
  struct Hot {
    TimePoint evidence = TimePoint::min();
    uint64_t up_number = 0;
    MemberState state = MemberState::kJoining;
    bool flagged = false;
  };

  struct Watch {  // a monitored predecessor
    uint32_t slot;
    uint64_t incarnation;
    std::string address;
    PhiAccrualDetector detector;
    bool unavailable = false;
    TimePoint unavailable_since{};
    uint64_t last_ping_seq = 0;
    TimePoint last_ping_sent{};
    TimePoint since{};     // watched since (a new member, or a new monitor of it)
    bool answered = false;  // any heartbeat answer yet: until then, pause_grace before a verdict
  };

  struct RefHash {
    size_t operator()(const NodeRef& r) const;
  };

  // view
  uint32_t lookup(std::string_view id) const;      // slot or NodeIndex::kNone
  Slot& slot_for(const NodeId& id, bool* created);
  Slot* find_slot(const NodeId& id);
  const Slot* find_slot(const NodeId& id) const;
  void merge(const MemberEntry& e, Source src, TimePoint now);
  void merge_self(const MemberEntry& e, TimePoint now);
  // Installs `e` in slot idx: digest, observations, ring, counters, events, rumours.
  // `reason` goes into the state event; force_news spreads it like a membership change.
  void apply(uint32_t idx, MemberEntry e, Source src, TimePoint now, std::string_view reason = {},
             bool force_news = false);
  TimePoint evidence_of(const Slot& s) const;   // direct or by liveness stamps
  LivenessVector liveness_vector(TimePoint now);  // bumps this node's own stamp
  void add_observations(const MemberEntry& observer, int delta, std::vector<NodeId>* touched);
  void refresh_flag(uint32_t idx);
  void sync_hot(uint32_t idx);
  void note_direct(const Sender& from, TimePoint now);
  void report_transition(const MemberEntry* old, const MemberEntry& e, Source src, std::string_view reason);

  // own entry
  void publish_self(TimePoint now, bool force_news);
  void set_self_state(MemberState s, TimePoint now, std::string_view reason);
  void start_timers(TimePoint now);
  void rejoin(TimePoint now);
  Sender sender() const;

  // protocol steps
  void handle(const JoinRequest& m, TimePoint now);
  void handle(const JoinReply& m, TimePoint now);
  void handle(const Gossip& m, TimePoint now);
  void handle(const SyncDigest& m, TimePoint now);
  void handle(const SyncEntries& m, TimePoint now);
  void handle(const Heartbeat& m, TimePoint now);
  void handle(const HeartbeatAck& m, TimePoint now);
  bool check_cluster(const std::string& name, const Sender& from);
  // A zombie: an incarnation this view has as down or removed, or one older than it knows.
  bool from_zombie(const Sender& from) const;
  void try_join(TimePoint now);
  void refresh_watches(TimePoint now);
  void evaluate_watches(TimePoint now);
  void decide_downs(TimePoint now);
  void leader_duties(TimePoint now);
  void gossip_round(TimePoint now);
  void eager_push(TimePoint now);
  void sync_round(TimePoint now);
  void observe_clock(TimePoint now);
  Output finish(TimePoint now);

  // decisions
  int rumor_rounds_for_news() const;
  std::vector<uint32_t> pick_peers(int n);
  // Voters alive (self, or heard at or after `since` and not flagged), counted with the tie-break.
  QuorumStatus majority_heard_since(TimePoint since, const NodeId* exclude) const;
  void recount_quorum(TimePoint now);  // quorum_ from the voters heard within quorum_window
  void send(const NodeId& to, const std::string& address, ClusterMessage m);
  std::vector<MemberEntry> entries_of(const std::vector<uint32_t>& idx) const;
  void event(EventKind k, const NodeId& id, uint64_t inc, std::string reason, bool decided_here = false);

  MembershipOptions options_;
  SelfInfo self_info_;
  std::mt19937_64 rng_;
  Phase phase_ = Phase::kIdle;

  std::vector<Slot> slots_;                        // never shrinks: tombstones stay
  std::vector<Hot> hot_;                           // parallel to slots_
  NodeIndex index_;                                // node id -> slots_ index
  uint32_t self_idx_ = 0;
  std::unordered_map<NodeRef, int, RefHash> observed_;  // (subject) -> live observers reporting it
  LivenessTable liveness_;                         // evidence by up_number, from gossip
  std::vector<uint32_t> live_peers_;               // live members other than self (gossip targets)
  std::set<std::pair<uint64_t, uint32_t>> ring_;   // live members by (node_hash(id), slot)
  std::map<NodeId, Watch> watches_;
  std::vector<uint32_t> rumors_;                   // slots with rumor_rounds > 0
  std::vector<uint32_t> urgent_;                   // slots waiting for an eager push
  uint64_t view_hash_ = 0;
  uint64_t max_up_number_ = 0;
  size_t up_count_ = 0;
  bool ring_dirty_ = true;
  mutable bool leader_dirty_ = true;
  mutable std::optional<NodeId> leader_cache_;

  std::vector<std::string> seeds_;
  size_t join_attempt_ = 0;
  size_t join_unanswered_ = 0;  // join requests sent since a seed last answered
  uint64_t heartbeat_seq_ = 0;
  TimePoint next_join_{}, next_heartbeat_{}, next_gossip_{}, next_sync_{}, next_eager_{};
  TimePoint last_load_publish_ = TimePoint::min();
  TimePoint last_input_{};
  bool started_clock_ = false;
  TimePoint grace_until_{};  // pause_grace after a stall: no verdicts before this
  bool workers_dirty_ = false;
  std::vector<WorkerSummary> workers_;

  QuorumStatus quorum_;
  bool voters_changed_ = false;  // apply() changed who votes: tick() recounts quorum_
  bool reported_quorum_ = true;
  std::optional<NodeId> reported_leader_;
  std::map<NodeId, bool> foreign_reported_;        // senders from another cluster already logged
  Output out_;
};

}  // namespace ds::cluster
