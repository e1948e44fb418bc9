// actors/worker.h: the worker actor. It owns one Engine (one model replica) and runs
// the continuous-batching loop: every step is one message to itself, so requests and
// cancellations that arrived meanwhile join or leave the batch between steps. It runs
// detached (its own thread): a step can take milliseconds to seconds and must never
// block CAF's scheduler.
//
// Protocol: (submit_atom, WorkItem) -> events later as WorkerEvents to the router;
// (cancel_atom, uint64_t seq_id); (cancel_atom, caf::actor keep_owner): cancel every
// sequence another router submitted; (status_atom) -> WorkerStatus. A failed step or a
// rejected item is reported per sequence as a WorkerEvent with finish "error".
#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <chrono>
#include <memory>
#include <string>

#include "model/engine.h"
#include "model/model.h"

namespace ds {

struct WorkerConfig {
  std::string id = "w0";
  std::shared_ptr<Model> model;
  std::string backend = "cpu";   // "cpu" or "cuda"
  bool cpu_fallback = false;      // cuda that cannot run this model: use the CPU (--backend auto)
  bool cpu_interleave = true;     // CPU backends: CpuBackendOptions::interleave_quant (--cpu-weights)
  int threads = 0;
  std::vector<int> gpus;            // cuda: the GPUs of a tensor-parallel group (empty: GPU 0)
  CudaBackendChoices cuda;          // cuda, one GPU: the backend's options a node chooses
  int tensor_parallel = 1;          // cpu: rank threads of a tensor-parallel group
  EngineOptions engine;
  // An engine step still running after this long (a wedged GPU kernel, a hung rank) exits
  // the process with kExitStuckStep, so that the cluster fails the node's work over (the
  // first step gets 10x; 0: never). See actors/step_watch.h.
  std::chrono::milliseconds stuck_step_exit{0};
  int fault_crash_after_steps = 0;  // test-only: throw after this many steps (0: never)
  int fault_hang_after_steps = 0;   // test-only: step number N never returns (0: never)
  int fault_crash_count = 1;        // test-only: how many incarnations in a row crash
  int restarts = 0;                 // how often the supervisor restarted this worker
};

// The exit status of a node that stopped itself over a stuck engine step.
constexpr int kExitStuckStep = 6;

// Spawns a detached worker that reports to router. Never fails: an engine that cannot
// be created makes the worker answer every item with an error and report "failed".
caf::actor spawn_worker(caf::actor_system& sys, WorkerConfig cfg, caf::actor router);

}  // namespace ds
