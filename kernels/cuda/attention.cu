// kernels/cuda/attention.cu: causal attention of each query token over its sequence's
// paged KV cache (Backend::attention).
//
// Reference: ref::attention (kernels/ref.cc): scores in double, max-subtracted softmax,
// weighted sum of V. Here (version 1, the only one):
//   - one block of kWarps warps per (token t, head h); grid = n_tokens * n_heads.
//   - lane l holds q[d] and its output accumulator for d = l + 32 i, i < kPerLane
//     (kPerLane * 32 >= head_dim; head_dim <= 1024).
//   - warp w takes the groups of kGroup consecutive positions g = w, w + kWarps, ...;
//     for each position the score is a warp sum of q.k times scale (the kGroup sums
//     interleave, hiding shuffle latency), and the warp keeps an online softmax: running
//     max m, running sum l, acc = sum exp(s - m) v, rescaled by exp(m_old - m_new) when m grows.
//   - the kWarps partial states are merged through shared memory:
//     out = sum_w acc_w exp(m_w - M) / sum_w l_w exp(m_w - M), M = max_w m_w.
// Any n_kv works (n_kv == 0 gives zeros, as ref). The result for (t, h) depends only on
// its own n_kv, block table and data, never on n_tokens: deterministic per token.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kGroup = 4;

template <int kPerLane>
__global__ void __launch_bounds__(kWarps * kWarpSize) attention_kernel(AttentionArgs a) {
  DS_DYNAMIC_SHARED(float, shm);  // [kWarps][kPerLane * 32] accumulators, then [kWarps] m, [kWarps] l
  constexpr int kSpan = kPerLane * kWarpSize;
  const int64_t pi = blockIdx.x;  // t * n_heads + h
  const int64_t t = pi / a.n_heads;
  const int h = static_cast<int>(pi - t * a.n_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int head_dim = a.head_dim;
  const int group = a.n_heads / a.n_kv_heads;
  const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * head_dim;
  const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;
  const int32_t* block_table = a.tokens[t].block_table;
  const int n_kv = a.tokens[t].n_kv;
  const int bs = a.block_size;

  const float* q = a.q + pi * head_dim;
  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + kWarpSize * i;
    qr[i] = d < head_dim ? q[d] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  for (int g = warp; g * kGroup < n_kv; g += kWarps) {
    float s[kGroup];
    const float* vrow[kGroup];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int p = g * kGroup + u;
      float part = 0.0f;
      vrow[u] = nullptr;
      if (p < n_kv) {
        const int64_t row = static_cast<int64_t>(block_table[p / bs]) * bs + p % bs;
        const float* k = a.k_cache + row * kv_dim + head_off;
        vrow[u] = a.v_cache + row * kv_dim + head_off;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + kWarpSize * i;
          if (d < head_dim) part = fmaf(qr[i], k[d], part);
        }
      }
      s[u] = part;
    }
    float m_new = m;
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      s[u] = warp_sum(s[u]) * a.scale;
      if (vrow[u] == nullptr) s[u] = -INFINITY;
      m_new = fmaxf(m_new, s[u]);
    }
    // m_new is finite: position g * kGroup < n_kv is valid. exp(-inf) = 0 on the first group.
    const float corr = expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] *= corr;
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      if (vrow[u] == nullptr) continue;
      const float e = expf(s[u] - m_new);
      l += e;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + kWarpSize * i;
        if (d < head_dim) acc[i] = fmaf(e, vrow[u][d], acc[i]);
      }
    }
    m = m_new;
  }

  // Merge the warps' states.
  float* s_acc = shm;
  float* s_m = shm + kWarps * kSpan;
  float* s_l = s_m + kWarps;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) s_acc[warp * kSpan + lane + kWarpSize * i] = acc[i];
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
  __syncthreads();
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w]);
  float f[kWarps], sum = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    f[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - mx);  // a warp that saw no position
    sum = fmaf(s_l[w], f[w], sum);
  }
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // n_kv == 0: zeros
  float* out = a.out + pi * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o = fmaf(s_acc[w * kSpan + d], f[w], o);
    out[d] = o * inv;
  }
}

template <int kPerLane>
cudaError_t launch(const AttentionArgs& a, cudaStream_t stream) {
  const size_t shm = (kWarps * kPerLane * kWarpSize + 2 * kWarps) * sizeof(float);
  const auto blocks = static_cast<unsigned>(a.n_tokens * a.n_heads);
  DS_LAUNCH(attention_kernel<kPerLane>, blocks, kWarps * kWarpSize, shm, stream)(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention(const AttentionArgs& a, cudaStream_t stream) {
  const int per_lane = (a.head_dim + kWarpSize - 1) / kWarpSize;
  if (per_lane <= 2) return launch<2>(a, stream);
  if (per_lane <= 4) return launch<4>(a, stream);
  if (per_lane <= 8) return launch<8>(a, stream);
  if (per_lane <= 16) return launch<16>(a, stream);
  if (per_lane <= 32) return launch<32>(a, stream);
  return cudaErrorInvalidValue;
}

}  // namespace ds::cuda
