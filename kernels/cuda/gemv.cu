// kernels/cuda/gemv.cu: y[n, rows] = x[n, cols] * W^T for small n (decode), reading each
// weight byte once per call and dequantizing in registers.
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
//
// Determinism: in both versions the instruction sequence producing y[j, r] depends only
// on r, j's activation row and the weights, never on n (<= 8), so a sequence decoded in a
// batch gets the bits it gets alone. The 16-byte path and its scalar fallback (used when
// cols % 8 != 0 or a pointer is not 16-byte aligned) do the same arithmetic.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

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
  for (int64_t k = 0; k < cols; ++k) acc = fmaf(load_elem<T>(row, k), xj[k], acc);
  y[j * rows + r] = acc;
}

// ---- v2 -----------------------------------------------------------------------------

constexpr int kV2Warps = 8;   // rows per block
constexpr int kV2Unroll = 4;  // chunks in flight per lane

// Loads weights [8c, 8c+8) of a row into w[] and returns the scale they share (1 for
// float types, the block's d for Q8_0/Q4_0, whose w[] are then the integer quants).
// vec: 16-byte loads allowed (cols % 8 == 0 and row 16-byte aligned); otherwise
// elements past cols read as 0. Q types always have cols % 32 == 0.
template <DType T>
__device__ __forceinline__ float load_chunk8(const uint8_t* __restrict__ row, int64_t c, int64_t cols, bool vec,
                                             float w[8]) {
  if constexpr (T == DType::kF32) {
    const float* r = reinterpret_cast<const float*>(row) + 8 * c;
    if (vec) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(r));
      const float4 b = __ldg(reinterpret_cast<const float4*>(r) + 1);
      w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) w[i] = 8 * c + i < cols ? r[i] : 0.0f;
    }
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

}  // namespace

cudaError_t gemv(int version, DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols,
                 const float* x, int n, float* y, cudaStream_t stream) {
  const auto* wb = static_cast<const uint8_t*>(w);
  bool ok = false;
  if (version == 1) {
    constexpr int kThreads = 128;
    const int64_t total = rows * n;
    const auto blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
    ok = dispatch_dtype(t, [&](auto tag) {
      constexpr DType T = decltype(tag)::value;
      DS_LAUNCH(gemv_v1_kernel<T>, blocks, kThreads, 0, stream)(wb, row_stride, rows, cols, x, n, y);
    });
  } else if (version == 2) {
    const bool float_type = t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
    const bool w_vec = float_type && cols % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && row_stride % 16 == 0;
    const bool x_vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    const auto blocks = static_cast<unsigned>((rows + kV2Warps - 1) / kV2Warps);
    ok = dispatch_dtype(t, [&](auto tag) {
      constexpr DType T = decltype(tag)::value;
      DS_LAUNCH(gemv_v2_kernel<T>, blocks, kV2Warps * kWarpSize, 0, stream)(wb, row_stride, rows, cols, x, n, y,
                                                                            w_vec, x_vec);
    });
  }
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace ds::cuda
