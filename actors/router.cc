#include "actors/router.h"

#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <spdlog/spdlog.h>

#include "actors/atoms.h"
#include "model/sampler.h"

namespace ds {
namespace {

using Clock = std::chrono::steady_clock;

struct Inflight {
  GenerateRequest req;
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  caf::actor client;
  caf::actor worker;  // where it runs now (null: waiting for one)
  uint32_t next_seq = 0;
  Clock::time_point start;
  double ttft_ms = -1;
};

struct Peer {
  NodeInfo info;
  std::string state = "up";  // membership state (only "up" members get new work)
  bool reachable = true;
  double load = 0;           // gossiped: sequences queued + running on its workers
};

struct RouterState {
  RouterConfig cfg;
  caf::actor worker;  // the local worker (null while restarting or failed)
  int worker_restarts = 0;
  bool worker_failed = false;
  std::map<std::string, Peer> peers;  // other members, by node id
  caf::actor membership;              // this node's membership actor
  MemberView view;                    // its latest view
  bool have_view = false;
  uint64_t seen_self_downs = 0;
  std::map<std::string, uint64_t> hello_pending;  // node id -> incarnation greeted
  std::mt19937_64 rng{std::random_device{}()};
  std::map<uint64_t, Inflight> inflight;      // by engine sequence id
  std::map<std::string, uint64_t> by_id;      // request id -> sequence id
  uint64_t next_seq_id = 1;
  bool draining = false;
  std::vector<caf::response_promise> drain_waiters;
  Clock::time_point started = Clock::now();
  static inline const char* name = "ds_router";
};

bool valid_id(const std::string& id) {
  if (id.size() > 128) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':')) return false;
  return true;
}

// Checks a request and resolves its prompt tokens; empty string when fine.
std::string validate_request(const RouterState& s, GenerateRequest& r, std::vector<int32_t>* prompt) {
  if (!r.id.empty() && !valid_id(r.id)) return "id must be at most 128 characters of [A-Za-z0-9._:-]";
  if (!r.id.empty() && s.by_id.count(r.id)) return "id '" + r.id + "' is already in flight";
  if (r.max_tokens <= 0 || r.max_tokens > s.cfg.max_tokens_limit) {
    return "max_tokens must be in [1, " + std::to_string(s.cfg.max_tokens_limit) + "], got " + std::to_string(r.max_tokens);
  }
  if (Status st = validate(sampling_params(r)); !st.ok()) return st.message();
  const Tokenizer& tok = s.cfg.model->tokenizer();
  if (!r.prompt_tokens.empty()) {
    if (!r.prompt.empty()) return "give prompt or prompt_tokens, not both";
    for (int32_t t : r.prompt_tokens)
      if (t < 0 || t >= tok.n_vocab()) return "prompt token " + std::to_string(t) + " is outside the vocabulary";
    *prompt = r.prompt_tokens;
  } else {
    if (r.prompt.size() > 4 * static_cast<size_t>(s.cfg.n_ctx) * 16) return "prompt is longer than the context";
    *prompt = tok.encode(r.prompt, r.add_bos);
  }
  if (prompt->empty()) return "the prompt is empty";
  if (static_cast<int>(prompt->size()) >= s.cfg.n_ctx) {
    return "the prompt has " + std::to_string(prompt->size()) + " tokens but the context holds " + std::to_string(s.cfg.n_ctx);
  }
  if (!r.resume_tokens.empty()) {
    for (int32_t t : r.resume_tokens)
      if (t < 0 || t >= tok.n_vocab()) return "resume token " + std::to_string(t) + " is outside the vocabulary";
    if (static_cast<int64_t>(r.resume_tokens.size()) >= r.max_tokens)
      return "resume: " + std::to_string(r.resume_tokens.size()) + " tokens already received, max_tokens is " + std::to_string(r.max_tokens);
    if (prompt->size() + r.resume_tokens.size() >= static_cast<size_t>(s.cfg.n_ctx))
      return "resume: the prompt and the tokens already received fill the context";
    if (r.resume_seq < r.resume_tokens.size()) return "resume: fewer chunks than tokens received";
  }
  return "";
}

WorkItem work_item(uint64_t seq_id, const Inflight& f) {
  WorkItem w;
  w.seq_id = seq_id;
  w.prompt = f.prompt;
  w.generated = f.generated;
  w.params = f.req;
  w.params.prompt.clear();
  w.params.prompt_tokens.clear();
  return w;
}

struct Candidate {
  caf::actor worker;
  bool local;
  double gossiped;  // sequences on it as its node last published (at most ~1 s old)
};

// Every worker this router can use: the local one first, then those of up, reachable peers.
std::vector<Candidate> live_workers(const RouterState& s) {
  std::vector<Candidate> w;
  if (s.worker) {
    double own = 0;
    for (const MemberInfo& m : s.view.members)
      if (m.node_id == s.cfg.node_id) own = m.load;
    w.push_back({s.worker, true, own});
  }
  for (const auto& [id, p] : s.peers)
    if (p.info.worker && p.state == "up" && p.reachable) w.push_back({p.info.worker, false, p.load});
  return w;
}

// Power of two choices on load: the larger of what this router runs there (exact, fresh)
// and what the node gossiped (all routers' work, slightly stale). Local wins ties.
caf::actor pick_worker(RouterState& s) {
  auto ws = live_workers(s);
  if (ws.empty()) return nullptr;
  auto load = [&](const Candidate& c) {
    double n = 0;
    for (const auto& [seq, f] : s.inflight) n += f.worker == c.worker ? 1 : 0;
    return std::max(n, c.gossiped);
  };
  if (ws.size() == 1) return ws[0].worker;
  std::uniform_int_distribution<size_t> d(0, ws.size() - 1);
  size_t a = d(s.rng), b = d(s.rng);
  if (a == b) b = (a + 1) % ws.size();
  const double la = load(ws[a]), lb = load(ws[b]);
  if (la != lb) return la < lb ? ws[a].worker : ws[b].worker;
  return ws[a].local ? ws[a].worker : ws[b].worker;  // local preferred at equal load
}

NodeInfo self_info(caf::stateful_actor<RouterState>* self) {
  const auto& s = self->state;
  return NodeInfo{s.cfg.node_id, s.cfg.cluster_name, s.cfg.address, s.view.self_incarnation,
                  caf::actor_cast<caf::actor>(self), s.worker};
}

caf::behavior router_behavior(caf::stateful_actor<RouterState>* self, RouterConfig cfg) {
  self->state.cfg = std::move(cfg);
  const uint64_t start_ns = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  // Sequence ids are unique cluster-wide: workers run sequences of many routers.
  self->state.next_seq_id = (std::hash<std::string>{}(self->state.cfg.node_id) ^ start_ns) << 24;

  // Sends every in-flight request running on `dead` (or on no worker) to another
  // worker, resuming after the tokens already streamed; fails them when none is left
  // and no local restart is coming.
  auto fail_over = [self](const caf::actor& dead) {
    auto& s = self->state;
    std::vector<uint64_t> moved;
    for (auto& [seq, f] : s.inflight)
      if (f.worker == dead || !f.worker) moved.push_back(seq);
    for (uint64_t seq : moved) {
      Inflight& f = s.inflight[seq];
      caf::actor w = pick_worker(s);
      f.worker = w;
      if (!w) continue;  // waits for the local worker's restart (or fails below)
      spdlog::warn("request={} trace={} resumed on another worker after {} tokens", f.req.id, f.req.trace_id, f.generated.size());
      self->send(w, submit_atom::value, work_item(seq, f));
    }
  };

  auto finish = [self](uint64_t seq_id, const std::string& reason, const std::string& error) {
    auto& s = self->state;
    auto it = s.inflight.find(seq_id);
    if (it == s.inflight.end()) return;
    Inflight& f = it->second;
    FinalMessage fin;
    fin.id = f.req.id;
    fin.finish_reason = reason;
    fin.error = error;
    fin.prompt_tokens = f.prompt;
    fin.completion_tokens = static_cast<uint32_t>(f.generated.size());
    fin.chunks = f.next_seq;
    fin.ttft_ms = f.ttft_ms < 0 ? 0 : f.ttft_ms;
    fin.total_ms = std::chrono::duration<double, std::milli>(Clock::now() - f.start).count();
    spdlog::info("request={} trace={} finished: {} ({} tokens, {:.1f} ms){}{}", f.req.id, f.req.trace_id, reason, fin.completion_tokens, fin.total_ms,
                 error.empty() ? "" : ": ", error);
    if (f.client) self->send(f.client, std::move(fin));
    s.by_id.erase(f.req.id);
    s.inflight.erase(it);
    if (s.draining && s.inflight.empty()) {
      for (auto& rp : s.drain_waiters) rp.deliver(true);
      s.drain_waiters.clear();
    }
  };

  auto fail_all = [self, finish](const std::string& why) {
    std::vector<uint64_t> all;
    for (auto& [seq, f] : self->state.inflight)
      if (!f.worker) all.push_back(seq);
    for (uint64_t seq : all) finish(seq, "error", why);
  };

  // Forgets peer `id` (gone: its node is down, restarted, or its connection dropped) or just its
  // worker, and moves the requests that ran there.
  auto drop_peer = [self, fail_over, fail_all](const std::string& id, bool node_gone, const std::string& why) {
    auto& s = self->state;
    auto it = s.peers.find(id);
    if (it == s.peers.end()) return;
    caf::actor dead = it->second.info.worker;
    int moving = 0;
    for (const auto& [seq, f] : s.inflight) moving += (dead && f.worker == dead) ? 1 : 0;
    spdlog::warn("member {} {}: {}; moving its {} request(s)", id, node_gone ? "is gone" : "lost its worker", why, moving);
    if (node_gone) {
      if (it->second.info.router) self->demonitor(it->second.info.router);
      s.peers.erase(it);
    } else {
      it->second.info.worker = nullptr;
    }
    if (dead) {
      self->demonitor(dead);
      fail_over(dead);
    }
    if (!s.worker && !s.worker_failed) return;  // the local restart will pick them up
    fail_all("no worker is left in the cluster to resume the request on");
  };

  self->set_down_handler([self, drop_peer](caf::down_msg& dm) {
    auto& s = self->state;
    // A peer node's router or worker (its process died or the connection dropped).
    for (auto& [id, p] : s.peers) {
      if (p.info.router.address() == dm.source || (p.info.worker && p.info.worker.address() == dm.source)) {
        drop_peer(std::string(id), p.info.router.address() == dm.source, caf::to_string(dm.reason));
        return;
      }
    }
    // A client died or disconnected: cancel its sequences within one step.
    std::vector<uint64_t> gone;
    for (auto& [seq, f] : s.inflight)
      if (f.client && f.client.address() == dm.source) gone.push_back(seq);
    for (uint64_t seq : gone) {
      spdlog::info("request={} trace={} client gone, cancelling", s.inflight[seq].req.id, s.inflight[seq].req.trace_id);
      if (s.inflight[seq].worker) self->send(s.inflight[seq].worker, cancel_atom::value, seq);
      s.by_id.erase(s.inflight[seq].req.id);
      s.inflight.erase(seq);
    }
    if (s.draining && s.inflight.empty()) {
      for (auto& rp : s.drain_waiters) rp.deliver(true);
      s.drain_waiters.clear();
    }
  });

  // Adds or updates a member (a newer incarnation replaces an older one).
  auto add_peer = [self, fail_over](const NodeInfo& info) {
    if (info.node_id == self->state.cfg.node_id || !info.router) return false;
    if (info.cluster_name != self->state.cfg.cluster_name) return false;
    for (const MemberInfo& m : self->state.view.members) {
      // The view knows a newer incarnation, or this one is down: a stale introduction.
      if (m.node_id == info.node_id && (m.incarnation > info.incarnation ||
                                        (m.incarnation == info.incarnation && (m.state == "down" || m.state == "removed")))) {
        return false;
      }
    }
    auto& s = self->state;
    if (info.node_id == s.cfg.node_id || !info.router) return false;
    auto it = s.peers.find(info.node_id);
    if (it != s.peers.end()) {
      if (info.incarnation < it->second.info.incarnation) return false;
      caf::actor old_worker = it->second.info.worker;
      const bool new_incarnation = info.incarnation > it->second.info.incarnation;
      it->second.info = info;
      if (info.worker && info.worker != old_worker) self->monitor(info.worker);
      if (new_incarnation) self->monitor(info.router);
      if (old_worker && old_worker != info.worker) fail_over(old_worker);
      return new_incarnation;
    }
    Peer p;
    p.info = info;
    for (const MemberInfo& m : s.view.members) {
      if (m.node_id != info.node_id) continue;
      p.state = m.state;
      p.reachable = m.reachable;
      p.load = m.load;
    }
    s.peers[info.node_id] = p;
    self->monitor(info.router);
    if (info.worker) self->monitor(info.worker);
    spdlog::info("routing to member {} ({}, incarnation {}); {} routable members", info.node_id, info.address, info.incarnation,
                 s.peers.size() + 1);
    return true;
  };

  // Greets a member's router: it answers with its NodeInfo (router and worker handles).
  auto hello = [self, add_peer](const MemberInfo& m) {
    auto& s = self->state;
    auto pending = s.hello_pending.find(m.node_id);
    if (pending != s.hello_pending.end() && pending->second >= m.incarnation) return;
    s.hello_pending[m.node_id] = m.incarnation;
    const std::string id = m.node_id;
    self->request(m.router, std::chrono::seconds(3), hello_atom::value, self_info(self))
        .then(
            [self, add_peer, id](NodeInfo& info) {
              self->state.hello_pending.erase(id);
              add_peer(info);
            },
            [self, id](caf::error& e) {
              self->state.hello_pending.erase(id);
              spdlog::debug("hello to {} failed: {}", id, render_error(e));
            });
  };

  return {
      [=](gen_atom, GenerateRequest& req) -> caf::result<std::string> {
        auto& s = self->state;
        auto client = caf::actor_cast<caf::actor>(self->current_sender());
        if (s.draining || s.view.self_state == "leaving") {
          return caf::make_error(errc::draining, "the node is draining (shutting down); retry on another node");
        }
        if (!s.view.has_quorum) {
          return caf::make_error(errc::no_quorum, "this node is cut off from the majority of the cluster (" + s.view.quorum +
                                                      "); retry on another node");
        }
        caf::actor target = pick_worker(s);
        if (!target) return caf::make_error(errc::no_worker, "no healthy worker on this node or its peers");
        std::vector<int32_t> prompt;
        const std::string bad = validate_request(s, req, &prompt);
        if (!bad.empty()) {
          spdlog::info("request={} trace={} rejected: {}", req.id, req.trace_id, bad);
          return caf::make_error(errc::invalid_request, bad);
        }
        const uint64_t seq_id = s.next_seq_id++;
        if (req.id.empty()) req.id = s.cfg.node_id + "-" + std::to_string(seq_id);
        if (req.trace_id.empty()) req.trace_id = req.id;
        Inflight f;
        // A resume (its first node died): the stream goes on after what the client received.
        f.generated = std::move(req.resume_tokens);
        f.next_seq = req.resume_seq;
        req.resume_tokens.clear();
        f.req = req;
        f.prompt = std::move(prompt);
        f.client = client;
        f.start = Clock::now();
        if (client) self->monitor(client);
        if (f.generated.empty()) {
          spdlog::info("request={} trace={} accepted ({} prompt tokens, max_tokens {})", req.id, req.trace_id,
                       f.prompt.size(), req.max_tokens);
        } else {
          spdlog::info("request={} trace={} accepted as a resume after {} tokens ({} chunks) its client received from a "
                       "node that died ({} prompt tokens, max_tokens {})",
                       req.id, req.trace_id, f.generated.size(), f.next_seq, f.prompt.size(), req.max_tokens);
        }
        f.worker = target;
        self->send(target, submit_atom::value, work_item(seq_id, f));
        s.by_id[req.id] = seq_id;
        s.inflight.emplace(seq_id, std::move(f));
        return req.id;
      },
      [=](WorkerEvents& evs) {
        auto& s = self->state;
        const caf::actor_addr from = caf::actor_cast<caf::actor_addr>(self->current_sender());
        for (WorkerEvent& ev : evs.events) {
          auto it = s.inflight.find(ev.seq_id);
          if (it == s.inflight.end()) continue;  // cancelled meanwhile
          Inflight& f = it->second;
          // Only the worker it runs on now speaks for it: a worker it was moved away from (its
          // node was declared down but still runs) must not add or end anything.
          if (!f.worker || f.worker.address() != from) continue;
          if (ev.token >= 0) {
            if (ev.index != static_cast<int32_t>(f.generated.size())) continue;  // replayed by a resume: already sent
            f.generated.push_back(ev.token);
            if (f.ttft_ms < 0) f.ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - f.start).count();
            if (f.client) self->send(f.client, TokenChunk{f.req.id, f.next_seq++, {ev.token}, std::move(ev.text)});
          } else if (!ev.text.empty() && f.client) {
            self->send(f.client, TokenChunk{f.req.id, f.next_seq++, {}, std::move(ev.text)});
          }
          if (!ev.finish.empty()) finish(ev.seq_id, ev.finish, ev.error);
        }
      },
      [=](cancel_atom, const std::string& id) {
        auto& s = self->state;
        auto it = s.by_id.find(id);
        if (it == s.by_id.end()) return;
        const caf::actor& w = s.inflight[it->second].worker;
        if (w) self->send(w, cancel_atom::value, it->second);
      },
      [=](worker_atom, caf::actor w, int32_t restarts, bool failed) {
        auto& s = self->state;
        s.worker = w;
        s.worker_restarts = restarts;
        s.worker_failed = failed;
        for (auto& [id, p] : s.peers) self->send(p.info.router, peer_atom::value, self_info(self));
        if (failed || !w) {
          fail_over(nullptr);
          std::vector<uint64_t> stuck;
          for (auto& [seq, f] : s.inflight)
            if (!f.worker) stuck.push_back(seq);
          for (uint64_t seq : stuck) finish(seq, "error", "the worker failed repeatedly and was taken out of service");
          return;
        }
        if (restarts > 0) spdlog::warn("worker restarted ({} restarts)", restarts);
        fail_over(nullptr);  // requests waiting for a worker
      },
      [=](worker_atom, int32_t restarts) {  // the local worker died; the supervisor restarts it
        auto& s = self->state;
        caf::actor dead = s.worker;
        s.worker = nullptr;
        s.worker_restarts = restarts;
        if (!dead) return;
        std::vector<uint64_t> on_dead;
        for (auto& [seq, f] : s.inflight)
          if (f.worker == dead) f.worker = nullptr;
        if (!live_workers(s).empty()) fail_over(nullptr);  // a peer can take them now
      },
      [=](hello_atom, const NodeInfo& from) -> caf::result<NodeInfo> {
        auto& s = self->state;
        if (from.cluster_name != s.cfg.cluster_name) {
          return caf::make_error(errc::wrong_cluster, "this cluster is named '" + s.cfg.cluster_name + "', the other node says '" +
                                                          from.cluster_name + "' (--cluster-name must match)");
        }
        add_peer(from);
        return self_info(self);
      },
      [=](peer_atom, const NodeInfo& info) { add_peer(info); },
      [=](member_atom, caf::actor membership) {
        self->state.membership = std::move(membership);
      },
      [=](member_atom) -> caf::result<caf::actor> {
        if (!self->state.membership) return caf::make_error(errc::internal, "membership not started yet");
        return self->state.membership;
      },
      [=](MemberView& v) {
        auto& s = self->state;
        const bool rejoined = s.have_view && v.self_incarnation != s.view.self_incarnation;
        s.view = std::move(v);
        s.have_view = true;
        if (rejoined) spdlog::info("this node is now incarnation {}", s.view.self_incarnation);
        if (s.view.self_downs > s.seen_self_downs) {
          // The cluster declared this incarnation down and moved the work it ran for other
          // routers: stop running it here (their owners ignore it anyway).
          s.seen_self_downs = s.view.self_downs;
          if (s.worker) self->send(s.worker, cancel_atom::value, caf::actor_cast<caf::actor>(self));
          spdlog::warn("the cluster declared this node down: dropped the work it ran for other nodes; rejoining");
        }
        std::map<std::string, const MemberInfo*> by_id;
        for (const MemberInfo& m : s.view.members) by_id[m.node_id] = &m;
        std::vector<std::pair<std::string, std::string>> gone;
        for (auto& [id, p] : s.peers) {
          auto it = by_id.find(id);
          if (it == by_id.end()) {
            gone.emplace_back(id, "no longer a member");
            continue;
          }
          const MemberInfo& m = *it->second;
          if (m.incarnation > p.info.incarnation) {
            gone.emplace_back(id, "restarted as incarnation " + std::to_string(m.incarnation));
          } else if (m.incarnation == p.info.incarnation && (m.state == "down" || m.state == "removed")) {
            gone.emplace_back(id, "declared " + m.state + " by the cluster");
          } else {
            if (p.state != m.state || p.reachable != m.reachable) {
              spdlog::info("member {}: {}{}", id, m.state, m.reachable ? "" : " (unreachable: no new work)");
            }
            p.state = m.state;
            p.reachable = m.reachable;
            p.load = m.load;
          }
        }
        for (auto& [id, why] : gone) drop_peer(id, true, why);
        for (const MemberInfo& m : s.view.members) {
          if (m.node_id == s.cfg.node_id || !m.router || !(m.state == "up" || m.state == "joining")) continue;
          auto it = s.peers.find(m.node_id);
          if (it == s.peers.end() || it->second.info.incarnation < m.incarnation) hello(m);
        }
      },
      [=](members_atom) -> caf::result<MemberView> {
        auto& s = self->state;
        if (!s.have_view) return caf::make_error(errc::internal, "membership not started yet");
        return s.view;
      },
      [=](remove_atom, std::string& id) -> caf::result<bool> {
        auto& s = self->state;
        if (!s.membership) return caf::make_error(errc::internal, "membership not started yet");
        auto rp = self->make_response_promise<bool>();
        self->request(s.membership, std::chrono::seconds(5), remove_atom::value, id)
            .then([rp](bool ok) mutable { rp.deliver(ok); }, [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
        return rp;
      },
      [=](dnode_atom, std::string& id) -> caf::result<bool> {
        auto& s = self->state;
        if (id == s.cfg.node_id) {
          spdlog::warn("an operator asked this node to drain (ds-admin node drain {})", id);
          if (s.cfg.request_shutdown) s.cfg.request_shutdown();
          return true;
        }
        for (const MemberInfo& m : s.view.members) {
          if (m.node_id != id) continue;
          if (m.state == "down" || m.state == "removed") {
            return caf::make_error(errc::invalid_request, "member '" + id + "' is " + m.state + "; use ds-admin node remove " + id);
          }
          if (!m.router) return caf::make_error(errc::internal, "member '" + id + "' is not connected yet; retry");
          auto rp = self->make_response_promise<bool>();
          self->request(m.router, std::chrono::seconds(5), dnode_atom::value, id)
              .then([rp](bool ok) mutable { rp.deliver(ok); }, [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
          return rp;
        }
        return caf::make_error(errc::not_found, "no member '" + id + "' in this node's view");
      },
      [=](cstatus_atom) -> caf::result<ClusterStatus> {
        auto& s = self->state;
        auto rp = self->make_response_promise<ClusterStatus>();
        auto acc = std::make_shared<ClusterStatus>();
        acc->cluster_name = s.cfg.cluster_name;
        acc->reporter = s.cfg.node_id;
        acc->leader = s.view.leader;
        acc->has_quorum = s.view.has_quorum;
        acc->quorum = s.view.quorum;
        std::vector<MemberInfo> members = s.view.members;
        if (members.empty()) {  // no view yet: this node alone
          MemberInfo me;
          me.node_id = s.cfg.node_id;
          me.state = "joining";
          me.address = s.cfg.address;
          members.push_back(me);
        }
        auto pending = std::make_shared<size_t>(members.size());
        auto done = [rp, acc, pending]() mutable {
          if (--*pending == 0) {
            std::sort(acc->nodes.begin(), acc->nodes.end(), [](const NodeStatus& a, const NodeStatus& b) { return a.node_id < b.node_id; });
            rp.deliver(*acc);
          }
        };
        for (const MemberInfo& m : members) {
          NodeStatus base;
          base.node_id = m.node_id;
          base.address = m.address;
          base.state = m.state;
          base.incarnation = m.incarnation;
          base.leader = m.node_id == s.view.leader;
          base.reachable = m.reachable;
          caf::actor router = m.node_id == s.cfg.node_id ? caf::actor_cast<caf::actor>(self) : m.router;
          if (!router || m.state == "down" || m.state == "removed") {
            acc->nodes.push_back(base);
            done();
            continue;
          }
          self->request(router, std::chrono::seconds(2), status_atom::value)
              .then(
                  [acc, done, base](NodeStatus& ns) mutable {
                    // Membership facts come from this node's view; the rest from the member.
                    ns.state = base.state;
                    ns.incarnation = base.incarnation;
                    ns.leader = base.leader;
                    ns.reachable = base.reachable;
                    acc->nodes.push_back(std::move(ns));
                    done();
                  },
                  [acc, done, base](caf::error&) mutable {
                    NodeStatus ns = base;
                    ns.reachable = false;  // no answer within 2 s
                    acc->nodes.push_back(std::move(ns));
                    done();
                  });
        }
        return rp;
      },
      [=](status_atom) -> caf::result<NodeStatus> {
        auto& s = self->state;
        NodeStatus ns;
        ns.node_id = s.cfg.node_id;
        ns.address = s.cfg.address;
        ns.state = s.have_view ? s.view.self_state : "joining";
        ns.draining = s.draining;
        ns.uptime_s = std::chrono::duration<double>(Clock::now() - s.started).count();
        ns.version = s.cfg.version;
        ns.model = s.cfg.model->config().name;
        ns.in_flight = static_cast<int32_t>(s.inflight.size());
        ns.members = 0;
        for (const MemberInfo& m : s.view.members) ns.members += (m.state == "up" || m.state == "leaving" || m.state == "joining") ? 1 : 0;
        ns.incarnation = s.view.self_incarnation;
        ns.leader = s.have_view && s.view.leader == s.cfg.node_id;
        ns.reachable = true;
        if (!s.worker) {
          WorkerStatus ws;
          ws.id = "w0";
          ws.state = s.worker_failed ? "failed" : "restarting";
          ws.restarts = s.worker_restarts;
          ns.workers.push_back(ws);
          return ns;
        }
        auto rp = self->make_response_promise<NodeStatus>();
        self->request(s.worker, std::chrono::seconds(5), status_atom::value)
            .then(
                [=](WorkerStatus& ws) mutable {
                  NodeStatus out = ns;
                  ws.restarts = self->state.worker_restarts;
                  out.workers.push_back(std::move(ws));
                  rp.deliver(std::move(out));
                },
                [=](caf::error&) mutable {
                  NodeStatus out = ns;
                  WorkerStatus ws;
                  ws.id = "w0";
                  ws.state = "unresponsive";
                  ws.restarts = self->state.worker_restarts;
                  out.workers.push_back(ws);
                  rp.deliver(std::move(out));
                });
        return rp;
      },
      [=](drain_atom) -> caf::result<bool> {
        auto& s = self->state;
        s.draining = true;
        if (s.inflight.empty()) return true;
        auto rp = self->make_response_promise<bool>();
        s.drain_waiters.push_back(rp);
        return rp;
      },
  };
}

}  // namespace

caf::actor spawn_router(caf::actor_system& sys, RouterConfig cfg) { return sys.spawn(router_behavior, std::move(cfg)); }

}  // namespace ds
