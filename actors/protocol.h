// actors/protocol.h: the messages between ds clients, routers, supervisors and workers.
//
// Plain structs with a CAF 0.17 `inspect` each (field order is the wire format; the
// registered type name is the wire identity and must match on every node). This
// header only needs <caf/meta/type_name.hpp>, so client code stays light.
//
// A request's stream: the router sends the client TokenChunk{id, seq = 0, 1, 2, ...}
// and then one FinalMessage. Sequence numbers have no gaps or duplicates, also across
// a worker restart (the request is resumed from prompt + tokens already sent).
#pragma once

#include <caf/actor.hpp>
#include <caf/meta/type_name.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace ds {

// A generation request as a client sends it. Either prompt (text, tokenized by the
// router) or prompt_tokens (ids, used as given) must be set.
struct GenerateRequest {
  std::string id;  // client-chosen; empty: the router assigns one
  std::string prompt;
  std::vector<int32_t> prompt_tokens;
  bool add_bos = true;
  int32_t max_tokens = 128;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repeat_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool stream = true;
  std::string trace_id;  // propagated into every log line about the request; empty: = id
  // Resume (ds::Client, when the node that ran the stream died): the tokens the client already
  // received and the number of chunks; the stream continues after them (chunk resume_seq next).
  std::vector<int32_t> resume_tokens;
  uint32_t resume_seq = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, GenerateRequest& x) {
  return f(caf::meta::type_name("ds_generate_request"), x.id, x.prompt, x.prompt_tokens, x.add_bos, x.max_tokens,
           x.temperature, x.top_k, x.top_p, x.min_p, x.repeat_penalty, x.frequency_penalty, x.presence_penalty, x.seed,
           x.stop, x.stream, x.trace_id, x.resume_tokens, x.resume_seq);
}

// One piece of a stream: generated token(s) and the text they completed.
struct TokenChunk {
  std::string id;
  uint32_t seq = 0;
  std::vector<int32_t> tokens;
  std::string text;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, TokenChunk& x) {
  return f(caf::meta::type_name("ds_token_chunk"), x.id, x.seq, x.tokens, x.text);
}

// The end of a stream. finish_reason: "stop", "length", "cancelled" or "error".
struct FinalMessage {
  std::string id;
  std::string finish_reason;
  std::string error;
  std::vector<int32_t> prompt_tokens;
  uint32_t completion_tokens = 0;
  uint32_t chunks = 0;  // chunks sent before this message (= the next seq)
  double ttft_ms = 0;
  double total_ms = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, FinalMessage& x) {
  return f(caf::meta::type_name("ds_final"), x.id, x.finish_reason, x.error, x.prompt_tokens, x.completion_tokens,
           x.chunks, x.ttft_ms, x.total_ms);
}

// Router -> worker: one sequence to run (resume when generated is not empty).
struct WorkItem {
  uint64_t seq_id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  GenerateRequest params;  // sampling fields; prompt text unused
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, WorkItem& x) {
  return f(caf::meta::type_name("ds_work_item"), x.seq_id, x.prompt, x.generated, x.params);
}

// Worker -> router: what one engine step produced for one sequence.
struct WorkerEvent {
  uint64_t seq_id = 0;
  int32_t index = -1;  // generated-token index, -1 for a finish without token
  int32_t token = -1;
  std::string text;
  std::string finish;  // "" while running
  std::string error;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, WorkerEvent& x) {
  return f(caf::meta::type_name("ds_worker_event"), x.seq_id, x.index, x.token, x.text, x.finish, x.error);
}

struct WorkerEvents {
  std::vector<WorkerEvent> events;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, WorkerEvents& x) {
  return f(caf::meta::type_name("ds_worker_events"), x.events);
}

struct WorkerStatus {
  std::string id;
  std::string backend;
  std::string state;  // "running", "restarting", "failed"
  int32_t active = 0;
  int32_t queued = 0;
  int32_t kv_blocks_used = 0;
  int32_t kv_blocks_total = 0;
  double tokens_per_s = 0;  // over the last 10 s
  int32_t restarts = 0;
  std::string kv_type;      // KV-cache elements: "f32" or "f16" ("" while no engine runs)
  int64_t kv_bytes = 0;     // KV-cache memory (tensor parallel: each rank's share)
  std::string cpu_kernels;  // CPU workers: the kernels' variant ("avx512vnni", ..., kernels/cpu/variants.h); "" on GPUs
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, WorkerStatus& x) {
  return f(caf::meta::type_name("ds_worker_status"), x.id, x.backend, x.state, x.active, x.queued, x.kv_blocks_used,
           x.kv_blocks_total, x.tokens_per_s, x.restarts, x.kv_type, x.kv_bytes,
           x.cpu_kernels);
}

struct NodeStatus {
  std::string node_id;
  std::string address;
  std::string state;  // membership state: "joining", "up", "leaving", "down", "removed"; "unreachable"
  double uptime_s = 0;
  std::string version;
  std::string model;
  int32_t in_flight = 0;
  int32_t members = 1;  // members in this node's view of the cluster (itself included)
  uint64_t incarnation = 0;
  bool leader = false;  // the oldest up member (set in cluster status)
  bool draining = false;  // refusing new requests (SIGTERM or ds-admin node drain)
  bool reachable = true;  // no live member's failure detector suspects it
  std::vector<WorkerStatus> workers;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, NodeStatus& x) {
  return f(caf::meta::type_name("ds_node_status"), x.node_id, x.address, x.state, x.uptime_s, x.version, x.model,
           x.in_flight, x.members, x.incarnation, x.leader, x.draining, x.reachable, x.workers);
}

// A cluster member as routers introduce themselves to each other.
struct NodeInfo {
  std::string node_id;
  std::string cluster_name;
  std::string address;
  uint64_t incarnation = 0;  // start time (ns): a restarted node is a new incarnation
  caf::actor router;
  caf::actor worker;  // null while the node has no healthy worker
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, NodeInfo& x) {
  return f(caf::meta::type_name("ds_node_info"), x.node_id, x.cluster_name, x.address, x.incarnation, x.router, x.worker);
}

struct ClusterStatus {
  std::string cluster_name;
  std::string reporter;       // the node that answered (its view)
  std::string leader;         // the oldest up member; empty when none
  bool has_quorum = true;     // the reporter sees a majority of the voting members
  std::string quorum;         // "3 of 5 voting members reachable", or why there is no quorum
  std::vector<NodeStatus> nodes;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, ClusterStatus& x) {
  return f(caf::meta::type_name("ds_cluster_status"), x.cluster_name, x.reporter, x.leader, x.has_quorum, x.quorum, x.nodes);
}

// One member as a node's membership view holds it (gossiped, converging on every node).
struct MemberInfo {
  std::string node_id;
  uint64_t incarnation = 0;
  std::string state;            // joining, up, leaving, down, removed
  std::string address;          // cluster (actor) port, host:port
  std::string http_address;     // empty: none
  bool reachable = true;        // no live member's detector suspects it
  double load = 0;              // gossiped: (queued + in flight) / capacity over its workers
  caf::actor router;            // its router, once this node has connected to it (else null)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, MemberInfo& x) {
  return f(caf::meta::type_name("ds_member_info"), x.node_id, x.incarnation, x.state, x.address, x.http_address,
           x.reachable, x.load, x.router);
}

// A node's membership view: the membership actor pushes it to the router on every change and
// once a second; clients ask a router for it to learn where else they can connect.
struct MemberView {
  std::string cluster_name;
  std::string self_id;
  uint64_t self_incarnation = 0;
  std::string self_state;
  std::string leader;
  bool has_quorum = true;
  std::string quorum;
  uint64_t self_downs = 0;  // how often this process was declared down (each: its work is dead)
  std::vector<MemberInfo> members;  // self included, sorted by node id
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, MemberView& x) {
  return f(caf::meta::type_name("ds_member_view"), x.cluster_name, x.self_id, x.self_incarnation, x.self_state, x.leader,
           x.has_quorum, x.quorum, x.self_downs, x.members);
}

}  // namespace ds
