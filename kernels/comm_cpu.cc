// kernels/comm_cpu.cc: the host-memory Communicator for ranks that are threads of one
// process.
//
// The ranks share a CpuCommGroup: a barrier plus one published Call per rank. Each
// collective is "enter" (publish the call, wait at the barrier, check that every rank
// made the same call) followed by copies between the published buffers, separated by
// barriers so that no rank reads a buffer its owner may already be reusing:
//
//   all_reduce_sum  enter | sum chunk r of every rank's buf into scratch | barrier |
//                   write the sums into every rank's buf | barrier
//   all_gather      enter | copy every rank's send into own recv | barrier
//   broadcast       enter | copy root's buf into own buf | barrier
//
// Invariant: between a rank's enter and its last barrier, every other rank is inside the
// same collective, so only the entry barrier waits on ranks that may never come; only it
// is cut short by abort().
#include <cassert>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "kernels/comm.h"

namespace ds {
namespace {

enum class Op { kAllReduce, kAllGather, kBroadcast };

const char* op_name(Op op) {
  switch (op) {
    case Op::kAllReduce: return "all_reduce_sum";
    case Op::kAllGather: return "all_gather";
    case Op::kBroadcast: return "broadcast";
  }
  return "?";
}

// One rank's collective call, published for the others.
struct Call {
  Op op = Op::kAllReduce;
  size_t n = 0;
  int root = 0;
  const float* src = nullptr;
  float* dst = nullptr;
};

std::string describe(const Call& c) {
  std::string s = std::string(op_name(c.op)) + "(n=" + std::to_string(c.n);
  if (c.op == Op::kBroadcast) s += ", root=" + std::to_string(c.root);
  return s + ")";
}

class CpuCommGroup {
 public:
  explicit CpuCommGroup(int n_ranks) : n_(n_ranks), calls_(n_ranks) {}
  int size() const { return n_; }

  // Waits until all ranks arrive. false when the group is aborted (before or while
  // waiting) and abortable; a non-abortable wait always completes (see the invariant).
  bool wait(bool abortable) {
    std::unique_lock<std::mutex> lock(mu_);
    if (abortable && aborted_) return false;
    const uint64_t generation = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return true;
    }
    cv_.wait(lock, [&] { return generation_ != generation || (abortable && aborted_); });
    if (generation_ != generation) return true;
    --arrived_;  // leaves the barrier it never passed
    return false;
  }

  void abort() {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

  // Written by rank r before a barrier; read by every rank after it.
  Call& call(int r) { return calls_[r]; }

 private:
  const int n_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;          // guarded by mu_
  uint64_t generation_ = 0;  // guarded by mu_; counts completed barriers
  bool aborted_ = false;     // guarded by mu_
  std::vector<Call> calls_;
};

class CpuCommunicator final : public Communicator {
 public:
  CpuCommunicator(std::shared_ptr<CpuCommGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

  const char* name() const override { return "cpu"; }
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }

  bool all_reduce_sum(float* buf, size_t n) override {
    if (!enter(Call{Op::kAllReduce, n, 0, buf, buf})) return false;
    const int N = size();
    const size_t lo = n * rank_ / N, hi = n * (rank_ + 1) / N;
    scratch_.resize(hi - lo);
    for (size_t i = lo; i < hi; ++i) {
      float s = group_->call(0).dst[i];
      for (int r = 1; r < N; ++r) s += group_->call(r).dst[i];
      scratch_[i - lo] = s;
    }
    group_->wait(false);  // every rank has read every buf
    for (int r = 0; r < N; ++r) {
      if (hi > lo) std::memcpy(group_->call(r).dst + lo, scratch_.data(), (hi - lo) * sizeof(float));
    }
    group_->wait(false);  // every chunk is written
    return true;
  }

  bool all_gather(const float* send, size_t n_per_rank, float* recv) override {
    if (!enter(Call{Op::kAllGather, n_per_rank, 0, send, recv})) return false;
    for (int r = 0; r < size(); ++r) {
      float* to = recv + r * n_per_rank;
      const float* from = group_->call(r).src;
      if (to != from && n_per_rank > 0) std::memcpy(to, from, n_per_rank * sizeof(float));
    }
    group_->wait(false);  // every rank has read every send buffer
    return true;
  }

  bool broadcast(float* buf, size_t n, int root) override {
    assert(root >= 0 && root < size());
    if (!enter(Call{Op::kBroadcast, n, root, buf, buf})) return false;
    const float* from = group_->call(root).dst;
    if (rank_ != root && n > 0) std::memcpy(buf, from, n * sizeof(float));
    group_->wait(false);  // every rank has read root's buf
    return true;
  }

  void abort() override { group_->abort(); }
  const std::string& last_error() const override { return error_; }

 private:
  // Publishes c and waits for every rank; false when aborted or when the ranks' calls
  // differ (then every rank fails the same way and the group is aborted).
  bool enter(const Call& c) {
    group_->call(rank_) = c;
    if (!group_->wait(true)) {
      error_ = "communicator group aborted (another rank gave up)";
      return false;
    }
    const Call& first = group_->call(0);
    for (int r = 1; r < size(); ++r) {
      const Call& o = group_->call(r);
      if (o.op != first.op || o.n != first.n || o.root != first.root) {
        error_ = "ranks disagree on the collective: rank 0 called " + describe(first) + ", rank " +
                 std::to_string(r) + " called " + describe(o);
        group_->wait(false);  // every rank has compared before anyone republishes
        group_->abort();
        return false;
      }
    }
    return true;
  }

  std::shared_ptr<CpuCommGroup> group_;
  const int rank_;
  std::vector<float> scratch_;  // this rank's chunk of an all-reduce
  std::string error_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_cpu_comm_group(int n_ranks) {
  assert(n_ranks >= 1);
  auto group = std::make_shared<CpuCommGroup>(n_ranks);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < n_ranks; ++r) comms.push_back(std::make_unique<CpuCommunicator>(group, r));
  return comms;
}

}  // namespace ds
