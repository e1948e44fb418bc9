// kernels/cuda/attention_decode.cuh: the block bodies of decode attention (attention.cu's
// file comment: versions 1 and 2, split-K and its merge), shared by attention.cu's kernels
// and the persistent decode kernel (decode_fused.cu), so that both give the same bits.
//
// Included by .cu files only.
#pragma once

#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"

namespace ds::cuda::att {

constexpr int kWarps = 4;
constexpr int kGroup = 4;
constexpr int kChunkMin = 256;   // positions per split-K chunk, at least
constexpr int kMaxChunks = 32;   // split-K chunks per (token, head), at most
constexpr int kChunkAlign = kWarps * kGroup;

// Split-K chunking for max_kv > 0 (see the file comment).
inline int chunk_size(int max_kv) {
  const int c = std::max(kChunkMin, (max_kv + kMaxChunks - 1) / kMaxChunks);
  return (c + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
}
inline int chunk_count(int max_kv) {
  const int c = chunk_size(max_kv);
  return (max_kv + c - 1) / c;
}

// Chunks token of n_kv positions uses (>= 1: a token with n_kv == 0 still writes zeros).
__device__ __forceinline__ int token_chunks(int n_kv, int chunk, int n_chunks) {
  const int nc = (n_kv + chunk - 1) / chunk;
  return nc < 1 ? 1 : nc > n_chunks ? n_chunks : nc;
}

// One warp's online-softmax step (file comment) over a group of kGroup positions whose K and V
// rows are krow[u], vrow[u] (both nullptr past the range). The products and sums outside
// fmaf are explicitly rounded (no contraction), so every kernel that calls this, whatever
// memory its rows come from, gets the same bits for the same rows.
// T: the rows' element type (float: shared memory or an F32 cache; uint16_t: an F16 cache,
// read exactly with kv_get, so both give the same bits for the same values).
template <int kPerLane, class T>
__device__ __forceinline__ void softmax_step(const float (&qr)[kPerLane], const T* const (&krow)[kGroup],
                                             const T* const (&vrow)[kGroup], int head_dim, float scale, int lane,
                                             float& m, float& l, float (&acc)[kPerLane]) {
  float s[kGroup];
#pragma unroll
  for (int u = 0; u < kGroup; ++u) {
    float part = 0.0f;
    if (krow[u] != nullptr) {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int d = lane + kWarpSize * i;
        if (d < head_dim) part = fmaf(qr[i], kv_get(krow[u] + d), part);
      }
    }
    s[u] = part;
  }
  float m_new = m;
#pragma unroll
  for (int u = 0; u < kGroup; ++u) {
    s[u] = __fmul_rn(warp_sum(s[u]), scale);
    if (vrow[u] == nullptr) s[u] = -INFINITY;
    m_new = fmaxf(m_new, s[u]);
  }
  // m_new is finite: the group's first position is in range. exp(-inf) = 0 on the first group.
  const float corr = expf(m - m_new);
  l = __fmul_rn(l, corr);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = __fmul_rn(acc[i], corr);
#pragma unroll
  for (int u = 0; u < kGroup; ++u) {
    if (vrow[u] == nullptr) continue;
    const float e = expf(s[u] - m_new);
    l = __fadd_rn(l, e);
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + kWarpSize * i;
      if (d < head_dim) acc[i] = fmaf(e, kv_get(vrow[u] + d), acc[i]);
    }
  }
  m = m_new;
}

// Merges the kWarps warps' states (m, l, acc) of pair pi through shm ([kWarps][kPerLane * 32]
// + 2 kWarps floats): partial == nullptr: out[pi] = O / L (zeros when no position was seen);
// else partial[0, head_dim) = O, partial[head_dim] = M, partial[head_dim + 1] = L.
// Starts with a barrier, so a block may merge several pairs in a row through the same shm.
template <int kPerLane>
__device__ __forceinline__ void merge_warps(const AttentionArgs& a, int64_t pi, float m, float l,
                                            const float (&acc)[kPerLane], float* shm, float* partial) {
  constexpr int kSpan = kPerLane * kWarpSize;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int head_dim = a.head_dim;
  float* s_acc = shm;
  float* s_m = shm + kWarps * kSpan;
  float* s_l = s_m + kWarps;
  __syncthreads();  // an earlier merge's readers are done with shm
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
  if (partial != nullptr) {
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
      float o = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) o = fmaf(s_acc[w * kSpan + d], f[w], o);
      partial[d] = o;
    }
    if (threadIdx.x == 0) {
      partial[head_dim] = mx;
      partial[head_dim + 1] = sum;
    }
    return;
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

// One block's pass over positions [p0, p1) of pair pi = t * n_heads + h (file comment); the
// result goes to out[pi] or partial as merge_warps() says. shm: merge_warps()'s. T: the
// cache's element type.
// kCgQ: q is read past L1 (the persistent decode kernel's other blocks wrote it).
template <int kPerLane, class T, bool kCgQ = false>
__device__ __forceinline__ void attend_range(const AttentionArgs& a, int64_t pi, int p0, int p1, float* shm,
                                             float* partial) {
  const int64_t t = pi / a.n_heads;
  const int h = static_cast<int>(pi - t * a.n_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int head_dim = a.head_dim;
  const int group = a.n_heads / a.n_kv_heads;
  const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * head_dim;
  const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;
  const int32_t* block_table = a.tokens[t].block_table;
  const int bs = a.block_size;

  const float* q = a.q + pi * head_dim;
  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + kWarpSize * i;
    qr[i] = d < head_dim ? (kCgQ ? __ldcg(q + d) : q[d]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  for (int g = warp; p0 + g * kGroup < p1; g += kWarps) {
    const T* krow[kGroup];
    const T* vrow[kGroup];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int p = p0 + g * kGroup + u;
      krow[u] = vrow[u] = nullptr;
      if (p < p1) {
        const int64_t row = static_cast<int64_t>(block_table[p / bs]) * bs + p % bs;
        krow[u] = static_cast<const T*>(a.k_cache) + row * kv_dim + head_off;
        vrow[u] = static_cast<const T*>(a.v_cache) + row * kv_dim + head_off;
      }
    }
    softmax_step<kPerLane, T>(qr, krow, vrow, head_dim, a.scale, lane, m, l, acc);
  }
  merge_warps<kPerLane>(a, pi, m, l, acc, shm, partial);
}

// The merge of pair pi's nc > 1 chunk results (file comment): out = sum_c O_c exp(M_c - M) /
// sum_c L_c exp(M_c - M), chunks in order. kCg: the partials are read past L1 (other blocks of
// the running kernel wrote them). Every thread of the block calls it (a barrier inside).
template <bool kCg>
__device__ __forceinline__ void merge_chunks(const AttentionArgs& a, int64_t pi, int nc, int n_chunks, float* s_w) {
  const int head_dim = a.head_dim;
  const int64_t rec = head_dim + 2;
  const float* part = a.workspace + pi * n_chunks * rec;
  auto ld = [](const float* p) { return kCg ? __ldcg(p) : *p; };
  // Every chunk saw >= 1 position: M_c finite, L_c >= 1.
  float mx = -INFINITY;
  for (int c = 0; c < nc; ++c) mx = fmaxf(mx, ld(part + c * rec + head_dim));
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < nc) s_w[tid] = expf(ld(part + tid * rec + head_dim) - mx);
  __syncthreads();
  float sum = 0.0f;
  for (int c = 0; c < nc; ++c) sum = fmaf(ld(part + c * rec + head_dim + 1), s_w[c], sum);
  const float inv = 1.0f / sum;
  float* out = a.out + pi * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int c = 0; c < nc; ++c) o = fmaf(ld(part + c * rec + d), s_w[c], o);
    out[d] = o * inv;
  }
}

// The split-K workspace of a call (attention_workspace_floats): the partial records of up to
// P pairs, then P arrival counters (unsigned, zero between launches), P as many pairs as the
// workspace holds (fixed for a workspace, so the counters stay put whatever n_tokens).
__device__ __forceinline__ unsigned* split_counters(const AttentionArgs& a, int n_chunks) {
  const size_t per_pair = static_cast<size_t>(n_chunks) * (a.head_dim + 2) + 1;
  const size_t pairs = a.workspace_floats / per_pair;
  return reinterpret_cast<unsigned*>(a.workspace + pairs * static_cast<size_t>(n_chunks) * (a.head_dim + 2));
}

// Version 2's work item `item` = pi * n_chunks + c: chunk c of pair pi; the block of the
// pair's last chunk to finish (an arrival counter per pair) merges the chunks, with
// attention_merge's arithmetic. shm: merge_warps()'s; s_w: kMaxChunks floats and ticket one
// unsigned of shared memory. Every thread of the block calls it (block-uniform exits).
template <int kPerLane, class T, bool kCgQ = false>
__device__ __forceinline__ void split_item(const AttentionArgs& a, int chunk, int n_chunks, int64_t item, float* shm,
                                           float* s_w, unsigned* ticket) {
  const int64_t pi = item / n_chunks;
  const int c = static_cast<int>(item - pi * n_chunks);
  const int n_kv = a.tokens[pi / a.n_heads].n_kv;
  const int nc = token_chunks(n_kv, chunk, n_chunks);
  if (c >= nc) return;  // block-uniform: no barrier is skipped by part of a block
  const int p0 = c * chunk, p1 = c == nc - 1 ? n_kv : p0 + chunk;
  float* partial = nc == 1 ? nullptr : a.workspace + (pi * n_chunks + c) * (a.head_dim + 2);
  attend_range<kPerLane, T, kCgQ>(a, pi, p0, p1, shm, partial);
  if (partial == nullptr) return;  // nc == 1: the output is written
  unsigned* counter = split_counters(a, n_chunks) + pi;
  __threadfence();  // this chunk's record is visible to the merging block
  __syncthreads();
  if (threadIdx.x == 0) *ticket = atomicAdd(counter, 1u);
  __syncthreads();
  const bool last = *ticket == static_cast<unsigned>(nc - 1);
  __syncthreads();  // every thread read the ticket (the next item may overwrite it)
  if (!last) return;  // block-uniform
  __threadfence();
  merge_chunks<true>(a, pi, nc, n_chunks, s_w);
  if (threadIdx.x == 0) *counter = 0;
}

}  // namespace ds::cuda::att
