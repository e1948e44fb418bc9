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
//
// Cluster: the membership actor (membership_actor.h) pushes a MemberView on every change.
// The router introduces itself (hello_atom) to every up member it does not know yet, routes
// only to up and reachable members, and moves the requests running on a member that goes
// down, is restarted (new incarnation) or whose worker dies. CAF monitors on peer routers and
// workers are a second, faster signal (a killed process drops its connections). Without a
// quorum (this node is in a minority partition) it refuses new requests (errc::no_quorum).
// (members_atom) -> MemberView; (cstatus_atom) -> ClusterStatus; (dnode_atom, id) drains a
// member; (remove_atom, id) forgets a dead one.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <chrono>
#include <functional>
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
  // Called when an operator drains this node (ds-admin node drain): start the same drain as
  // SIGTERM (the node process raises SIGTERM on itself).
  std::function<void()> request_shutdown;
};

caf::actor spawn_router(caf::actor_system& sys, RouterConfig cfg);

}  // namespace ds
