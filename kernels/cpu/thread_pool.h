// kernels/cpu/thread_pool.h: a fork-join pool for CPU kernels.
//
// run(fn) calls fn(ith, nth) once on each of nth threads (the caller is thread 0)
// and returns when all have finished. Workers spin briefly between ops (an op is
// often only microseconds long during decode) and then sleep on a condition variable.
//
// Thread-safety: run() must not be called concurrently or re-entrantly.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ds {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }
  void run(const std::function<void(int ith, int nth)>& fn);

  // Splits [0, total) into nth near-equal ranges; returns thread ith's [begin, end).
  static void split(int64_t total, int ith, int nth, int64_t* begin, int64_t* end) {
    const int64_t per = total / nth, rem = total % nth;
    *begin = ith * per + (ith < rem ? ith : rem);
    *end = *begin + per + (ith < rem ? 1 : 0);
  }

 private:
  void worker_loop(int ith);
  void wake();

  int n_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)>* fn_ = nullptr;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // Sleeping workers wait on cv_ (std::atomic::wait in GCC 12 can lose wake-ups).
  std::atomic<int> sleepers_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace ds
