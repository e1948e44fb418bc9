// actors/router.h: the node's front door (published on the cluster port).
//
// Clients send (gen_atom, GenerateRequest) and get the request id back at once (or a
// ds error: invalid_request naming the field, no_worker, draining); the stream then
// arrives as TokenChunk messages and one FinalMessage. The router validates and
// tokenizes (CPU work stays out of the worker), keeps every in-flight request (prompt,
// tokens already streamed, client), forwards worker events with gap-free sequence
// numbers, cancels the sequences of clients that die, and resubmits in-flight work
// (prompt + tokens already sent) when the supervisor hands it a restarted worker.
// Also: (cancel_atom, id), (status_atom) -> NodeStatus, (drain_atom) -> replies when
// nothing is in flight any more (new requests are refused meanwhile).
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <chrono>
#include <memory>
#include <string>

#include "model/model.h"

namespace ds {

struct RouterConfig {
  std::string node_id;
  std::string cluster_name = "ds";
  std::string address;  // host:port clients use
  std::string version;
  std::shared_ptr<Model> model;
  int n_ctx = 0;
  int max_tokens_limit = 4096;
};

caf::actor spawn_router(caf::actor_system& sys, RouterConfig cfg);

}  // namespace ds
