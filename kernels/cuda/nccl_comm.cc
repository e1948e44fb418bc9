// kernels/cuda/nccl_comm.cc: Communicator over NCCL (see nccl_comm.h). Compiled into
// ds_cuda always; the NCCL part only where CMake found nccl.h and libnccl (DS_HAVE_NCCL).
#include "kernels/cuda/nccl_comm.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "kernels/cuda/cuda_backend.h"

#ifdef DS_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace ds {

#ifdef DS_HAVE_NCCL

namespace {

std::string nccl_error(const char* call, ncclResult_t r, ncclComm_t comm) {
  std::string s = std::string(call) + " failed: " + ncclGetErrorString(r);
  const char* last = comm ? ncclGetLastError(comm) : ncclGetLastError(nullptr);
  if (last && *last) s += std::string(" (") + last + ")";
  if (r == ncclSystemError || r == ncclRemoteError) s += "; HINT: a peer rank may be gone, or NCCL_DEBUG=WARN says more";
  return s;
}

// The communicators of one group; abort() aborts all of them once. For a multi-process
// group it holds the one local communicator.
//
// abort() may come from any thread (a rank that failed, or ShardGroup's watchdog) while
// other ranks' threads are inside an NCCL call. NCCL calls on one communicator must not
// overlap (NCCL's thread-safety rules) and ncclCommAbort frees the communicator, so every
// call is bracketed by begin_call()/end_call() and abort() first stops new calls, then
// waits for those inside NCCL to leave. That wait is bounded (kCallDrain): an enqueue can
// itself block (a lazy connection to a peer that never comes), and the abort must still
// happen. Ranks merely waiting for a collective's kernel on their stream are not inside
// NCCL; ncclCommAbort makes that kernel quit.
class NcclGroup {
 public:
  static constexpr std::chrono::milliseconds kCallDrain{2000};

  explicit NcclGroup(std::vector<ncclComm_t> comms) : comms_(std::move(comms)) {}
  ncclComm_t comm(int i) const { return comms_[i]; }
  // false when the group was aborted; else the caller may use comm() until end_call().
  bool begin_call() {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) return false;
    ++in_calls_;
    return true;
  }
  void end_call() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--in_calls_ == 0) calls_cv_.notify_all();
  }
  void abort() {
    std::unique_lock<std::mutex> lock(mu_);
    if (aborted_) return;
    aborted_ = true;
    calls_cv_.wait_for(lock, kCallDrain, [&] { return in_calls_ == 0; });
    for (ncclComm_t c : comms_) ncclCommAbort(c);  // frees each communicator
  }
  // Frees communicator i unless the group was aborted (which freed it).
  void destroy(int i) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!aborted_) ncclCommDestroy(comms_[i]);
  }

 private:
  std::mutex mu_;
  std::condition_variable calls_cv_;
  bool aborted_ = false;  // guarded by mu_
  int in_calls_ = 0;      // guarded by mu_; threads between begin_call() and end_call()
  const std::vector<ncclComm_t> comms_;
};

class NcclCommunicator final : public Communicator {
 public:
  // index: this rank's communicator within group (== rank for an in-process group).
  NcclCommunicator(std::shared_ptr<NcclGroup> group, int index, int rank, int size, CudaBackend& backend)
      : group_(std::move(group)), index_(index), rank_(rank), size_(size), backend_(backend) {}
  ~NcclCommunicator() override {
    backend_.synchronize();  // queued collectives finish before their communicator goes
    group_->destroy(index_);
  }

  const char* name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  bool all_reduce_sum(float* buf, size_t n) override {
    return call("ncclAllReduce", [&] { return ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, comm(), stream()); });
  }
  bool all_gather(const float* send, size_t n_per_rank, float* recv) override {
    return call("ncclAllGather", [&] { return ncclAllGather(send, recv, n_per_rank, ncclFloat, comm(), stream()); });
  }
  bool broadcast(float* buf, size_t n, int root) override {
    return call("ncclBroadcast", [&] { return ncclBroadcast(buf, buf, n, ncclFloat, root, comm(), stream()); });
  }

  void abort() override { group_->abort(); }
  const std::string& last_error() const override { return error_; }

 private:
  ncclComm_t comm() const { return group_->comm(index_); }
  cudaStream_t stream() const { return static_cast<cudaStream_t>(backend_.stream()); }
  // Runs nccl_call (an NCCL collective on comm()) on the rank's device, inside the group's
  // begin_call()/end_call(); false, with error_ set, when the group was aborted or a call
  // failed.
  template <class F>
  bool call(const char* name, F nccl_call) {
    if (!group_->begin_call()) {
      error_ = "NCCL communicator group aborted (another rank gave up)";
      return false;
    }
    bool ok = false;
    const cudaError_t e = cudaSetDevice(backend_.options().device);
    if (e != cudaSuccess) {
      error_ = std::string("cudaSetDevice failed: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
    } else {
      const ncclResult_t r = nccl_call();
      ok = r == ncclSuccess;
      if (!ok) error_ = nccl_error(name, r, comm());
    }
    group_->end_call();
    return ok;
  }

  std::shared_ptr<NcclGroup> group_;
  const int index_, rank_, size_;
  CudaBackend& backend_;
  std::string error_;
};

}  // namespace

bool nccl_available(std::string* version) {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return false;
  if (version) {  // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z since 2.9
    *version = std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
  }
  return true;
}

std::vector<std::unique_ptr<Communicator>> make_nccl_comm_group(const std::vector<CudaBackend*>& backends,
                                                                std::string* error) {
  std::string ignored;
  std::string& err = error ? *error : ignored;
  const int n = static_cast<int>(backends.size());
  if (n == 0) {
    err = "an NCCL group needs at least one GPU";
    return {};
  }
  std::vector<int> devices;
  for (const CudaBackend* b : backends) {
    const int d = b->options().device;
    if (std::find(devices.begin(), devices.end(), d) != devices.end()) {
      err = "GPU " + std::to_string(d) + " appears twice in the NCCL group (NCCL needs one GPU per rank)";
      return {};
    }
    devices.push_back(d);
  }
  std::vector<ncclComm_t> comms(n, nullptr);
  const ncclResult_t r = ncclCommInitAll(comms.data(), n, devices.data());
  if (r != ncclSuccess) {
    err = nccl_error("ncclCommInitAll", r, nullptr);
    return {};
  }
  auto group = std::make_shared<NcclGroup>(std::move(comms));
  std::vector<std::unique_ptr<Communicator>> out;
  for (int i = 0; i < n; ++i) out.push_back(std::make_unique<NcclCommunicator>(group, i, i, n, *backends[i]));
  return out;
}

bool make_nccl_unique_id(std::string* id, std::string* error) {
  ncclUniqueId uid;
  const ncclResult_t r = ncclGetUniqueId(&uid);
  if (r != ncclSuccess) {
    if (error) *error = nccl_error("ncclGetUniqueId", r, nullptr);
    return false;
  }
  id->assign(uid.internal, sizeof(uid.internal));
  return true;
}

std::unique_ptr<Communicator> make_nccl_comm(const std::string& unique_id, int rank, int n_ranks, CudaBackend& backend,
                                             std::string* error) {
  std::string ignored;
  std::string& err = error ? *error : ignored;
  ncclUniqueId uid;
  if (unique_id.size() != sizeof(uid.internal)) {
    err = "an NCCL unique id has " + std::to_string(sizeof(uid.internal)) + " bytes, got " + std::to_string(unique_id.size());
    return nullptr;
  }
  if (n_ranks < 1 || rank < 0 || rank >= n_ranks) {
    err = "rank " + std::to_string(rank) + " is outside [0, " + std::to_string(n_ranks) + ")";
    return nullptr;
  }
  std::copy(unique_id.begin(), unique_id.end(), uid.internal);
  const cudaError_t e = cudaSetDevice(backend.options().device);
  if (e != cudaSuccess) {
    err = std::string("cudaSetDevice failed: ") + cudaGetErrorName(e);
    return nullptr;
  }
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRank(&comm, n_ranks, uid, rank);
  if (r != ncclSuccess) {
    err = nccl_error("ncclCommInitRank", r, nullptr);
    return nullptr;
  }
  auto group = std::make_shared<NcclGroup>(std::vector<ncclComm_t>{comm});
  return std::make_unique<NcclCommunicator>(std::move(group), 0, rank, n_ranks, backend);
}

#else  // !DS_HAVE_NCCL

namespace {
const char* kNoNccl =
    "this build of ds has no NCCL (nccl.h and libnccl were not found when configuring; install NCCL, e.g. "
    "libnccl-dev, or set NCCL_HOME, and reconfigure)";
}  // namespace

bool nccl_available(std::string* version) {
  if (version) version->clear();
  return false;
}

std::vector<std::unique_ptr<Communicator>> make_nccl_comm_group(const std::vector<CudaBackend*>&, std::string* error) {
  if (error) *error = kNoNccl;
  return {};
}

bool make_nccl_unique_id(std::string*, std::string* error) {
  if (error) *error = kNoNccl;
  return false;
}

std::unique_ptr<Communicator> make_nccl_comm(const std::string&, int, int, CudaBackend&, std::string* error) {
  if (error) *error = kNoNccl;
  return nullptr;
}

#endif  // DS_HAVE_NCCL

}  // namespace ds
