// actors/client.h: ds::Client, the C++ client library (what C++ users embed).
//
// Connects to a node as a CAF remote actor and runs generation requests: streamed
// (a callback per chunk) or blocking (the whole result). The stream's sequence numbers
// are checked: a gap or duplicate is reported as an error, never hidden. Cancel a
// running request by setting the atomic flag passed to generate().
//
// Cluster: on Connect the client learns the member list from the node; when that node dies
// (or leaves, or is cut off from the majority), the next call connects to another live member
// and is sent there. A request whose node dies mid-stream ends with an IOError (re-attaching
// to a running request comes with the replicated journal).
//
// Thread-safety: one Client may be used from several threads at once (each call uses
// its own scoped actor).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/protocol.h"
#include "actors/tls.h"
#include "model/status.h"

namespace ds {

struct ClientOptions {
  TlsOptions tls;  // must match the nodes': all TLS (certificate signed by their CA) or none
  std::string host = "127.0.0.1";
  uint16_t port = 4242;
  std::vector<std::string> more_nodes;  // HOST:PORT of other members, tried in turn when host:port does not answer
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds idle_timeout{120000};  // longest silence in a stream before giving up
};

struct GenerateResult {
  std::string id;
  std::vector<int32_t> prompt_tokens;
  std::vector<int32_t> tokens;
  std::string text;
  std::string finish_reason;  // stop, length, cancelled, error
  std::string error;
  uint32_t chunks = 0;
  double ttft_ms = 0;
  double total_ms = 0;
};

// Error codes of Client calls, as Status codes: kIOError = cannot connect / connection
// lost; kInvalidArgument = rejected by the node (invalid request, draining, no worker);
// kInternal = a broken stream (sequence gap).
class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& opts);
  ~Client();

  // Sends req and streams its chunks to on_chunk (may be empty), which runs on the client's
  // stream thread (one for all requests of this Client; keep it short), never after this call
  // returns. Returns the final result; a request that ran and ended with finish_reason
  // "error" is still a result.
  Result<GenerateResult> generate(const GenerateRequest& req, const std::function<void(const TokenChunk&)>& on_chunk = {},
                                  const std::atomic<bool>* cancel = nullptr);
  // The node this client talks to.
  Result<NodeStatus> status();
  // Every member of the cluster, as the node this client talks to sees it.
  Result<ClusterStatus> cluster_status();
  // The membership view of the node this client talks to (also refreshes the member list).
  Result<MemberView> members();
  // ds-admin node drain ID: the member stops taking work, finishes it, leaves and exits.
  Status drain_node(const std::string& node_id);
  // ds-admin node remove ID: forget a member that is down (refused for a live one).
  Status remove_node(const std::string& node_id);
  // host:port of the node this client talks to now.
  std::string node_address() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Parses "host:port" (IPv6 as "[::1]:4242"); false when malformed.
bool parse_host_port(const std::string& s, std::string* host, uint16_t* port);
// Parses "HOST:PORT[,HOST:PORT...]" into opts: the first into host/port, the rest into
// more_nodes. False (opts unchanged) when any item is malformed.
bool parse_node_list(const std::string& s, ClientOptions* opts);

}  // namespace ds
