#include "actors/membership_actor.h"

#include <caf/blocking_actor.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <spdlog/spdlog.h>

#include "actors/atoms.h"
#include "actors/client.h"
#include "actors/dial.h"
#include "actors/tls.h"
#include "cluster/codec.h"

namespace ds {
namespace {

using cluster::Clock;
using cluster::EventKind;
using cluster::TimePoint;

constexpr auto kConnectTimeout = std::chrono::seconds(3);
constexpr auto kConnectRetry = std::chrono::milliseconds(500);
constexpr auto kViewInterval = std::chrono::seconds(1);
constexpr size_t kMaxQueued = 16;
constexpr auto kDialWait = std::chrono::milliseconds(1500);

// A connection to another node: its router (what the address publishes) and its membership actor.
struct Conn {
  caf::actor router;
  caf::actor membership;
  bool pending = false;
  TimePoint retry_at{};
  TimePoint waiting_since{};  // when this node started waiting for the other side to dial
  std::vector<std::string> queue;  // encoded messages waiting for the connection
};

struct MembershipState {
  MembershipActorConfig cfg;
  std::unique_ptr<cluster::Membership> m;
  caf::actor router;
  std::map<std::string, Conn> conns;  // by cluster address
  uint64_t self_downs = 0;
  uint64_t bad_messages = 0;
  bool fatal = false;
  TimePoint next_view{}, next_load{};
  static inline const char* name = "ds_membership";
};

using Self = caf::stateful_actor<MembershipState>;

void log_event(const cluster::MemberEvent& e) {
  const std::string what = std::string(cluster::event_kind_name(e.kind)) + (e.node_id.empty() ? "" : " " + e.node_id) +
                           (e.incarnation ? " (incarnation " + std::to_string(e.incarnation) + ")" : "") +
                           (e.reason.empty() ? "" : ": " + e.reason) + (e.decided_here ? " [decided here]" : "");
  switch (e.kind) {
    case EventKind::kJoinRefused:
    case EventKind::kSuperseded:
      spdlog::error("cluster: {}", what);
      break;
    case EventKind::kRefusedJoin:
    case EventKind::kMemberDown:
    case EventKind::kMemberRestarted:
    case EventKind::kUnreachable:
    case EventKind::kQuorumLost:
    case EventKind::kSelfDowned:
    case EventKind::kSelfPaused:
    case EventKind::kForeignCluster:
      spdlog::warn("cluster: {}", what);
      break;
    default:
      spdlog::info("cluster: {}", what);
  }
}

MemberView make_view(Self* self) {
  auto& s = self->state;
  const cluster::Membership& m = *s.m;
  MemberView v;
  v.cluster_name = s.cfg.options.cluster_name;
  v.self_id = m.self().node_id;
  v.self_incarnation = m.self().incarnation;
  v.self_state = cluster::member_state_name(m.self().state);
  v.leader = m.leader().value_or("");
  v.has_quorum = m.has_quorum();
  v.quorum = m.quorum().reason;
  v.self_downs = s.self_downs;
  for (const cluster::MemberEntry& e : m.members()) {
    MemberInfo mi;
    mi.node_id = e.node_id;
    mi.incarnation = e.incarnation;
    mi.state = cluster::member_state_name(e.state);
    mi.address = e.info().cluster_address;
    mi.http_address = e.info().http_address;
    mi.reachable = m.is_reachable(e.node_id);
    double load = 0;
    for (const cluster::WorkerSummary& w : e.info().workers) load += w.load();
    mi.load = e.info().workers.empty() ? 0 : load / static_cast<double>(e.info().workers.size());
    if (e.node_id == v.self_id) {
      mi.router = s.router;
    } else if (auto it = s.conns.find(mi.address); it != s.conns.end()) {
      mi.router = it->second.router;
    }
    v.members.push_back(std::move(mi));
  }
  return v;
}

void push_view(Self* self) {
  self->state.next_view = Clock::now() + kViewInterval;
  self->send(self->state.router, make_view(self));
}

void connect(Self* self, const std::string& address);

void deliver(Self* self, const std::string& address, std::string bytes) {
  Conn& c = self->state.conns[address];
  if (c.membership) {
    self->send(c.membership, cluster_atom::value, std::move(bytes));
    return;
  }
  if (c.queue.size() < kMaxQueued) c.queue.push_back(std::move(bytes));
  connect(self, address);
}

void connect(Self* self, const std::string& address) {
  auto& s = self->state;
  Conn& c = s.conns[address];
  const TimePoint now = Clock::now();
  if (c.pending || now < c.retry_at) return;
  // One connection per pair of nodes: the node with the smaller address dials, the other
  // answers over that connection (adopt()). Two nodes dialling each other at once make two
  // connections, which CAF's TLS transport handles by dropping the node's proxies. Seeds are
  // always dialled (a joiner must), and anyone is dialled after kDialWait without contact.
  const bool is_seed = std::find(s.cfg.seeds.begin(), s.cfg.seeds.end(), address) != s.cfg.seeds.end();
  if (!is_seed && s.cfg.self.cluster_address > address) {
    if (c.waiting_since == TimePoint{}) c.waiting_since = now;
    if (now - c.waiting_since < kDialWait) return;
  }
  std::string host;
  uint16_t port = 0;
  if (!parse_host_port(address, &host, &port)) {
    spdlog::warn("cluster: cannot send to malformed address '{}'", address);
    c.retry_at = now + std::chrono::hours(1);
    c.queue.clear();
    return;
  }
  c.pending = true;
  // Probe on a thread of its own first (dial.h: the middleman's connect blocks every dial of
  // this process on a host that drops packets); the answer comes back as a probe_atom.
  self->spawn([host, port, address, me = caf::actor_cast<caf::actor>(self)](caf::blocking_actor* b) {
    const Status st = probe_tcp(host, port, kConnectTimeout);
    b->send(me, probe_atom::value, address, st.ok() ? std::string() : st.message());
  });
}

void dial_failed(Self* self, const std::string& address, const std::string& why) {
  Conn& c = self->state.conns[address];
  c.pending = false;
  c.retry_at = Clock::now() + kConnectRetry;
  c.queue.clear();
  spdlog::debug("cluster: cannot reach {}: {}", address, why);
}

// The probe of `address` answered: connect through the middleman and ask for the membership actor.
void dial(Self* self, const std::string& address, const std::string& probe_error) {
  if (!probe_error.empty()) return dial_failed(self, address, probe_error);
  std::string host;
  uint16_t port = 0;
  if (!parse_host_port(address, &host, &port)) return dial_failed(self, address, "malformed address");
  auto failed = [self, address](const std::string& why) { dial_failed(self, address, why); };
  self->request(connector(self->system()), kConnectTimeout, caf::connect_atom::value, host, port)
      .then(
          [self, address, failed](const caf::node_id&, caf::strong_actor_ptr& p, const std::set<std::string>&) {
            caf::actor router = caf::actor_cast<caf::actor>(p);
            if (!router) {
              failed("no actor is published there");
              return;
            }
            self->request(router, kConnectTimeout, member_atom::value)
                .then(
                    [self, address, router](caf::actor membership) {
                      Conn& c = self->state.conns[address];
                      c.pending = false;
                      c.router = router;
                      c.membership = membership;
                      self->monitor(membership);
                      for (std::string& bytes : c.queue) self->send(membership, cluster_atom::value, std::move(bytes));
                      c.queue.clear();
                      push_view(self);  // the router can now reach this member
                    },
                    [failed](caf::error& e) { failed(caf::to_string(e)); });
          },
          [failed](caf::error& e) { failed(caf::to_string(e)); });
}

// A message came from `membership` (a remote membership actor) whose node says it is at
// `address`: use that handle for the address when none is connected yet, and learn its router.
void adopt(Self* self, const std::string& address, const caf::actor& membership) {
  if (address.empty() || !membership) return;
  Conn& c = self->state.conns[address];
  if (c.membership || c.pending) return;
  c.pending = true;
  self->request(membership, kConnectTimeout, hello_atom::value)
      .then(
          [self, address, membership](caf::actor router) {
            Conn& c = self->state.conns[address];
            c.pending = false;
            if (c.membership) return;
            c.router = router;
            c.membership = membership;
            self->monitor(membership);
            for (std::string& bytes : c.queue) self->send(membership, cluster_atom::value, std::move(bytes));
            c.queue.clear();
            push_view(self);
          },
          [self, address](caf::error&) { self->state.conns[address].pending = false; });
}

// Carries out what one Membership call returned.
void carry_out(Self* self, cluster::Output out) {
  auto& s = self->state;
  bool changed = false;
  for (const cluster::MemberEvent& e : out.events) {
    log_event(e);
    changed = true;
    if (e.kind == EventKind::kSelfDowned) ++s.self_downs;
    if ((e.kind == EventKind::kJoinRefused || e.kind == EventKind::kSuperseded) && !s.fatal) {
      s.fatal = true;
      if (s.cfg.on_fatal) s.cfg.on_fatal(1, e.reason);
    }
  }
  for (cluster::Outgoing& o : out.messages) deliver(self, o.to_address, cluster::encode(o.message));
  if (changed) push_view(self);
}

caf::behavior membership_behavior(Self* self, MembershipActorConfig cfg, caf::actor router) {
  auto& s = self->state;
  s.cfg = std::move(cfg);
  s.router = std::move(router);
  s.m = std::make_unique<cluster::Membership>(s.cfg.options, s.cfg.self);
  const TimePoint now = Clock::now();
  if (s.cfg.seeds.empty()) {
    spdlog::info("cluster: founding cluster '{}' as {} (incarnation {})", s.cfg.options.cluster_name, s.cfg.self.node_id,
                 s.cfg.self.incarnation);
    carry_out(self, s.m->found(now));
  } else {
    carry_out(self, s.m->join(s.cfg.seeds, now));
  }
  push_view(self);
  self->send(self, tick_atom::value);

  self->set_down_handler([self](caf::down_msg& dm) {
    auto& conns = self->state.conns;
    for (auto it = conns.begin(); it != conns.end();) {
      if (it->second.membership && it->second.membership.address() == dm.source) {
        spdlog::debug("cluster: connection to {} lost ({})", it->first, caf::to_string(dm.reason));
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
    push_view(self);
  });

  return {
      [=](probe_atom, const std::string& address, const std::string& error) { dial(self, address, error); },
      [=](tick_atom) {
        auto& s = self->state;
        const TimePoint now = Clock::now();
        carry_out(self, s.m->tick(now));
        if (now >= s.next_load) {
          s.next_load = now + s.cfg.options.load_publish_interval;
          self->request(s.router, std::chrono::seconds(2), status_atom::value)
              .then(
                  [self](NodeStatus& ns) {
                    std::vector<cluster::WorkerSummary> ws;
                    const uint32_t capacity = self->state.cfg.self.workers.empty() ? 1 : self->state.cfg.self.workers[0].capacity;
                    for (const WorkerStatus& w : ns.workers) {
                      cluster::WorkerSummary x;
                      x.worker_id = w.id;
                      x.model = ns.model;
                      x.queued = static_cast<uint32_t>(std::max(0, w.queued));
                      x.in_flight = static_cast<uint32_t>(std::max(0, w.active));
                      x.capacity = std::max<uint32_t>(1, capacity);
                      x.healthy = w.state == "running" && !ns.draining;
                      ws.push_back(std::move(x));
                    }
                    carry_out(self, self->state.m->update_workers(std::move(ws), Clock::now()));
                  },
                  [](caf::error&) {});
        }
        if (now >= s.next_view) push_view(self);
        self->delayed_send(self, s.cfg.options.tick_interval, tick_atom::value);
      },
      [=](cluster_atom, const std::string& bytes) {
        auto& s = self->state;
        auto msg = cluster::decode(bytes);
        if (!msg.ok()) {
          if (s.bad_messages++ % 100 == 0) {
            spdlog::warn("cluster: dropped a malformed message ({} so far): {}", s.bad_messages, msg.status().message());
          }
          return;
        }
        // The sender can be answered over the connection it came by: adopt its handle for its
        // address rather than dialling back (one connection per pair of nodes).
        const std::string from = std::visit(
            [](const auto& m) -> std::string {
              if constexpr (std::is_same_v<std::decay_t<decltype(m)>, cluster::JoinRequest>) return m.joiner.info().cluster_address;
              else return m.from.address;
            },
            *msg);
        adopt(self, from, caf::actor_cast<caf::actor>(self->current_sender()));
        carry_out(self, s.m->on_message(*msg, Clock::now()));
      },
      [=](hello_atom) { return self->state.router; },
      [=](members_atom) { return make_view(self); },
      [=](leave_atom) {
        spdlog::info("cluster: leaving (no new work is routed here; in-flight requests finish)");
        carry_out(self, self->state.m->leave(Clock::now()));
      },
      [=](shutdown_atom) {
        spdlog::info("cluster: announcing this node down (clean exit)");
        carry_out(self, self->state.m->shutdown(Clock::now()));
        return true;
      },
      [=](remove_atom, const std::string& id) -> caf::result<bool> {
        auto& s = self->state;
        const cluster::MemberEntry* e = s.m->find(id);
        if (!e) return caf::make_error(errc::not_found, "no member '" + id + "' in this node's view");
        if (cluster::is_live(e->state) && s.m->is_reachable(id)) {
          return caf::make_error(errc::invalid_request, "member '" + id + "' is " + cluster::member_state_name(e->state) +
                                                            " and reachable; drain it (ds-admin node drain " + id + ") instead");
        }
        auto out = s.m->remove(id, Clock::now());
        if (!out.ok()) return caf::make_error(errc::invalid_request, out.status().message());
        spdlog::warn("cluster: operator removed member {}", id);
        carry_out(self, std::move(out).value());
        return true;
      },
  };
}

}  // namespace

caf::actor spawn_membership(caf::actor_system& sys, MembershipActorConfig cfg, caf::actor router) {
  return sys.spawn(membership_behavior, std::move(cfg), std::move(router));
}

}  // namespace ds
