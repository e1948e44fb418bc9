// kernels/cuda/gemv_kernels.cuh: y[n, rows] = x[n, cols] * W^T for small n (decode), reading
// each weight byte once per call and dequantizing in registers.
//
// Compiled in parts (gemv_float.cu, gemv_q8_0.cu, gemv_q4_0_q6_k.cu, gemv_q4_k.cu), each for
// some of the weight types: it defines DS_GEMV_PART (the namespace of its entry points) and
// DS_GEMV_TYPES(X) (X(type) for each of its types), then includes this file. gemv.cu routes
// the entry points of ops.cuh to the part that has the type. One file took ~3 minutes of
// nvcc, the longest step of a GPU machine's build (tools/gpu-check.sh); the parts build in
// parallel.
//
// Reference: ref::matmul (kernels/ref.cc): dequantize_row, then a double dot product.
// Here every dot product accumulates in float, so results differ from ref by float
// rounding (bounded by ~1e-6 * sum|w*x| for these lengths; tests/gpu checks it).
//
// Versions (select with CudaBackend::set_gemv_version; tests/gpu validates and times both):
//   v1: one thread per output element; scalar load_elem<T> per weight; sequential fma
//       over k. Obviously right, slow (uncoalesced weight reads).
//   v2: one warp per weight row, 8 warps (rows) per block. Lane l takes the 8-element
//       chunks c = l, l+32, l+64, ... of the row (4 chunks in flight per lane), loads a
//       chunk with one 16-byte load (F16/BF16; two for F32) or, for Q8_0/Q4_0, the chunk's
//       8 bytes as four 2-byte loads plus the block scale d, forms s = sum_i w_i * x_i
//       (w_i the raw quant value for Q types) and acc += d * s; then a butterfly warp sum.
//   v3 (live): one warp per weight row, 4 rows per 128-thread block (more blocks, better
//       SM balance). Every lane first issues the loads of all kV3Unroll (8) of its chunks
//       (a whole 2048-column row per warp in one go: the bytes in flight hide HBM latency),
//       then computes; the activation count is a template parameter (1, 2, 4, 8) so the
//       column loop unrolls and the x loads are scheduled early. Q8_0 quants become floats
//       with a byte permute and one exact float subtraction instead of int-to-float
//       conversions (16/clock/SM on sm_90: too slow for HBM rates). Q4_0 chunks are half a
//       block (16 weights: 8 bytes, low and high nibbles), so no byte is loaded twice.
//       Per chunk: s = sum_i w_i * x_i in element order, acc = fma(d, s, acc) (d = 1 for
//       float types, where acc takes the fma chain directly).
//       H200 (tools/gpu-check.sh): 5632x2048 n=1 q8_0 1083 GB/s (v2 871), f16 1824 (v2 1606);
//       at n=8 it is bound by the per-column x loads and FMAs (297 GB/s, as v2), and n=32 in
//       four launches takes 65 us, slower than cuBLAS: matmul keeps cuBLAS for n > 8.
//       Fused decode launches (gemv_qkv, gemv_swiglu) run the same per-row code
//       (v3_rows_dots) over several matrices in one launch. For n > 1 a warp takes 2 rows
//       (kV3BatchedRows) and loads each x chunk once for both, halving the x loads that bound
//       n = 8 (not yet timed on a GPU; kV3BatchedRows = 1 restores one row per warp; version 4
//       is the plain GEMV with one row per warp, so gpu_kernel_check times both in one run).
//
// Q8_0 split rows (kQ8_0Split, CudaBackendOptions::q8_0_split): the quants of a row come
// first, so a lane's 8 quants are one 8-byte load and its scale one 2-byte load, where the
// GGUF blocks (34 bytes, 2-byte aligned) take four 2-byte loads and a scale load: the warp's
// requests fall from ~45 32-byte sectors per 256 quant bytes to 9. Same chunks, values and
// arithmetic as Q8_0, so the same bits (gpu_kernel_check checks them; not yet timed).
//
// Determinism: in every version the instruction sequence producing y[j, r] depends only
// on r, j's activation row and the weights, never on n (<= 8), so a sequence decoded in a
// batch gets the bits it gets alone. The 16-byte path and its scalar fallback (used when
// cols % 8 != 0 or a pointer is not 16-byte aligned) do the same arithmetic.
#pragma once  // (once per part: each part is one translation unit)

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv_v3.cuh"
#include "kernels/cuda/ops.cuh"

#if !defined(DS_GEMV_PART) || !defined(DS_GEMV_TYPES)
#error "define DS_GEMV_PART and DS_GEMV_TYPES before including gemv_kernels.cuh (see its comment)"
#endif

namespace ds::cuda {
namespace {

using namespace v3;  // NOLINT: the per-row dots (gemv_v3.cuh)

// ---- v1 -----------------------------------------------------------------------------

template <DType T>
__global__ void gemv_v1_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t rows, int64_t cols,
                               const float* __restrict__ x, int n, float* __restrict__ y) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * n) return;
  const int64_t r = idx % rows, j = idx / rows;
  const uint8_t* row = w + r * static_cast<int64_t>(row_stride);
  const float* xj = x + j * cols;
  float acc = 0.0f;
  for (int64_t k = 0; k < cols; ++k) acc = fmaf(load_elem<T>(row, k, cols), xj[k], acc);
  y[j * rows + r] = acc;
}

// ---- v2 -----------------------------------------------------------------------------

constexpr int kV2Warps = 8;   // rows per block
constexpr int kV2Unroll = 4;  // chunks in flight per lane

// x[8c, 8c+8) of one activation row; elements past cols read as 0 on the scalar path.
__device__ __forceinline__ void load_x8(const float* __restrict__ xj, int64_t c, int64_t cols, bool vec, float v[8]) {
  const float* r = xj + 8 * c;
  if (vec) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(r));
    const float4 b = __ldg(reinterpret_cast<const float4*>(r) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = 8 * c + i < cols ? r[i] : 0.0f;
  }
}

// Loads weights [8c, 8c+8) of a row into w[] and returns the scale they share (1 for
// float types, the block's d for Q8_0/Q4_0, whose w[] are then the integer quants).
// vec: 16-byte loads allowed (cols % 8 == 0 and row 16-byte aligned); otherwise
// elements past cols read as 0. Q types always have cols % 32 == 0.
template <DType T>
__device__ __forceinline__ float load_chunk8(const uint8_t* __restrict__ row, int64_t c, int64_t cols, bool vec,
                                             float w[8]) {
  if constexpr (T == DType::kF32) {
    load_x8(reinterpret_cast<const float*>(row), c, cols, vec, w);  // 8 floats, as an activation chunk
    return 1.0f;
  } else if constexpr (T == DType::kF16 || T == DType::kBF16) {
    const uint16_t* r = reinterpret_cast<const uint16_t*>(row) + 8 * c;
    uint16_t h[8];
    if (vec) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(r));
      const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        h[2 * i] = static_cast<uint16_t>(words[i] & 0xffff);
        h[2 * i + 1] = static_cast<uint16_t>(words[i] >> 16);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) h[i] = 8 * c + i < cols ? r[i] : uint16_t{0};
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = T == DType::kF16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
    return 1.0f;
  } else if constexpr (T == DType::kQ8_0) {
    // Chunk c is quarter (c & 3) of block (c >> 2): qs[8q .. 8q+8).
    const uint8_t* b = row + (c >> 2) * kQ8_0Bytes;
    const uint16_t* q = reinterpret_cast<const uint16_t*>(b + 2 + (c & 3) * 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint16_t u = q[i];
      w[2 * i] = static_cast<float>(static_cast<int8_t>(u & 0xff));
      w[2 * i + 1] = static_cast<float>(static_cast<int8_t>(u >> 8));
    }
    return f16_to_f32(*reinterpret_cast<const uint16_t*>(b));
  } else if constexpr (T == kQ8_0Split) {
    // Chunk c: quants [8c, 8c + 8), scale c >> 2 (after the row's quants).
    const uint16_t* q = reinterpret_cast<const uint16_t*>(row + 8 * c);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint16_t u = q[i];
      w[2 * i] = static_cast<float>(static_cast<int8_t>(u & 0xff));
      w[2 * i + 1] = static_cast<float>(static_cast<int8_t>(u >> 8));
    }
    return f16_to_f32(reinterpret_cast<const uint16_t*>(row + cols)[c >> 2]);
  } else if constexpr (T == DType::kQ4_K || T == DType::kQ6_K) {
    // K-quants (v2 is a validation path for them): the scalar loader, weights as floats.
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = load_elem<T>(row, 8 * c + i, cols);
    return 1.0f;
  } else {
    static_assert(T == DType::kQ4_0, "unsupported type");
    // Chunk c is elements [8q, 8q+8) of block (c >> 2), q = c & 3: q = 0, 1 are the low
    // nibbles of qs[0..8), qs[8..16); q = 2, 3 the high nibbles of the same bytes.
    const uint8_t* b = row + (c >> 2) * kQ4_0Bytes;
    const uint16_t* q = reinterpret_cast<const uint16_t*>(b + 2 + (c & 1) * 8);
    const int shift = (c & 2) ? 4 : 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t u = q[i];
      w[2 * i] = static_cast<float>(static_cast<int>(((u & 0xff) >> shift) & 0xF) - 8);
      w[2 * i + 1] = static_cast<float>(static_cast<int>(((u >> 8) >> shift) & 0xF) - 8);
    }
    return f16_to_f32(*reinterpret_cast<const uint16_t*>(b));
  }
}

template <DType T>
__global__ void __launch_bounds__(kV2Warps * kWarpSize)
    gemv_v2_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t rows, int64_t cols,
                   const float* __restrict__ x, int n, float* __restrict__ y, bool w_vec, bool x_vec) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kV2Warps + (threadIdx.x >> 5);
  if (r >= rows) return;  // uniform per warp: the shuffles below see full warps
  const uint8_t* row = w + r * static_cast<int64_t>(row_stride);
  const int64_t n_chunks = (cols + 7) / 8;
  float acc[kGemvMaxN];
#pragma unroll
  for (int j = 0; j < kGemvMaxN; ++j) acc[j] = 0.0f;

  for (int64_t c0 = lane; c0 < n_chunks; c0 += kWarpSize * kV2Unroll) {
    float wv[kV2Unroll][8], d[kV2Unroll];
#pragma unroll
    for (int u = 0; u < kV2Unroll; ++u) {
      const int64_t c = c0 + u * kWarpSize;
      if (c < n_chunks) {
        d[u] = load_chunk8<T>(row, c, cols, w_vec, wv[u]);
      } else {
        d[u] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) wv[u][i] = 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < kGemvMaxN; ++j) {
      if (j >= n) break;
      const float* xj = x + j * cols;
#pragma unroll
      for (int u = 0; u < kV2Unroll; ++u) {
        const int64_t c = c0 + u * kWarpSize;
        if (c >= n_chunks) break;
        float xv[8];
        load_x8(xj, c, cols, x_vec, xv);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(wv[u][i], xv[i], s);
        acc[j] = fmaf(d[u], s, acc[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kGemvMaxN; ++j) {
    if (j >= n) break;
    const float v = warp_sum(acc[j]);
    if (lane == 0) y[j * rows + r] = v;
  }
}

// ---- v3 (gemv_v3.cuh: the per-row dots) ------------------------------------------

// gemv_add's norm tail (GemvNorm): after every block of the launch wrote its rows of y, the
// block that arrives last (an arrival counter) writes rmsnorm(y) to norm.out for the n rows,
// with rmsnorm_kernel's arithmetic (rms_sum_sq), reading y past L1 (other blocks wrote it), and
// zeroes the counter for the next launch. ticket, red: the block's shared memory.
// REQUIRES: every thread of every block of the launch calls it, after its writes to y.
__device__ __forceinline__ void gemv_norm_tail(const GemvNorm& norm, const float* y, int64_t rows, int n,
                                               unsigned* ticket, float* red) {
  __threadfence();  // this block's rows of y are visible to the block that arrives last
  __syncthreads();
  if (threadIdx.x == 0) *ticket = atomicAdd(norm.counter, 1u);
  __syncthreads();
  if (*ticket != gridDim.x - 1) return;  // block-uniform
  __threadfence();
  for (int j = 0; j < n; ++j) {
    const float* yj = y + j * rows;
    const float ss = rms_sum_sq<true>(yj, rows, red);
    const float scale = 1.0f / sqrtf(ss / static_cast<float>(rows) + norm.eps);
    float* oj = norm.out + j * rows;
    for (int64_t k = threadIdx.x; k < rows; k += blockDim.x) oj[k] = __ldcg(yj + k) * scale * norm.weight[k];
  }
  if (threadIdx.x == 0) *norm.counter = 0;
}

// NC: activation rows this instantiation can take (n <= NC; columns j >= n are skipped).
// kAdd: y[j, r] += dot (gemv_add: the residual add fused in, the one float add that add
// makes), else y[j, r] = dot.
// R: rows per warp (kV3Rows<NC>; 1 for version 4).
// norm (gemv_add only, GemvNorm in ops.cuh; null: none): after y += x W^T, gemv_norm_tail.
// pf (every v3 launch below too): the next op's weights, each block's share asked of L2 at its
// start (ops.cuh: L2Prefetch; empty: nothing).
template <DType T, int NC, bool kAdd = false, int R = kV3Rows<NC>>
__global__ void __launch_bounds__(kV3Warps * kWarpSize)
    gemv_v3_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t rows, int64_t cols,
                   const float* __restrict__ x, int n, float* __restrict__ y, bool w_vec, bool x_vec,
                   GemvNorm norm, L2Prefetch pf) {
  griddep_launch_dependents();
  l2_prefetch_share(pf);
  const int lane = threadIdx.x & 31;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kV3Warps + (threadIdx.x >> 5)) * R;
  const bool with_norm = norm.weight != nullptr;  // block-uniform
  // Past the rows: uniform per warp (writes nothing, so needs no griddep_wait), except that
  // with a norm every warp reaches the block's barriers.
  if (r0 >= rows && !with_norm) return;
  if (r0 < rows) {
    const uint8_t* row_ptrs[R];
#pragma unroll
    for (int i = 0; i < R; ++i) row_ptrs[i] = r0 + i < rows ? w + (r0 + i) * static_cast<int64_t>(row_stride) : nullptr;
    float dots[R][NC] = {};
    v3_rows_dots<T, NC, R>(row_ptrs, cols, x, n, w_vec, x_vec, dots);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (row_ptrs[i] == nullptr || lane != 0) continue;
      const int64_t r = r0 + i;
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        if (j >= n) break;
        if constexpr (kAdd) y[j * rows + r] += dots[i][j];
        else y[j * rows + r] = dots[i][j];
      }
    }
  } else {
    griddep_wait();  // it reads y in the tail below
  }
  if (!with_norm) return;
  __shared__ unsigned ticket;
  __shared__ float red[32];
  gemv_norm_tail(norm, y, rows, n, &ticket, red);
}

// ---- v3, fused decode launches ----------------------------------------------------------

// Q, K and V projections in one launch: warp g takes row g of the concatenated row range
// [Q rows | K rows | V rows] (a block may straddle two matrices: warps are independent) and
// writes y_m[j, r] = dot + bias_m[r], the one float add that add_bias makes.
template <DType T, int NC>
__global__ void __launch_bounds__(kV3Warps * kWarpSize)
    gemv_v3_qkv_kernel(GemvQkv a, size_t row_stride, int64_t cols, const float* __restrict__ x, int n, bool w_vec,
                       bool x_vec, L2Prefetch pf) {
  griddep_launch_dependents();
  l2_prefetch_share(pf);
  constexpr int R = kV3Rows<NC>;
  const int lane = threadIdx.x & 31;
  const int64_t g0 = (static_cast<int64_t>(blockIdx.x) * kV3Warps + (threadIdx.x >> 5)) * R;
  if (g0 >= a.rows[0] + a.rows[1] + a.rows[2]) return;  // uniform per warp
  const uint8_t* row_ptrs[R];
  int mat[R];
  int64_t at[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {  // row g0 + i of the concatenated range: matrix mat[i], row at[i]
    int64_t r = g0 + i;
    int m = 0;
    if (r >= a.rows[0]) {
      r -= a.rows[0];
      m = 1;
      if (r >= a.rows[1]) {
        r -= a.rows[1];
        m = 2;
      }
    }
    mat[i] = m;
    at[i] = r;
    row_ptrs[i] = r < a.rows[m] ? static_cast<const uint8_t*>(a.w[m]) + r * static_cast<int64_t>(row_stride) : nullptr;
  }
  float dots[R][NC] = {};
  v3_rows_dots<T, NC, R>(row_ptrs, cols, x, n, w_vec, x_vec, dots);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (row_ptrs[i] == nullptr || lane != 0) continue;
    const int m = mat[i];
    const int64_t r = at[i], rows = a.rows[m];
    const float* bias = a.bias[m];
    float* y = a.y[m];
    const float b = bias ? bias[r] : 0.0f;
#pragma unroll
    for (int j = 0; j < NC; ++j) {
      if (j >= n) break;
      y[j * rows + r] = bias ? dots[i][j] + b : dots[i][j];
    }
  }
}

// Q, K, V, RoPE and the cache write in one launch (ops.cuh: gemv_qkv_rope): warp g takes
// pair g of the concatenated pairs [Q heads' | K heads' | V's], its two rows' dots from
// v3_rows_dots with R = 2 (the instructions of each row are those of gemv_qkv), then lane j
// < n finishes token j: the bias add of add_bias, rope_store_kv's rotation (rope_angle /
// rope_rotate in double) and its kv_put. KvT: the cache's element (float or uint16_t F16).
template <DType T, int NC, class KvT>
__global__ void __launch_bounds__(kV3Warps * kWarpSize)
    gemv_v3_qkv_rope_kernel(GemvQkv a, GemvQkvRope rp, size_t row_stride, int64_t cols,
                            const float* __restrict__ x, int n, bool w_vec, bool x_vec, L2Prefetch pf) {
  griddep_launch_dependents();
  l2_prefetch_share(pf);
  const int64_t gp = static_cast<int64_t>(blockIdx.x) * kV3Warps + (threadIdx.x >> 5);
  qkv_rope_pair<T, NC, KvT>(a, rp, row_stride, cols, x, n, w_vec, x_vec, gp);
}

// Gate and up projections with SwiGLU in one launch: a block of kV3Warps warps takes
// kV3Warps / 2 row groups of R rows; its first half of warps computes their gate dots, the
// second half their up dots (R rows per warp, as gemv), and the up dots meet the gate dots
// through shared memory. out[j, r] = g / (1 + expf(-g)) * u, swiglu_kernel's expression.
constexpr int kSwigluRows = kV3Warps / 2;  // row groups per block

template <DType T, int NC>
__global__ void __launch_bounds__(kV3Warps * kWarpSize)
    gemv_v3_swiglu_kernel(const uint8_t* __restrict__ w_gate, const uint8_t* __restrict__ w_up, size_t row_stride,
                          int64_t rows, int64_t cols, const float* __restrict__ x, int n, float* __restrict__ out,
                          bool w_vec, bool x_vec, L2Prefetch pf) {
  griddep_launch_dependents();
  l2_prefetch_share(pf);
  constexpr int R = kV3Rows<NC>;
  __shared__ float up_dots[kSwigluRows][R][NC];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slot = warp % kSwigluRows;
  const bool is_up = warp >= kSwigluRows;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kSwigluRows + slot) * R;
  const uint8_t* row_ptrs[R];
#pragma unroll
  for (int i = 0; i < R; ++i)
    row_ptrs[i] = r0 + i < rows ? (is_up ? w_up : w_gate) + (r0 + i) * static_cast<int64_t>(row_stride) : nullptr;
  float dots[R][NC] = {};
  if (r0 < rows) {  // uniform per warp; no return: every thread reaches the barrier
    v3_rows_dots<T, NC, R>(row_ptrs, cols, x, n, w_vec, x_vec, dots);
    if (is_up && lane == 0) {
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < NC; ++j) {
          if (j >= n) break;
          up_dots[slot][i][j] = dots[i][j];
        }
    }
  }
  __syncthreads();
  if (r0 < rows && !is_up && lane == 0) {
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (row_ptrs[i] == nullptr) continue;
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        if (j >= n) break;
        const float g = dots[i][j];
        out[j * rows + r0 + i] = g / (1.0f + expf(-g)) * up_dots[slot][i][j];
      }
    }
  }
}

// ---- v5: streamed rows, n = 1 (gemv_v3.cuh: v3_stream_rows) -----------------------------

// y[r] (+)= dot of row r with x for the rows warp g of the grid takes: g, g + warps, ...; the
// norm tail as gemv_v3_kernel's. The same bits as gemv_v3_kernel<T, 1, kAdd>.
template <DType T, bool kAdd>
__global__ void __launch_bounds__(kV3Warps * kWarpSize)
    gemv_v5_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t rows, int64_t cols,
                   const float* __restrict__ x, float* __restrict__ y, bool w_vec, bool x_vec, GemvNorm norm,
                   L2Prefetch pf) {
  griddep_launch_dependents();
  l2_prefetch_share(pf);
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kV3Warps;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kV3Warps + (threadIdx.x >> 5);
  v3_stream_rows<T>(
      cols, x, w_vec, x_vec,
      [&](int64_t k, const uint8_t** p) {
        const int64_t r = g + k * warps;
        if (r >= rows) return false;
        *p = w + r * static_cast<int64_t>(row_stride);
        return true;
      },
      [&](int64_t k, float dot) {
        if (lane != 0) return;
        const int64_t r = g + k * warps;
        if constexpr (kAdd) y[r] += dot;
        else y[r] = dot;
      });
  if (norm.weight == nullptr) return;
  __shared__ unsigned ticket;
  __shared__ float red[32];
  gemv_norm_tail(norm, y, rows, 1, &ticket, red);
}

// out[r] = silu(gate dot) * up dot for the rows warp g takes (g, g + warps, ...): the gate row's
// dot, then the up row's, streamed one after the other; the expression of gemv_v3_swiglu_kernel,
// so the same bits.
template <DType T>
__global__ void __launch_bounds__(kV3Warps * kWarpSize)
    gemv_v5_swiglu_kernel(const uint8_t* __restrict__ w_gate, const uint8_t* __restrict__ w_up, size_t row_stride,
                          int64_t rows, int64_t cols, const float* __restrict__ x, float* __restrict__ out, bool w_vec,
                          bool x_vec, L2Prefetch pf) {
  griddep_launch_dependents();
  l2_prefetch_share(pf);
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kV3Warps;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kV3Warps + (threadIdx.x >> 5);
  float gate = 0.0f;
  v3_stream_rows<T>(
      cols, x, w_vec, x_vec,
      [&](int64_t k, const uint8_t** p) {  // k even: gate row, odd: up row, of row g + (k / 2) warps
        const int64_t r = g + (k >> 1) * warps;
        if (r >= rows) return false;
        *p = ((k & 1) ? w_up : w_gate) + r * static_cast<int64_t>(row_stride);
        return true;
      },
      [&](int64_t k, float dot) {
        if (!(k & 1)) {
          gate = dot;
        } else if (lane == 0) {
          out[g + (k >> 1) * warps] = gate / (1.0f + expf(-gate)) * dot;
        }
      });
}

// Q, K, V, RoPE and the cache write for one token, streamed: warp g takes pairs g, g + warps,
// ... (gemv_v3.cuh: qkv_pair_at), row ra's dot then row rb's, then qkv_pair_finish: the same
// bits as gemv_v3_qkv_rope_kernel<T, 1, KvT>.
template <DType T, class KvT>
__global__ void __launch_bounds__(kV3Warps * kWarpSize)
    gemv_v5_qkv_rope_kernel(GemvQkv a, GemvQkvRope rp, size_t row_stride, int64_t cols, const float* __restrict__ x,
                            bool w_vec, bool x_vec, L2Prefetch pf) {
  griddep_launch_dependents();
  l2_prefetch_share(pf);
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kV3Warps;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kV3Warps + (threadIdx.x >> 5);
  QkvPair q{};
  int64_t q_at = -1;  // the pair q describes
  auto pair = [&](int64_t k) {  // q = the pair of the warp's k-th row; false past its last
    const int64_t gp = g + (k >> 1) * warps;
    if (gp != q_at) {
      if (!qkv_pair_at(a, rp, gp, &q)) return false;
      q_at = gp;
    }
    return true;
  };
  float da = 0.0f;
  v3_stream_rows<T>(
      cols, x, w_vec, x_vec,
      [&](int64_t k, const uint8_t** p) {  // k even: the pair's row ra, odd: rb
        if (!pair(k)) return false;
        *p = static_cast<const uint8_t*>(a.w[q.m]) + ((k & 1) ? q.rb : q.ra) * static_cast<int64_t>(row_stride);
        return true;
      },
      [&](int64_t k, float dot) {
        if (!(k & 1)) {
          da = dot;
          return;
        }
        pair(k);  // (the next row's lookup may have moved q on)
        if (lane == 0) qkv_pair_finish<KvT>(a, rp, q, 0, da, dot);
      });
}

// Blocks of a version-5 launch: at most what the device holds at once (kStreamBlocksPerSm an
// SM, fewer where the kernel's registers allow fewer), so that each warp streams several rows;
// never more than v3 would launch.
constexpr int kStreamBlocksPerSm = 8;
template <class K>
unsigned v5_blocks(K kernel, int64_t rows) {
  const int64_t v3 = (rows + kV3Warps - 1) / kV3Warps;
#ifdef DS_CUDA_EMULATION
  (void)kernel;
  return static_cast<unsigned>(std::min<int64_t>(v3, 3));  // a few blocks: many rows a warp
#else
  // Per instantiation, once (thread-safe: tensor-parallel ranks launch from their own threads):
  // the blocks the device holds at once.
  static const int cap = [kernel]() {
    int device = 0, sms = 0, fit = 0, c = 132 * 4;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, kV3Warps * kWarpSize, 0) == cudaSuccess && fit > 0)
      c = sms * std::min(fit, kStreamBlocksPerSm);
    cudaGetLastError();
    return c;
  }();
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(v3, cap)));
#endif
}

// Blocks of a v3 launch over `rows` rows (kV3Warps warps of R rows each).
unsigned v3_blocks(int64_t rows, int rows_per_warp) {
  const int64_t per_block = static_cast<int64_t>(kV3Warps) * rows_per_warp;
  return static_cast<unsigned>((rows + per_block - 1) / per_block);
}

template <DType T, int NC, int R>
void launch_v3_nc(const uint8_t* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n, float* y,
                  bool w_vec, bool x_vec, cudaStream_t stream, bool pdl, const L2Prefetch& pf) {
  const auto blocks = v3_blocks(rows, R);
  auto* kernel = gemv_v3_kernel<T, NC, false, R>;
  DS_LAUNCH_PDL(kernel, blocks, kV3Warps * kWarpSize, 0, stream, pdl)(w, row_stride, rows, cols, x, n, y, w_vec, x_vec,
                                                                      GemvNorm{}, pf);
}

// one_row: version 4 (one row per warp whatever n).
template <DType T>
void launch_v3(const uint8_t* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n, float* y,
               bool w_vec, bool x_vec, cudaStream_t stream, bool pdl, bool one_row, const L2Prefetch& pf) {
  if (n <= 1) launch_v3_nc<T, 1, 1>(w, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, pf);
  else if (one_row && n <= 2) launch_v3_nc<T, 2, 1>(w, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, pf);
  else if (one_row && n <= 4) launch_v3_nc<T, 4, 1>(w, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, pf);
  else if (one_row) launch_v3_nc<T, 8, 1>(w, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, pf);
  else if (n <= 2) launch_v3_nc<T, 2, kV3Rows<2>>(w, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, pf);
  else if (n <= 4) launch_v3_nc<T, 4, kV3Rows<4>>(w, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, pf);
  else launch_v3_nc<T, 8, kV3Rows<8>>(w, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, pf);
}

template <class Launch>
void launch_nc(int n, Launch&& launch) {
  if (n <= 1) launch(std::integral_constant<int, 1>{});
  else if (n <= 2) launch(std::integral_constant<int, 2>{});
  else if (n <= 4) launch(std::integral_constant<int, 4>{});
  else launch(std::integral_constant<int, 8>{});
}

bool float_type(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
// Wide weight loads (v3): 16 bytes for float rows of whole 8-element chunks and Q4_K, when
// every row is 16-byte aligned; 8 bytes of quants for split Q8_0 rows 8-byte aligned.
bool vec_weights(DType t, int64_t cols, size_t row_stride) {
  if (t == kQ8_0Split) return row_stride % 8 == 0;
  return ((float_type(t) && cols % 8 == 0) || t == DType::kQ4_K) && row_stride % 16 == 0;
}
bool aligned_for(DType t, const void* p) { return reinterpret_cast<uintptr_t>(p) % (t == kQ8_0Split ? 8 : 16) == 0; }

// This part's types only (common.cuh's dispatch_dtype, narrowed to DS_GEMV_TYPES).
template <class F>
bool dispatch_part(DType t, F&& f) {
#define DS_GEMV_CASE(T)      \
  if (t == (T)) {            \
    f(DTypeTag<(T)>{});      \
    return true;             \
  }
  DS_GEMV_TYPES(DS_GEMV_CASE)
#undef DS_GEMV_CASE
  return false;
}

}  // namespace

namespace DS_GEMV_PART {

bool handles(DType t) {
  return dispatch_part(t, [](auto) {});
}

bool gemv_wide_loads(DType t, const void* w, int64_t cols, size_t row_stride) {
  return vec_weights(t, cols, row_stride) && aligned_for(t, w);
}

cudaError_t gemv(int version, DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols,
                 const float* x, int n, float* y, cudaStream_t stream, bool pdl, const L2Prefetch* l2) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const L2Prefetch pf = l2 ? *l2 : L2Prefetch{};
  bool ok = false;
  if (version == 1) {
    constexpr int kThreads = 128;
    const int64_t total = rows * n;
    const auto blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
    ok = dispatch_part(t, [&](auto tag) {
      constexpr DType T = decltype(tag)::value;
      DS_LAUNCH(gemv_v1_kernel<T>, blocks, kThreads, 0, stream)(wb, row_stride, rows, cols, x, n, y);
    });
  } else if (version == 2) {
    const bool float_type = t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
    const bool w_vec = float_type && cols % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && row_stride % 16 == 0;
    const bool x_vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    const auto blocks = static_cast<unsigned>((rows + kV2Warps - 1) / kV2Warps);
    ok = dispatch_part(t, [&](auto tag) {
      constexpr DType T = decltype(tag)::value;
      DS_LAUNCH(gemv_v2_kernel<T>, blocks, kV2Warps * kWarpSize, 0, stream)(wb, row_stride, rows, cols, x, n, y,
                                                                            w_vec, x_vec);
    });
  } else if (version == 5 && n == 1) {
    const bool w_vec = vec_weights(t, cols, row_stride) && aligned_for(t, w);
    const bool x_vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    ok = dispatch_part(t, [&](auto tag) {
      auto* kernel = gemv_v5_kernel<decltype(tag)::value, false>;
      DS_LAUNCH_PDL(kernel, v5_blocks(kernel, rows), kV3Warps * kWarpSize, 0, stream, pdl)(
          wb, row_stride, rows, cols, x, y, w_vec, x_vec, GemvNorm{}, pf);
    });
  } else if (version >= 3 && version <= 5) {
    const bool w_vec = vec_weights(t, cols, row_stride) && aligned_for(t, w);
    const bool x_vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    ok = dispatch_part(t, [&](auto tag) {
      launch_v3<decltype(tag)::value>(wb, row_stride, rows, cols, x, n, y, w_vec, x_vec, stream, pdl, version == 4, pf);
    });
  }
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t gemv_add(DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n,
                     float* y, cudaStream_t stream, bool pdl, const GemvNorm* norm, const L2Prefetch* l2,
                     bool stream_rows) {
  const L2Prefetch pf = l2 ? *l2 : L2Prefetch{};
  const bool w_vec = vec_weights(t, cols, row_stride) && aligned_for(t, w);
  const bool x_vec = cols % 8 == 0 && aligned16(x);
  const auto* wb = static_cast<const uint8_t*>(w);
  const GemvNorm nm = norm ? *norm : GemvNorm{};
  const bool ok = dispatch_part(t, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    if (stream_rows && n == 1) {
      auto* kernel = gemv_v5_kernel<T, true>;
      DS_LAUNCH_PDL(kernel, v5_blocks(kernel, rows), kV3Warps * kWarpSize, 0, stream, pdl)(
          wb, row_stride, rows, cols, x, y, w_vec, x_vec, nm, pf);
      return;
    }
    launch_nc(n, [&](auto nc) {
      const auto blocks = v3_blocks(rows, kV3Rows<decltype(nc)::value>);
      auto* kernel = gemv_v3_kernel<T, decltype(nc)::value, true>;
      DS_LAUNCH_PDL(kernel, blocks, kV3Warps * kWarpSize, 0, stream, pdl)(wb, row_stride, rows, cols, x, n, y, w_vec,
                                                                          x_vec, nm, pf);
    });
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t gemv_qkv(DType t, const GemvQkv& a, size_t row_stride, int64_t cols, const float* x, int n,
                     cudaStream_t stream, bool pdl, const L2Prefetch* l2) {
  const L2Prefetch pf = l2 ? *l2 : L2Prefetch{};
  const bool w_vec = vec_weights(t, cols, row_stride) && aligned_for(t, a.w[0]) && aligned_for(t, a.w[1]) &&
                     aligned_for(t, a.w[2]);
  const bool x_vec = cols % 8 == 0 && aligned16(x);
  const int64_t all_rows = a.rows[0] + a.rows[1] + a.rows[2];
  const bool ok = dispatch_part(t, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    launch_nc(n, [&](auto nc) {
      const auto blocks = v3_blocks(all_rows, kV3Rows<decltype(nc)::value>);
      auto* kernel = gemv_v3_qkv_kernel<T, decltype(nc)::value>;
      DS_LAUNCH_PDL(kernel, blocks, kV3Warps * kWarpSize, 0, stream, pdl)(a, row_stride, cols, x, n, w_vec, x_vec, pf);
    });
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t gemv_qkv_rope(DType t, const GemvQkv& a, const GemvQkvRope& r, size_t row_stride, int64_t cols,
                          const float* x, int n, cudaStream_t stream, bool pdl, const L2Prefetch* l2,
                          bool stream_rows) {
  const L2Prefetch pf = l2 ? *l2 : L2Prefetch{};
  const bool w_vec = vec_weights(t, cols, row_stride) && aligned_for(t, a.w[0]) && aligned_for(t, a.w[1]) &&
                     aligned_for(t, a.w[2]);
  const bool x_vec = cols % 8 == 0 && aligned16(x);
  const int64_t pairs = (a.rows[0] + a.rows[1] + a.rows[2]) / 2;
  const auto blocks = static_cast<unsigned>((pairs + kV3Warps - 1) / kV3Warps);
  const bool ok = dispatch_part(t, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    if (stream_rows && n == 1) {
      if (r.kv_f16) {
        auto* kernel = gemv_v5_qkv_rope_kernel<T, uint16_t>;
        DS_LAUNCH_PDL(kernel, v5_blocks(kernel, pairs), kV3Warps * kWarpSize, 0, stream, pdl)(a, r, row_stride, cols, x,
                                                                                            w_vec, x_vec, pf);
      } else {
        auto* kernel = gemv_v5_qkv_rope_kernel<T, float>;
        DS_LAUNCH_PDL(kernel, v5_blocks(kernel, pairs), kV3Warps * kWarpSize, 0, stream, pdl)(a, r, row_stride, cols, x,
                                                                                            w_vec, x_vec, pf);
      }
      return;
    }
    launch_nc(n, [&](auto nc) {
      constexpr int NC = decltype(nc)::value;
      if (r.kv_f16) {
        auto* kernel = gemv_v3_qkv_rope_kernel<T, NC, uint16_t>;
        DS_LAUNCH_PDL(kernel, blocks, kV3Warps * kWarpSize, 0, stream, pdl)(a, r, row_stride, cols, x, n, w_vec, x_vec, pf);
      } else {
        auto* kernel = gemv_v3_qkv_rope_kernel<T, NC, float>;
        DS_LAUNCH_PDL(kernel, blocks, kV3Warps * kWarpSize, 0, stream, pdl)(a, r, row_stride, cols, x, n, w_vec, x_vec, pf);
      }
    });
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t gemv_swiglu(DType t, const void* w_gate, const void* w_up, size_t row_stride, int64_t rows, int64_t cols,
                        const float* x, int n, float* out, cudaStream_t stream, bool pdl, const L2Prefetch* l2,
                        bool stream_rows) {
  const L2Prefetch pf = l2 ? *l2 : L2Prefetch{};
  const bool w_vec = vec_weights(t, cols, row_stride) && aligned_for(t, w_gate) && aligned_for(t, w_up);
  const bool x_vec = cols % 8 == 0 && aligned16(x);
  const auto* g = static_cast<const uint8_t*>(w_gate);
  const auto* u = static_cast<const uint8_t*>(w_up);
  const bool ok = dispatch_part(t, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    if (stream_rows && n == 1) {
      auto* kernel = gemv_v5_swiglu_kernel<T>;
      DS_LAUNCH_PDL(kernel, v5_blocks(kernel, rows), kV3Warps * kWarpSize, 0, stream, pdl)(
          g, u, row_stride, rows, cols, x, out, w_vec, x_vec, pf);
      return;
    }
    launch_nc(n, [&](auto nc) {
      const int64_t per_block = static_cast<int64_t>(kSwigluRows) * kV3Rows<decltype(nc)::value>;
      const auto blocks = static_cast<unsigned>((rows + per_block - 1) / per_block);
      auto* kernel = gemv_v3_swiglu_kernel<T, decltype(nc)::value>;
      DS_LAUNCH_PDL(kernel, blocks, kV3Warps * kWarpSize, 0, stream, pdl)(g, u, row_stride, rows, cols, x, n, out,
                                                                          w_vec, x_vec, pf);
    });
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace DS_GEMV_PART
}  // namespace ds::cuda
