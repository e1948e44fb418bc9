// kernels/cuda/sample.cu: Backend::sample_candidates on the GPU: the penalties, the m best
// logits of each row in the sampler's order, and the softmax sums, so that only
// (2 + m) * 8 bytes per row travel to the host instead of the whole row.
//
// Reference: ref::sample_candidates (kernels/sampling.cc). One block of kThreads per row:
//   1. penalty entries applied in place with explicitly rounded float operations (the same
//      bits as penalize_logit, which is compiled without FMA contraction); NaN -> -inf.
//   (greedy rows, m == 1 without sums, stop after a block reduction to the best (key, id).)
//   2. radix select over the 32-bit order key (sample_order_key): four passes of an 8-bit
//      histogram (shared atomics aggregated per warp with __match_any_sync) find T, the key
//      of the m-th best, and how many elements of key T belong to the m (the lowest ids
//      among them: the sampler's tie order).
//   3. each thread scans a contiguous id range; exclusive scans of the per-thread counts of
//      "key > T" and "key == T" give every candidate a slot, ties in id order.
//   4. bitonic sort (descending) of (key << 32 | ~id) in shared memory: key descending,
//      id ascending.
//   5. the sums: double exp per element, per-thread partial sums in id-stride order, then
//      a fixed shared-memory tree: deterministic, but not ref's sequential order (the sums
//      agree to ~1e-15 relative; the candidates are bit-identical to ref's).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t order_key(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) u = 0xff800000u;  // NaN -> -inf
  if (u == 0x80000000u) u = 0;                            // -0 -> +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// penalize_logit (kernels/sampling.cc), each operation rounded as the host rounds it.
__device__ __forceinline__ float penalize(float l, int32_t count, float rp, float fp, float pp) {
  if (rp != 1.0f) l = l > 0 ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);
  const float fc = __fmul_rn(static_cast<float>(count), fp);
  return __fsub_rn(l, __fadd_rn(fc, pp));
}

__global__ void __launch_bounds__(kThreads) sample_kernel(SampleArgs a) {
  __shared__ unsigned hist[256];
  __shared__ unsigned s_gt[kThreads], s_eq[kThreads];
  __shared__ unsigned long long cand[kSampleMaxCandidates];
  __shared__ double red[kThreads];
  __shared__ uint32_t s_prefix;
  __shared__ unsigned s_remaining;

  const int tid = threadIdx.x;
  const int64_t V = a.n_vocab;
  const SampleRow row = a.rows[blockIdx.x];
  float* l = a.logits + static_cast<int64_t>(blockIdx.x) * V;
  const int64_t m_max = V < kSampleMaxCandidates ? V : kSampleMaxCandidates;
  const unsigned m = static_cast<unsigned>(row.m < 1 ? 1 : (row.m > m_max ? m_max : row.m));

  // 1. Penalties (distinct tokens: no two threads write one logit), then NaN -> -inf.
  for (int i = tid; i < row.pen_count; i += kThreads) {
    const int32_t tok = a.pen_tokens[row.pen_begin + i];
    l[tok] = penalize(l[tok], a.pen_counts[row.pen_begin + i], row.repeat_penalty, row.frequency_penalty,
                      row.presence_penalty);
  }
  __syncthreads();
  for (int64_t i = tid; i < V; i += kThreads)
    if ((__float_as_uint(l[i]) & 0x7fffffffu) > 0x7f800000u) l[i] = -INFINITY;
  __syncthreads();
  uint64_t* out = a.out + row.out;

  // Greedy (the common case): the best (key, lowest id) by a block reduction, no selection.
  if (m == 1 && !row.want_sums) {
    unsigned long long best = 0;
    for (int64_t i = tid; i < V; i += kThreads) {
      const unsigned long long word =
          (static_cast<unsigned long long>(order_key(l[i])) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
      best = word > best ? word : best;
    }
    cand[tid] = best;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w >>= 1) {
      if (tid < w && cand[tid + w] > cand[tid]) cand[tid] = cand[tid + w];
      __syncthreads();
    }
    if (tid == 0) {
      const uint32_t id = 0xffffffffu - static_cast<uint32_t>(cand[0]);
      out[0] = out[1] = 0;
      out[2] = (static_cast<uint64_t>(id) << 32) | __float_as_uint(l[id]);
    }
    return;
  }

  // 2. Radix select of the m-th best key. The histogram's atomics are aggregated per warp
  //    (lanes with the same bin add once): logits crowd a few exponent bins in the first pass.
  const unsigned lane = tid & 31;
  uint32_t prefix = 0, mask = 0;
  unsigned remaining = m;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    for (int64_t base = 0; base < V; base += kThreads) {  // every lane of a warp runs each iteration
      const int64_t i = base + tid;
      unsigned bin = 256;  // none
      if (i < V) {
        const uint32_t k = order_key(l[i]);
        if ((k & mask) == prefix) bin = (k >> shift) & 255u;
      }
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin < 256 && lane == static_cast<unsigned>(__ffs(peers) - 1))
        atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
    }
    __syncthreads();
    if (tid == 0) {
      unsigned above = 0;  // elements of this prefix in higher bins
      int b = 255;
      for (; b > 0; --b) {
        if (above + hist[b] >= remaining) break;
        above += hist[b];
      }
      s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }
  const uint32_t T = prefix;            // the m-th best key
  const unsigned n_above = m - remaining;  // elements with key > T (all of them are candidates)

  // 3. Slots: contiguous id ranges per thread, exclusive scans of the counts.
  const int64_t per = (V + kThreads - 1) / kThreads;
  const int64_t lo = tid * per < V ? tid * per : V, hi = lo + per < V ? lo + per : V;
  unsigned n_gt = 0, n_eq = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const uint32_t k = order_key(l[i]);
    n_gt += k > T;
    n_eq += k == T;
  }
  s_gt[tid] = n_gt;
  s_eq[tid] = n_eq;
  __syncthreads();
  if (tid == 0) {
    unsigned g = 0, e = 0;
    for (int t = 0; t < kThreads; ++t) {
      const unsigned cg = s_gt[t], ce = s_eq[t];
      s_gt[t] = g;
      s_eq[t] = e;
      g += cg;
      e += ce;
    }
  }
  __syncthreads();
  unsigned pos_gt = s_gt[tid], pos_eq = s_eq[tid];
  for (int64_t i = lo; i < hi; ++i) {
    const uint32_t k = order_key(l[i]);
    const unsigned long long word = (static_cast<unsigned long long>(k) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
    if (k > T) {
      cand[pos_gt++] = word;
    } else if (k == T) {
      if (pos_eq < remaining) cand[n_above + pos_eq] = word;
      ++pos_eq;
    }
  }
  unsigned P = 1;
  while (P < m) P <<= 1;
  for (unsigned i = m + tid; i < P; i += kThreads) cand[i] = 0;  // padding sorts last (real words > 0)
  __syncthreads();

  // 4. Bitonic sort, descending.
  for (unsigned k = 2; k <= P; k <<= 1) {
    for (unsigned j = k >> 1; j > 0; j >>= 1) {
      for (unsigned i = tid; i < P; i += kThreads) {
        const unsigned ixj = i ^ j;
        if (ixj > i) {
          const unsigned long long x = cand[i], y = cand[ixj];
          const bool descending = (i & k) == 0;
          if (descending ? x < y : x > y) {
            cand[i] = y;
            cand[ixj] = x;
          }
        }
      }
      __syncthreads();
    }
  }

  // 5. Candidates and sums.
  for (unsigned j = tid; j < m; j += kThreads) {
    const uint32_t id = 0xffffffffu - static_cast<uint32_t>(cand[j]);
    out[2 + j] = (static_cast<uint64_t>(id) << 32) | __float_as_uint(l[id]);
  }
  double s1 = 0, s2 = 0;
  if (row.want_sums) {
    const double mx = l[0xffffffffu - static_cast<uint32_t>(cand[0])];
    const double temp = row.temperature;
    for (int64_t i = tid; i < V; i += kThreads) {
      const double d = static_cast<double>(l[i]) - mx;
      s1 += exp(d);
      s2 += exp(d / temp);
    }
    for (int pass = 0; pass < 2; ++pass) {
      red[tid] = pass == 0 ? s1 : s2;
      __syncthreads();
      for (int w = kThreads / 2; w > 0; w >>= 1) {
        if (tid < w) red[tid] += red[tid + w];
        __syncthreads();
      }
      (pass == 0 ? s1 : s2) = red[0];
      __syncthreads();
    }
  }
  if (tid == 0) {
    out[0] = static_cast<uint64_t>(__double_as_longlong(s1));
    out[1] = static_cast<uint64_t>(__double_as_longlong(s2));
  }
}

}  // namespace

cudaError_t sample_candidates(const SampleArgs& a, cudaStream_t stream) {
  DS_LAUNCH(sample_kernel, static_cast<unsigned>(a.n_rows), kThreads, 0, stream)(a);
  return cudaGetLastError();
}

}  // namespace ds::cuda
