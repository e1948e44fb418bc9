#include "actors/worker.h"

#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <stdexcept>
#include <thread>

#include "actors/atoms.h"
#include "actors/step_watch.h"
#include "kernels/cpu/variants.h"

#include <spdlog/spdlog.h>

namespace ds {
namespace {

using Clock = std::chrono::steady_clock;

struct WorkerState {
  WorkerConfig cfg;
  caf::actor router;
  std::unique_ptr<Engine> engine;
  std::string engine_error;
  bool stepping = false;
  int steps = 0;
  std::deque<std::pair<Clock::time_point, int>> recent;  // (time, tokens) of recent steps
  std::map<uint64_t, caf::actor> owner;                  // sequence -> the router that submitted it
  std::unique_ptr<StepWatch> watch;                      // cfg.stuck_step_exit > 0
  static inline const char* name = "ds_worker";
};

caf::behavior worker_behavior(caf::stateful_actor<WorkerState>* self, WorkerConfig cfg, caf::actor router) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.router = std::move(router);
  {
    Result<std::unique_ptr<Engine>> e = Status::Internal("no engine");
    const int cpu_ranks = std::max(1, st.cfg.tensor_parallel);
    if (st.cfg.backend == "cuda" && st.cfg.gpus.size() > 1) {
      e = Engine::CreateCudaTensorParallel(st.cfg.model, st.cfg.gpus, st.cfg.engine);
      if (e.ok()) st.cfg.backend = "cuda-tp" + std::to_string(st.cfg.gpus.size());
    } else if (st.cfg.backend == "cuda") {
      std::string err;
      auto be = make_cuda_backend(st.cfg.gpus.empty() ? 0 : st.cfg.gpus[0], &err, st.cfg.cuda);
      e = be ? Engine::Create(st.cfg.model, std::move(be), st.cfg.engine)
             : Result<std::unique_ptr<Engine>>(Status::Internal("CUDA backend unavailable: " + err));
    } else if (cpu_ranks > 1) {
      const int threads = st.cfg.threads > 0 ? st.cfg.threads : static_cast<int>(std::thread::hardware_concurrency());
      e = Engine::CreateCpuTensorParallel(st.cfg.model, cpu_ranks, std::max(1, threads / cpu_ranks), st.cfg.engine,
                                          st.cfg.cpu_interleave);
      if (e.ok()) st.cfg.backend = "cpu-tp" + std::to_string(cpu_ranks);
    } else {
      e = Engine::Create(st.cfg.model, make_cpu_backend({st.cfg.threads, st.cfg.cpu_interleave}), st.cfg.engine);
    }
    if (!e.ok() && st.cfg.backend == "cuda" && st.cfg.cpu_fallback) {
      spdlog::warn("worker {}: the CUDA backend cannot run this model ({}); using the CPU", st.cfg.id, e.status().ToString());
      st.cfg.backend = "cpu";
      e = Engine::Create(st.cfg.model, make_cpu_backend({st.cfg.threads, st.cfg.cpu_interleave}), st.cfg.engine);
    }
    if (e.ok()) st.engine = std::move(e).value();
    else st.engine_error = e.status().ToString();
  }
  if (!st.engine) {
    // Unhealthy from the start (a GPU out of memory, a model the backend cannot run): fail like
    // a crash, so the supervisor retries with backoff and then takes the worker out of service,
    // and the routers send its share elsewhere, instead of running a worker that refuses all.
    spdlog::error("worker {}: cannot start its engine: {}", st.cfg.id, st.engine_error);
    self->quit(caf::make_error(errc::internal, "engine did not start: " + st.engine_error));
    return {};
  }
  {
    const EngineStats es = st.engine->stats();
    spdlog::info("worker {}: {} engine, KV cache {} x {} positions of {} ({:.1f} MiB{})", st.cfg.id, st.cfg.backend,
                 es.kv_blocks_total, st.engine->options().kv_block_size, dtype_name(es.kv_type),
                 static_cast<double>(es.kv_bytes) / (1 << 20),
                 st.engine->ranks() > 1 ? " per rank" : "");
    if (!st.engine->memory_note().empty()) spdlog::info("worker {}: {}", st.cfg.id, st.engine->memory_note());
    if (const std::string d = st.engine->decode_note(); !d.empty()) spdlog::info("worker {}: {}", st.cfg.id, d);
    if (const std::string b = st.engine->backend_note(); !b.empty()) spdlog::warn("worker {}: {}", st.cfg.id, b);
  }
  if (st.cfg.stuck_step_exit.count() > 0) {
    const std::string id = st.cfg.id, backend = st.cfg.backend;
    st.watch = std::make_unique<StepWatch>(
        st.cfg.stuck_step_exit, 10, [id, backend](std::chrono::milliseconds running, std::chrono::milliseconds limit) {
          spdlog::critical("worker {} ({}): an engine step has run for {} ms (limit {} ms): a wedged GPU kernel or a hung "
                           "tensor-parallel rank; exiting (status {}) so that the cluster fails this node's requests over",
                           id, backend, running.count(), limit.count(), kExitStuckStep);
          spdlog::default_logger()->flush();
          std::fflush(nullptr);
          std::_Exit(kExitStuckStep);
        });
  }
  // A remote router that died: cancel its sequences.
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& s = self->state;
    for (auto it = s.owner.begin(); it != s.owner.end();) {
      if (it->second.address() == dm.source) {
        if (s.engine) s.engine->cancel(it->first);
        it = s.owner.erase(it);
      } else {
        ++it;
      }
    }
    if (s.engine && !s.stepping) {
      s.stepping = true;
      self->send(self, step_atom::value);
    }
  });
  auto schedule = [self] {
    if (!self->state.stepping) {
      self->state.stepping = true;
      self->send(self, step_atom::value);
    }
  };
  return {
      [=](submit_atom, WorkItem& w) {
        auto& s = self->state;
        // Events go back to the router that submitted (local or on another node).
        caf::actor owner = caf::actor_cast<caf::actor>(self->current_sender());
        if (!owner) owner = s.router;
        Status added = s.engine ? Status::Ok() : Status::Internal("worker has no engine: " + s.engine_error);
        if (added.ok()) {
          SequenceRequest r;
          r.id = w.seq_id;
          r.prompt = std::move(w.prompt);
          r.generated = std::move(w.generated);
          r.params = sampling_params(w.params);
          added = s.engine->add(std::move(r));
        }
        if (!added.ok()) {
          WorkerEvents evs;
          evs.events.push_back(WorkerEvent{w.seq_id, -1, -1, "", "error", added.message()});
          self->send(owner, std::move(evs));
          return;
        }
        if (owner != s.router) self->monitor(owner);
        s.owner[w.seq_id] = owner;
        schedule();
      },
      [=](cancel_atom, const caf::actor& keep_owner) {
        // Cancel every sequence not submitted by keep_owner (this node was declared down:
        // the other routers moved their work elsewhere).
        auto& s = self->state;
        int n = 0;
        for (auto it = s.owner.begin(); it != s.owner.end();) {
          if (it->second != keep_owner) {
            if (s.engine) s.engine->cancel(it->first);
            it = s.owner.erase(it);
            ++n;
          } else {
            ++it;
          }
        }
        if (n > 0) spdlog::warn("worker {}: cancelled {} sequence(s) of other nodes' routers", s.cfg.id, n);
        schedule();
      },
      [=](cancel_atom, uint64_t seq_id) {
        if (!self->state.engine) return;
        self->state.engine->cancel(seq_id);
        schedule();
      },
      [=](step_atom) {
        auto& s = self->state;
        s.stepping = false;
        if (!s.engine || s.engine->idle()) return;
        std::vector<TokenEvent> events;
        Status st_step;
        {
          StepWatch::Scope watched(s.watch.get());
          if (s.cfg.fault_hang_after_steps > 0 && s.steps + 1 == s.cfg.fault_hang_after_steps) {
            spdlog::warn("worker {}: injected hang in step {} (test.fault-worker-hang-after-steps)", s.cfg.id, s.steps + 1);
            for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
          }
          st_step = s.engine->step(&events);
        }
        ++s.steps;
        if (!st_step.ok()) {
          // The engine itself failed (a backend error, or a rank of a tensor-parallel group:
          // the group fails as one unit). Crash instead of failing the requests: the
          // supervisor restarts the worker (or the group) and the routers resume the work
          // there or elsewhere; a worker that keeps failing is taken out of service.
          throw std::runtime_error("engine failure: " + st_step.message());
        }
        std::map<caf::actor, WorkerEvents> out;  // grouped by owning router
        int tokens = 0;
        for (TokenEvent& ev : events) {
          tokens += ev.token >= 0 ? 1 : 0;
          auto it = s.owner.find(ev.id);
          if (it == s.owner.end()) continue;
          out[it->second].events.push_back(WorkerEvent{ev.id, ev.index, ev.token, std::move(ev.text),
                                                       ev.finish == FinishReason::kNone ? "" : finish_reason_name(ev.finish), ev.error});
          if (ev.finish != FinishReason::kNone) s.owner.erase(it);
        }
        const auto now = Clock::now();
        s.recent.emplace_back(now, tokens);
        while (!s.recent.empty() && now - s.recent.front().first > std::chrono::seconds(10)) s.recent.pop_front();
        for (auto& [owner, evs] : out) self->send(owner, std::move(evs));
        if (s.cfg.fault_crash_after_steps > 0 && s.steps == s.cfg.fault_crash_after_steps) {
          throw std::runtime_error("injected worker fault after " + std::to_string(s.steps) + " steps (test.fault-worker-crash-after-steps)");
        }
        if (!s.engine->idle()) {
          s.stepping = true;
          self->send(self, step_atom::value);
        }
      },
      [=](status_atom) {
        auto& s = self->state;
        WorkerStatus ws;
        ws.id = s.cfg.id;
        ws.backend = s.cfg.backend;
        ws.restarts = s.cfg.restarts;
        ws.state = s.engine ? "running" : "failed";
        if (s.engine) {
          const EngineStats es = s.engine->stats();
          ws.active = es.running;
          ws.queued = es.waiting;
          ws.kv_blocks_used = es.kv_blocks_used;
          ws.kv_blocks_total = es.kv_blocks_total;
          ws.kv_type = dtype_name(es.kv_type);
          ws.kv_bytes = static_cast<int64_t>(es.kv_bytes);
          if (s.cfg.backend.rfind("cpu", 0) == 0) ws.cpu_kernels = cpu::active_variant().name;
        }
        int tokens = 0;
        const auto now = Clock::now();
        for (const auto& [t, n] : s.recent)
          if (now - t <= std::chrono::seconds(10)) tokens += n;
        ws.tokens_per_s = tokens / 10.0;
        return ws;
      },
  };
}

}  // namespace

caf::actor spawn_worker(caf::actor_system& sys, WorkerConfig cfg, caf::actor router) {
  return sys.spawn<caf::detached>(worker_behavior, std::move(cfg), std::move(router));
}

}  // namespace ds
