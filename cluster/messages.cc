#include "cluster/messages.h"

namespace ds::cluster {

namespace {
template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;
}  // namespace

const char* message_kind_name(const ClusterMessage& m) {
  return std::visit(Overloaded{
                        [](const JoinRequest&) { return "join-request"; },
                        [](const JoinReply&) { return "join-reply"; },
                        [](const Gossip&) { return "gossip"; },
                        [](const SyncDigest& d) { return d.full ? "sync-headers" : "sync-digest"; },
                        [](const SyncEntries&) { return "sync-entries"; },
                        [](const Heartbeat&) { return "heartbeat"; },
                        [](const HeartbeatAck&) { return "heartbeat-ack"; },
                    },
                    m);
}

size_t message_entry_count(const ClusterMessage& m) {
  return std::visit(Overloaded{
                        [](const JoinRequest&) -> size_t { return 1; },
                        [](const JoinReply& r) { return r.members.size(); },
                        [](const Gossip& g) { return g.entries.size(); },
                        [](const SyncDigest& d) { return d.headers.size(); },
                        [](const SyncEntries& s) { return s.entries.size() + s.wanted.size(); },
                        [](const Heartbeat&) -> size_t { return 0; },
                        [](const HeartbeatAck&) -> size_t { return 0; },
                    },
                    m);
}

namespace {

size_t text_bytes(const std::string& s) { return 4 + s.size(); }

size_t sender_bytes(const Sender& s) { return text_bytes(s.node_id) + 8 + text_bytes(s.address); }

size_t entry_bytes(const MemberEntry& e) {
  size_t n = text_bytes(e.node_id) + 8 + 1 + 8 + 8;
  const MemberDetails& d = e.info();
  n += text_bytes(d.cluster_address) + text_bytes(d.http_address) + 8;
  for (const WorkerSummary& w : d.workers) n += text_bytes(w.worker_id) + text_bytes(w.model) + 13;
  for (const NodeRef& r : d.unreachable) n += text_bytes(r.node_id) + 8;
  return n;
}

size_t entries_bytes(const std::vector<MemberEntry>& v) {
  size_t n = 4;
  for (const MemberEntry& e : v) n += entry_bytes(e);
  return n;
}

}  // namespace

size_t approx_wire_bytes(const ClusterMessage& m) {
  return std::visit(
      Overloaded{
          [](const JoinRequest& r) { return text_bytes(r.cluster_name) + entry_bytes(r.joiner); },
          [](const JoinReply& r) {
            return sender_bytes(r.from) + text_bytes(r.cluster_name) + 10 + text_bytes(r.reason) +
                   entries_bytes(r.members) + 4 + 4 * r.liveness.size();
          },
          [](const Gossip& g) {
            return sender_bytes(g.from) + text_bytes(g.cluster_name) + entries_bytes(g.entries) + 4 +
                   4 * g.liveness.size();
          },
          [](const SyncDigest& d) {
            size_t n = sender_bytes(d.from) + text_bytes(d.cluster_name) + 8 + 1 + 4;
            for (const EntryHeader& h : d.headers) n += text_bytes(h.node_id) + 25;
            return n;
          },
          [](const SyncEntries& s) {
            size_t n = sender_bytes(s.from) + text_bytes(s.cluster_name) + entries_bytes(s.entries) + 4;
            for (const NodeId& id : s.wanted) n += text_bytes(id);
            return n;
          },
          [](const Heartbeat& h) { return sender_bytes(h.from) + 16; },
          [](const HeartbeatAck& a) { return sender_bytes(a.from) + 8; },
      },
      m);
}

const char* event_kind_name(EventKind k) {
  switch (k) {
    case EventKind::kJoined: return "joined";
    case EventKind::kJoinRetry: return "join-retry";
    case EventKind::kJoinRefused: return "join-refused";
    case EventKind::kRefusedJoin: return "refused-join";
    case EventKind::kMemberJoining: return "member-joining";
    case EventKind::kMemberUp: return "member-up";
    case EventKind::kMemberLeaving: return "member-leaving";
    case EventKind::kMemberDown: return "member-down";
    case EventKind::kMemberRemoved: return "member-removed";
    case EventKind::kMemberRestarted: return "member-restarted";
    case EventKind::kUnreachable: return "unreachable";
    case EventKind::kReachable: return "reachable";
    case EventKind::kLeaderChanged: return "leader-changed";
    case EventKind::kQuorumLost: return "quorum-lost";
    case EventKind::kQuorumRegained: return "quorum-regained";
    case EventKind::kSelfDowned: return "self-downed";
    case EventKind::kSelfPaused: return "self-paused";
    case EventKind::kForeignCluster: return "foreign-cluster";
    case EventKind::kSuperseded: return "superseded";
  }
  return "unknown";
}

}  // namespace ds::cluster
