// tests/gpu/emu/include/cuda_runtime.h: a CPU emulation of the part of the CUDA runtime
// and device language that ds's kernels (kernels/cuda) and tests/gpu use, so that the
// kernels' indexing, reductions and synchronisation can be tested without a GPU.
//
// Model: a launch runs its blocks one after another; each block's threads are fibers of the
// launching OS thread (emu.cc), switched cooperatively at __syncthreads() and warp shuffles,
// which are real barriers (a barrier some thread never reaches aborts the run). Device
// memory is host memory; streams and events are no-ops (everything is synchronous).
// __shared__ variables become function statics (one block runs at a time); dynamic shared
// memory is filled with NaN bytes before each block, so a read before a write shows.
// Not emulated: timing, memory faults (out-of-bounds accesses are plain host UB: run
// under -fsanitize=address to catch them), warp divergence rules; of the atomics only atomicAdd on unsigned.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#ifndef DS_CUDA_EMULATION
#define DS_CUDA_EMULATION 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
};

namespace emu {
// The calling CUDA thread's coordinates (a function-local thread_local: GCC's sanitizers
// misreport extern thread_local objects as null).
struct ThreadCoords {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
inline ThreadCoords& coords() {
  static thread_local ThreadCoords c;
  return c;
}
}  // namespace emu
#define threadIdx (::emu::coords().thread_idx)
#define blockIdx (::emu::coords().block_idx)
#define blockDim (::emu::coords().block_dim)
#define gridDim (::emu::coords().grid_dim)

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// A GPU faults on a load from an address not aligned to its size (cudaErrorMisalignedAddress):
// so does the emulation, for __ldg's loads (the vector loads of the GEMV and attention kernels).
template <class T>
inline T __ldg(const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
    std::fprintf(stderr, "emu: misaligned __ldg of %zu bytes at %p\n", sizeof(T), static_cast<const void*>(p));
    std::abort();
  }
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
// Blocks run one after another here: every write is visible to the blocks after it.
inline void __threadfence() {}
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Byte i of the result is byte ((s >> 4i) & 7) of the 8 bytes {y (high), x (low)}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
// Round to nearest, ties to even (the default rounding mode), as cvt.rni.
inline int __float2int_rn(float f) { return static_cast<int>(std::nearbyint(f)); }
// c + the sum of the products of the 4 signed bytes of a and b.
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i)
    c += static_cast<int>(static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i))) *
         static_cast<int>(static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i)));
  return c;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline long long __double_as_longlong(double d) {
  long long u;
  std::memcpy(&u, &d, 8);
  return u;
}
// Explicitly rounded float arithmetic (the host compiler must not contract these: the
// emulation is built without -march flags that would offer FMA).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
// Atomics on shared or global memory (threads of a block are OS threads here).
unsigned atomicAdd(unsigned* p, unsigned v);
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
// The lanes of the calling warp whose value equals this lane's (every lane must call it).
unsigned __match_any_sync(unsigned mask, unsigned value);
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }
void __syncthreads();
// A barrier of the calling warp's lanes (every lane must call it; the mask is not checked).
void __syncwarp(unsigned mask = 0xffffffffu);

// ---- runtime API ------------------------------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorUnsupportedPtxVersion = 222,
  cudaErrorIllegalAddress = 700,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;
constexpr unsigned cudaStreamNonBlocking = 1;

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  int l2CacheSize;
  size_t totalGlobalMem;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaGetLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaEventDestroy(cudaEvent_t e);

// ---- launches -----------------------------------------------------------------------------

namespace emu {

// Runs body once per thread of each of `grid` blocks of `block` threads.
void run_grid(unsigned grid, unsigned block, size_t dynamic_shared_bytes, const std::function<void()>& body);
// A cooperative launch: all blocks run at once (grid * block <= 8192 threads), so that a
// grid-wide barrier can open; its kernels use dynamic shared memory only.
void run_grid_cooperative(unsigned grid, unsigned block, size_t dynamic_shared_bytes,
                          const std::function<void()>& body);
// A spinning thread's pause (grid_sync's poll): lets the other fibers run.
void spin_wait();
// The running block's dynamic shared memory.
void* dynamic_shared();
// Launches so far (a test can check a launcher launched something).
int64_t launches();
// The warp-collective tensor-core MMA m16n8k16 (F16 inputs, F32 accumulators), with the PTX
// ISA's register layouts (emu.cc); kernels/cuda/common.cuh's mma_16816 calls it here.
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]);

// DS_LAUNCH(kernel, grid, block, shm, stream)(args...) under emulation; cooperative: all
// blocks at once (run_grid_cooperative).
template <class K>
struct Launch {
  unsigned grid, block;
  size_t shm;
  K kernel;
  bool cooperative;
  Launch(unsigned g, unsigned b, size_t s, cudaStream_t, K k, bool coop = false)
      : grid(g), block(b), shm(s), kernel(k), cooperative(coop) {}
  template <class... A>
  void operator()(const A&... args) const {
    if (cooperative) run_grid_cooperative(grid, block, shm, [&] { kernel(args...); });
    else run_grid(grid, block, shm, [&] { kernel(args...); });
  }
};

}  // namespace emu
