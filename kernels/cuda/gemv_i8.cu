// kernels/cuda/gemv_i8.cu: decode GEMV for Q8_0 weights on int8 dot products (ops.cuh:
// gemv_i8; CudaBackendOptions::int8_gemv, off by default: not yet timed on a GPU).
//
// Why: gemv v3 (gemv_kernels.cuh) turns every Q8_0 weight into a float and multiplies it
// with a float activation: ~30 instructions and 32 bytes of activation loads per 8 weights.
// On the H200 it read Q8_0 at 31-43% of memcpy's rate where F16 reached 54-71% (16th
// session). Here the activations are quantized once per call, as the CPU backend's VNNI path
// does (kernels/cpu/matmul.cc, quantize_row_q8a: per 32 values d = max|x| / 127, q =
// nearest-even(x / d), the same bits), and a lane's 16 weights take 4 dp4a instructions
// with 16 bytes of activation quants.
//
// Layout: a warp per weight row, 4 rows a 128-thread block. Lane l takes the 16-weight
// chunks c = l, l + 32, ... (half block c / 2), the loads of kI8Unroll chunks in flight;
// per chunk s = the exact int32 dot of 16 quant pairs and, per activation row j,
// acc_j = fma(wd * xd_j, float(s), acc_j); then the warp sum of gemv v3. The instructions for
// output (j, r) do not depend on n or on the layout (GGUF blocks or split rows), so a batch
// gives every row the bits it gets alone and both layouts give the same bits.
//
// Reference: the dot of the weights with the quantized activations (gpu_kernel_check
// computes it in double from the same quantization); against ref::matmul on float x the
// difference is the activations' quantization (relative ~2^-8 per value).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

constexpr int kI8Warps = 4;
constexpr int kI8Unroll = 8;

// xq[j, k] = nearest-even(x[j, k] / d) and xd[j, b] = d = max |x[j, 32b .. 32b + 32)| / 127
// (0 when the block is 0): a warp a 32-value block, lane k its value k.
__global__ void __launch_bounds__(128) quantize_x_kernel(const float* __restrict__ x, int64_t blocks,
                                                        int8_t* __restrict__ xq, float* __restrict__ xd) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * 4 + (threadIdx.x >> 5);
  if (b >= blocks) return;  // uniform per warp
  const int lane = threadIdx.x & 31;
  const float v = x[b * 32 + lane];
  float amax = fabsf(v);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  xq[b * 32 + lane] = static_cast<int8_t>(__float2int_rn(v * id));
  if (lane == 0) xd[b] = d;
}

// Chunk c of a row (16 quants, 4 words) and its block's scale.
template <DType T>
__device__ __forceinline__ void load_i8_chunk(const uint8_t* row, int64_t c, int64_t cols, bool vec, uint32_t q[4],
                                              float* d) {
  if constexpr (T == kQ8_0Split) {
    if (vec) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(row + 16 * c));
      q[0] = v.x, q[1] = v.y, q[2] = v.z, q[3] = v.w;
    } else {  // 2-byte aligned rows
      const uint16_t* p = reinterpret_cast<const uint16_t*>(row + 16 * c);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        q[i] = static_cast<uint32_t>(__ldg(p + 2 * i)) | (static_cast<uint32_t>(__ldg(p + 2 * i + 1)) << 16);
    }
    *d = f16_to_f32(__ldg(reinterpret_cast<const uint16_t*>(row + cols) + (c >> 1)));
  } else {  // GGUF blocks of 34 bytes: 2-byte aligned
    const uint8_t* blk = row + (c >> 1) * kQ8_0Bytes;
    const uint16_t* p = reinterpret_cast<const uint16_t*>(blk + 2 + 16 * (c & 1));
#pragma unroll
    for (int i = 0; i < 4; ++i)
      q[i] = static_cast<uint32_t>(__ldg(p + 2 * i)) | (static_cast<uint32_t>(__ldg(p + 2 * i + 1)) << 16);
    *d = f16_to_f32(__ldg(reinterpret_cast<const uint16_t*>(blk)));
  }
}

template <DType T, int NC>
__global__ void __launch_bounds__(kI8Warps * 32)
    gemv_i8_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t rows, int64_t cols,
                   const int8_t* __restrict__ xq, const float* __restrict__ xd, int n, float* __restrict__ y, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kI8Warps + (threadIdx.x >> 5);
  if (r >= rows) return;  // uniform per warp
  const uint8_t* row = w + r * static_cast<int64_t>(row_stride);
  const int64_t n_chunks = cols / 16, n_blocks = cols / 32;
  float acc[NC];
#pragma unroll
  for (int j = 0; j < NC; ++j) acc[j] = 0.0f;
  for (int64_t c0 = lane; c0 < n_chunks; c0 += 32 * kI8Unroll) {
    uint32_t q[kI8Unroll][4];
    float wd[kI8Unroll];
#pragma unroll
    for (int u = 0; u < kI8Unroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c < n_chunks) load_i8_chunk<T>(row, c, cols, vec, q[u], &wd[u]);
    }
#pragma unroll
    for (int u = 0; u < kI8Unroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= n_chunks) break;  // c grows with u
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        if (j >= n) break;
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(xq + j * cols + 16 * c));
        int s = 0;
        s = __dp4a(static_cast<int>(q[u][0]), static_cast<int>(xv.x), s);
        s = __dp4a(static_cast<int>(q[u][1]), static_cast<int>(xv.y), s);
        s = __dp4a(static_cast<int>(q[u][2]), static_cast<int>(xv.z), s);
        s = __dp4a(static_cast<int>(q[u][3]), static_cast<int>(xv.w), s);
        acc[j] = fmaf(wd[u] * __ldg(xd + j * n_blocks + (c >> 1)), static_cast<float>(s), acc[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    if (j >= n) break;
    const float v = warp_sum(acc[j]);
    if (lane == 0) y[j * rows + r] = v;
  }
}

template <DType T, int NC>
void launch_i8(const uint8_t* w, size_t row_stride, int64_t rows, int64_t cols, const int8_t* xq, const float* xd,
               int n, float* y, bool vec, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((rows + kI8Warps - 1) / kI8Warps);
  auto* kernel = gemv_i8_kernel<T, NC>;
  DS_LAUNCH(kernel, blocks, kI8Warps * 32, 0, stream)(w, row_stride, rows, cols, xq, xd, n, y, vec);
}

template <DType T>
void launch_i8_n(const uint8_t* w, size_t row_stride, int64_t rows, int64_t cols, const int8_t* xq, const float* xd,
                 int n, float* y, bool vec, cudaStream_t stream) {
  if (n <= 1) launch_i8<T, 1>(w, row_stride, rows, cols, xq, xd, n, y, vec, stream);
  else if (n <= 2) launch_i8<T, 2>(w, row_stride, rows, cols, xq, xd, n, y, vec, stream);
  else if (n <= 4) launch_i8<T, 4>(w, row_stride, rows, cols, xq, xd, n, y, vec, stream);
  else launch_i8<T, 8>(w, row_stride, rows, cols, xq, xd, n, y, vec, stream);
}

}  // namespace

bool gemv_i8_supports(DType t, int64_t cols) { return (t == DType::kQ8_0 || t == kQ8_0Split) && cols % 32 == 0 && cols > 0; }

size_t gemv_i8_scratch_bytes(int64_t cols, int n) {
  const size_t q = (static_cast<size_t>(n) * static_cast<size_t>(cols) + 255) / 256 * 256;
  return q + static_cast<size_t>(n) * static_cast<size_t>(cols / 32) * sizeof(float);
}

cudaError_t gemv_i8(DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n,
                    float* y, void* scratch, cudaStream_t stream) {
  if (!gemv_i8_supports(t, cols) || n < 1 || n > kGemvMaxN) return cudaErrorInvalidValue;
  auto* xq = static_cast<int8_t*>(scratch);
  auto* xd = reinterpret_cast<float*>(static_cast<uint8_t*>(scratch) +
                                      (static_cast<size_t>(n) * static_cast<size_t>(cols) + 255) / 256 * 256);
  const int64_t blocks = static_cast<int64_t>(n) * (cols / 32);
  DS_LAUNCH(quantize_x_kernel, static_cast<unsigned>((blocks + 3) / 4), 128, 0, stream)(x, blocks, xq, xd);
  const auto* wb = static_cast<const uint8_t*>(w);
  const bool vec = t == kQ8_0Split && row_stride % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  if (t == kQ8_0Split) launch_i8_n<kQ8_0Split>(wb, row_stride, rows, cols, xq, xd, n, y, vec, stream);
  else launch_i8_n<DType::kQ8_0>(wb, row_stride, rows, cols, xq, xd, n, y, vec, stream);
  return cudaGetLastError();
}

}  // namespace ds::cuda
