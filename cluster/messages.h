// cluster/messages.h: what Membership sends and receives, and the events it reports.
//
// These are plain values; the membership actor turns each into a CAF message (one inspect per
// type) and sends it to `Outgoing::to_address`. Nothing here needs reliable or ordered delivery:
// every message may be lost, delayed or duplicated, and the protocol repairs it (gossip rounds,
// anti-entropy sync, join retries, heartbeats every interval).
//
//   joiner --JoinRequest--> seed --JoinReply(members | reason)--> joiner
//   any    --Gossip(changed entries, liveness vector)--> F random peers every round, and at once
//                                                         for membership news
//   A --SyncDigest(hash)--> B; only when hashes differ: B --SyncDigest(headers)--> A,
//   A --SyncEntries(A's newer entries, ids A wants)--> B, B --SyncEntries(wanted)--> A
//   monitor --Heartbeat--> monitored --HeartbeatAck--> monitor
//
// Thread-safety: plain values.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "cluster/member.h"

namespace ds::cluster {

// Who sent a message: also how to answer it (the receiver may not know the sender yet).
struct Sender {
  NodeId node_id;
  uint64_t incarnation = 0;
  std::string address;  // its cluster address
};

// Liveness evidence, compact. Index u (u >= 1; index 0 unused) is about the voter holding
// up_number u: `counter` is a stamp its owner bumps each time it sends gossip, `age_10ms` how
// long ago (units of 10 ms) the sender learned that stamp, summed over the relays' own clocks
// (no clock is compared across nodes; each hop adds hop_allowance for the transit it cannot
// measure). A receiver adopts a stamp only when its counter is newer than the one it holds, so
// a stamp that circulates among relays never looks fresher than it is. 4 bytes per voter.
struct LivenessStamp {
  uint16_t counter = 0;        // compared in serial-number arithmetic (RFC 1982)
  uint16_t age_10ms = 0xFFFF;  // kUnknownAge: no evidence
};
using LivenessVector = std::vector<LivenessStamp>;
constexpr uint16_t kUnknownAge = 0xFFFF;
constexpr std::chrono::milliseconds kLivenessUnit{10};

struct JoinRequest {
  std::string cluster_name;  // must equal the seed's
  MemberEntry joiner;        // state joining, its details hold its addresses
};

struct JoinReply {
  Sender from;
  std::string cluster_name;
  bool accepted = false;
  bool retriable = false;        // when refused: another seed, or later, may accept
  std::string reason;            // when refused: what is wrong and what to do
  uint64_t min_incarnation = 0;  // when refused for a stale incarnation: retry with at least this
  std::vector<MemberEntry> members;  // when accepted: the seed's whole view
  LivenessVector liveness;
};

struct Gossip {
  Sender from;
  std::string cluster_name;
  std::vector<MemberEntry> entries;  // changed entries (rumours); often none
  LivenessVector liveness;
};

struct SyncDigest {
  Sender from;
  std::string cluster_name;
  uint64_t hash = 0;                // XOR of membership_hash() over the sender's view
  bool full = false;                // true: headers holds the sender's whole view (an answer)
  std::vector<EntryHeader> headers;
};

struct SyncEntries {
  Sender from;
  std::string cluster_name;
  std::vector<MemberEntry> entries;  // entries the receiver lacks or holds older
  std::vector<NodeId> wanted;       // ids whose entries the sender wants back
};

struct Heartbeat {
  Sender from;
  uint64_t to_incarnation = 0;  // the incarnation the monitor believes it watches
  uint64_t seq = 0;
};

struct HeartbeatAck {
  Sender from;
  uint64_t seq = 0;
};

using ClusterMessage = std::variant<JoinRequest, JoinReply, Gossip, SyncDigest, SyncEntries, Heartbeat, HeartbeatAck>;

// "join-request", "gossip", ...: for logs and per-kind message counters.
const char* message_kind_name(const ClusterMessage& m);
// How many member entries (or headers) a message carries: a size measure for benchmarks.
size_t message_entry_count(const ClusterMessage& m);
// Roughly how many bytes the message takes on the wire (fields at their natural sizes, strings
// with a 4-byte length): for benchmarks, not a promise about the CAF encoding.
size_t approx_wire_bytes(const ClusterMessage& m);

struct Outgoing {
  NodeId to_node;           // empty when sending to a seed address not yet known as a member
  std::string to_address;   // host:port of the receiver's cluster port
  ClusterMessage message;
};

enum class EventKind {
  kJoined,          // this node was accepted by a seed (it is joining; the leader will move it up)
  kJoinRetry,       // a join attempt failed for now (reason); the next seed is tried
  kJoinRefused,     // this node's join was refused for good (reason): the owner exits with it
  kRefusedJoin,     // this node refused a join (node_id = the joiner, reason)
  kMemberJoining,   // a member (or a new incarnation of one) is joining
  kMemberUp,
  kMemberLeaving,
  kMemberDown,      // decided_here: this node's detector and quorum decided it
  kMemberRemoved,
  kMemberRestarted, // a new incarnation replaced a live old one: the old one's work is dead
  kUnreachable,     // some live member's failure detector finds it unreachable
  kReachable,       // ... no longer
  kLeaderChanged,   // node_id = the new leader (empty: none)
  kQuorumLost,      // reason says how many voters are reachable; stop admitting cluster work
  kQuorumRegained,
  kSelfDowned,      // the cluster declared this incarnation down: its work is dead; it rejoins
                    // as incarnation + 1 when auto_rejoin, else it must exit
  kSelfPaused,      // this process had no input for a while (SIGSTOP, overload): detectors reset
  kForeignCluster,  // a message from another cluster was dropped (reason names both)
  kSuperseded,      // a newer incarnation of this node id exists: this process must exit
};

const char* event_kind_name(EventKind k);

struct MemberEvent {
  EventKind kind;
  NodeId node_id;
  uint64_t incarnation = 0;
  std::string reason;         // empty for a state change learned from another member
  bool decided_here = false;  // this node made the decision (a down, a promotion, a removal)
};

// What one call into Membership produced. The owner logs the events (each carries its reason),
// then sends the messages; there is no ordering duty between them and nothing to persist.
struct Output {
  std::vector<Outgoing> messages;
  std::vector<MemberEvent> events;
};

}  // namespace ds::cluster
