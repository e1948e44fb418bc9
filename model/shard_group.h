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
//   caller (rank 0)              rank r > 0 threads            watchdog thread
//   run(tokens): publish step -> wake, Forward::run(tokens),   arm the deadline
//                Forward::run    health check, done
//                health check
//                wait for every rank <- (on failure: abort the comm group first)
//                                                              deadline passed: abort
//
// Failure: a rank fails when its Forward fails (a collective, a backend allocation) or
// its health check (e.g. the CUDA backend's sticky error) says so. The first rank to fail
// aborts the communicator group before it reports, so no rank waits in a collective for
// it; run() then returns a Status naming that rank, and the group is failed for good:
// every later run() returns the same Status without running anything (a shard failure
// fails the group as one unit; its owner drops and rebuilds it).
//
// Hang (step_timeout > 0 and n > 1): a rank that neither finishes nor fails (a wedged GPU
// kernel, a thread stuck outside any collective, an NCCL collective a peer never joins)
// would block every other rank in the next collective, and run() with them. A watchdog
// thread arms a deadline per step (the first step's is kFirstStepTimeoutFactor x longer:
// mmapped weights page in, CUDA loads its modules); when it passes with a rank unfinished,
// the watchdog aborts every rank's Communicator (this releases ranks blocked in a
// collective, rank 0 in the caller's thread included) and run() returns, after at most a
// grace period of min(step_timeout, 5 s) for the ranks to come back, Internal:
//   "tensor-parallel rank 1 of 2 did not finish step 7 within 30000 ms (hung); group
//    aborted; rank 0 returned after the abort"
// naming the ranks that still had not returned (or, when all came back after the abort,
// those unfinished at the deadline). The group is then failed as above. What cannot be
// cut short:
//   - rank 0 stuck outside a collective blocks run() in the caller's thread until it
//     returns (the group is failed when it does);
//   - a rank r > 0 that never returns is abandoned: run() returns without it (it runs on a
//     copy of the step's tokens and block tables, so it never reads the caller's memory
//     again), and the destructor, after another grace period, detaches its thread and
//     leaks that rank's parts (backend, communicator, cache, Forward: GPU memory stays
//     taken) instead of blocking forever; it writes one line to stderr saying so. If the
//     thread ever returns it frees them itself.
// A slow step is not a hang: step_timeout must exceed the slowest honest step (a full
// prefill chunk), with room; ds-node's default is 60 s.
//
// Thread-safety: none (like Engine): one thread calls run(); the rank threads and the
// watchdog are internal. Destruction joins them (they are idle between run() calls; see
// Hang for a rank that never returns).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
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
  // communicator's rank()/size() is not its index / the group size, or step_timeout is
  // negative; ResourceExhausted when a rank's cache or buffers do not fit. step_timeout:
  // the deadline of one step (see Hang above); 0: none (a hung rank blocks run() forever).
  // max_seq_positions: the most positions one sequence reaches (Forward::Create's).
  // kv_type: every rank's KV cache elements (KvCache::Create).
  static Result<std::unique_ptr<ShardGroup>> Create(std::shared_ptr<const Model> model, std::vector<ShardRank> ranks,
                                                    int block_size, int n_blocks, int max_tokens,
                                                    std::chrono::milliseconds step_timeout = std::chrono::milliseconds(0),
                                                    int max_seq_positions = 0, DType kv_type = DType::kF32);
  // The first step's deadline is this many times step_timeout.
  static constexpr int kFirstStepTimeoutFactor = 10;
  ~ShardGroup();
  ShardGroup(const ShardGroup&) = delete;
  ShardGroup& operator=(const ShardGroup&) = delete;

  int size() const { return static_cast<int>(ranks_.size()); }
  // Rank 0's cache; its BlockAllocator is the bookkeeping of the block tables of every
  // rank (the other ranks' allocators are unused).
  KvCache& kv() { return *ranks_[0]->kv; }
  Backend& backend(int rank) { return *ranks_[rank]->backend; }

  // Runs tokens on every rank, as Forward::run (logits: rank 0's gathered [n_want,
  // n_vocab]). Non-OK, naming the first rank that failed, when any rank failed, or naming
  // the hung ranks when the step missed its deadline; then, and after any earlier failure,
  // the group is failed().
  // REQUIRES: the block tables the tokens point to stay unchanged until run() returns.
  Status run(const std::vector<ForwardToken>& tokens, std::vector<float>* logits);
  // As run(), but every rank samples its vocabulary slice (Forward::run_sampled): picked and
  // fallbacks are rank 0's (every rank picks the same tokens). Same failure rules.
  Status run_sampled(const std::vector<ForwardToken>& tokens, const SampleStep& step, std::vector<int32_t>* picked,
                     int* fallbacks);
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
    std::vector<int32_t> picked;  // this rank's tokens of a sampled step
    int fallbacks = 0;
    Status status;              // of the last step; written by the rank, read after done
    std::thread thread;
  };
  // What the caller, the rank threads and the watchdog share (shard_group.cc).
  struct Shared;

  ShardGroup() = default;
  // A rank thread's loop; it holds its Rank and the Shared state, so that an abandoned one
  // never touches freed memory.
  static void rank_loop(std::shared_ptr<Shared> sh, std::shared_ptr<Rank> r);
  // Runs the step on r; on failure aborts the group (once) and records r first.
  // A sampled step when sampling is set (picked, fallbacks), else a logits one (logits).
  static Status run_rank(Shared& sh, Rank& r, const std::vector<ForwardToken>& tokens, const SampleStep* sampling,
                         std::vector<float>* logits, std::vector<int32_t>* picked, int* fallbacks);
  Status run_step(const std::vector<ForwardToken>& tokens, const SampleStep* sampling, std::vector<float>* logits,
                  std::vector<int32_t>* picked, int* fallbacks);
  void watch();  // the watchdog thread
  // The hang Status of the step that just missed its deadline (run()'s caller thread).
  Status hang_status(uint64_t step, const std::vector<int>& hung, const std::vector<int>& released) const;

  std::vector<std::shared_ptr<Rank>> ranks_;  // rank 0 first
  std::shared_ptr<Shared> shared_;
  std::chrono::milliseconds step_timeout_{0};
  std::thread watchdog_;  // only when step_timeout_ > 0 and size() > 1
  Status failure_;        // sticky: the first failed step's Status
};

}  // namespace ds
