#include "actors/supervisor.h"

#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/send.hpp>
#include <caf/system_messages.hpp>

#include <deque>
#include <memory>
#include <spdlog/spdlog.h>

#include "actors/atoms.h"

namespace ds {
namespace {

using Clock = std::chrono::steady_clock;

struct SupervisorState {
  SupervisorConfig cfg;
  caf::actor router;
  caf::actor worker;
  int restarts = 0;
  std::deque<Clock::time_point> failures;
  std::chrono::milliseconds backoff{100};
  std::shared_ptr<caf::actor> cell;  // the current worker, for the exit hook
  static inline const char* name = "ds_supervisor";
};

caf::behavior supervisor_behavior(caf::stateful_actor<SupervisorState>* self, SupervisorConfig cfg, caf::actor router) {
  self->state.cfg = std::move(cfg);
  self->state.router = std::move(router);
  auto start_worker = [self] {
    auto& s = self->state;
    WorkerConfig wc = s.cfg.worker;
    wc.restarts = s.restarts;
    if (s.restarts >= wc.fault_crash_count) wc.fault_crash_after_steps = 0;  // test fault: only the first N incarnations
    s.worker = spawn_worker(self->system(), wc, s.router);
    if (s.cell) *s.cell = s.worker;
    self->monitor(s.worker);
    self->send(s.router, worker_atom::value, s.worker, static_cast<int32_t>(s.restarts), false);
  };
  self->set_down_handler([self, start_worker](caf::down_msg& dm) {
    auto& s = self->state;
    if (!s.worker || dm.source != s.worker.address()) return;
    s.worker = nullptr;
    if (!dm.reason) return;  // clean exit (shutdown)
    ++s.restarts;
    const auto now = Clock::now();
    s.failures.push_back(now);
    while (!s.failures.empty() && now - s.failures.front() > s.cfg.restart_window) s.failures.pop_front();
    self->send(s.router, worker_atom::value, static_cast<int32_t>(s.restarts));
    if (static_cast<int>(s.failures.size()) > s.cfg.max_restarts) {
      spdlog::error("worker {} failed {} times within {} s: taken out of service ({})", s.cfg.worker.id, s.failures.size(),
                    s.cfg.restart_window.count(), caf::to_string(dm.reason));
      self->send(s.router, worker_atom::value, caf::actor{}, static_cast<int32_t>(s.restarts), true);
      return;
    }
    spdlog::warn("worker {} died ({}); restart {} in {} ms", s.cfg.worker.id, caf::to_string(dm.reason), s.restarts,
                 s.backoff.count());
    self->delayed_send(self, s.backoff, respawn_atom::value);
    s.backoff = std::min(s.backoff * 2, std::chrono::milliseconds(5000));
  });
  // Whoever stops the supervisor stops its worker too.
  auto worker_cell = std::make_shared<caf::actor>();
  self->state.cell = worker_cell;
  self->attach_functor([worker_cell] {
    if (*worker_cell) caf::anon_send_exit(*worker_cell, caf::exit_reason::user_shutdown);
  });
  start_worker();
  return {
      [=](respawn_atom) {
        start_worker();
        spdlog::info("worker {} restarted", self->state.cfg.worker.id);
      },
  };
}

}  // namespace

caf::actor spawn_supervisor(caf::actor_system& sys, SupervisorConfig cfg, caf::actor router) {
  return sys.spawn(supervisor_behavior, std::move(cfg), std::move(router));
}

}  // namespace ds
