// actors/step_watch.h: notices an engine step that never ends.
//
// A wedged GPU kernel, or a tensor-parallel rank that the group's abort could not free
// (rank 0 stuck outside a collective: model/shard_group.h), blocks a worker's thread for
// good. The node still answers heartbeats (CAF's threads are fine), so the cluster keeps
// it up and every request it holds waits forever. A StepWatch turns that hang into a crash
// the cluster already handles: when one step has run past its limit, on_stuck runs (the
// worker's logs the step and exits the process; the other nodes then declare this one down
// and fail its requests over).
//
// Thread-safety: begin()/end() from the worker's thread; on_stuck runs on the watch's own
// thread. Destruction joins that thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace ds {

class StepWatch {
 public:
  using OnStuck = std::function<void(std::chrono::milliseconds running, std::chrono::milliseconds limit)>;
  // limit > 0; the first step's limit is first_factor x limit (weights page in, GPUs warm up).
  StepWatch(std::chrono::milliseconds limit, int first_factor, OnStuck on_stuck);
  ~StepWatch();
  StepWatch(const StepWatch&) = delete;
  StepWatch& operator=(const StepWatch&) = delete;

  void begin();  // a step starts
  void end();    // it returned (or threw)

  // begin() ... end() for one scope.
  class Scope {
   public:
    explicit Scope(StepWatch* w) : w_(w) {
      if (w_) w_->begin();
    }
    ~Scope() {
      if (w_) w_->end();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    StepWatch* w_;
  };

 private:
  using Clock = std::chrono::steady_clock;
  void loop();

  const std::chrono::milliseconds limit_;
  const int first_factor_;
  const OnStuck on_stuck_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;     // guarded by mu_
  bool running_ = false;  // guarded by mu_
  uint64_t step_ = 0;     // guarded by mu_; steps begun
  Clock::time_point started_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace ds
