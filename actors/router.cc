#include "actors/router.h"

#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include <map>
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
  uint32_t next_seq = 0;
  Clock::time_point start;
  double ttft_ms = -1;
};

struct RouterState {
  RouterConfig cfg;
  caf::actor worker;
  int worker_restarts = 0;
  bool worker_failed = false;
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

caf::behavior router_behavior(caf::stateful_actor<RouterState>* self, RouterConfig cfg) {
  self->state.cfg = std::move(cfg);

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

  self->set_down_handler([self](caf::down_msg& dm) {
    // A client died or disconnected: cancel its sequences within one step.
    auto& s = self->state;
    std::vector<uint64_t> gone;
    for (auto& [seq, f] : s.inflight)
      if (f.client && f.client.address() == dm.source) gone.push_back(seq);
    for (uint64_t seq : gone) {
      spdlog::info("request={} trace={} client gone, cancelling", s.inflight[seq].req.id, s.inflight[seq].req.trace_id);
      if (s.worker) self->send(s.worker, cancel_atom::value, seq);
      s.by_id.erase(s.inflight[seq].req.id);
      s.inflight.erase(seq);
    }
    if (s.draining && s.inflight.empty()) {
      for (auto& rp : s.drain_waiters) rp.deliver(true);
      s.drain_waiters.clear();
    }
  });

  return {
      [=](gen_atom, GenerateRequest& req) -> caf::result<std::string> {
        auto& s = self->state;
        auto client = caf::actor_cast<caf::actor>(self->current_sender());
        if (s.draining) return caf::make_error(errc::draining, "the node is draining (shutting down); retry on another node");
        if (s.worker_failed || !s.worker) return caf::make_error(errc::no_worker, "no healthy worker on this node");
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
        self->send(s.worker, submit_atom::value, work_item(seq_id, f));
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
        if (s.worker) self->send(s.worker, cancel_atom::value, it->second);
      },
      [=](worker_atom, caf::actor w, int32_t restarts, bool failed) {
        auto& s = self->state;
        s.worker = w;
        s.worker_restarts = restarts;
        s.worker_failed = failed;
        if (failed || !w) {
          std::vector<uint64_t> all;
          for (auto& [seq, f] : s.inflight) all.push_back(seq);
          for (uint64_t seq : all) finish(seq, "error", "the worker failed repeatedly and was taken out of service");
          return;
        }
        if (restarts > 0) {
          spdlog::warn("worker restarted ({} restarts); resuming {} in-flight requests", restarts, s.inflight.size());
          for (auto& [seq, f] : s.inflight) self->send(w, submit_atom::value, work_item(seq, f));
        }
      },
      [=](worker_atom, int32_t restarts) {  // the worker died; the supervisor restarts it
        auto& s = self->state;
        s.worker = nullptr;
        s.worker_restarts = restarts;
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
