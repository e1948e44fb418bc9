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
};

struct RouterState {
  RouterConfig cfg;
  caf::actor worker;  // the local worker (null while restarting or failed)
  int worker_restarts = 0;
  bool worker_failed = false;
  uint64_t incarnation = 0;
  std::map<std::string, Peer> peers;  // other members, by node id
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

// Every worker this router can use: the local one first, then the peers'.
std::vector<std::pair<caf::actor, bool>> live_workers(const RouterState& s) {
  std::vector<std::pair<caf::actor, bool>> w;
  if (s.worker) w.emplace_back(s.worker, true);
  for (const auto& [id, p] : s.peers)
    if (p.info.worker) w.emplace_back(p.info.worker, false);
  return w;
}

// Power of two choices on the number of requests this router runs on each worker;
// the local worker wins ties.
caf::actor pick_worker(RouterState& s) {
  auto ws = live_workers(s);
  if (ws.empty()) return nullptr;
  auto load = [&](const caf::actor& w) {
    int n = 0;
    for (const auto& [seq, f] : s.inflight) n += f.worker == w ? 1 : 0;
    return n;
  };
  if (ws.size() == 1) return ws[0].first;
  std::uniform_int_distribution<size_t> d(0, ws.size() - 1);
  size_t a = d(s.rng), b = d(s.rng);
  if (a == b) b = (a + 1) % ws.size();
  const int la = load(ws[a].first), lb = load(ws[b].first);
  if (la != lb) return la < lb ? ws[a].first : ws[b].first;
  return ws[a].second ? ws[a].first : ws[b].first;  // local preferred at equal load
}

NodeInfo self_info(caf::stateful_actor<RouterState>* self) {
  const auto& s = self->state;
  return NodeInfo{s.cfg.node_id, s.cfg.cluster_name, s.cfg.address, s.incarnation,
                  caf::actor_cast<caf::actor>(self), s.worker};
}

caf::behavior router_behavior(caf::stateful_actor<RouterState>* self, RouterConfig cfg) {
  self->state.cfg = std::move(cfg);
  self->state.incarnation = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  // Sequence ids are unique cluster-wide: workers run sequences of many routers.
  self->state.next_seq_id = (std::hash<std::string>{}(self->state.cfg.node_id) ^ self->state.incarnation) << 24;

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

  self->set_down_handler([self, fail_over, fail_all](caf::down_msg& dm) {
    auto& s = self->state;
    // A peer node's router or worker: forget it and move its work.
    for (auto it = s.peers.begin(); it != s.peers.end(); ++it) {
      Peer& p = it->second;
      if (p.info.router.address() == dm.source || (p.info.worker && p.info.worker.address() == dm.source)) {
        const bool node_gone = p.info.router.address() == dm.source;
        caf::actor dead = p.info.worker;
        spdlog::warn("member {} {}: {}; moving its requests", p.info.node_id, node_gone ? "is down" : "lost its worker",
                     caf::to_string(dm.reason));
        if (node_gone) s.peers.erase(it);
        else p.info.worker = nullptr;
        if (dead) fail_over(dead);
        if (!s.worker && !s.worker_failed) return;  // the local restart will pick them up
        fail_all("no worker is left in the cluster to resume the request on");
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
    s.peers[info.node_id] = Peer{info};
    self->monitor(info.router);
    if (info.worker) self->monitor(info.worker);
    spdlog::info("member {} ({}) joined the view; {} members", info.node_id, info.address, s.peers.size() + 1);
    return true;
  };

  return {
      [=](gen_atom, GenerateRequest& req) -> caf::result<std::string> {
        auto& s = self->state;
        auto client = caf::actor_cast<caf::actor>(self->current_sender());
        if (s.draining) return caf::make_error(errc::draining, "the node is draining (shutting down); retry on another node");
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
        f.req = req;
        f.prompt = std::move(prompt);
        f.client = client;
        f.start = Clock::now();
        if (client) self->monitor(client);
        spdlog::info("request={} trace={} accepted ({} prompt tokens, max_tokens {})", req.id, req.trace_id, f.prompt.size(),
                     req.max_tokens);
        f.worker = target;
        self->send(target, submit_atom::value, work_item(seq_id, f));
        s.by_id[req.id] = seq_id;
        s.inflight.emplace(seq_id, std::move(f));
        return req.id;
      },
      [=](WorkerEvents& evs) {
        auto& s = self->state;
        for (WorkerEvent& ev : evs.events) {
          auto it = s.inflight.find(ev.seq_id);
          if (it == s.inflight.end()) continue;  // cancelled meanwhile
          Inflight& f = it->second;
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
      [=](join_atom, const NodeInfo& joiner) -> caf::result<std::vector<NodeInfo>> {
        auto& s = self->state;
        if (joiner.cluster_name != s.cfg.cluster_name) {
          spdlog::warn("refused join of {} ({}): cluster name '{}' is not '{}'", joiner.node_id, joiner.address, joiner.cluster_name,
                       s.cfg.cluster_name);
          return caf::make_error(errc::wrong_cluster, "this cluster is named '" + s.cfg.cluster_name + "', the joining node says '" +
                                                          joiner.cluster_name + "' (--cluster-name must match)");
        }
        if (joiner.node_id == s.cfg.node_id) return caf::make_error(errc::invalid_request, "node id '" + joiner.node_id + "' is taken by the seed itself");
        std::vector<NodeInfo> view = {self_info(self)};
        for (auto& [id, p] : s.peers) {
          if (id == joiner.node_id) continue;
          view.push_back(p.info);
          self->send(p.info.router, peer_atom::value, joiner);
        }
        add_peer(joiner);
        return view;
      },
      [=](join_atom, caf::actor seed) -> caf::result<bool> {
        // This node joins the cluster that `seed` (a member's router) belongs to.
        auto rp = self->make_response_promise<bool>();
        self->request(seed, std::chrono::seconds(5), join_atom::value, self_info(self))
            .then(
                [=](std::vector<NodeInfo>& view) mutable {
                  for (const NodeInfo& info : view) add_peer(info);
                  spdlog::info("joined cluster '{}' through {}: {} members", self->state.cfg.cluster_name,
                               view.empty() ? "?" : view.front().node_id, self->state.peers.size() + 1);
                  rp.deliver(true);
                },
                [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
        return rp;
      },
      [=](peer_atom, const NodeInfo& info) {
        if (info.cluster_name != self->state.cfg.cluster_name) return;
        add_peer(info);
      },
      [=](peers_atom, const std::vector<NodeInfo>& view) {
        for (const NodeInfo& info : view)
          if (info.cluster_name == self->state.cfg.cluster_name && add_peer(info))
            self->send(info.router, peer_atom::value, self_info(self));
      },
      [=](cstatus_atom) -> caf::result<ClusterStatus> {
        auto& s = self->state;
        auto rp = self->make_response_promise<ClusterStatus>();
        auto acc = std::make_shared<ClusterStatus>();
        auto pending = std::make_shared<size_t>(s.peers.size() + 1);
        auto done = [rp, acc, pending]() mutable {
          if (--*pending == 0) {
            std::sort(acc->nodes.begin(), acc->nodes.end(), [](const NodeStatus& a, const NodeStatus& b) { return a.node_id < b.node_id; });
            // The leader: the oldest up member (smallest incarnation, then node id).
            NodeStatus* oldest = nullptr;
            for (auto& n : acc->nodes)
              if (n.state == "up" && (!oldest || n.incarnation < oldest->incarnation)) oldest = &n;
            if (oldest) oldest->leader = true;
            rp.deliver(*acc);
          }
        };
        std::vector<std::pair<caf::actor, std::string>> targets = {{caf::actor_cast<caf::actor>(self), s.cfg.node_id}};
        for (auto& [id, p] : s.peers) targets.emplace_back(p.info.router, id);
        for (auto& [router, id] : targets) {
          self->request(router, std::chrono::seconds(3), status_atom::value)
              .then([acc, done](NodeStatus& ns) mutable {
                      acc->nodes.push_back(std::move(ns));
                      done();
                    },
                    [acc, done, id = id](caf::error&) mutable {
                      NodeStatus ns;
                      ns.node_id = id;
                      ns.state = "unreachable";
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
        ns.state = s.draining ? "draining" : "up";
        ns.uptime_s = std::chrono::duration<double>(Clock::now() - s.started).count();
        ns.version = s.cfg.version;
        ns.model = s.cfg.model->config().name;
        ns.in_flight = static_cast<int32_t>(s.inflight.size());
        ns.members = static_cast<int32_t>(s.peers.size() + 1);
        ns.incarnation = s.incarnation;
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
