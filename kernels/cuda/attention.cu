// kernels/cuda/attention.cu: causal attention of each query token over its sequence's
// paged KV cache (Backend::attention).
//
// Reference: ref::attention (kernels/ref.cc): scores in double, max-subtracted softmax,
// weighted sum of V. Both versions share one block body, attend_range(): a block of kWarps
// warps walks the positions [p0, p1) of one (token t, head h):
//   - lane l holds q[d] and its output accumulator for d = l + 32 i, i < kPerLane
//     (kPerLane * 32 >= head_dim; head_dim <= 1024).
//   - warp w takes the groups of kGroup consecutive positions p0 + kGroup g, g = w, w + kWarps, ...;
//     for each position the score is a warp sum of q.k times scale (the kGroup sums
//     interleave, hiding shuffle latency), and the warp keeps an online softmax: running
//     max m, running sum l, acc = sum exp(s - m) v, rescaled by exp(m_old - m_new) when m grows.
//   - the kWarps partial states are merged through shared memory:
//     M = max_w m_w, L = sum_w l_w exp(m_w - M), O = sum_w acc_w exp(m_w - M);
//     the block writes out = O / L, or (split-K) the unnormalized state (O, M, L).
//
// Version 1 (attention_v1, the fallback and the reference timing): one block per (t, h)
// over [0, n_kv); grid = n_tokens * n_heads. Long contexts with few tokens leave most SMs
// idle (one sequence, 32 heads: 32 blocks).
//
// Version 2 (split-K / flash-decoding; when AttentionArgs carries max_kv > 0 and a
// workspace of attention_workspace_floats() floats):
//   - chunk size C = max(kChunkMin, ceil(max_kv / kMaxChunks)) rounded up to a multiple of
//     kWarps * kGroup, and n_chunks = ceil(max_kv / C) (<= kMaxChunks): both depend on max_kv
//     only, so the workspace stays [n_tokens * n_heads * n_chunks, head_dim + 2] floats.
//   - attention_split: one block per (t, h, chunk c), grid = n_tokens * n_heads * n_chunks
//     (fixed for a call shape, so CUDA graphs replay it while n_kv changes on the device).
//     Token t has nc = clamp(ceil(n_kv / C), 1, n_chunks) chunks; chunk c covers
//     [c C, (c + 1) C), the last one up to n_kv (so an n_kv above max_kv is still exact,
//     just slower); blocks with c >= nc exit at once. A token with nc == 1 (n_kv <= C,
//     n_kv == 0 included) gets its output written directly, with the very arithmetic of
//     version 1 (same bits). Otherwise each chunk writes its (O, M, L) to the workspace.
//   - the merge: out = sum_c O_c exp(M_c - M) / sum_c L_c exp(M_c - M), M = max_c M_c, chunks
//     in order, done by the block of the pair's chunks that finishes last (an arrival counter
//     per pair in the workspace, zeroed again by that block): one launch (attention_merge, a
//     second launch, remains for the tiled kernel's chunks).
// Tiled (prefill; when AttentionArgs carries tiles and head_dim <= 128): one block per (tile
// of up to 8 consecutive tokens of one sequence, h[, chunk c]); the tile's K and V rows are
// staged in shared memory 32 positions at a time and read once for all its tokens, instead of
// once per token (a 512-token prompt read every cached row ~256 times per head). Each token
// goes through the same softmax_step() calls in the same order as in versions 1 / 2.
// Either way the result for (t, h) depends only on its own n_kv, block table and data (and
// on max_kv, fixed by the caller), never on n_tokens or the tiles: deterministic per token.
// Steps that are mostly prefill (attention_tc_applies) take the tensor-core kernels instead
// (attention_tc.cu: WMMA, and flash attention 2 on mma.sync).
// F16 caches (AttentionArgs::kv_type): every kernel is instantiated for uint16_t rows read
// with kv_get (exact widening, in registers or while staging a tile), so an F16 cache gives
// the bits an F32 cache holding the same (rounded) values gives.
#include <climits>
#include <cmath>

#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

using namespace att;  // NOLINT: the decode block bodies (attention_decode.cuh)

// Version 1: block pi = t * n_heads + h over all of [0, n_kv).
template <int kPerLane, class T>
__global__ void __launch_bounds__(kWarps * kWarpSize) attention_v1(AttentionArgs a) {
  griddep_launch_dependents();  // the output projection's GEMV may start loading its weights
  DS_DYNAMIC_SHARED(float, shm);
  const int64_t pi = blockIdx.x;
  attend_range<kPerLane, T>(a, pi, 0, a.tokens[pi / a.n_heads].n_kv, shm, nullptr);
}

// Version 2: block pi * n_chunks + c over chunk c of pair pi (att::split_item): one launch
// for split-K decode.
template <int kPerLane, class T>
__global__ void __launch_bounds__(kWarps * kWarpSize) attention_split(AttentionArgs a, int chunk, int n_chunks) {
  griddep_launch_dependents();  // the output projection's GEMV may start loading its weights
  DS_DYNAMIC_SHARED(float, shm);
  __shared__ float s_w[kMaxChunks];
  __shared__ unsigned ticket;
  split_item<kPerLane, T>(a, chunk, n_chunks, blockIdx.x, shm, s_w, &ticket);
}

// The tiled kernel's second pass: block pi merges the chunks of pair pi (nothing to do when nc == 1).
__global__ void __launch_bounds__(kWarps * kWarpSize) attention_merge(AttentionArgs a, int chunk, int n_chunks) {
  griddep_launch_dependents();  // the output projection's GEMV may start loading its weights
  __shared__ float s_w[kMaxChunks];
  const int64_t pi = blockIdx.x;
  const int nc = token_chunks(a.tokens[pi / a.n_heads].n_kv, chunk, n_chunks);
  if (nc == 1) return;
  merge_chunks<false>(a, pi, nc, n_chunks, s_w);
}

// ---- tiled (prefill) ----------------------------------------------------------------
// With AttentionArgs::tiles, block (tile i, head h[, chunk c]) serves the tile's tokens (one
// sequence, <= kTileQ of them) together: positions are staged kStage at a time in shared
// memory, K and V rows read once from the cache for the whole tile, and every warp runs the
// tile's tokens through softmax_step() over the same groups, in the same order, as
// attend_range() would for each token alone (the stage size is a multiple of kWarps *
// kGroup, so warp w still takes groups w, w + kWarps, ...): the same bits as without tiles.
// Version 1 (split false: [0, n_kv)) or version 2's first pass (chunk c of each token that
// has one; attention_merge follows). head_dim <= 128 (kPerLane <= 4): registers hold kTileQ
// queries and accumulators.
constexpr int kTileQ = kAttentionTileTokens;
constexpr int kStage = 32;
static_assert(kStage % (kWarps * kGroup) == 0, "a stage holds whole rounds of groups");

size_t tiled_shm_bytes(int head_dim, int per_lane) {
  return (2 * static_cast<size_t>(kStage) * head_dim + static_cast<size_t>(kWarps) * per_lane * kWarpSize + 2 * kWarps) *
         sizeof(float);
}

template <int kPerLane, class T>
__global__ void __launch_bounds__(kWarps * kWarpSize)
    attention_tiled(AttentionArgs a, int chunk, int n_chunks, bool split) {
  griddep_launch_dependents();
  DS_DYNAMIC_SHARED(float, shm);
  const int head_dim = a.head_dim;
  float* s_k = shm;
  float* s_v = shm + kStage * head_dim;
  float* s_merge = s_v + kStage * head_dim;
  const int64_t tile_head = split ? blockIdx.x / n_chunks : blockIdx.x;
  const int c = split ? static_cast<int>(blockIdx.x - tile_head * n_chunks) : 0;
  const int64_t tile = tile_head / a.n_heads;
  const int h = static_cast<int>(tile_head - tile * a.n_heads);
  const int t0 = a.tiles[tile], nt = a.tiles[tile + 1] - t0;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = a.n_heads / a.n_kv_heads;
  const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * head_dim;
  const int64_t head_off = static_cast<int64_t>(h / group) * head_dim;
  const int32_t* block_table = a.tokens[t0].block_table;
  const int bs = a.block_size;
  const int p0 = c * chunk;

  float qr[kTileQ][kPerLane], acc[kTileQ][kPerLane], m[kTileQ], l[kTileQ];
  int p1[kTileQ];  // end of token j's range here; -1: it has no chunk c
  int p_end = p0;
#pragma unroll
  for (int j = 0; j < kTileQ; ++j) {
    p1[j] = -1;
    m[j] = -INFINITY;
    l[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) qr[j][i] = acc[j][i] = 0.0f;
    if (j < nt) {
      const int n_kv = a.tokens[t0 + j].n_kv;
      if (!split) {
        p1[j] = n_kv;
      } else {
        const int nc = token_chunks(n_kv, chunk, n_chunks);
        if (c < nc) p1[j] = c == nc - 1 ? n_kv : p0 + chunk;
      }
      if (p1[j] >= 0) {
        if (p1[j] > p_end) p_end = p1[j];
        const float* q = a.q + (static_cast<int64_t>(t0 + j) * a.n_heads + h) * head_dim;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + kWarpSize * i;
          qr[j][i] = d < head_dim ? q[d] : 0.0f;
        }
      }
    }
  }

  for (int base = p0; base < p_end; base += kStage) {
    const int rows = p_end - base < kStage ? p_end - base : kStage;
    __syncthreads();  // every warp is done with the previous stage
    for (int r = warp; r < rows; r += kWarps) {
      const int p = base + r;
      const int64_t row = static_cast<int64_t>(block_table[p / bs]) * bs + p % bs;
      const T* k = static_cast<const T*>(a.k_cache) + row * kv_dim + head_off;
      const T* v = static_cast<const T*>(a.v_cache) + row * kv_dim + head_off;
      for (int d = lane; d < head_dim; d += kWarpSize) {  // exact: the same values as from the cache
        s_k[r * head_dim + d] = kv_get(k + d);
        s_v[r * head_dim + d] = kv_get(v + d);
      }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTileQ; ++j) {
      if (j >= nt) break;
      for (int gl = warp; gl < kStage / kGroup; gl += kWarps) {
        const int g0 = base + gl * kGroup;
        if (g0 >= p1[j]) break;  // groups come in increasing order (p1[j] == -1: none)
        const float* krow[kGroup];
        const float* vrow[kGroup];
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
          const int p = g0 + u;
          krow[u] = p < p1[j] ? s_k + (p - base) * head_dim : nullptr;
          vrow[u] = p < p1[j] ? s_v + (p - base) * head_dim : nullptr;
        }
        softmax_step<kPerLane, float>(qr[j], krow, vrow, head_dim, a.scale, lane, m[j], l[j], acc[j]);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kTileQ; ++j) {
    if (j >= nt) break;
    if (p1[j] < 0) continue;  // block-uniform, as every condition around merge_warps' barriers
    const int64_t pi = static_cast<int64_t>(t0 + j) * a.n_heads + h;
    float* partial = nullptr;
    if (split && token_chunks(a.tokens[t0 + j].n_kv, chunk, n_chunks) > 1)
      partial = a.workspace + (pi * n_chunks + c) * (head_dim + 2);
    merge_warps<kPerLane>(a, pi, m[j], l[j], acc[j], s_merge, partial);
  }
}

template <int kPerLane, class T>
cudaError_t launch_tiled(const AttentionArgs& a, bool split, cudaStream_t stream) {
  const size_t shm = tiled_shm_bytes(a.head_dim, kPerLane);
  const auto tile_heads = static_cast<unsigned>(a.n_tiles * a.n_heads);
  if (!split) {
    const auto kernel = &attention_tiled<kPerLane, T>;
    DS_LAUNCH(kernel, tile_heads, kWarps * kWarpSize, shm, stream)(a, 0, 1, false);
    return cudaGetLastError();
  }
  const int chunk = chunk_size(a.max_kv), n_chunks = chunk_count(a.max_kv);
  const auto kernel = &attention_tiled<kPerLane, T>;
  DS_LAUNCH(kernel, tile_heads * static_cast<unsigned>(n_chunks), kWarps * kWarpSize, shm, stream)(a, chunk, n_chunks,
                                                                                                  true);
  const auto pairs = static_cast<unsigned>(a.n_tokens * a.n_heads);
  if (n_chunks > 1) DS_LAUNCH(attention_merge, pairs, kWarps * kWarpSize, 0, stream)(a, chunk, n_chunks);
  return cudaGetLastError();
}

template <int kPerLane, class T>
cudaError_t launch(const AttentionArgs& a, bool split, cudaStream_t stream) {
  const size_t shm = (kWarps * kPerLane * kWarpSize + 2 * kWarps) * sizeof(float);
  const auto pairs = static_cast<unsigned>(a.n_tokens * a.n_heads);
  if (!split) {
    const auto kernel = &attention_v1<kPerLane, T>;
    DS_LAUNCH(kernel, pairs, kWarps * kWarpSize, shm, stream)(a);
    return cudaGetLastError();
  }
  const int chunk = chunk_size(a.max_kv), n_chunks = chunk_count(a.max_kv);
  const auto kernel = &attention_split<kPerLane, T>;  // merges in its last blocks
  DS_LAUNCH(kernel, pairs * static_cast<unsigned>(n_chunks), kWarps * kWarpSize, shm, stream)(a, chunk, n_chunks);
  return cudaGetLastError();
}

}  // namespace

size_t attention_workspace_floats(int64_t n_tokens, int n_heads, int head_dim, int max_kv) {
  if (n_tokens <= 0 || n_heads <= 0 || head_dim <= 0 || max_kv <= 0) return 0;
  // Per (token, head): n_chunks records of head_dim + 2 floats and an arrival counter.
  return static_cast<size_t>(n_tokens) * n_heads *
         (static_cast<size_t>(chunk_count(max_kv)) * (static_cast<size_t>(head_dim) + 2) + 1);
}

template <class T>
cudaError_t attention_of(const AttentionArgs& a, int tensor_cores, cudaStream_t stream) {
  if (tensor_cores > 0 && attention_tc_applies(a)) return attention_prefill_tc(a, tensor_cores, stream);
  const size_t need = attention_workspace_floats(a.n_tokens, a.n_heads, a.head_dim, a.max_kv);
  const bool split = need > 0 && a.workspace != nullptr && a.workspace_floats >= need &&
                     a.n_tokens * a.n_heads * chunk_count(a.max_kv) <= INT_MAX;  // grid size
  const int per_lane = (a.head_dim + kWarpSize - 1) / kWarpSize;
  if (a.tiles != nullptr && a.n_tiles > 0 && per_lane <= 4) {
    return per_lane <= 2 ? launch_tiled<2, T>(a, split, stream) : launch_tiled<4, T>(a, split, stream);
  }
  if (per_lane <= 2) return launch<2, T>(a, split, stream);
  if (per_lane <= 4) return launch<4, T>(a, split, stream);
  if (per_lane <= 8) return launch<8, T>(a, split, stream);
  if (per_lane <= 16) return launch<16, T>(a, split, stream);
  if (per_lane <= 32) return launch<32, T>(a, split, stream);
  return cudaErrorInvalidValue;
}

bool attention_tc_applies(const AttentionArgs& a) {
  return a.tiles != nullptr && a.n_tiles > 0 && a.n_tokens >= 4 * a.n_tiles &&
         (a.head_dim == 64 || a.head_dim == 128) && a.n_kv_heads > 0 &&
         a.n_tiles * a.n_kv_heads * ((kTileQ * (a.n_heads / a.n_kv_heads) + 31) / 32) <= INT_MAX;
}

cudaError_t attention(const AttentionArgs& a, cudaStream_t stream, int tensor_cores) {
  return a.kv_type == DType::kF16 ? attention_of<uint16_t>(a, tensor_cores, stream)
                                  : attention_of<float>(a, tensor_cores, stream);
}

}  // namespace ds::cuda
