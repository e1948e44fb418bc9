// actors/supervisor.h: the node supervisor. It owns the worker: spawns it, monitors it,
// and when it dies with an error restarts it after an exponential backoff (100 ms,
// doubling, at most 5 s), logging each restart. A worker that fails more than
// max_restarts times within restart_window is taken out of service and reported (the
// router then fails its requests and refuses new ones) instead of restarting forever.
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <chrono>

#include "actors/worker.h"

namespace ds {

struct SupervisorConfig {
  WorkerConfig worker;
  int max_restarts = 5;
  std::chrono::seconds restart_window{60};
};

caf::actor spawn_supervisor(caf::actor_system& sys, SupervisorConfig cfg, caf::actor router);

}  // namespace ds
