// cluster/member.h: one member's record as the cluster gossips it, and the order that merges it.
//
// Every node keeps one MemberEntry per node id it has heard of (tombstones included). Two copies
// of the same member's entry are merged by taking the one that `supersedes()` the other, a total
// order that every node computes the same way, so all views converge on the same record
// whatever the order in which copies arrive (the merge is commutative, associative, idempotent):
//
//   (incarnation, state rank, version, then the smaller up_number)
//
//   - incarnation: chosen by the process when it starts (ds-node: its start time in ms) and bumped
//     when it rejoins after being declared down. A higher one replaces the whole record: the old
//     incarnation is dead, and so is every piece of work it held.
//   - state rank: joining < up < leaving < down < removed. Within one incarnation a member only
//     moves forward; a member declared down stays down until it rejoins as a new incarnation.
//   - version: bumped by every change to the record, by its owner (publishing its load) or by an
//     observer (the leader moving it to up, a monitor declaring it down).
//
// Member life cycle (one incarnation):
//
//   join accepted      leader promotes        leave()           crash / leave done     leader, later
//   ------------> joining ----------> up ---------------> leaving -----> down ---------------> removed
//                    |                 \___________________________________^
//                    \_______________________________________________________/ (detector, quorum side)
//
// Thread-safety: plain values. MemberDetails is immutable once shared: entries share it through a
// shared_ptr<const>, so copying an entry between views never copies the worker list.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ds::cluster {

using NodeId = std::string;

enum class MemberState : uint8_t { kJoining = 0, kUp = 1, kLeaving = 2, kDown = 3, kRemoved = 4 };

// "joining", "up", "leaving", "down", "removed".
const char* member_state_name(MemberState s);
// A live member takes part in the protocol (monitored, gossiped to).
inline bool is_live(MemberState s) { return s <= MemberState::kLeaving; }
// A voter counts in the keep-majority quorum: up or leaving (joining members do not vote yet).
inline bool is_voter(MemberState s) { return s == MemberState::kUp || s == MemberState::kLeaving; }

// One worker of a node as the router sees it (gossiped; at most one publish interval old).
struct WorkerSummary {
  std::string worker_id;
  std::string model;      // the model it serves
  uint32_t queued = 0;    // requests waiting
  uint32_t in_flight = 0; // sequences running
  uint32_t capacity = 1;  // sequences it can run at once (max batch); >= 1
  bool healthy = true;    // false while its circuit breaker is open or it restarts

  // (queued + in_flight) / capacity: 0 idle, 1 full, > 1 queueing.
  double load() const;
  bool operator==(const WorkerSummary&) const = default;
};

// A member by incarnation: what a failure observation or a piece of work refers to.
struct NodeRef {
  NodeId node_id;
  uint64_t incarnation = 0;
  bool operator==(const NodeRef&) const = default;
};

// The part of an entry that only its owner writes (plus the leader stripping it at removal).
struct MemberDetails {
  std::string cluster_address;          // host:port of the cluster (actor) port
  std::string http_address;             // host:port of the HTTP gateway; empty = none
  std::vector<WorkerSummary> workers;   // its workers, models and load
  std::vector<NodeRef> unreachable;     // members this member's failure detector finds unreachable now
  bool operator==(const MemberDetails&) const = default;
};

struct MemberEntry {
  NodeId node_id;
  uint64_t incarnation = 0;
  MemberState state = MemberState::kJoining;
  uint64_t version = 0;    // bumped by every change, by the owner or an observer
  uint64_t up_number = 0;  // when the leader moved it to up (1 = the founder); 0 = never up.
                           // Also its index in the liveness vector gossip carries (messages.h).
  std::shared_ptr<const MemberDetails> details;  // never null (see empty_details())

  const MemberDetails& info() const { return *details; }
  NodeRef ref() const { return {node_id, incarnation}; }
};

// A shared empty MemberDetails, so that details is never null.
const std::shared_ptr<const MemberDetails>& empty_details();

// True when `a` must replace `b` in a view. REQUIRES: a.node_id == b.node_id.
bool supersedes(const MemberEntry& a, const MemberEntry& b);

// What anti-entropy (sync) compares: enough to tell which of two copies is newer.
struct EntryHeader {
  NodeId node_id;
  uint64_t incarnation = 0;
  MemberState state = MemberState::kJoining;
  uint64_t version = 0;
  uint64_t up_number = 0;
};
EntryHeader header_of(const MemberEntry& e);
// True when the copies differ (in incarnation, state, version or up_number).
bool differs(const MemberEntry& e, const EntryHeader& h);
// True when `h` must replace `e` (the supersedes() order on headers). REQUIRES: same node id.
bool header_supersedes(const EntryHeader& h, const MemberEntry& e);
// A 64-bit hash of the header fields; views XOR these into one digest, so two views with equal
// digests hold the same copies (up to hash collisions, which the next change repairs).
uint64_t entry_hash(const MemberEntry& e);
// FNV-1a of a node id: its position on the monitoring ring and part of membership_hash().
uint64_t node_hash(std::string_view node_id);

}  // namespace ds::cluster
