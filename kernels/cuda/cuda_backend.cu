// kernels/cuda/cuda_backend.cu: CudaBackend (see cuda_backend.h): argument checks, error
// capture, memory, and dispatch to the kernels in elementwise.cu, gemv.cu, attention.cu
// and to cuBLAS; plus make_cuda_backend() and cuda_backend_available() (backend.h).
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/ops.cuh"

// Checks a CUDA / cuBLAS call made in a CudaBackend method; false (and the error kept) on failure.
#define DS_CUDA_CHECK(op, call) check_cuda(static_cast<int>(call), op, #call, __FILE__, __LINE__)
#define DS_CUBLAS_CHECK(op, call) check_cublas(static_cast<int>(call), op, #call, __FILE__, __LINE__)

namespace ds {
namespace {

// Pinned host memory that small uploads are staged in (recycled at every wait).
constexpr size_t kStagingBytes = size_t{1} << 20;

// cuBLAS's workspace, allocated once and set on the handle, so that a recorded (captured)
// GEMM never allocates: 32 MiB, what cuBLAS recommends for Hopper.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

// Scratch for dequantized weights on the cuBLAS path: at most this many floats (64 MiB);
// larger matrices are multiplied in slices of rows.
constexpr int64_t kScratchFloats = int64_t{16} << 20;

bool supported(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kQ8_0 || t == DType::kQ4_0 ||
         t == DType::kQ4_K || t == DType::kQ6_K;
}

const char* type_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kQ8_0: return "q8_0";
    case DType::kQ4_0: return "q4_0";
    case DType::kQ4_K: return "q4_k";
    case DType::kQ6_K: return "q6_k";
    default: return "an unsupported type";
  }
}

std::string dtype_name_or_id(DType t) {
  return supported(t) ? type_name(t) : "id " + std::to_string(static_cast<uint32_t>(t));
}

int block_elems(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 ? 32 : t == DType::kQ4_K || t == DType::kQ6_K ? 256 : 1;
}

// Bytes of one row of `cols` elements (as row_bytes() in dtype.cc; kept local so that
// ds_cuda needs no symbol of ds_kernels). REQUIRES: supported(t).
size_t row_bytes_of(DType t, int64_t cols) {
  switch (t) {
    case DType::kF32: return static_cast<size_t>(cols) * 4;
    case DType::kF16:
    case DType::kBF16: return static_cast<size_t>(cols) * 2;
    case DType::kQ8_0: return static_cast<size_t>(cols / 32) * sizeof(BlockQ8_0);
    case DType::kQ4_0: return static_cast<size_t>(cols / 32) * sizeof(BlockQ4_0);
    case DType::kQ4_K: return static_cast<size_t>(cols / 256) * sizeof(BlockQ4_K);
    case DType::kQ6_K: return static_cast<size_t>(cols / 256) * sizeof(BlockQ6_K);
    default: return 0;
  }
}

// The kernels' type for w: kQ8_0Split for Q8_0 in kLayoutQ8_0Split, else w.type.
DType kernel_type(const WeightRef& w) {
  return w.type == DType::kQ8_0 && w.layout == kLayoutQ8_0Split ? cuda::kQ8_0Split : w.type;
}

// The GEMV launch's view of rows [j0, j0 + kGemvMaxN) of a Q/K/V projection.
cuda::GemvQkv qkv_rows(const WeightRef& wq, const WeightRef& wk, const WeightRef& wv, const float* bq, const float* bk,
                       const float* bv, float* q, float* k, float* v, int64_t j0) {
  return cuda::GemvQkv{{wq.data, wk.data, wv.data},
                       {bq, bk, bv},
                       {q + j0 * wq.rows, k + j0 * wk.rows, v + j0 * wv.rows},
                       {wq.rows, wk.rows, wv.rows}};
}

// "kernels/cuda/x.cu" out of an absolute __FILE__.
const char* short_path(const char* file) {
  const char* p = std::strstr(file, "kernels/");
  return p ? p : file;
}

// "cudaMemcpyAsync" out of "cudaMemcpyAsync(dst, src, ...)".
std::string call_name(const char* call) {
  const char* paren = std::strchr(call, '(');
  return paren ? std::string(call, paren) : std::string(call);
}

const char* cuda_hint(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return " HINT: the GPU is out of memory: lower the KV cache or batch size, or look for other processes in "
             "nvidia-smi.";
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
      return " HINT: no usable GPU: check nvidia-smi, CUDA_VISIBLE_DEVICES, and that the driver supports CUDA 13.";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
      return " HINT: a kernel accessed memory out of bounds and the CUDA context is now unusable: drop this backend; "
             "to find the op, rerun with CudaBackendOptions::sync_each_op or under compute-sanitizer.";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return " HINT: this build has kernels for sm_90 only (CUDA_ARCHITECTURES in kernels/cuda/CMakeLists.txt), or the "
             "driver is older than the toolkit.";
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevicePointer:
      return " HINT: is every pointer memory from this backend's alloc()?";
    default:
      return "";
  }
}

std::string describe(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")" + cuda_hint(e);
}

}  // namespace

struct CudaBackend::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  uint8_t* staging = nullptr;  // kStagingBytes of pinned memory, or null (uploads then wait)
  bool staging_failed = false;
  size_t staged = 0;           // bytes of staging handed out since the last wait
#ifndef DS_CUDA_EMULATION
  std::map<uint64_t, cudaGraphExec_t> graphs;
#endif
  std::set<uint64_t> refused;  // keys whose recording failed: never tried again
  std::map<uint64_t, int> retried;  // keys whose recording failed only for scratch growth: retries
  void* cublas_workspace = nullptr;  // kCublasWorkspaceBytes, set as the handle's workspace
  cudaEvent_t prof_start = nullptr, prof_stop = nullptr;  // profile_ops
  cudaEvent_t replay_start = nullptr, replay_stop = nullptr;  // time_replays
  bool replay_pending = false;  // a timed replay not yet counted in replay_ms_
  std::string fused_refusal;  // why the last fused_decode_prepare() returned -1 ("" if not asked)
  struct Fused {  // a fused_decode_prepare()d model
    cuda::FusedDecodeArgs args;
    int blocks = 0;
  };
  std::vector<Fused> fused;
  std::vector<void*> fused_memory;  // the layer tables and barrier counters
  // options.l2_prefetch: for the first matrix of each op, the matrices the op after it read
  // last time (at most l2_budget bytes of them); the first matrix of the op before.
  std::unordered_map<const void*, cuda::L2Prefetch> l2_next;
  const void* l2_last = nullptr;
  uint64_t l2_budget = uint64_t{24} << 20;  // half the device's L2: room for this op's matrices too
  std::map<const void*, size_t> alloc_bytes;  // alloc()'s allocations (free() drops what lay in them)
  struct HalfCopy {
    uint16_t* data;
    size_t bytes;         // of the copy
    size_t source_bytes;  // of the matrix it copies, from its address
  };
  std::map<const void*, HalfCopy> half_cache;  // options.half_weight_cache: by the weight's address
  size_t half_cache_bytes = 0;
};

// Made at the start of each public matmul op with the matrices it reads: records them as what
// follows the op before, and finds what followed this op's first matrix last time (next, for
// the op's GEMV launches to ask L2 for). Only the outermost op: the ops Backend's defaults issue
// from inside one (this->matmul ...) neither learn nor prefetch.
struct CudaBackend::L2Op {
  CudaBackend* b;
  const cuda::L2Prefetch* next = nullptr;
  L2Op(CudaBackend* backend, std::initializer_list<const WeightRef*> ws) : b(backend) {
    if (b->l2_depth_++ > 0 || ws.size() == 0) return;
    Impl& im = *b->impl_;
    const void* key = (*ws.begin())->data;
    if (key == nullptr) return;
    if (im.l2_last != nullptr && key != im.l2_last) {
      cuda::L2Prefetch here;
      uint64_t budget = im.l2_budget;
      int k = 0;
      for (const WeightRef* w : ws) {
        if (k == cuda::kL2PrefetchRanges || w->data == nullptr || w->rows <= 0) break;
        const auto begin = reinterpret_cast<uintptr_t>(w->data);
        const uintptr_t first = (begin + 15) & ~uintptr_t{15};
        const uintptr_t end = begin + static_cast<uintptr_t>(w->rows) * row_bytes_of(w->type, w->cols);
        if (end < first + 16) continue;
        const uint64_t bytes = std::min<uint64_t>((end - first) & ~uint64_t{15}, budget & ~uint64_t{15});
        if (bytes == 0) break;
        here.ptr[k] = reinterpret_cast<const void*>(first);
        here.bytes[k++] = bytes;
        budget -= bytes;
      }
      im.l2_next[im.l2_last] = here;
    }
    im.l2_last = key;
    if (!b->options_.l2_prefetch) return;
    const auto it = im.l2_next.find(key);
    if (it != im.l2_next.end() && it->second.bytes[0] > 0) next = &it->second;
  }
  ~L2Op() { --b->l2_depth_; }
  L2Op(const L2Op&) = delete;
  L2Op& operator=(const L2Op&) = delete;
  // For the launch of activation rows from j0: the first launch of an op asks, the others not.
  const cuda::L2Prefetch* at(int64_t j0) const { return j0 == 0 ? next : nullptr; }
};

CudaBackend::CudaBackend(const CudaBackendOptions& options) : options_(options), impl_(std::make_unique<Impl>()) {
  impl_->device = options.device;
}

std::unique_ptr<CudaBackend> CudaBackend::create(const CudaBackendOptions& options, std::string* error) {
  auto refuse = [&](const std::string& why) -> std::unique_ptr<CudaBackend> {
    if (error) *error = why;
    return nullptr;
  };
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return refuse("cuda: cudaGetDeviceCount failed: " + describe(e));
  }
  if (options.device < 0 || options.device >= count)
    return refuse("cuda: no GPU " + std::to_string(options.device) + " (" + std::to_string(count) +
                  " visible; check CUDA_VISIBLE_DEVICES)");
  cudaDeviceProp prop{};
  if (const cudaError_t pe = cudaGetDeviceProperties(&prop, options.device); pe != cudaSuccess) {
    cudaGetLastError();
    return refuse("cuda: cudaGetDeviceProperties failed: " + describe(pe));
  }
  if (prop.major < 9)
    return refuse(std::string("cuda: GPU ") + prop.name + " is sm_" + std::to_string(prop.major) +
                  std::to_string(prop.minor) +
                  "; this build has kernels for sm_90 and newer only (CUDA_ARCHITECTURES in "
                  "kernels/cuda/CMakeLists.txt)");

  std::unique_ptr<CudaBackend> b(new CudaBackend(options));
  char desc[320];
  std::snprintf(desc, sizeof desc, "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  b->device_description_ = desc;
  if (prop.l2CacheSize > 0) b->impl_->l2_budget = static_cast<uint64_t>(prop.l2CacheSize) / 2;
  if (!b->start()) return refuse(b->last_error());
  if (options.self_check) {
    if (std::string why = b->apply_self_check(); !why.empty()) return refuse(why);
  }
  return b;
}

bool CudaBackend::start() {
  constexpr const char* kOp = "create";
  return begin(kOp) && DS_CUDA_CHECK(kOp, cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking)) &&
         DS_CUBLAS_CHECK(kOp, cublasCreate(&impl_->cublas)) &&
         DS_CUBLAS_CHECK(kOp, cublasSetStream(impl_->cublas, impl_->stream)) &&
         DS_CUDA_CHECK(kOp, cudaMalloc(&impl_->cublas_workspace, kCublasWorkspaceBytes)) &&
         DS_CUBLAS_CHECK(kOp, cublasSetWorkspace(impl_->cublas, impl_->cublas_workspace, kCublasWorkspaceBytes)) &&
         DS_CUDA_CHECK(kOp, cudaMalloc(reinterpret_cast<void**>(&norm_counter_), 256)) &&
         DS_CUDA_CHECK(kOp, cudaMemsetAsync(norm_counter_, 0, 256, impl_->stream)) &&
         (!options_.profile_ops || (DS_CUDA_CHECK(kOp, cudaEventCreate(&impl_->prof_start)) &&
                                    DS_CUDA_CHECK(kOp, cudaEventCreate(&impl_->prof_stop)))) &&
         (!options_.time_replays || (DS_CUDA_CHECK(kOp, cudaEventCreate(&impl_->replay_start)) &&
                                     DS_CUDA_CHECK(kOp, cudaEventCreate(&impl_->replay_stop))));
}

CudaBackend::~CudaBackend() {
  if (!impl_) return;
  cudaSetDevice(impl_->device);
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
#ifndef DS_CUDA_EMULATION
  for (auto& [key, exec] : impl_->graphs) cudaGraphExecDestroy(exec);
#endif
  if (impl_->staging) cudaFreeHost(impl_->staging);
  if (impl_->prof_start) cudaEventDestroy(impl_->prof_start);
  if (impl_->prof_stop) cudaEventDestroy(impl_->prof_stop);
  if (impl_->replay_start) cudaEventDestroy(impl_->replay_start);
  if (impl_->replay_stop) cudaEventDestroy(impl_->replay_stop);
  if (scratch_) cudaFree(scratch_);
  if (norm_counter_) cudaFree(norm_counter_);
  for (void* p : impl_->fused_memory) cudaFree(p);
  if (impl_->cublas) cublasDestroy(impl_->cublas);
  if (impl_->cublas_workspace) cudaFree(impl_->cublas_workspace);
  for (auto& [key, copy] : impl_->half_cache) cudaFree(copy.data);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
  cudaGetLastError();
}

void* CudaBackend::stream() const { return impl_->stream; }

// ---- error capture ------------------------------------------------------------------

bool CudaBackend::fail(const char* op, const std::string& what, const char* file, int line) {
  if (error_.empty())
    error_ = std::string("cuda ") + op + ": " + what + " (" + short_path(file) + ":" + std::to_string(line) + ")";
  return false;
}

bool CudaBackend::check_cuda(int code, const char* op, const char* call, const char* file, int line) {
  const auto e = static_cast<cudaError_t>(code);
  if (e == cudaSuccess) return true;
  cudaGetLastError();  // reset a non-sticky error so the next launch check does not see it again
  // While recording nothing runs: an error fails the recording, and the step then runs
  // eagerly, where a real error fails the backend.
  if (capturing_) return !capture_refuses(op);
  return fail(op, call_name(call) + " failed: " + describe(e), file, line);
}

bool CudaBackend::check_cublas(int status, const char* op, const char* call, const char* file, int line) {
  const auto s = static_cast<cublasStatus_t>(status);
  if (s == CUBLAS_STATUS_SUCCESS) return true;
  if (capturing_) return !capture_refuses(op);  // as in check_cuda
  std::string what = call_name(call) + " failed: " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")";
  if (s == CUBLAS_STATUS_NOT_INITIALIZED || s == CUBLAS_STATUS_ALLOC_FAILED)
    what += " HINT: cuBLAS could not start or allocate its workspace: is the GPU out of memory?";
  return fail(op, what, file, line);
}

bool CudaBackend::begin(const char* op) {
  if (!DS_CUDA_CHECK(op, cudaSetDevice(impl_->device))) return false;
  if (options_.profile_ops && impl_->prof_start) DS_CUDA_CHECK(op, cudaEventRecord(impl_->prof_start, impl_->stream));
  return true;
}

void CudaBackend::end(const char* op) {
  if (options_.profile_ops && impl_->prof_stop) {
    float ms = 0;
    if (DS_CUDA_CHECK(op, cudaEventRecord(impl_->prof_stop, impl_->stream)) &&
        DS_CUDA_CHECK(op, cudaEventSynchronize(impl_->prof_stop)) &&
        DS_CUDA_CHECK(op, cudaEventElapsedTime(&ms, impl_->prof_start, impl_->prof_stop))) {
      OpTime& t = profile_[op];
      ++t.calls;
      t.ms += ms;
    }
  }
  if (options_.sync_each_op) DS_CUDA_CHECK(op, cudaStreamSynchronize(impl_->stream));
}

bool CudaBackend::wait(const char* op) {
  if (capture_refuses(op)) return false;
  const bool done = DS_CUDA_CHECK(op, cudaStreamSynchronize(impl_->stream));
  impl_->staged = 0;  // every staged copy has run
  if (done && impl_->replay_pending) {  // time_replays: the replay has run too
    float ms = 0;
    if (DS_CUDA_CHECK(op, cudaEventElapsedTime(&ms, impl_->replay_start, impl_->replay_stop))) replay_ms_ += ms;
    impl_->replay_pending = false;
  }
  return done;
}

bool CudaBackend::capture_refuses(const char* /*op*/, bool for_now) {
  if (!capturing_) return false;
  capture_failed_ = true;
  if (for_now) capture_retry_ = true;
  else capture_final_ = true;
  return true;
}

bool CudaBackend::synchronize() {
  constexpr const char* kOp = "synchronize";
  return begin(kOp) && wait(kOp) && ok();
}

// ---- recording (CUDA graphs) ----------------------------------------------------------

size_t CudaBackend::recordings() const {
#ifndef DS_CUDA_EMULATION
  return impl_->graphs.size();
#else
  return 0;
#endif
}

bool CudaBackend::replay(uint64_t key) {
#ifndef DS_CUDA_EMULATION
  constexpr const char* kOp = "replay";
  if (capturing_) return false;
  const auto it = impl_->graphs.find(key);
  if (it == impl_->graphs.end() || !begin(kOp)) return false;
  const bool timed = impl_->replay_start != nullptr && !impl_->replay_pending;
  if (timed && !DS_CUDA_CHECK(kOp, cudaEventRecord(impl_->replay_start, impl_->stream))) return false;
  if (!DS_CUDA_CHECK(kOp, cudaGraphLaunch(it->second, impl_->stream))) return false;
  if (timed && !DS_CUDA_CHECK(kOp, cudaEventRecord(impl_->replay_stop, impl_->stream))) return false;
  impl_->replay_pending = impl_->replay_pending || timed;
  ++replays_;
  end(kOp);
  return true;
#else
  return false;
#endif
}

bool CudaBackend::record_begin(uint64_t key) {
#ifndef DS_CUDA_EMULATION
  constexpr const char* kOp = "record";
  if (options_.sync_each_op || options_.profile_ops || !options_.record_graphs || capturing_ || impl_->refused.count(key) || impl_->graphs.count(key) || !ok()) return false;
  if (!begin(kOp)) return false;
  if (cudaStreamBeginCapture(impl_->stream, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
    cudaGetLastError();
    impl_->refused.insert(key);
    return false;
  }
  capturing_ = true;
  capture_failed_ = capture_retry_ = capture_final_ = false;
  capture_key_ = key;
  return true;
#else
  return false;
#endif
}

bool CudaBackend::record_end() {
#ifndef DS_CUDA_EMULATION
  if (!capturing_) return false;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamEndCapture(impl_->stream, &graph);
  cudaGraphExec_t exec = nullptr;
  if (e == cudaSuccess && graph != nullptr && !capture_failed_ && ok()) e = cudaGraphInstantiate(&exec, graph, 0);
  else if (e == cudaSuccess) e = cudaErrorStreamCaptureInvalidated;
  if (graph) cudaGraphDestroy(graph);
  if (e != cudaSuccess || exec == nullptr) {
    cudaGetLastError();
    // Refused for good unless only the scratch buffer was too small (a few tries).
    const bool retry = capture_retry_ && !capture_final_ && ++impl_->retried[capture_key_] <= kRecordRetries;
    if (!retry) impl_->refused.insert(capture_key_);
    return false;
  }
  impl_->graphs[capture_key_] = exec;
  return true;
#else
  return false;
#endif
}

void CudaBackend::forget_recordings() {
#ifndef DS_CUDA_EMULATION
  if (impl_->graphs.empty() || capturing_) return;
  begin("forget_recordings");
  cudaStreamSynchronize(impl_->stream);
  for (auto& [key, exec] : impl_->graphs) cudaGraphExecDestroy(exec);
  impl_->graphs.clear();
  impl_->refused.clear();
  impl_->retried.clear();
#endif
}

// ---- memory -------------------------------------------------------------------------

bool CudaBackend::memory_info(size_t* free_bytes, size_t* total_bytes) const {
  if (cudaSetDevice(impl_->device) != cudaSuccess || cudaMemGetInfo(free_bytes, total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}

void* CudaBackend::alloc(size_t bytes) {
  constexpr const char* kOp = "alloc";
  if (capture_refuses(kOp) || !begin(kOp)) return nullptr;
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, rounded);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return nullptr;  // out of memory: the caller's nullptr, not a backend failure
  }
  if (!DS_CUDA_CHECK(kOp, e)) return nullptr;
  if (!DS_CUDA_CHECK(kOp, cudaMemsetAsync(p, 0, rounded, impl_->stream))) {
    cudaFree(p);
    return nullptr;
  }
  impl_->alloc_bytes[p] = rounded;
  end(kOp);
  return p;
}

void CudaBackend::free(void* p) {
  constexpr const char* kOp = "free";
  if (p == nullptr || capture_refuses(kOp) || !begin(kOp)) return;
  wait(kOp);
  impl_->l2_next.clear();  // it may have held p's bytes: learned again from the next ops
  impl_->l2_last = nullptr;
  if (const auto a = impl_->alloc_bytes.find(p); a != impl_->alloc_bytes.end()) {
    drop_half_copies(p, a->second);  // of matrices that lay in the allocation
    impl_->alloc_bytes.erase(a);
  }
  DS_CUDA_CHECK(kOp, cudaFree(p));
}

void CudaBackend::upload(void* dst, const void* src, size_t bytes) {
  constexpr const char* kOp = "upload";
  if (bytes == 0 || capture_refuses(kOp) || !begin(kOp)) return;
  drop_half_copies(dst, bytes);  // a matrix whose bytes change loses its F16 copy
  if (bytes <= kStagedUploadBytes && impl_->staging == nullptr && !impl_->staging_failed) {
    void* p = nullptr;
    if (cudaMallocHost(&p, kStagingBytes) == cudaSuccess) {
      impl_->staging = static_cast<uint8_t*>(p);
    } else {
      cudaGetLastError();
      impl_->staging_failed = true;  // uploads wait instead
    }
  }
  if (bytes <= kStagedUploadBytes && impl_->staging != nullptr) {
    if (impl_->staged + bytes > kStagingBytes && !wait(kOp)) return;
    uint8_t* stage = impl_->staging + impl_->staged;
    std::memcpy(stage, src, bytes);
    impl_->staged += (bytes + 255) / 256 * 256;
    DS_CUDA_CHECK(kOp, cudaMemcpyAsync(dst, stage, bytes, cudaMemcpyHostToDevice, impl_->stream));
    return end(kOp);
  }
  if (DS_CUDA_CHECK(kOp, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, impl_->stream))) wait(kOp);
}

WeightRef CudaBackend::upload_weight(const WeightRef& w, void* dst) {
  if (!options_.q8_0_split || w.type != DType::kQ8_0 || w.layout != kLayoutGguf || w.cols % 32 != 0 || w.rows <= 0)
    return Backend::upload_weight(w, dst);
  // Rows rewritten into the split layout in slices of about 8 MiB (whole rows), each uploaded
  // before the next (upload() has copied or staged the bytes when it returns).
  const size_t stride = row_bytes_of(w.type, w.cols);
  const int64_t per_slice = std::max<int64_t>(1, static_cast<int64_t>((size_t{8} << 20) / stride));
  std::vector<uint8_t> buf(static_cast<size_t>(std::min(per_slice, w.rows)) * stride);
  const auto* src = static_cast<const uint8_t*>(w.data);
  auto* out = static_cast<uint8_t*>(dst);
  const int64_t blocks = w.cols / 32;
  for (int64_t r0 = 0; r0 < w.rows; r0 += per_slice) {
    const int64_t nr = std::min(per_slice, w.rows - r0);
    for (int64_t r = 0; r < nr; ++r) {
      const uint8_t* row = src + (r0 + r) * stride;
      uint8_t* quants = buf.data() + r * stride;
      uint8_t* scales = quants + w.cols;
      for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ8_0);
        std::memcpy(scales + 2 * b, blk, 2);
        std::memcpy(quants + 32 * b, blk + 2, 32);
      }
    }
    upload(out + r0 * stride, buf.data(), static_cast<size_t>(nr) * stride);
    if (!ok()) break;
  }
  WeightRef d = w;
  d.data = dst;
  d.layout = kLayoutQ8_0Split;
  return d;
}

void CudaBackend::download(void* dst, const void* src, size_t bytes) {
  constexpr const char* kOp = "download";
  if (bytes == 0 || capture_refuses(kOp) || !begin(kOp)) return;
  if (DS_CUDA_CHECK(kOp, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, impl_->stream))) wait(kOp);
}

float* CudaBackend::scratch(size_t bytes, const char* op) {
  if (bytes <= scratch_bytes_) return static_cast<float*>(scratch_);
  if (capture_refuses(op, /*for_now=*/true)) return nullptr;  // the eager run grows it; then record again
  if (scratch_) {
    forget_recordings();  // recorded steps point into the old buffer (the cuBLAS and tensor-core paths)
    wait(op);
    DS_CUDA_CHECK(op, cudaFree(scratch_));
    scratch_ = nullptr;
    scratch_bytes_ = 0;
  }
  if (!DS_CUDA_CHECK(op, cudaMalloc(&scratch_, bytes))) {
    scratch_ = nullptr;
    return nullptr;
  }
  scratch_bytes_ = bytes;
  return static_cast<float*>(scratch_);
}

// ---- ops ----------------------------------------------------------------------------

// Validates a weight matrix; false (error kept) when the kernels cannot take it.
#define DS_CHECK_WEIGHT(op, w)                                                                                    \
  do {                                                                                                            \
    if (!supported((w).type))                                                                                     \
      return (void)fail(op, std::string("weight type ") + dtype_name_or_id((w).type) + " is not supported (f32, "  \
                                "f16, bf16, q8_0, q4_0, q4_k, q6_k)", __FILE__, __LINE__);                        \
    if ((w).rows < 0 || (w).cols < 0 || (w).cols % block_elems((w).type) != 0)                                   \
      return (void)fail(op, "bad weight shape [" + std::to_string((w).rows) + ", " + std::to_string((w).cols) +   \
                                "] for " + type_name((w).type), __FILE__, __LINE__);                              \
    if (reinterpret_cast<uintptr_t>((w).data) % ((w).type == DType::kF32 ? 4 : 2) != 0)                           \
      return (void)fail(op, std::string("weight data is not aligned for ") + type_name((w).type), __FILE__,       \
                        __LINE__);                                                                                \
    if ((w).layout != kLayoutGguf && !((w).layout == kLayoutQ8_0Split && (w).type == DType::kQ8_0))                \
      return (void)fail(op, "weight layout " + std::to_string((w).layout) + " is not one for " +                  \
                                type_name((w).type), __FILE__, __LINE__);                                         \
  } while (0)

void CudaBackend::matmul(const WeightRef& w, const float* x, int64_t n, float* y) {
  constexpr const char* kOp = "matmul";
  const L2Op l2(this, {&w});
  if (!begin(kOp)) return;
  DS_CHECK_WEIGHT(kOp, w);
  if (options_.gemv_version < 1 || options_.gemv_version > cuda::kGemvVersions)
    return (void)fail(kOp, "no GEMV version " + std::to_string(options_.gemv_version), __FILE__, __LINE__);
  if (n <= 0 || w.rows == 0) return;
  if (w.cols == 0) {  // empty dot products
    DS_CUDA_CHECK(kOp, cudaMemsetAsync(y, 0, static_cast<size_t>(n * w.rows) * sizeof(float), impl_->stream));
    return end(kOp);
  }
  const size_t stride = row_bytes_of(w.type, w.cols);
  if (n <= gemv_limit(w.type) && options_.int8_gemv && cuda::gemv_i8_supports(kernel_type(w), w.cols)) {
    const int nb0 = static_cast<int>(std::min<int64_t>(cuda::kGemvMaxN, n));
    void* buf = scratch(cuda::gemv_i8_scratch_bytes(w.cols, nb0), kOp);
    if (buf == nullptr) return;
    for (int64_t j0 = 0; j0 < n; j0 += cuda::kGemvMaxN) {
      const int nb = static_cast<int>(std::min<int64_t>(cuda::kGemvMaxN, n - j0));
      if (!DS_CUDA_CHECK(kOp, cuda::gemv_i8(kernel_type(w), w.data, stride, w.rows, w.cols, x + j0 * w.cols, nb,
                                            y + j0 * w.rows, buf, impl_->stream)))
        return;
    }
  } else if (n <= gemv_limit(w.type)) {
    for (int64_t j0 = 0; j0 < n; j0 += cuda::kGemvMaxN) {
      const int nb = static_cast<int>(std::min<int64_t>(cuda::kGemvMaxN, n - j0));
      const int version = options_.gemv_stream && options_.gemv_version == 3 && nb == 1 ? 5 : options_.gemv_version;
      if (!DS_CUDA_CHECK(kOp, cuda::gemv(version, kernel_type(w), w.data, stride, w.rows, w.cols,
                                         x + j0 * w.cols, nb, y + j0 * w.rows, impl_->stream, options_.pdl,
                                         l2.at(j0))))
        return;
    }
  } else if (tc_gemm_applies(w, n)) {
    matmul_tc(kOp, {{&w, y}}, x, n, false, l2.at(0));
  } else {
    matmul_cublas(w, stride, x, n, y);  // recorded too (cuBLAS has its own workspace: no allocation)
  }
  end(kOp);
}

std::vector<std::pair<const void*, uint64_t>> CudaBackend::l2_prefetch_after(const void* first_weight) const {
  std::vector<std::pair<const void*, uint64_t>> out;
  const auto it = impl_->l2_next.find(first_weight);
  if (it == impl_->l2_next.end()) return out;
  for (int i = 0; i < cuda::kL2PrefetchRanges && it->second.bytes[i] > 0; ++i)
    out.emplace_back(it->second.ptr[i], it->second.bytes[i]);
  return out;
}

int CudaBackend::gemv_limit(DType t) const {
  if (options_.batch_invariant) return INT_MAX;
  if (options_.gemv_max_batch > 0) return options_.gemv_max_batch;
  switch (t) {
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kQ8_0: case DType::kQ4_0: return 4;
    default: return 8;
  }
}

bool CudaBackend::tc_gemm_applies(const WeightRef& w, int64_t n) const {
  const bool type_on = w.type == DType::kQ8_0 || w.type == DType::kQ4_0 || options_.tc_gemm_every_type;
  return options_.tc_gemm && type_on && !options_.batch_invariant && n > gemv_limit(w.type) &&
         n <= cuda::kGemmTcMaxN && w.rows > 0 &&
         cuda::gemm_tc_supports(kernel_type(w), w.data, row_bytes_of(w.type, w.cols), w.cols, static_cast<int>(n));
}

void CudaBackend::matmul_tc(const char* op, std::initializer_list<std::pair<const WeightRef*, float*>> parts,
                            const float* x, int64_t n, bool add, const cuda::L2Prefetch* l2) {
  const WeightRef& w0 = *parts.begin()->first;
  cuda::GemmTcMatrix m[cuda::kGemmTcMaxParts];
  int count = 0;
  for (const auto& [w, y] : parts) m[count++] = cuda::GemmTcMatrix{w->data, w->rows, y};
  const int nn = static_cast<int>(n);
  void* buf = scratch(cuda::gemm_tc_scratch_bytes(kernel_type(w0), m, count, w0.cols, nn), op);
  if (buf == nullptr) return;
  DS_CUDA_CHECK(op, cuda::gemm_tc(kernel_type(w0), m, count, row_bytes_of(w0.type, w0.cols), w0.cols, x, nn, add, buf,
                                  impl_->stream, l2));
}

bool CudaBackend::tc_gemm_fuses(const WeightRef& a, const WeightRef& b, int64_t n) const {
  return options_.fuse_decode && tc_gemm_applies(a, n) && tc_gemm_applies(b, n) && a.type == b.type &&
         a.layout == b.layout && a.cols == b.cols;
}

// The fused GEMV kernels take two (three) matrices of one type and column count, on the
// GEMV path only (the cuBLAS path keeps the separate ops), with gemv v3's per-row code.
bool CudaBackend::fused_gemv_applies(const WeightRef& a, const WeightRef& b, int64_t n) const {
  return options_.fuse_decode && options_.gemv_version == 3 && n >= 1 &&
         n <= gemv_limit(a.type) && supported(a.type) &&
         a.type == b.type && a.layout == b.layout && a.cols == b.cols && a.cols > 0 && a.cols % block_elems(a.type) == 0 && a.rows > 0 &&
         b.rows > 0;
}

void CudaBackend::matmul_qkv(const WeightRef& wq, const WeightRef& wk, const WeightRef& wv, const float* bq,
                             const float* bk, const float* bv, const float* x, int64_t n, float* q, float* k,
                             float* v) {
  constexpr const char* kOp = "matmul_qkv";
  const L2Op l2(this, {&wq, &wk, &wv});
  // Past the fused GEMV: one tensor-core launch for the three, or cuBLAS with x rounded once
  // for the three; the biases after, as Backend's.
  const bool gemv = fused_gemv_applies(wq, wk, n) && fused_gemv_applies(wq, wv, n);
  const bool tc = !gemv && tc_gemm_fuses(wq, wk, n) && tc_gemm_fuses(wq, wv, n);
  if (tc || (!gemv && cublas_half_shares_x({&wq, &wk, &wv}, n))) {
    if (!begin(kOp)) return;
    DS_CHECK_WEIGHT(kOp, wq);
    DS_CHECK_WEIGHT(kOp, wk);
    DS_CHECK_WEIGHT(kOp, wv);
    if (tc) matmul_tc(kOp, {{&wq, q}, {&wk, k}, {&wv, v}}, x, n, false, l2.at(0));
    else matmul_cublas_half(kOp, {{&wq, q}, {&wk, k}, {&wv, v}}, x, n, false);
    end(kOp);
    if (bq) add_bias(q, bq, n, wq.rows);
    if (bk) add_bias(k, bk, n, wk.rows);
    if (bv) add_bias(v, bv, n, wv.rows);
    return;
  }
  if (!gemv) return Backend::matmul_qkv(wq, wk, wv, bq, bk, bv, x, n, q, k, v);
  if (!begin(kOp)) return;
  DS_CHECK_WEIGHT(kOp, wq);
  DS_CHECK_WEIGHT(kOp, wk);
  DS_CHECK_WEIGHT(kOp, wv);
  const size_t stride = row_bytes_of(wq.type, wq.cols);
  for (int64_t j0 = 0; j0 < n; j0 += cuda::kGemvMaxN) {
    const int nb = static_cast<int>(std::min<int64_t>(cuda::kGemvMaxN, n - j0));
    const cuda::GemvQkv a = qkv_rows(wq, wk, wv, bq, bk, bv, q, k, v, j0);
    if (!DS_CUDA_CHECK(kOp, cuda::gemv_qkv(kernel_type(wq), a, stride, wq.cols, x + j0 * wq.cols, nb, impl_->stream,
                                           options_.pdl, l2.at(j0))))
      return;
  }
  end(kOp);
}

void CudaBackend::matmul_add_rmsnorm(const WeightRef& w, const float* x, int64_t n, float* y, float* tmp,
                                     const float* norm_weight, float eps, float* norm_out) {
  constexpr const char* kOp = "matmul_add_rmsnorm";
  const L2Op l2(this, {&w});
  if (!fused_gemv_applies(w, w, n) || n > cuda::kGemvMaxN || norm_counter_ == nullptr)
    return Backend::matmul_add_rmsnorm(w, x, n, y, tmp, norm_weight, eps, norm_out);
  if (!begin(kOp)) return;
  DS_CHECK_WEIGHT(kOp, w);
  const cuda::GemvNorm norm{norm_weight, eps, norm_out, norm_counter_};
  DS_CUDA_CHECK(kOp, cuda::gemv_add(kernel_type(w), w.data, row_bytes_of(w.type, w.cols), w.rows, w.cols, x,
                                    static_cast<int>(n), y, impl_->stream, options_.pdl, &norm, l2.at(0),
                                    options_.gemv_stream));
  end(kOp);
}

void CudaBackend::matmul_qkv_rope_store_kv(const WeightRef& wq, const WeightRef& wk, const WeightRef& wv,
                                           const float* bq, const float* bk, const float* bv, const float* x, int64_t n,
                                           float* q, float* k, float* v, const RopeStore& r) {
  constexpr const char* kOp = "matmul_qkv_rope";
  const L2Op l2(this, {&wq, &wk, &wv});
  const int hd = r.head_dim;
  const bool shapes = r.n_heads > 0 && r.n_kv_heads > 0 && hd > 0 && hd % 2 == 0 && r.rope.n_rot > 0 &&
                      r.rope.n_rot % 2 == 0 && r.rope.n_rot <= hd && kv_type_supported(r.cache.type) &&
                      wq.rows == static_cast<int64_t>(r.n_heads) * hd && wk.rows == static_cast<int64_t>(r.n_kv_heads) * hd &&
                      wv.rows == wk.rows;
  if (!shapes || !fused_gemv_applies(wq, wk, n) || !fused_gemv_applies(wq, wv, n))
    return Backend::matmul_qkv_rope_store_kv(wq, wk, wv, bq, bk, bv, x, n, q, k, v, r);
  if (!begin(kOp)) return;
  DS_CHECK_WEIGHT(kOp, wq);
  DS_CHECK_WEIGHT(kOp, wk);
  DS_CHECK_WEIGHT(kOp, wv);
  const size_t stride = row_bytes_of(wq.type, wq.cols);
  cuda::GemvQkvRope rp;
  rp.head_dim = hd;
  rp.n_rot = r.rope.n_rot;
  rp.neox = r.rope.style == RopeStyle::kNeox;
  rp.freq_base = r.rope.freq_base;
  rp.freq_scale = r.rope.freq_scale;
  rp.k_cache = r.cache.k;
  rp.v_cache = r.cache.v;
  rp.kv_f16 = r.cache.type == DType::kF16;
  for (int64_t j0 = 0; j0 < n; j0 += cuda::kGemvMaxN) {
    const int nb = static_cast<int>(std::min<int64_t>(cuda::kGemvMaxN, n - j0));
    const cuda::GemvQkv a = qkv_rows(wq, wk, wv, bq, bk, bv, q, k, v, j0);
    rp.pos = r.pos + j0;
    rp.slots = r.slots + j0;
    if (!DS_CUDA_CHECK(kOp, cuda::gemv_qkv_rope(kernel_type(wq), a, rp, stride, wq.cols, x + j0 * wq.cols, nb,
                                                impl_->stream, options_.pdl, l2.at(j0), options_.gemv_stream)))
      return;
  }
  end(kOp);
}

void CudaBackend::matmul_add(const WeightRef& w, const float* x, int64_t n, float* y, float* tmp) {
  constexpr const char* kOp = "matmul_add";
  const L2Op l2(this, {&w});
  if (!fused_gemv_applies(w, w, n) && tc_gemm_applies(w, n)) {  // the residual add fused in, as the GEMV's
    if (!begin(kOp)) return;
    DS_CHECK_WEIGHT(kOp, w);
    matmul_tc(kOp, {{&w, y}}, x, n, true, l2.at(0));
    return end(kOp);
  }
  if (options_.fuse_decode && n > gemv_limit(w.type)) {  // cuBLAS, the add as its beta = 1
    if (!begin(kOp)) return;
    DS_CHECK_WEIGHT(kOp, w);
    if (w.rows > 0 && w.cols > 0) matmul_cublas(w, row_bytes_of(w.type, w.cols), x, n, y, true);
    return end(kOp);
  }
  if (!fused_gemv_applies(w, w, n)) return Backend::matmul_add(w, x, n, y, tmp);
  if (!begin(kOp)) return;
  DS_CHECK_WEIGHT(kOp, w);
  const size_t stride = row_bytes_of(w.type, w.cols);
  for (int64_t j0 = 0; j0 < n; j0 += cuda::kGemvMaxN) {
    const int nb = static_cast<int>(std::min<int64_t>(cuda::kGemvMaxN, n - j0));
    if (!DS_CUDA_CHECK(kOp, cuda::gemv_add(kernel_type(w), w.data, stride, w.rows, w.cols, x + j0 * w.cols, nb,
                                           y + j0 * w.rows, impl_->stream, options_.pdl, nullptr, l2.at(j0),
                                           options_.gemv_stream)))
      return;
  }
  end(kOp);
}

void CudaBackend::matmul_swiglu(const WeightRef& w_gate, const WeightRef& w_up, const float* x, int64_t n, float* out,
                                float* up) {
  constexpr const char* kOp = "matmul_swiglu";
  const L2Op l2(this, {&w_gate, &w_up});
  // Past the fused GEMV: gate and up in one tensor-core launch, or cuBLAS with x rounded once
  // for both; then swiglu as Backend's.
  const bool gemv = fused_gemv_applies(w_gate, w_up, n);
  const bool same_rows = w_gate.rows == w_up.rows;
  const bool tc = !gemv && same_rows && tc_gemm_fuses(w_gate, w_up, n);
  if (tc || (!gemv && same_rows && cublas_half_shares_x({&w_gate, &w_up}, n))) {
    if (!begin(kOp)) return;
    DS_CHECK_WEIGHT(kOp, w_gate);
    DS_CHECK_WEIGHT(kOp, w_up);
    if (tc) matmul_tc(kOp, {{&w_gate, out}, {&w_up, up}}, x, n, false, l2.at(0));
    else matmul_cublas_half(kOp, {{&w_gate, out}, {&w_up, up}}, x, n, false);
    end(kOp);
    return swiglu(out, up, n * w_gate.rows, out);
  }
  if (!gemv || !same_rows) return Backend::matmul_swiglu(w_gate, w_up, x, n, out, up);
  if (!begin(kOp)) return;
  DS_CHECK_WEIGHT(kOp, w_gate);
  DS_CHECK_WEIGHT(kOp, w_up);
  const size_t stride = row_bytes_of(w_gate.type, w_gate.cols);
  for (int64_t j0 = 0; j0 < n; j0 += cuda::kGemvMaxN) {
    const int nb = static_cast<int>(std::min<int64_t>(cuda::kGemvMaxN, n - j0));
    if (!DS_CUDA_CHECK(kOp, cuda::gemv_swiglu(kernel_type(w_gate), w_gate.data, w_up.data, stride, w_gate.rows, w_gate.cols,
                                              x + j0 * w_gate.cols, nb, out + j0 * w_gate.rows, impl_->stream,
                                              options_.pdl, l2.at(j0), options_.gemv_stream)))
      return;
  }
  end(kOp);
}

// y[n, rows] = x[n, cols] * W^T with cuBLAS, column-major view: Y^T (rows x n, ld rows) =
// op(A) * B with A = W^T (cols x rows, ld cols) transposed, B = X^T (cols x n, ld cols).
// Non-F32 weights are dequantized to F32 scratch in slices of at most kScratchFloats.
void CudaBackend::matmul_cublas(const WeightRef& w, size_t row_stride, const float* x, int64_t n, float* y,
                                bool accumulate) {
  constexpr const char* kOp = "matmul";
  if (w.rows > INT_MAX || w.cols > INT_MAX || n > INT_MAX)
    return (void)fail(kOp, "shape too large for cuBLAS (int dimensions)", __FILE__, __LINE__);
  const cublasComputeType_t compute = options_.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  auto gemm = [&](const float* a, int64_t m, float* c) {
    return DS_CUBLAS_CHECK(kOp, cublasGemmEx(impl_->cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m),
                                             static_cast<int>(n), static_cast<int>(w.cols), &alpha, a, CUDA_R_32F,
                                             static_cast<int>(w.cols), x, CUDA_R_32F, static_cast<int>(w.cols),
                                             &beta, c, CUDA_R_32F, static_cast<int>(w.rows), compute,
                                             CUBLAS_GEMM_DEFAULT));
  };
  if (w.type == DType::kF32) {
    gemm(static_cast<const float*>(w.data), w.rows, y);
    return;
  }
  if (options_.gemm_half) return matmul_cublas_half(kOp, {{&w, y}}, x, n, accumulate);
  const int64_t slice = std::min<int64_t>(w.rows, std::max<int64_t>(1, kScratchFloats / w.cols));
  float* buf = scratch(static_cast<size_t>(slice * w.cols) * sizeof(float), kOp);
  if (buf == nullptr) return;
  const auto* base = static_cast<const uint8_t*>(w.data);
  for (int64_t r0 = 0; r0 < w.rows; r0 += slice) {
    const int64_t nr = std::min(slice, w.rows - r0);
    if (!DS_CUDA_CHECK(kOp, cuda::get_rows(kernel_type(w), base + r0 * static_cast<int64_t>(row_stride), row_stride, w.cols,
                                           nullptr, nr, buf, impl_->stream)))
      return;
    if (!gemm(buf, nr, y + r0)) return;
  }
}

// The tensor-core path: X rounded to F16 (BF16 for BF16 weights) in scratch once, then for
// each part one cublasGemmEx per weight slice with F16/BF16 operands, F32 output and F32
// accumulation. F16 and BF16 weights are read in place; quantized ones are dequantized to F16
// in slices of at most kScratchFloats elements (after X in the same scratch buffer).
void CudaBackend::matmul_cublas_half(const char* op, std::initializer_list<std::pair<const WeightRef*, float*>> parts,
                                     const float* x, int64_t n, bool accumulate) {
  const WeightRef& w0 = *parts.begin()->first;
  const int64_t cols = w0.cols;
  const bool bf16 = w0.type == DType::kBF16;
  const cudaDataType half_type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  auto in_place = [](const WeightRef& w) { return w.type == DType::kF16 || w.type == DType::kBF16; };
  auto slice_of = [&](const WeightRef& w) {
    return in_place(w) ? w.rows : std::min<int64_t>(w.rows, std::max<int64_t>(1, kScratchFloats / cols));
  };
  const size_t x_bytes = (static_cast<size_t>(n * cols) * 2 + 255) / 256 * 256;
  size_t w_bytes = 0;
  for (const auto& [w, y] : parts)
    if (!in_place(*w)) w_bytes = std::max(w_bytes, static_cast<size_t>(slice_of(*w) * cols) * 2);
  auto* buf = reinterpret_cast<uint8_t*>(scratch(x_bytes + w_bytes, op));
  if (buf == nullptr) return;
  auto* xh = reinterpret_cast<uint16_t*>(buf);
  auto* wh = reinterpret_cast<uint16_t*>(buf + x_bytes);
  if (!DS_CUDA_CHECK(op, cuda::to_half(DType::kF32, x, static_cast<size_t>(cols) * sizeof(float), cols, n, bf16, xh,
                                       impl_->stream)))
    return;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  for (const auto& [wp, y] : parts) {
    const WeightRef& w = *wp;
    auto gemm = [&](const void* a, int64_t m, float* c) {
      return DS_CUBLAS_CHECK(op, cublasGemmEx(impl_->cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m),
                                              static_cast<int>(n), static_cast<int>(cols), &alpha, a, half_type,
                                              static_cast<int>(cols), xh, half_type, static_cast<int>(cols), &beta, c,
                                              CUDA_R_32F, static_cast<int>(w.rows), CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
    };
    if (in_place(w)) {
      if (!gemm(w.data, w.rows, y)) return;
      continue;
    }
    if (const uint16_t* cached = half_weight(w, op)) {  // the rows to_half gives below, kept: one GEMM
      if (!gemm(cached, w.rows, y)) return;
      continue;
    }
    const size_t row_stride = row_bytes_of(w.type, cols);
    const int64_t slice = slice_of(w);
    const auto* base = static_cast<const uint8_t*>(w.data);
    for (int64_t r0 = 0; r0 < w.rows; r0 += slice) {
      const int64_t nr = std::min(slice, w.rows - r0);
      if (!DS_CUDA_CHECK(op, cuda::to_half(kernel_type(w), base + r0 * static_cast<int64_t>(row_stride), row_stride, cols,
                                           nr, false, wh, impl_->stream)))
        return;
      if (!gemm(wh, nr, y + r0)) return;
    }
  }
}

size_t CudaBackend::half_weight_cache_bytes() const { return impl_->half_cache_bytes; }

void CudaBackend::drop_half_copies(const void* p, size_t bytes) {
  if (impl_->half_cache.empty()) return;
  const auto* lo = static_cast<const uint8_t*>(p);
  auto it = impl_->half_cache.lower_bound(p);
  if (it != impl_->half_cache.begin()) {  // a matrix that starts before p may reach into it
    const auto prev = std::prev(it);
    if (static_cast<const uint8_t*>(prev->first) + prev->second.source_bytes > lo) it = prev;
  }
  bool first = true;
  while (it != impl_->half_cache.end() && static_cast<const uint8_t*>(it->first) < lo + bytes) {
    if (first) {
      forget_recordings();                   // a recorded step may read the copy
      cudaStreamSynchronize(impl_->stream);  // and a queued GEMM
      first = false;
    }
    cudaFree(it->second.data);
    impl_->half_cache_bytes -= it->second.bytes;
    it = impl_->half_cache.erase(it);
  }
}

const uint16_t* CudaBackend::half_weight(const WeightRef& w, const char* op) {
  if (!options_.half_weight_cache || w.type == DType::kBF16) return nullptr;  // BF16 and F16 run in place
  if (const auto it = impl_->half_cache.find(w.data); it != impl_->half_cache.end()) return it->second.data;
  if (capturing_) return nullptr;  // no allocation inside a recording: the scratch path this time
  const size_t bytes = static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols) * 2;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  const size_t keep = std::max<size_t>(size_t{2} << 30, total_bytes / 10);
  if (free_bytes < keep || free_bytes - keep < bytes) return nullptr;
  void* p = nullptr;
  if (cudaMalloc(&p, std::max<size_t>(bytes, 1)) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  auto* h = static_cast<uint16_t*>(p);
  if (!DS_CUDA_CHECK(op, cuda::to_half(kernel_type(w), w.data, row_bytes_of(w.type, w.cols), w.cols, w.rows, false, h,
                                       impl_->stream))) {
    cudaFree(p);
    return nullptr;
  }
  impl_->half_cache[w.data] = Impl::HalfCopy{h, bytes, static_cast<size_t>(w.rows) * row_bytes_of(w.type, w.cols)};
  impl_->half_cache_bytes += bytes;
  return h;
}

bool CudaBackend::cublas_half_shares_x(std::initializer_list<const WeightRef*> ws, int64_t n) const {
  if (!options_.fuse_decode || !options_.gemm_half || options_.batch_invariant || n > INT_MAX) return false;
  const WeightRef& w0 = **ws.begin();
  for (const WeightRef* w : ws) {
    const bool same_rounding = (w->type == DType::kBF16) == (w0.type == DType::kBF16);
    if (w->type == DType::kF32 || !same_rounding || w->cols != w0.cols || w->rows <= 0 || w->cols <= 0 ||
        w->rows > INT_MAX || w->cols > INT_MAX || n <= gemv_limit(w->type) || tc_gemm_applies(*w, n))
      return false;
  }
  return true;
}

void CudaBackend::get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out) {
  constexpr const char* kOp = "get_rows";
  if (!begin(kOp)) return;
  DS_CHECK_WEIGHT(kOp, w);
  if (n <= 0 || w.cols == 0) return;
  DS_CUDA_CHECK(kOp, cuda::get_rows(kernel_type(w), w.data, row_bytes_of(w.type, w.cols), w.cols, ids, n, out, impl_->stream));
  end(kOp);
}

void CudaBackend::rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  constexpr const char* kOp = "rmsnorm";
  if (!begin(kOp) || n <= 0 || dim <= 0) return;
  if (n > INT_MAX) return (void)fail(kOp, "too many rows: " + std::to_string(n), __FILE__, __LINE__);
  DS_CUDA_CHECK(kOp, cuda::rmsnorm(x, weight, n, dim, eps, out, impl_->stream));
  end(kOp);
}

void CudaBackend::rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p) {
  constexpr const char* kOp = "rope";
  if (!begin(kOp) || n <= 0 || n_heads <= 0) return;
  if (p.n_rot <= 0 || p.n_rot % 2 != 0 || p.n_rot > head_dim)
    return (void)fail(kOp, "n_rot " + std::to_string(p.n_rot) + " must be even and in (0, head_dim " +
                               std::to_string(head_dim) + "]", __FILE__, __LINE__);
  DS_CUDA_CHECK(kOp, cuda::rope(x, n, n_heads, head_dim, pos, p, impl_->stream));
  end(kOp);
}

void CudaBackend::rope_store_kv(float* q, float* k, const float* v, int64_t n, int n_heads, int n_kv_heads, int head_dim,
                                const int32_t* pos, const RopeParams& p, const int32_t* slots, const KvLayer& cache) {
  constexpr const char* kOp = "rope_store_kv";
  if (!options_.fuse_decode)
    return Backend::rope_store_kv(q, k, v, n, n_heads, n_kv_heads, head_dim, pos, p, slots, cache);
  if (!begin(kOp) || n <= 0 || n_heads <= 0 || n_kv_heads <= 0) return;
  if (!kv_type_supported(cache.type))
    return (void)fail(kOp, std::string("no KV cache of type ") + dtype_name(cache.type), __FILE__, __LINE__);
  if (p.n_rot <= 0 || p.n_rot % 2 != 0 || p.n_rot > head_dim || head_dim % 2 != 0)
    return (void)fail(kOp, "n_rot " + std::to_string(p.n_rot) + " must be even and in (0, head_dim " +
                               std::to_string(head_dim) + "], head_dim even", __FILE__, __LINE__);
  DS_CUDA_CHECK(kOp, cuda::rope_store_kv(q, k, v, n, n_heads, n_kv_heads, head_dim, pos, p, slots, cache,
                                         impl_->stream));
  end(kOp);
}

void CudaBackend::swiglu(const float* gate, const float* up, int64_t count, float* out) {
  constexpr const char* kOp = "swiglu";
  if (!begin(kOp) || count <= 0) return;
  DS_CUDA_CHECK(kOp, cuda::swiglu(gate, up, count, out, impl_->stream));
  end(kOp);
}

void CudaBackend::add(float* x, const float* y, int64_t count) {
  constexpr const char* kOp = "add";
  if (!begin(kOp) || count <= 0) return;
  DS_CUDA_CHECK(kOp, cuda::add(x, y, count, impl_->stream));
  end(kOp);
}

void CudaBackend::add_bias(float* x, const float* bias, int64_t n, int64_t dim) {
  constexpr const char* kOp = "add_bias";
  if (!begin(kOp) || n <= 0 || dim <= 0) return;
  DS_CUDA_CHECK(kOp, cuda::add_bias(x, bias, n, dim, impl_->stream));
  end(kOp);
}

void CudaBackend::store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim,
                           const KvLayer& cache) {
  constexpr const char* kOp = "store_kv";
  if (!begin(kOp) || n <= 0 || kv_dim <= 0) return;
  if (!kv_type_supported(cache.type))
    return (void)fail(kOp, std::string("no KV cache of type ") + dtype_name(cache.type), __FILE__, __LINE__);
  DS_CUDA_CHECK(kOp, cuda::store_kv(k, v, n, slots, kv_dim, cache, impl_->stream));
  end(kOp);
}

void CudaBackend::attention(const AttentionArgs& a) {
  constexpr const char* kOp = "attention";
  if (!begin(kOp) || a.n_tokens <= 0) return;
  if (a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0)
    return (void)fail(kOp, "n_heads " + std::to_string(a.n_heads) + " is not a positive multiple of n_kv_heads " +
                               std::to_string(a.n_kv_heads), __FILE__, __LINE__);
  if (a.head_dim <= 0 || a.head_dim > cuda::kAttentionMaxHeadDim || a.block_size <= 0)
    return (void)fail(kOp, "head_dim " + std::to_string(a.head_dim) + " (max " +
                               std::to_string(cuda::kAttentionMaxHeadDim) + ") or block_size " +
                               std::to_string(a.block_size) + " out of range", __FILE__, __LINE__);
  if (a.n_tokens * a.n_heads > INT_MAX)
    return (void)fail(kOp, "too many (token, head) pairs", __FILE__, __LINE__);
  if (!kv_type_supported(a.kv_type))
    return (void)fail(kOp, std::string("no KV cache of type ") + dtype_name(a.kv_type), __FILE__, __LINE__);
  const int tc = !options_.tc_attention || options_.batch_invariant ? 0
                 : options_.tc_attention_mma                       ? 3
                 : options_.tc_attention_padded                    ? 2
                                                                   : 1;
  DS_CUDA_CHECK(kOp, cuda::attention(a, impl_->stream, tc));
  end(kOp);
}

bool CudaBackend::tc_attention_applies(const AttentionArgs& a) const {
  return options_.tc_attention && !options_.batch_invariant && cuda::attention_tc_applies(a);
}

void CudaBackend::sample_candidates(const SampleArgs& a) {
  constexpr const char* kOp = "sample_candidates";
  if (!begin(kOp) || a.n_rows <= 0) return;
  if (a.n_rows > INT_MAX || a.n_vocab <= 0 || a.n_vocab > INT32_MAX)
    return (void)fail(kOp, "bad shape: " + std::to_string(a.n_rows) + " rows of " + std::to_string(a.n_vocab) + " logits",
                      __FILE__, __LINE__);
  DS_CUDA_CHECK(kOp, cuda::sample_candidates(a, impl_->stream));
  end(kOp);
}

size_t CudaBackend::attention_workspace_floats(int64_t max_tokens, int n_heads, int head_dim, int max_kv) const {
  return cuda::attention_workspace_floats(max_tokens, n_heads, head_dim, max_kv);
}

// ---- factory (backend.h) -----------------------------------------------------------------

std::unique_ptr<Backend> make_cuda_backend(int device, std::string* error, const CudaBackendChoices& choices) {
  CudaBackendOptions options;
  options.device = device;
  options.fused_decode = choices.fused_decode;
  options.fused_decode_auto = choices.fused_decode_auto;
  options.l2_prefetch = choices.l2_prefetch;
  options.gemv_stream = choices.gemv_stream;
  options.half_weight_cache = choices.half_weight_cache;
  if (choices.proven_only) {
    options.tc_attention_mma = false;
    options.tc_attention_padded = false;
    options.q8_0_split = false;
    options.fuse_decode = false;
    options.fused_decode = false;
    options.l2_prefetch = options.gemv_stream = options.half_weight_cache = false;
    options.self_check = false;  // nothing unproven left to check
  }
  return CudaBackend::create(options, error);
}

bool cuda_backend_available() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();
  return ok;
}

// ---- the persistent decode kernel ------------------------------------------------------

int CudaBackend::fused_decode_prepare(const FusedDecodeModel& m) {
  // Only where the per-op path it replaces runs at n = 1: GEMV v3 with the fused launches and
  // split-K attention; one weight type and layout for every matrix.
  impl_->fused_refusal.clear();
  if (!options_.fused_decode) return -1;
  auto refuse = [&](const std::string& why) {
    impl_->fused_refusal = why;
    return -1;
  };
  if (!ok()) return refuse("the backend has failed: " + last_error());
  if (m.layers.empty()) return refuse("the model has no layers");
  if (options_.gemv_version != 3 || !options_.fuse_decode)
    return refuse("it replaces GEMV v3 with the fused decode launches, which are off");
  const FusedDecodeLayer& l0 = m.layers[0];
  const DType type = l0.wq.type;
  const uint32_t layout = l0.wq.layout;
  const int64_t D = l0.wq.cols, F = l0.w_gate.rows, V = m.output.rows;
  const RopeStore& r = m.rope;
  const int hd = r.head_dim;
  const int64_t q_dim = static_cast<int64_t>(r.n_heads) * hd, kv_dim = static_cast<int64_t>(r.n_kv_heads) * hd;
  const AttentionArgs& a = m.att;
  if (!supported(type) || block_elems(type) == 0 || !cuda::fused_decode_supports(kernel_type(l0.wq), 1))
    return refuse(std::string("it takes f32, f16 and q8_0 matrices, not ") + type_name(type));
  if (!cuda::fused_decode_supports(kernel_type(l0.wq), hd))
    return refuse("it takes head_dim up to 128, not " + std::to_string(hd));
  if (r.n_heads <= 0 || r.n_kv_heads <= 0 || hd % 2 != 0 || r.rope.n_rot <= 0 || r.rope.n_rot % 2 != 0 ||
      r.rope.n_rot > hd || a.n_heads != r.n_heads || a.n_kv_heads != r.n_kv_heads || a.head_dim != hd ||
      a.n_tokens != 1 || a.max_kv <= 0 || a.workspace == nullptr ||
      a.workspace_floats < cuda::attention_workspace_floats(1, a.n_heads, hd, a.max_kv) || a.tiles != nullptr)
    return refuse("unexpected attention or RoPE arguments");
  auto shaped = [&](const WeightRef& w, int64_t rows, int64_t cols) {
    return w.type == type && w.layout == layout && w.rows == rows && w.cols == cols && cols > 0 &&
           cols % block_elems(type) == 0 && w.data != nullptr &&
           reinterpret_cast<uintptr_t>(w.data) % (type == DType::kF32 ? 4 : 2) == 0;
  };
  const std::string mixed = std::string("its matrices must all be ") + type_name(type) +
                            " (one type for every layer and the output; this model mixes types)";
  const DType kv_type = l0.cache.type;
  bool w_vec = true;
  auto wide = [&](const WeightRef& w) { w_vec = w_vec && cuda::gemv_wide_loads(kernel_type(w), w.data, w.cols, row_bytes_of(w.type, w.cols)); };
  std::vector<cuda::FusedDecodeLayer> layers;
  for (const FusedDecodeLayer& L : m.layers) {
    if (!shaped(L.wq, q_dim, D) || !shaped(L.wk, kv_dim, D) || !shaped(L.wv, kv_dim, D) || !shaped(L.wo, D, q_dim) ||
        !shaped(L.w_gate, F, D) || !shaped(L.w_up, F, D) || !shaped(L.w_down, D, F))
      return refuse(mixed);
    if (L.cache.type != kv_type || !L.attn_norm || !L.ffn_norm || !L.cache.k || !L.cache.v)
      return refuse("unexpected layer norms or cache");
    for (const WeightRef* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) wide(*w);
    layers.push_back(cuda::FusedDecodeLayer{L.wq.data, L.wk.data, L.wv.data, L.wo.data, L.w_gate.data, L.w_up.data,
                                            L.w_down.data, L.bq, L.bk, L.bv, L.attn_norm, L.ffn_norm, L.cache.k,
                                            L.cache.v});
  }
  if (!shaped(m.output, V, D)) return refuse(mixed);
  if (!kv_type_supported(kv_type) || !m.output_norm || !m.x || !m.k || !m.v || !m.ffn || !m.logits || !a.q || !a.out ||
      !a.tokens || !r.pos || !r.slots)
    return refuse("unexpected buffers");
  wide(m.output);

  cuda::FusedDecodeArgs f;
  f.wtype = kernel_type(l0.wq);
  f.w_vec = w_vec;
  f.prefetch = options_.fused_decode_prefetch;
  f.n_layers = static_cast<int>(layers.size());
  f.n_embd = D, f.n_ff = F, f.n_vocab = V;
  f.stride_d = row_bytes_of(type, D), f.stride_q = row_bytes_of(type, q_dim), f.stride_f = row_bytes_of(type, F);
  f.eps = m.eps;
  f.output_norm = m.output_norm;
  f.output = m.output.data;
  f.qkv = cuda::GemvQkv{{nullptr, nullptr, nullptr}, {nullptr, nullptr, nullptr},
                        {const_cast<float*>(a.q), m.k, m.v}, {q_dim, kv_dim, kv_dim}};
  f.rope.head_dim = hd;
  f.rope.n_rot = r.rope.n_rot;
  f.rope.neox = r.rope.style == RopeStyle::kNeox;
  f.rope.freq_base = r.rope.freq_base;
  f.rope.freq_scale = r.rope.freq_scale;
  f.rope.pos = r.pos;
  f.rope.slots = r.slots;
  f.rope.kv_f16 = kv_type == DType::kF16;
  f.att = a;
  f.att.kv_type = kv_type;
  cuda::fused_decode_chunks(a.max_kv, &f.chunk, &f.n_chunks);
  f.x = m.x, f.ffn = m.ffn, f.logits = m.logits;
  f.lean = cuda::fused_decode_lean(options_.fused_decode_blocks_per_sm);
  const int blocks = cuda::fused_decode_blocks(f.wtype, cuda::fused_decode_shared_bytes(f),
                                               options_.fused_decode_blocks_per_sm);
  if (blocks <= 0) return refuse("this GPU cannot run it (no cooperative launch, or no block fits an SM)");
  const size_t table = layers.size() * sizeof(cuda::FusedDecodeLayer);
  void* dev = alloc(table + 256);  // the layer table, then the barrier's counter (zeroed, as grid_sync needs)
  if (dev == nullptr) return refuse("out of GPU memory for its layer table");
  impl_->fused_memory.push_back(dev);
  upload(dev, layers.data(), table);
  if (!ok()) return refuse("uploading its layer table failed: " + last_error());
  f.layers = static_cast<const cuda::FusedDecodeLayer*>(dev);
  f.barrier = reinterpret_cast<unsigned*>(static_cast<uint8_t*>(dev) + (table + 255) / 256 * 256);
  impl_->fused.push_back(Impl::Fused{f, blocks});
  return static_cast<int>(impl_->fused.size()) - 1;
}

void CudaBackend::fused_decode(int id) {
  constexpr const char* kOp = "fused_decode";
  if (!begin(kOp)) return;
  if (id < 0 || static_cast<size_t>(id) >= impl_->fused.size())
    return (void)fail(kOp, "no prepared model " + std::to_string(id), __FILE__, __LINE__);
  const Impl::Fused& f = impl_->fused[id];
  DS_CUDA_CHECK(kOp, cuda::fused_decode(f.args, f.blocks, impl_->stream));
  end(kOp);
}

std::string CudaBackend::fused_decode_refusal() const { return impl_->fused_refusal; }

int CudaBackend::fused_decode_blocks(int id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->fused.size() ? impl_->fused[id].blocks : 0;
}

}  // namespace ds
