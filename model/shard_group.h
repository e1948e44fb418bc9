// model/shard_group.h: the ranks of one tensor-parallel model replica, run in lockstep.
//
// A ShardGroup owns, per rank r of n: a backend, the rank's Communicator, a KV cache for
// the rank's KV heads (every rank has the same block size and block count, so one block
// table addresses the same positions on every rank) and a Forward over the rank's shard
// (model/tensor_parallel.h). Rank 0 runs in the caller's thread; ranks 1..n-1 each have a
// persistent thread that waits for a step, runs the same tokens on its shard, and reports
// done. The collectives inside Forward pair the ranks' steps up; every rank ends a step
// with the gathered logits, and run() returns rank 0's.
//
//   caller (rank 0)              rank r > 0 threads
//   run(tokens): publish step -> wake, Forward::run(tokens), health check, done
//                Forward::run(tokens), health check
//                wait for every rank <- (on failure: abort the comm group first)
//
// Failure: a rank fails when its Forward fails (a collective, a backend allocation) or
// its health check (e.g. the CUDA backend's sticky error) says so. The first rank to fail
// aborts the communicator group before it reports, so no rank waits in a collective for
// it; run() then returns a Status naming that rank, and the group is failed for good:
// every later run() returns the same Status without running anything (a shard failure
// fails the group as one unit; its owner drops and rebuilds it).
//
// Thread-safety: none (like Engine): one thread calls run(); the rank threads are
// internal. Destruction joins them (they are idle between run() calls).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/backend.h"
#include "kernels/comm.h"
#include "model/forward.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/status.h"

namespace ds {

// One rank's parts, handed to ShardGroup::Create.
struct ShardRank {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;  // works on backend's memory; rank() is this rank's index
  // Called by the rank after each successful forward step; non-OK fails the rank. Empty:
  // no check. (The CUDA factory checks CudaBackend::ok(); tests inject failures here.)
  std::function<Status()> health;
};

class ShardGroup {
 public:
  // Shards model over ranks.size() ranks and builds each rank's KV cache (n_blocks
  // blocks of block_size positions of the rank's KV heads) and Forward (max_tokens per
  // step). InvalidArgument when the model does not split over that many ranks
  // (check_tensor_parallel's message), when a rank lacks a backend or communicator, or a
  // communicator's rank()/size() is not its index / the group size; ResourceExhausted
  // when a rank's cache or buffers do not fit.
  static Result<std::unique_ptr<ShardGroup>> Create(std::shared_ptr<const Model> model, std::vector<ShardRank> ranks,
                                                    int block_size, int n_blocks, int max_tokens);
  ~ShardGroup();
  ShardGroup(const ShardGroup&) = delete;
  ShardGroup& operator=(const ShardGroup&) = delete;

  int size() const { return static_cast<int>(ranks_.size()); }
  // Rank 0's cache; its BlockAllocator is the bookkeeping of the block tables of every
  // rank (the other ranks' allocators are unused).
  KvCache& kv() { return *ranks_[0]->kv; }
  Backend& backend(int rank) { return *ranks_[rank]->backend; }

  // Runs tokens on every rank, as Forward::run (logits: rank 0's gathered [n_want,
  // n_vocab]). Non-OK, naming the first rank that failed, when any rank failed; then, and
  // after any earlier failure, the group is failed().
  // REQUIRES: the block tables the tokens point to stay unchanged until run() returns.
  Status run(const std::vector<ForwardToken>& tokens, std::vector<float>* logits);
  bool failed() const { return !failure_.ok(); }
  // The failed step's Status (OK while not failed()).
  const Status& failure() const { return failure_; }

 private:
  struct Rank {
    int index = 0;
    std::unique_ptr<Backend> backend;
    std::unique_ptr<Communicator> comm;
    std::function<Status()> health;
    std::unique_ptr<KvCache> kv;
    std::unique_ptr<Forward> fwd;
    std::vector<float> logits;  // this rank's copy of the gathered logits
    Status status;              // of the last step; written by the rank, read after done
    std::thread thread;
  };

  ShardGroup() = default;
  void rank_loop(Rank& r);
  // Runs the current step on r; on failure aborts the group (once) and records r first.
  Status run_rank(Rank& r, const std::vector<ForwardToken>& tokens, std::vector<float>* logits);

  std::vector<std::unique_ptr<Rank>> ranks_;  // rank 0 first
  Status failure_;                            // sticky: the first failed step's Status

  // The step handed to ranks > 0.
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  uint64_t step_ = 0;                                // guarded by mu_; bumped per run()
  int pending_ = 0;                                  // guarded by mu_; ranks > 0 still running
  bool stop_ = false;                                // guarded by mu_
  const std::vector<ForwardToken>* tokens_ = nullptr;  // guarded by mu_ (read by ranks during a step)
  std::atomic<int> first_failed_{-1};                // the rank whose failure aborted the group
};

}  // namespace ds
