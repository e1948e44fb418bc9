#include "kernels/cpu/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define DS_CPU_RELAX() _mm_pause()
#else
#define DS_CPU_RELAX() std::this_thread::yield()
#endif

namespace ds {
namespace {
constexpr int kSpinIterations = 50000;  // ~ a few ms of spinning/yielding before sleeping
}

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  wake();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_ == 1) {
    fn(0, 1);
    return;
  }
  fn_ = &fn;
  pending_.store(n_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1);
  if (sleepers_.load() > 0) wake();
  fn(0, n_);
  // Spin briefly, then yield: on an oversubscribed machine a descheduled worker needs
  // this core back to finish its share.
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < 4096) DS_CPU_RELAX();
    else std::this_thread::yield();
  }
  fn_ = nullptr;
}

void ThreadPool::wake() {
  { std::lock_guard<std::mutex> lock(mu_); }
  cv_.notify_all();
}

void ThreadPool::worker_loop(int ith) {
  uint32_t seen = 0;  // the generation at construction: a run() may start before this thread does
  for (;;) {
    int spins = 0;
    uint32_t g;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinIterations) {
        if (spins < 4096) DS_CPU_RELAX();
        else std::this_thread::yield();
      } else {
        sleepers_.fetch_add(1);
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_.load() != seen; });
        sleepers_.fetch_sub(1);
      }
    }
    seen = g;
    if (stop_.load()) return;
    (*fn_)(ith, n_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace ds
