#include "actors/step_watch.h"

namespace ds {

StepWatch::StepWatch(std::chrono::milliseconds limit, int first_factor, OnStuck on_stuck)
    : limit_(limit), first_factor_(first_factor < 1 ? 1 : first_factor), on_stuck_(std::move(on_stuck)) {
  thread_ = std::thread([this] { loop(); });
}

StepWatch::~StepWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void StepWatch::begin() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = true;
    ++step_;
    started_ = Clock::now();
  }
  cv_.notify_all();
}

void StepWatch::end() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = false;
  }
  cv_.notify_all();
}

void StepWatch::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  uint64_t reported = 0;  // the step on_stuck ran for (once per step)
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || (running_ && step_ != reported); });
    if (stop_) return;
    const uint64_t step = step_;
    const auto limit = (step == 1 ? first_factor_ : 1) * limit_;
    if (cv_.wait_until(lock, started_ + limit, [&] { return stop_ || !running_ || step_ != step; })) continue;
    reported = step;
    const auto running = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_);
    lock.unlock();
    on_stuck_(running, limit);
    lock.lock();
  }
}

}  // namespace ds
