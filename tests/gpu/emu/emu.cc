// tests/gpu/emu/emu.cc: the CPU emulation behind tests/gpu/emu/include (see cuda_runtime.h
// there): block-by-block launches with one OS thread per CUDA thread, real barriers for
// __syncthreads() and warp shuffles, host memory as device memory, and a column-major
// reference cublasGemmEx.
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "cublas_v2.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace emu {
namespace {

struct Block;

// Refills dynamic shared memory with NaN bytes between blocks (CUDA leaves it undefined).
struct Refill {
  Block* block;
  void operator()() noexcept;
};

struct Warp {
  explicit Warp(std::ptrdiff_t n) : bar(n), lanes(static_cast<unsigned>(n)) {}
  std::barrier<> bar;
  unsigned lanes;  // threads in this warp (the block's last warp may be partial)
  float slot[32] = {};
  unsigned uslot[32] = {};
};

struct Block {
  Block(unsigned threads, size_t shm) : sync(threads), done(threads, Refill{this}), shared(shm, 0xff) {
    for (unsigned w = 0; w * 32 < threads; ++w)
      warps.push_back(std::make_unique<Warp>(std::min(32u, threads - 32 * w)));
  }
  std::barrier<> sync;          // __syncthreads()
  std::barrier<Refill> done;    // end of a block
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> shared;
};

void Refill::operator()() noexcept {
  if (!block->shared.empty()) std::memset(block->shared.data(), 0xff, block->shared.size());
}

Block* g_block = nullptr;  // the running launch (launches do not overlap)
int64_t g_launches = 0;
cudaError_t g_last_error = cudaSuccess;

void set_error(cudaError_t e) {
  if (g_last_error == cudaSuccess) g_last_error = e;
}

}  // namespace

void run_grid(unsigned grid, unsigned block, size_t shm, const std::function<void()>& body) {
  ++g_launches;
  if (grid == 0 || block == 0 || block > 1024 || shm > 48 * 1024) {
    std::fprintf(stderr, "emu: invalid launch configuration grid=%u block=%u shm=%zu\n", grid, block, shm);
    set_error(cudaErrorInvalidValue);
    return;
  }
  Block b(block, shm);
  g_block = &b;
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      blockDim = {block, 1, 1};
      gridDim = {grid, 1, 1};
      for (unsigned bx = 0; bx < grid; ++bx) {
        blockIdx = {bx, 0, 0};
        body();
        b.done.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  g_block = nullptr;
}

void* dynamic_shared() { return g_block->shared.data(); }
int64_t launches() { return g_launches; }

}  // namespace emu

void __syncthreads() { emu::g_block->sync.arrive_and_wait(); }

float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::Warp& w = *emu::g_block->warps[threadIdx.x / 32];
  const unsigned lane = threadIdx.x % 32;
  w.slot[lane] = v;
  w.bar.arrive_and_wait();
  const float r = w.slot[(lane ^ static_cast<unsigned>(lane_mask)) % 32];
  w.bar.arrive_and_wait();
  return r;
}

unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }

unsigned __match_any_sync(unsigned, unsigned value) {
  emu::Warp& w = *emu::g_block->warps[threadIdx.x / 32];
  const unsigned lane = threadIdx.x % 32;
  w.uslot[lane] = value;
  w.bar.arrive_and_wait();
  unsigned peers = 0;
  for (unsigned l = 0; l < w.lanes; ++l)
    if (w.uslot[l] == value) peers |= 1u << l;
  w.bar.arrive_and_wait();
  return peers;
}

// ---- runtime API ------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  if (std::getenv("DS_EMU_NO_DEVICE")) {
    *count = 0;
    return cudaErrorNoDevice;
  }
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  *prop = {};
  std::snprintf(prop->name, sizeof prop->name, "CPU emulation of an sm_90 GPU");
  prop->major = 9;
  prop->multiProcessorCount = 1;
  prop->totalGlobalMem = size_t{16} << 30;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaRuntimeGetVersion(int* v) { return *v = 13000, cudaSuccess; }
cudaError_t cudaDriverGetVersion(int* v) { return *v = 0, cudaSuccess; }

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaError(emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (bytes > (size_t{1} << 36)) return emu::g_last_error = cudaErrorMemoryAllocation;
  const size_t rounded = (bytes + 255) / 256 * 256;
  *p = std::aligned_alloc(256, rounded == 0 ? 256 : rounded);
  if (*p == nullptr) return emu::g_last_error = cudaErrorMemoryAllocation;
  std::memset(*p, 0xcd, rounded);  // not zeroed, as on a GPU
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

struct CUevent_st {
  std::chrono::steady_clock::time_point t;
};
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}

// ---- cuBLAS -------------------------------------------------------------------------------

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(new char);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete reinterpret_cast<char*>(h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
const char* cublasGetStatusName(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_(emulated error)";
}
const char* cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "error"; }

// C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, all column-major (cuBLAS's definition).
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                            const void* alpha, const void* a, cudaDataType atype, int lda, const void* b,
                            cudaDataType btype, int ldb, const void* beta, void* c, cudaDataType ctype, int ldc,
                            cublasComputeType_t, cublasGemmAlgo_t) {
  if (atype != btype || ctype != CUDA_R_32F || (atype != CUDA_R_32F && atype != CUDA_R_16F && atype != CUDA_R_16BF))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  auto load = [atype](const void* p, int64_t i) -> float {
    if (atype == CUDA_R_32F) return static_cast<const float*>(p)[i];
    const uint16_t h = static_cast<const uint16_t*>(p)[i];
    if (atype == CUDA_R_16F) return __half2float(__ushort_as_half(h));
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, transa == CUBLAS_OP_N ? m : k) ||
      ldb < std::max(1, transb == CUBLAS_OP_N ? k : n) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  auto* C = static_cast<float*>(c);
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double s = 0;
      for (int l = 0; l < k; ++l) {
        const int64_t ia = transa == CUBLAS_OP_N ? i + int64_t{l} * lda : l + int64_t{i} * lda;
        const int64_t ib = transb == CUBLAS_OP_N ? l + int64_t{j} * ldb : j + int64_t{l} * ldb;
        const float av = load(a, ia), bv = load(b, ib);
        s += static_cast<double>(av) * bv;
      }
      float& out = C[i + static_cast<int64_t>(j) * ldc];
      out = static_cast<float>(al * s + (be == 0.0f ? 0.0 : static_cast<double>(be) * out));
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}
