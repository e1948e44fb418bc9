// kernels/cuda/common.cuh: device helpers shared by the CUDA kernels: fp16/bf16
// conversion, warp and block sums, and the scalar element loader that mirrors
// dequantize_row() in kernels/dtype.cc (the layouts are dtype.h's blocks).
//
// Included by .cu files only.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/ops.cuh"  // kQ8_0Split
#include "kernels/dtype.h"

// Kernel launches and dynamic shared memory go through these two macros so that the same
// sources also run on the CPU under tests/gpu/emu (DS_CUDA_EMULATION), where the kernels'
// indexing is tested without a GPU. DS_LAUNCH(k, grid, block, shm, stream)(args...).
#ifdef DS_CUDA_EMULATION
#define DS_LAUNCH(kernel, grid, block, shm, stream) ::emu::Launch(grid, block, shm, stream, kernel)
#define DS_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::emu::dynamic_shared())
#else
#define DS_LAUNCH(kernel, grid, block, shm, stream) kernel<<<grid, block, shm, stream>>>
#define DS_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace ds::cuda {

// ---- programmatic dependent launch (sm_90+) ----------------------------------------------
// A kernel launched with DS_LAUNCH_PDL(..., true) may start while the kernel before it in the
// stream is still running (once that one called griddep_launch_dependents(), or ended), so
// its blocks can issue loads of data no earlier kernel writes (weights) early. Before it
// reads or writes anything else it MUST call griddep_wait(), which returns once every
// earlier kernel has completed and its writes are visible. griddep_launch_dependents() at a
// kernel's start lets the next PDL kernel launch early; it never weakens that wait, so any
// kernel may call it. Both are no-ops below sm_90, without PDL and under emulation.
__device__ __forceinline__ void griddep_wait() {
#if !defined(DS_CUDA_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void griddep_launch_dependents() {
#if !defined(DS_CUDA_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// This block's share of pf (ops.cuh: l2_prefetch_pieces), asked of L2 by its thread 0: a
// hint with no effect on any result. sm_90+ only (cp.async.bulk.prefetch.L2); nothing below it
// and under emulation.
__device__ __forceinline__ void l2_prefetch_share(const L2Prefetch& pf) {
#if !defined(DS_CUDA_EMULATION) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x != 0 || pf.bytes[0] == 0) return;
  l2_prefetch_pieces(pf, blockIdx.x, gridDim.x, [](const void* p, uint32_t bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
  });
#else
  (void)pf;
#endif
}

#ifndef DS_CUDA_EMULATION
// DS_LAUNCH_PDL's launcher: cudaLaunchKernelEx with programmatic stream serialization when
// pdl, else (or when that launch is refused) a plain launch.
// cudaLaunchKernelEx with one launch attribute (PDL here, cooperative in decode_fused.cu).
template <class K, class... A>
cudaError_t launch_with(const cudaLaunchAttribute& attr, K kernel, dim3 grid, dim3 block, size_t shm,
                        cudaStream_t stream, A... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = shm;
  cfg.stream = stream;
  cudaLaunchAttribute attrs[1] = {attr};
  cfg.attrs = attrs;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <class K>
struct PdlLaunch {
  K kernel;
  dim3 grid, block;
  size_t shm;
  cudaStream_t stream;
  bool pdl;
  template <class... A>
  void operator()(A... args) const {
    if (pdl) {
      cudaLaunchAttribute attr = {};
      attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr.val.programmaticStreamSerializationAllowed = 1;
      if (launch_with(attr, kernel, grid, block, shm, stream, args...) == cudaSuccess) return;
      cudaGetLastError();  // refused: launch it the plain way
    }
    kernel<<<grid, block, shm, stream>>>(args...);
  }
};
#define DS_LAUNCH_PDL(kernel, grid, block, shm, stream, pdl) \
  ::ds::cuda::PdlLaunch<decltype(kernel)>{kernel, dim3(grid), dim3(block), shm, stream, pdl}
#else
#define DS_LAUNCH_PDL(kernel, grid, block, shm, stream, pdl) ::emu::Launch(grid, block, shm, stream, kernel)
#endif

constexpr int kWarpSize = 32;
constexpr int kQ8_0Bytes = 34;  // sizeof(BlockQ8_0): fp16 d + 32 int8
constexpr int kQ4_0Bytes = 18;  // sizeof(BlockQ4_0): fp16 d + 16 bytes of nibbles
constexpr int kQ4_KBytes = 144; // sizeof(BlockQ4_K): fp16 d, dmin, 12 scale bytes, 128 of nibbles
constexpr int kQ6_KBytes = 210; // sizeof(BlockQ6_K): 128 ql, 64 qh, 16 int8 scales, fp16 d
static_assert(sizeof(BlockQ8_0) == kQ8_0Bytes && sizeof(BlockQ4_0) == kQ4_0Bytes, "GGUF block sizes");
static_assert(sizeof(BlockQ4_K) == kQ4_KBytes && sizeof(BlockQ6_K) == kQ6_KBytes, "GGUF block sizes");
static_assert(offsetof(BlockQ4_K, scales) == 4 && offsetof(BlockQ4_K, qs) == 16, "Q4_K layout");
static_assert(offsetof(BlockQ6_K, qh) == 128 && offsetof(BlockQ6_K, scales) == 192 && offsetof(BlockQ6_K, d) == 208,
              "Q6_K layout");

// Blocks for a grid-stride loop over `total` items with `threads` per block.
inline unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

__device__ __forceinline__ float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_to_f32(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

// float -> F16 / BF16 bits, round to nearest even (BF16: NaN stays a quiet NaN).
__device__ __forceinline__ uint16_t f32_to_f16_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }

// KV cache elements (Backend KvLayer): F32 as is, F16 as its bits (rounded to nearest even on
// store, exact on load).
__device__ __forceinline__ float kv_get(const float* p) { return *p; }
__device__ __forceinline__ float kv_get(const uint16_t* p) { return f16_to_f32(*p); }
__device__ __forceinline__ void kv_put(float* p, float x) { *p = x; }
__device__ __forceinline__ void kv_put(uint16_t* p, float x) { *p = f32_to_f16_bits(x); }
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// ---- grid-wide barrier (the persistent decode kernel, decode_fused.cu) --------------------
// Every thread of every block of a cooperative launch (all blocks resident at once) calls
// it; it returns once every block has arrived, and what any thread wrote before it is then
// visible to every thread that reads it past L1 (__ldcg; L1 is not coherent between SMs).
// bar: a device unsigned that only this launch's blocks touch, its low 31 bits 0 at the start
// (CudaBackend::alloc zeroes): block 0 adds 2^31 - (gridDim.x - 1) and every other block 1, so
// each barrier flips the top bit exactly when the last block arrives (with other low bits
// block 0 and all but one other block could already carry into it) and leaves the low bits 0
// (cooperative groups' grid sync counts the same way), so nothing needs resetting between
// barriers or launches of the same grid size. Thread 0 of each block spins on it.
__device__ __forceinline__ void grid_sync(unsigned* bar) {
  __syncthreads();  // the block's writes before the barrier precede thread 0's fence
  if (threadIdx.x == 0) {
    const unsigned add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
    __threadfence();
    const unsigned old = atomicAdd(bar, add);
    while (((old ^ *static_cast<volatile unsigned*>(bar)) & 0x80000000u) == 0) {
#ifdef DS_CUDA_EMULATION
      ::emu::spin_wait();
#endif
    }
    __threadfence();
  }
  __syncthreads();
}

// Sum over the 32 lanes; every lane gets the total. Fixed butterfly order: deterministic.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the total.
// `red` is __shared__ float[32]. Fixed order: deterministic.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_sum(lane < n_warps ? red[lane] : 0.0f);
}

// RoPE (reference: ref::rope): the angle of pair d at position pos (float(pos) * freq_scale in
// float, then double pow / sincos), and the rotation of elements (a, b) of one head in double,
// rounded to float. Every kernel that rotates uses these two, so all give the same bits.
__device__ __forceinline__ void rope_angle(int32_t pos, int d, int n_rot, float freq_base, float freq_scale, double* s,
                                           double* c) {
  const float p = static_cast<float>(pos) * freq_scale;
  const double inv_freq = pow(static_cast<double>(freq_base), -static_cast<double>(2 * d) / n_rot);
  const double theta = static_cast<double>(p) * inv_freq;
  sincos(theta, s, c);
}
__device__ __forceinline__ void rope_rotate(float* v, int a, int b, double s, double c) {
  const double x0 = v[a], x1 = v[b];
  v[a] = static_cast<float>(x0 * c - x1 * s);
  v[b] = static_cast<float>(x0 * s + x1 * c);
}

// One tensor-core MMA, D = A B + C for an m16n8k16 tile: F16 A (16 x 16, row major) and B
// (16 x 8, column major), F32 C and D, in the PTX ISA's register layouts (lane = 4 g + t):
// A register r holds the halves (row g + 8 (r & 1), cols 2 t + 8 (r >> 1) + {0, 1}), low half
// first; B register r holds (rows 2 t + 8 r + {0, 1}, col g); C/D element e is (row
// g + 8 (e >> 1), col 2 t + (e & 1)). Warp-collective (every lane calls it). sm_80+.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                          const float (&c)[4]) {
#ifdef DS_CUDA_EMULATION
  emu::mma_m16n8k16(d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#endif
}
// Two floats as F16 bits (round to nearest even), lo in the low half: an MMA operand register.
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  return static_cast<uint32_t>(f32_to_f16_bits(lo)) | (static_cast<uint32_t>(f32_to_f16_bits(hi)) << 16);
}

// RMSNorm's sum of squares of row xi[0, dim) exactly as a block of kRmsThreads threads adds it
// (rmsnorm_kernel): thread T's partial over k = T, T + kRmsThreads, ... (fma), a butterfly per
// warp, then a butterfly over the warp sums (block_sum). A block of blockDim.x = kRmsThreads /
// V threads (V = 1 or 2) gets the same bits, each thread playing V of those threads. Every
// thread gets the total. red: __shared__ float[32]; barriers inside (every thread calls it).
// kCg: loads bypass L1 (__ldcg), for rows other blocks of the same kernel wrote.
constexpr int kRmsThreads = 256;
template <bool kCg = false>
__device__ __forceinline__ float rms_sum_sq(const float* xi, int64_t dim, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const int V = kRmsThreads / blockDim.x;
  for (int v = 0; v < V; ++v) {
    const int vt = threadIdx.x + v * blockDim.x;  // the thread played: warp + v * n_warps of kRmsThreads / 32
    float ss = 0.0f;
    for (int64_t k = vt; k < dim; k += kRmsThreads) {
      const float x = kCg ? __ldcg(xi + k) : xi[k];
      ss = fmaf(x, x, ss);
    }
    ss = warp_sum(ss);
    if (lane == 0) red[warp + v * n_warps] = ss;
  }
  __syncthreads();
  const float total = warp_sum(lane < kRmsThreads / 32 ? red[lane] : 0.0f);
  __syncthreads();  // red is free again
  return total;
}

// Element k of a row of cols elements of type T, exactly as dequantize_row() computes it
// (bit-identical: the same single float multiply d * q for the quantized types; kQ8_0Split,
// the split Q8_0 row of ops.cuh, the same value as Q8_0). REQUIRES: row 2-byte aligned (4
// for F32); k < cols.
template <DType T>
__device__ __forceinline__ float load_elem(const uint8_t* row, int64_t k, int64_t cols) {
  if constexpr (T == DType::kF32) {
    return reinterpret_cast<const float*>(row)[k];
  } else if constexpr (T == DType::kF16) {
    return f16_to_f32(reinterpret_cast<const uint16_t*>(row)[k]);
  } else if constexpr (T == DType::kBF16) {
    return bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[k]);
  } else if constexpr (T == DType::kQ8_0) {
    const uint8_t* b = row + (k / 32) * kQ8_0Bytes;
    const float d = f16_to_f32(*reinterpret_cast<const uint16_t*>(b));
    return d * static_cast<float>(static_cast<int8_t>(b[2 + k % 32]));
  } else if constexpr (T == kQ8_0Split) {
    const float d = f16_to_f32(reinterpret_cast<const uint16_t*>(row + cols)[k / 32]);
    return d * static_cast<float>(static_cast<int8_t>(row[k]));
  } else if constexpr (T == DType::kQ4_K) {
    // dequantize_row: w = (d * sc) * q - dmin * m, two roundings and a subtraction (no fma).
    const uint8_t* b = row + (k / 256) * kQ4_KBytes;
    const int e = static_cast<int>(k % 256), j = e / 32;
    uint8_t sc, m;
    q4k_scale_min(b + 4, j, &sc, &m);
    const float d = f16_to_f32(*reinterpret_cast<const uint16_t*>(b));
    const float dmin = f16_to_f32(*reinterpret_cast<const uint16_t*>(b + 2));
    const uint8_t byte = b[16 + 32 * (e / 64) + e % 32];
    const int q = (e % 64) < 32 ? (byte & 0xF) : (byte >> 4);
    return __fsub_rn(__fmul_rn(__fmul_rn(d, static_cast<float>(sc)), static_cast<float>(q)),
                     __fmul_rn(dmin, static_cast<float>(m)));
  } else if constexpr (T == DType::kQ6_K) {
    // dequantize_row: w = (d * scale) * (q - 32).
    const uint8_t* b = row + (k / 256) * kQ6_KBytes;
    const int e = static_cast<int>(k % 256), h = e / 128, g = (e % 128) / 32, l = e % 32;
    const uint8_t ql = b[64 * h + l + 32 * (g & 1)];
    const uint8_t qh = b[128 + 32 * h + l];
    const int q = (((g < 2) ? (ql & 0xF) : (ql >> 4)) | (((qh >> (2 * g)) & 3) << 4)) - 32;
    const float d = f16_to_f32(*reinterpret_cast<const uint16_t*>(b + 208));
    const float sc = static_cast<float>(static_cast<int8_t>(b[192 + e / 16]));
    return __fmul_rn(__fmul_rn(d, sc), static_cast<float>(q));
  } else {
    static_assert(T == DType::kQ4_0, "unsupported type");
    const uint8_t* b = row + (k / 32) * kQ4_0Bytes;
    const float d = f16_to_f32(*reinterpret_cast<const uint16_t*>(b));
    const int j = static_cast<int>(k % 32);
    const uint8_t byte = b[2 + (j & 15)];
    const int q = (j < 16 ? (byte & 0xF) : (byte >> 4)) - 8;
    return d * static_cast<float>(q);
  }
}

// Calls f(DTypeTag<T>{}) for the runtime type t (f a generic lambda reading
// decltype(tag)::value); false when t is unsupported.
template <DType T>
struct DTypeTag {
  static constexpr DType value = T;
};

template <class F>
bool dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kF32: f(DTypeTag<DType::kF32>{}); return true;
    case DType::kF16: f(DTypeTag<DType::kF16>{}); return true;
    case DType::kBF16: f(DTypeTag<DType::kBF16>{}); return true;
    case DType::kQ8_0: f(DTypeTag<DType::kQ8_0>{}); return true;
    case kQ8_0Split: f(DTypeTag<kQ8_0Split>{}); return true;
    case DType::kQ4_0: f(DTypeTag<DType::kQ4_0>{}); return true;
    case DType::kQ4_K: f(DTypeTag<DType::kQ4_K>{}); return true;
    case DType::kQ6_K: f(DTypeTag<DType::kQ6_K>{}); return true;
    default: return false;
  }
}

}  // namespace ds::cuda
