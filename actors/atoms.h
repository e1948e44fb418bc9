// actors/atoms.h: ds message atoms (CAF 0.17: at most 10 characters), error codes, and
// the registration of every message type (call register_types on every node and client).
#pragma once

#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>

#include <string>

#include "actors/protocol.h"
#include "model/sampler.h"

namespace ds {

using gen_atom = caf::atom_constant<caf::atom("ds_gen")>;        // client -> router: GenerateRequest
using cancel_atom = caf::atom_constant<caf::atom("ds_cancel")>;  // cancel a request (id) or sequence
using submit_atom = caf::atom_constant<caf::atom("ds_submit")>;  // router -> worker: WorkItem
using step_atom = caf::atom_constant<caf::atom("ds_step")>;      // worker -> itself: one engine step
using status_atom = caf::atom_constant<caf::atom("ds_status")>;  // -> NodeStatus / WorkerStatus
using worker_atom = caf::atom_constant<caf::atom("ds_worker")>;  // supervisor -> router: (new) worker
using drain_atom = caf::atom_constant<caf::atom("ds_drain")>;    // stop accepting, finish in-flight
using respawn_atom = caf::atom_constant<caf::atom("ds_respawn")>;
using peer_atom = caf::atom_constant<caf::atom("ds_peer")>;        // router -> router: my NodeInfo changed
using hello_atom = caf::atom_constant<caf::atom("ds_hello")>;      // router -> router: NodeInfo -> NodeInfo
using cstatus_atom = caf::atom_constant<caf::atom("ds_cstatus")>;  // -> ClusterStatus
using members_atom = caf::atom_constant<caf::atom("ds_members")>;  // -> MemberView
using cluster_atom = caf::atom_constant<caf::atom("ds_cluster")>;  // membership <-> membership: encoded message
using member_atom = caf::atom_constant<caf::atom("ds_member")>;    // -> the node's membership actor
using tick_atom = caf::atom_constant<caf::atom("ds_tick")>;        // timers
using leave_atom = caf::atom_constant<caf::atom("ds_leave")>;      // membership: start leaving
using shutdown_atom = caf::atom_constant<caf::atom("ds_shutdn")>;  // membership: announce down, stop
using remove_atom = caf::atom_constant<caf::atom("ds_remove")>;    // forget a dead member (node id)
using dnode_atom = caf::atom_constant<caf::atom("ds_dnode")>;      // ds-admin: drain node (id)
using probe_atom = caf::atom_constant<caf::atom("ds_probe")>;      // membership: a dial's reachability probe answered

// Errors a client can get from a node (category "ds").
enum class errc : uint8_t {
  invalid_request = 1,  // the request is malformed or out of range (message says which field)
  no_worker,            // no healthy worker can run it
  draining,             // the node is shutting down
  wrong_cluster,        // a join with another cluster name
  internal,             // a bug in ds
  no_quorum,            // this node is cut off from the majority of the cluster
  not_found,            // no such member (ds-admin node drain/remove)
};
std::string to_string(errc e);

void register_types(caf::actor_system_config& cfg);

// The sampling fields of a request as the engine takes them.
SamplingParams sampling_params(const GenerateRequest& r);

// Human rendering of a caf::error (with ds's category).
std::string render_error(const caf::error& e);

}  // namespace ds

CAF_ERROR_CODE_ENUM(ds::errc, "ds")
