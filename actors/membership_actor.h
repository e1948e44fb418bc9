// actors/membership_actor.h: wires the pure cluster::Membership (cluster/membership.h) to CAF.
//
// It only carries things in and out: a tick every tick_interval, cluster messages from other
// nodes' membership actors (cluster_atom + bytes in cluster/codec.h's format), the node's load
// (polled from the router once a second), and the operator's leave/shutdown/remove. Outgoing
// messages go to a member's address: the actor connects to that address through the
// middleman (asynchronously, never blocking the scheduler), asks the router found there for
// its membership actor (member_atom), caches both and monitors them; while a connection is
// being made, messages to it are queued (a few) or dropped: the protocol tolerates loss.
//
// It pushes a MemberView to the router on every membership event and once a second; the view
// carries each member's state, incarnation, reachability, gossiped load and its router handle.
//
// Protocol: (cluster_atom, std::string bytes); (members_atom) -> MemberView; (leave_atom);
// (shutdown_atom) -> bool once the "down" announcement is sent; (remove_atom, id) -> bool or
// a ds error (not_found, invalid_request for a member that is still up and reachable).
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <functional>
#include <string>
#include <vector>

#include "cluster/membership.h"

namespace ds {

struct MembershipActorConfig {
  cluster::MembershipOptions options;
  cluster::SelfInfo self;
  std::vector<std::string> seeds;  // cluster addresses; empty: found a new cluster
  // Called (from an actor thread) when this process must exit: the join was refused for good
  // (code 1) or a newer incarnation of this node id took over (code 1).
  std::function<void(int code, const std::string& reason)> on_fatal;
};

caf::actor spawn_membership(caf::actor_system& sys, MembershipActorConfig cfg, caf::actor router);

}  // namespace ds
