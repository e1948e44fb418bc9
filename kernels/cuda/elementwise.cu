// kernels/cuda/elementwise.cu: the row-wise and elementwise ops (get_rows, to_half,
// rmsnorm, rope, swiglu, add, add_bias, store_kv). Reference: the functions of the same names in
// kernels/ref.cc (add, add_bias and store_kv have none there: they are exact, see
// cpu_backend.cc). All are memory-bound grid-stride loops; one version each.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

constexpr int kThreads = 256;

// ---- get_rows / dequantize --------------------------------------------------------
// Reference: ref::get_rows = dequantize_row() per id. One block per output row (grid-
// stride over rows), threads over columns; load_elem<T> is bit-identical to dequantize_row.
template <DType T>
__global__ void get_rows_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t cols,
                                const int32_t* __restrict__ ids, int64_t n, float* __restrict__ out) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t r = ids ? static_cast<int64_t>(ids[i]) : i;
    const uint8_t* row = w + r * static_cast<int64_t>(row_stride);
    float* o = out + i * cols;
    for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) o[k] = load_elem<T>(row, k, cols);
  }
}

// ---- to_half: GEMM operands for the tensor cores --------------------------------------
// Row i of w as get_rows dequantizes it, rounded to F16 (kBf16: BF16) bits.
template <DType T, bool kBf16>
__global__ void to_half_kernel(const uint8_t* __restrict__ w, size_t row_stride, int64_t cols, int64_t n,
                               uint16_t* __restrict__ out) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const uint8_t* row = w + i * static_cast<int64_t>(row_stride);
    uint16_t* o = out + i * cols;
    for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
      const float v = load_elem<T>(row, k, cols);
      o[k] = kBf16 ? f32_to_bf16_bits(v) : f32_to_f16_bits(v);
    }
  }
}

// ---- rmsnorm ------------------------------------------------------------------------
// Reference: ref::rmsnorm (double sum of squares). Here: one block per row, float partial
// sums per thread, fixed-order block reduction; scale = 1 / sqrtf(ss / dim + eps), as the
// CPU backend. In-place (out == x) is safe: every x is read before the block sum's barrier.
__global__ void rmsnorm_kernel(const float* x, const float* __restrict__ weight, int64_t dim, float eps,
                               float* out) {
  griddep_launch_dependents();  // the GEMV after a norm may start loading its weights
  __shared__ float red[32];
  const int64_t i = blockIdx.x;
  const float* xi = x + i * dim;
  const float ss = rms_sum_sq(xi, dim, red);  // launched with kRmsThreads threads
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  float* oi = out + i * dim;
  for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) oi[k] = xi[k] * scale * weight[k];
}

// ---- rope ---------------------------------------------------------------------------
// Reference: ref::rope. One thread per (token i, pair d), looping over heads so the angle is
// computed once per pair. The angle is computed as ref does: float(pos) * freq_scale in
// float, then double pow/sincos; the rotation in double, rounded to float.
// Pair d (< n_rot/2): normal style rotates (2d, 2d+1), neox (d, d + n_rot/2).
// rope_angle and rope_rotate (common.cuh) are shared by rope_kernel, rope_store_kv_kernel and
// the fused QKV + RoPE GEMV (gemv_kernels.cuh), so that all give the same bits.

__global__ void rope_kernel(float* x, int64_t n, int n_heads, int head_dim, const int32_t* __restrict__ pos,
                            bool neox, int n_rot, float freq_base, float freq_scale) {
  const int half = n_rot / 2;
  const int64_t total = n * half;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / half;
    const int d = static_cast<int>(idx - i * half);
    double s, c;
    rope_angle(pos[i], d, n_rot, freq_base, freq_scale, &s, &c);
    const int a = neox ? d : 2 * d;
    const int b = neox ? d + half : 2 * d + 1;
    for (int h = 0; h < n_heads; ++h) rope_rotate(x + (i * n_heads + h) * static_cast<int64_t>(head_dim), a, b, s, c);
  }
}

// Backend::rope_store_kv in one launch: one thread per (token i, pair p < head_dim / 2). Pairs
// p < n_rot / 2 are rope's pairs (rotated in q's and k's heads); the others cover the
// unrotated dimensions [n_rot, head_dim) two at a time. Each thread then writes its two
// elements of every KV head of k and v to the cache row slots[i].
// head_split: threads per (token, pair), each taking the heads h = s, s + head_split, ... (s
// its slice) and computing the pair's angle itself: more threads for a prefill's few tokens x
// pairs (every element's arithmetic is the same whatever the split).
template <class T>
__global__ void rope_store_kv_kernel(float* q, float* k, const float* __restrict__ v, int64_t n, int n_heads,
                                     int n_kv_heads, int head_dim, const int32_t* __restrict__ pos, bool neox,
                                     int n_rot, float freq_base, float freq_scale, const int32_t* __restrict__ slots,
                                     T* __restrict__ k_cache, T* __restrict__ v_cache, int head_split) {
  const int half = n_rot / 2, pairs = head_dim / 2;
  const int64_t kv_dim = static_cast<int64_t>(n_kv_heads) * head_dim;
  const int64_t total = n * pairs * head_split;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int slice = static_cast<int>(idx % head_split);
    const int64_t ip = idx / head_split;
    const int64_t i = ip / pairs;
    const int p = static_cast<int>(ip - i * pairs);
    const bool rotate = p < half;
    double s = 0, c = 1;
    int a, b;
    if (rotate) {
      rope_angle(pos[i], p, n_rot, freq_base, freq_scale, &s, &c);
      a = neox ? p : 2 * p;
      b = neox ? p + half : 2 * p + 1;
    } else {
      a = n_rot + 2 * (p - half);
      b = a + 1;
    }
    if (rotate)
      for (int h = slice; h < n_heads; h += head_split)
        rope_rotate(q + (i * n_heads + h) * static_cast<int64_t>(head_dim), a, b, s, c);
    const int64_t dst = static_cast<int64_t>(slots[i]) * kv_dim;
    for (int h = slice; h < n_kv_heads; h += head_split) {
      const int64_t off = static_cast<int64_t>(h) * head_dim;
      float* kh = k + i * kv_dim + off;
      if (rotate) rope_rotate(kh, a, b, s, c);
      kv_put(k_cache + dst + off + a, kh[a]);
      kv_put(k_cache + dst + off + b, kh[b]);
      kv_put(v_cache + dst + off + a, v[i * kv_dim + off + a]);
      kv_put(v_cache + dst + off + b, v[i * kv_dim + off + b]);
    }
  }
}

// ---- swiglu, add, add_bias, store_kv ------------------------------------------------
// Reference: ref::swiglu computes in double; here float with expf, as the CPU backend.
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }
__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up, int64_t count,
                              float* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = silu_mul(gate[i], up[i]);
  }
}
// The same, 4 elements a thread with 16-byte loads and stores (count4 = count / 4 groups; all
// three pointers 16-byte aligned): a prefill's SwiGLU is a pure stream.
__global__ void swiglu4_kernel(const float4* __restrict__ gate, const float4* __restrict__ up, int64_t count4,
                               float4* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 g = gate[i], u = up[i];
    float4 o;
    o.x = silu_mul(g.x, u.x);
    o.y = silu_mul(g.y, u.y);
    o.z = silu_mul(g.z, u.z);
    o.w = silu_mul(g.w, u.w);
    out[i] = o;
  }
}

__global__ void add_kernel(float* x, const float* y, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

__global__ void add_bias_kernel(float* x, const float* __restrict__ bias, int64_t count, int64_t dim) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += bias[i % dim];
}

// k[i, c] -> k_cache[slots[i], c] (and v), i < n, c < kv_dim, converted to T (kv_put).
template <class T>
__global__ void store_kv_kernel(const float* __restrict__ k, const float* __restrict__ v, int64_t n,
                                const int32_t* __restrict__ slots, int64_t kv_dim, T* __restrict__ k_cache,
                                T* __restrict__ v_cache) {
  const int64_t total = n * kv_dim;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / kv_dim;
    const int64_t dst = static_cast<int64_t>(slots[i]) * kv_dim + (idx - i * kv_dim);
    kv_put(k_cache + dst, k[idx]);
    kv_put(v_cache + dst, v[idx]);
  }
}

}  // namespace

cudaError_t get_rows(DType t, const void* w, size_t row_stride, int64_t cols, const int32_t* ids, int64_t n,
                     float* out, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535));
  const bool ok = dispatch_dtype(t, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    DS_LAUNCH(get_rows_kernel<T>, blocks, kThreads, 0, stream)(static_cast<const uint8_t*>(w), row_stride, cols, ids,
                                                               n, out);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t to_half(DType t, const void* w, size_t row_stride, int64_t cols, int64_t n, bool bf16, uint16_t* out,
                    cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535));
  const bool ok = dispatch_dtype(t, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    auto kernel = bf16 ? &to_half_kernel<T, true> : &to_half_kernel<T, false>;
    DS_LAUNCH(kernel, blocks, kThreads, 0, stream)(static_cast<const uint8_t*>(w), row_stride, cols, n, out);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
                    cudaStream_t stream) {
  DS_LAUNCH(rmsnorm_kernel, static_cast<unsigned>(n), kRmsThreads, 0, stream)(x, weight, dim, eps, out);
  return cudaGetLastError();
}

cudaError_t rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p,
                 cudaStream_t stream) {
  DS_LAUNCH(rope_kernel, grid_for(n * (p.n_rot / 2), kThreads), kThreads, 0, stream)(
      x, n, n_heads, head_dim, pos, p.style == RopeStyle::kNeox, p.n_rot, p.freq_base, p.freq_scale);
  return cudaGetLastError();
}

cudaError_t rope_store_kv(float* q, float* k, const float* v, int64_t n, int n_heads, int n_kv_heads, int head_dim,
                          const int32_t* pos, const RopeParams& p, const int32_t* slots, const KvLayer& cache,
                          cudaStream_t stream) {
  // Enough threads to fill the GPU (~64K): split the heads over up to all of them.
  const int64_t base = n * (head_dim / 2);
  const int64_t max_split = std::max(n_heads, n_kv_heads);
  const int split = static_cast<int>(std::clamp<int64_t>((int64_t{65536} + base - 1) / std::max<int64_t>(base, 1), 1,
                                                         max_split));
  const auto grid = grid_for(base * split, kThreads);
  const bool neox = p.style == RopeStyle::kNeox;
  if (cache.type == DType::kF16) {
    DS_LAUNCH(rope_store_kv_kernel<uint16_t>, grid, kThreads, 0, stream)(
        q, k, v, n, n_heads, n_kv_heads, head_dim, pos, neox, p.n_rot, p.freq_base, p.freq_scale, slots,
        static_cast<uint16_t*>(cache.k), static_cast<uint16_t*>(cache.v), split);
  } else {
    DS_LAUNCH(rope_store_kv_kernel<float>, grid, kThreads, 0, stream)(
        q, k, v, n, n_heads, n_kv_heads, head_dim, pos, neox, p.n_rot, p.freq_base, p.freq_scale, slots,
        static_cast<float*>(cache.k), static_cast<float*>(cache.v), split);
  }
  return cudaGetLastError();
}

cudaError_t swiglu(const float* gate, const float* up, int64_t count, float* out, cudaStream_t stream) {
  auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (count % 4 == 0 && a16(gate) && a16(up) && a16(out)) {
    DS_LAUNCH(swiglu4_kernel, grid_for(count / 4, kThreads), kThreads, 0, stream)(
        reinterpret_cast<const float4*>(gate), reinterpret_cast<const float4*>(up), count / 4,
        reinterpret_cast<float4*>(out));
  } else {
    DS_LAUNCH(swiglu_kernel, grid_for(count, kThreads), kThreads, 0, stream)(gate, up, count, out);
  }
  return cudaGetLastError();
}

cudaError_t add(float* x, const float* y, int64_t count, cudaStream_t stream) {
  DS_LAUNCH(add_kernel, grid_for(count, kThreads), kThreads, 0, stream)(x, y, count);
  return cudaGetLastError();
}

cudaError_t add_bias(float* x, const float* bias, int64_t n, int64_t dim, cudaStream_t stream) {
  DS_LAUNCH(add_bias_kernel, grid_for(n * dim, kThreads), kThreads, 0, stream)(x, bias, n * dim, dim);
  return cudaGetLastError();
}

cudaError_t store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim,
                     const KvLayer& cache, cudaStream_t stream) {
  const auto grid = grid_for(n * kv_dim, kThreads);
  if (cache.type == DType::kF16) {
    DS_LAUNCH(store_kv_kernel<uint16_t>, grid, kThreads, 0, stream)(k, v, n, slots, kv_dim,
                                                                    static_cast<uint16_t*>(cache.k),
                                                                    static_cast<uint16_t*>(cache.v));
  } else {
    DS_LAUNCH(store_kv_kernel<float>, grid, kThreads, 0, stream)(k, v, n, slots, kv_dim, static_cast<float*>(cache.k),
                                                                 static_cast<float*>(cache.v));
  }
  return cudaGetLastError();
}

}  // namespace ds::cuda
