// kernels/cuda/attention_tc.cu: the tensor-core kernels of prefill attention (Backend::attention
// for steps that are mostly prefill: attention_tc_applies, in attention.cu, which dispatches
// here). Two kernels over the same blocks (a prefill tile's query rows that share a KV head):
//   - attention_tc: WMMA m16n16k16, S, P and O through shared memory every 32 positions
//     (timed on an H200: 138 us a layer at 512 tokens, 5x the CUDA-core tiled kernel);
//   - attention_fa: flash attention 2 on mma.sync m16n8k16, S, P and O in registers, K and V
//     double-buffered by cp.async (F16 caches; not yet run on a GPU).
// Reference: ref::attention; both are within F16-operand error of it (gpu_kernel_check:
// attention-tc, attention-fa), not bit-identical to the decode kernels.
#include <cuda_pipeline.h>
#include <mma.h>

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

constexpr int kTileQ = kAttentionTileTokens;  // the most tokens of a prefill tile

// What a block of either kernel takes: block (tile, KV head g, row chunk rc) of a launch of
// n_tiles * n_kv_heads * row_chunks blocks: the rows [r0, r0 + rows) of the tile's tokens
// [t0, t0 + nt) whose heads share KV head g (row r = j * group + head-in-group), at most rm;
// p_end: the most positions one of those rows sees.
struct PrefillBlock {
  int group, g, t0, nt, r0, rows;  // rows <= 0: the block has none
  int p_end;
};
__device__ __forceinline__ PrefillBlock prefill_block(const AttentionArgs& a, int row_chunks, int rm) {
  PrefillBlock p;
  p.group = a.n_heads / a.n_kv_heads;
  int64_t b = blockIdx.x;
  const int rc = static_cast<int>(b % row_chunks);
  b /= row_chunks;
  p.g = static_cast<int>(b % a.n_kv_heads);
  const int64_t tile = b / a.n_kv_heads;
  p.t0 = a.tiles[tile];
  p.nt = a.tiles[tile + 1] - p.t0;
  p.r0 = rc * rm;
  const int left = p.nt * p.group - p.r0;
  p.rows = left < rm ? left : rm;
  p.p_end = 0;
  for (int j = p.r0 / p.group; p.rows > 0 && j <= (p.r0 + p.rows - 1) / p.group; ++j) {
    const int n_kv = a.tokens[p.t0 + j].n_kv;
    if (n_kv > p.p_end) p.p_end = n_kv;
  }
  return p;
}

// ---- tensor cores (prefill) ---------------------------------------------------------
// attention_tc: block (tile i, KV head g, row chunk rc) takes the query rows of the tile's
// tokens whose heads share KV head g (row r = j * group + head-in-group: with grouped-query
// attention a tile of 8 tokens of bench-1b's 8 heads a KV head is 64 rows), at most RM of
// them. Queries, times scale, are rounded to F16 in shared memory; positions come kTcStage at
// a time, K and V rows rounded to F16 in shared memory (each warp loads 8 whole rows into
// registers a stage ahead, so the loads of stage s + 1 fly while stage s computes); S = Q K^T
// and O += P V run on the tensor cores (WMMA m16n16k16, F32 accumulation), an online softmax
// per row between them (RM / 128 threads a row; P = exp(S - m) rounded to F16, O and l
// rescaled by exp(m_old - m_new)). Row r sees positions below its token's n_kv (causal
// masking). Error: the F16 path's, as flash attention in F16 (scores within ~2^-11 |q||k|
// relative); not bit-identical to the decode kernels, so it runs only for steps that are
// mostly prefill (attention_tc_applies) and never under CudaBackendOptions::batch_invariant.
// head_dim 64 or 128.
constexpr int kTcStage = 32;
constexpr int kTcThreads = 128;
constexpr int kTcSPitch = kTcStage + 4;  // floats a row of S (+4: fewer bank conflicts in the softmax)

template <int HD>
constexpr int tc_rows() { return HD <= 64 ? 64 : 32; }  // shared memory within 48 KiB

// The block's shared memory. PAD: rows of Q, K, V padded by 8 halves and of O by 4 floats, so
// that the 16 rows a WMMA load or store touches spread over the banks (unpadded, a row of 64
// halves is 128 bytes: every row starts in bank 0). P (F16) lives in the rows of S (its row r
// in the first half of S's row r), written by the softmax after its row's threads read S.
template <int HD, bool PAD>
struct alignas(128) AttTcShared {
  static constexpr int RM = tc_rows<HD>();
  static constexpr int QP = HD + (PAD ? 8 : 0);  // halves a row of Q, K, V
  static constexpr int OP = HD + (PAD ? 4 : 0);  // floats a row of O
  static constexpr int PP = 2 * kTcSPitch;       // halves a row of P (in S's rows)
  alignas(32) __half q[RM * QP];
  alignas(32) __half k[kTcStage * QP];
  alignas(32) __half v[kTcStage * QP];
  alignas(32) float s[RM * kTcSPitch];
  alignas(32) float o[RM * OP];
  float m[RM], l[RM], corr[RM];
  int p1[RM];
  __device__ __half* p() { return reinterpret_cast<__half*>(s); }
};
static_assert(sizeof(AttTcShared<64, true>) <= 48 * 1024 && sizeof(AttTcShared<128, true>) <= 48 * 1024,
              "static shared memory over 48 KiB");

// EPL consecutive cache elements (F32 or F16), widened. REQUIRES: p aligned to EPL elements.
template <int EPL>
__device__ __forceinline__ void load_elems(const float* p, float (&o)[EPL]) {
  if constexpr (EPL == 2) {
    const float2 u = *reinterpret_cast<const float2*>(p);
    o[0] = u.x;
    o[1] = u.y;
  } else {
    static_assert(EPL == 4);
    const float4 u = *reinterpret_cast<const float4*>(p);
    o[0] = u.x;
    o[1] = u.y;
    o[2] = u.z;
    o[3] = u.w;
  }
}
template <int EPL>
__device__ __forceinline__ void load_elems(const uint16_t* p, float (&o)[EPL]) {
  if constexpr (EPL == 2) {
    const unsigned u = *reinterpret_cast<const unsigned*>(p);
    o[0] = f16_to_f32(static_cast<uint16_t>(u & 0xffffu));
    o[1] = f16_to_f32(static_cast<uint16_t>(u >> 16));
  } else {
    static_assert(EPL == 4);
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    o[0] = f16_to_f32(static_cast<uint16_t>(u.x & 0xffffu));
    o[1] = f16_to_f32(static_cast<uint16_t>(u.x >> 16));
    o[2] = f16_to_f32(static_cast<uint16_t>(u.y & 0xffffu));
    o[3] = f16_to_f32(static_cast<uint16_t>(u.y >> 16));
  }
}

template <int HD, bool PAD, class T>
__global__ void __launch_bounds__(kTcThreads) attention_tc(AttentionArgs a, int row_chunks) {
  namespace wmma = nvcuda::wmma;
  using Sh = AttTcShared<HD, PAD>;
  constexpr int RM = Sh::RM, C = kTcStage, SP = kTcSPitch, PP = Sh::PP, QP = Sh::QP, OP = Sh::OP;
  constexpr int kWarpsTc = kTcThreads / kWarpSize;
  constexpr int RPW = C / kWarpsTc;      // rows of a stage each warp loads
  constexpr int EPL = HD / kWarpSize;    // elements of a row each lane loads
  constexpr int TPR = kTcThreads / RM;   // threads a row in the softmax
  static_assert(EPL == 2 || EPL == 4, "head_dim 64 or 128");
  static_assert(TPR * RM == kTcThreads && (TPR & (TPR - 1)) == 0 && TPR <= kWarpSize, "threads per softmax row");
  __shared__ Sh sm;
  griddep_launch_dependents();
  const PrefillBlock pb = prefill_block(a, row_chunks, RM);
  if (pb.rows <= 0) return;  // block-uniform
  const int group = pb.group, g = pb.g, t0 = pb.t0, r0 = pb.r0, rows = pb.rows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * HD;
  const int64_t head_off = static_cast<int64_t>(g) * HD;
  const int32_t* block_table = a.tokens[t0].block_table;
  const int bs = a.block_size;
  const T* kc = static_cast<const T*>(a.k_cache);
  const T* vc = static_cast<const T*>(a.v_cache);

  const int p_end = pb.p_end;  // the most positions a row of this block sees
  // The stage's K and V rows warp * RPW + i, lane's EPL elements, in registers.
  float kr[RPW][EPL], vr[RPW][EPL];
  auto fetch = [&](int base) {
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
      const int pos = base + warp * RPW + i;
      if (pos < p_end) {
        const int64_t off = (static_cast<int64_t>(block_table[pos / bs]) * bs + pos % bs) * kv_dim + head_off +
                            lane * EPL;
        load_elems<EPL>(kc + off, kr[i]);
        load_elems<EPL>(vc + off, vr[i]);
      } else {
#pragma unroll
        for (int e = 0; e < EPL; ++e) kr[i][e] = vr[i][e] = 0.0f;
      }
    }
  };
  if (p_end > 0) fetch(0);

  for (int idx = threadIdx.x; idx < RM * HD; idx += kTcThreads) {
    const int r = idx / HD, d = idx % HD;
    float x = 0.0f;
    if (r < rows) {
      const int rr = r0 + r, h = g * group + rr % group;
      x = a.q[(static_cast<int64_t>(t0 + rr / group) * a.n_heads + h) * HD + d] * a.scale;
    }
    sm.q[r * QP + d] = __float2half_rn(x);
    sm.o[r * OP + d] = 0.0f;
  }
  for (int r = threadIdx.x; r < RM; r += kTcThreads) {
    sm.p1[r] = r < rows ? a.tokens[t0 + (r0 + r) / group].n_kv : 0;
    sm.m[r] = -INFINITY;
    sm.l[r] = 0.0f;
  }

  for (int base = 0; base < p_end; base += C) {
    __syncthreads();  // the setup, or the previous stage's readers of k, v, p
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
      const int r = warp * RPW + i;
#pragma unroll
      for (int e = 0; e < EPL; ++e) {
        sm.k[r * QP + lane * EPL + e] = __float2half_rn(kr[i][e]);
        sm.v[r * QP + lane * EPL + e] = __float2half_rn(vr[i][e]);
      }
    }
    if (base + C < p_end) fetch(base + C);  // in flight while this stage computes
    __syncthreads();
    // S = Q K^T: (RM / 16) x (C / 16) tiles of 16 x 16 over the warps.
    for (int ti = warp; ti < (RM / 16) * (C / 16); ti += kWarpsTc) {
      const int i = ti / (C / 16), jj = ti % (C / 16);
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, sm.q + i * 16 * QP + kk * 16, QP);
        wmma::load_matrix_sync(fb, sm.k + jj * 16 * QP + kk * 16, QP);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(sm.s + i * 16 * SP + jj * 16, acc, SP, wmma::mem_row_major);
    }
    __syncthreads();
    // Online softmax: TPR adjacent threads (one warp) a row, thread part taking columns
    // part + TPR c; the row's S read into registers before P overwrites it (__syncwarp).
    {
      constexpr int CPT = C / TPR;  // columns a thread
      const int r = threadIdx.x / TPR, part = threadIdx.x % TPR;
      const int n_valid = sm.p1[r] - base;  // columns below it are positions the row sees
      float x[CPT];
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < CPT; ++i) {
        const int c = part + TPR * i;
        x[i] = c < n_valid ? sm.s[r * SP + c] : -INFINITY;
        mx = fmaxf(mx, x[i]);
      }
#pragma unroll
      for (int off = 1; off < TPR; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_old = sm.m[r];
      const float m_new = fmaxf(m_old, mx);
      __syncwarp();  // the row's threads have read its S
      __half* prow = sm.p() + r * PP;
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < CPT; ++i) {
        // m_new == -inf: the row has seen no position yet, nothing to add
        const float e = x[i] != -INFINITY ? expf(x[i] - m_new) : 0.0f;
        prow[part + TPR * i] = __float2half_rn(e);
        sum += e;
      }
#pragma unroll
      for (int off = 1; off < TPR; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (part == 0) {
        const float corr = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);  // 0 on the row's first position
        sm.l[r] = fmaf(sm.l[r], corr, sum);
        sm.m[r] = m_new;
        sm.corr[r] = corr;
      }
    }
    __syncthreads();
    // O = O corr + P V: (RM / 16) x (HD / 16) tiles over the warps, each rescaled by its warp.
    for (int ti = warp; ti < (RM / 16) * (HD / 16); ti += kWarpsTc) {
      const int i = ti / (HD / 16), jj = ti % (HD / 16);
      float* o = sm.o + i * 16 * OP + jj * 16;
      for (int e = lane; e < 256; e += kWarpSize) o[(e / 16) * OP + e % 16] *= sm.corr[i * 16 + e / 16];
      __syncwarp();
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o, OP, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < C / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, sm.p() + i * 16 * PP + kk * 16, PP);
        wmma::load_matrix_sync(fb, sm.v + kk * 16 * QP + jj * 16, QP);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(o, acc, OP, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rows * HD; idx += kTcThreads) {
    const int r = idx / HD, d = idx % HD, rr = r0 + r, h = g * group + rr % group;
    const float l = sm.l[r];
    a.out[(static_cast<int64_t>(t0 + rr / group) * a.n_heads + h) * HD + d] = l > 0.0f ? sm.o[r * OP + d] / l : 0.0f;
  }
}

template <int HD, bool PAD, class T>
cudaError_t launch_tc(const AttentionArgs& a, cudaStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  const int row_chunks = (kTileQ * group + tc_rows<HD>() - 1) / tc_rows<HD>();
  const auto blocks = static_cast<unsigned>(a.n_tiles * a.n_kv_heads * row_chunks);
  const auto kernel = &attention_tc<HD, PAD, T>;
  DS_LAUNCH(kernel, blocks, kTcThreads, 0, stream)(a, row_chunks);
  return cudaGetLastError();
}

// ---- tensor cores, mma.sync: flash attention 2 (prefill, F16 cache) -------------------
// attention_fa: the blocks of attention_tc (tile i, KV head g, row chunk of kFaRows rows; row
// r = j * group + head-in-group) computed flash-attention-2 style on mma.sync m16n8k16
// (common.cuh: mma_16816) instead of WMMA: each of the 4 warps owns 16 rows, and their Q
// fragments, the scores S = Q K^T, the softmax state (max m, sum l) and O all live in
// registers, so no stage round-trips S, P or O through shared memory (WMMA's opaque fragment
// layout forces attention_tc to). Per stage of FaStage positions the block copies K and V
// rows of the F16 cache into shared memory with cp.async, double-buffered: stage s + 1's
// copies fly while stage s computes (two barriers a stage). Scores are in log2 units (Q
// times scale * log2 e, rounded to F16), P = exp2(S - m) rounded to F16 for P V, O and l
// rescaled by exp2(m_old - m_new); rows see positions below their token's n_kv. Error: as
// attention_tc's (F16 operands, F32 accumulation); not bit-identical to the decode kernels.
// head_dim 64 or 128, F16 KV caches (F32 caches take attention_tc).
constexpr int kFaWarps = 4;
constexpr int kFaThreads = kFaWarps * kWarpSize;
constexpr int kFaRows = 16 * kFaWarps;

template <int HD>
constexpr int fa_stage() { return HD <= 64 ? 64 : 32; }  // two buffers of K and V within 48 KiB

// Shared memory: two buffers of a stage's K and V rows (row-major, + 8 halves a row, so that
// the 8 rows a fragment load touches fall in distinct banks).
template <int HD>
struct alignas(128) AttFaShared {
  static constexpr int S = fa_stage<HD>();
  static constexpr int P = HD + 8;  // halves a row
  alignas(16) __half k[2][S * P];
  alignas(16) __half v[2][S * P];
};
static_assert(sizeof(AttFaShared<64>) <= 48 * 1024 && sizeof(AttFaShared<128>) <= 48 * 1024,
              "static shared memory over 48 KiB");

template <int HD>
__global__ void __launch_bounds__(kFaThreads) attention_fa(AttentionArgs a, int row_chunks) {
  using Sh = AttFaShared<HD>;
  constexpr int S = Sh::S, P = Sh::P;
  constexpr int NT = S / 8;        // n-tiles of 8 positions a stage
  constexpr int KS = HD / 16;      // k-steps of S = Q K^T
  constexpr int DT = HD / 8;       // n-tiles of O
  constexpr int CPR = HD / 8;      // 16-byte chunks a K or V row
  constexpr float kLog2e = 1.4426950408889634f;
  __shared__ Sh sm;
  griddep_launch_dependents();
  const PrefillBlock pb = prefill_block(a, row_chunks, kFaRows);
  if (pb.rows <= 0) return;  // block-uniform
  const int group = pb.group, g = pb.g, t0 = pb.t0, r0 = pb.r0, rows = pb.rows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int lg = lane >> 2, lt = lane & 3;  // the lane's group (row) and thread-in-group (column pair)
  const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * HD;
  const int64_t head_off = static_cast<int64_t>(g) * HD;
  const int32_t* block_table = a.tokens[t0].block_table;
  const int bs = a.block_size;
  const auto* kc = static_cast<const uint16_t*>(a.k_cache);
  const auto* vc = static_cast<const uint16_t*>(a.v_cache);

  const int p_end = pb.p_end;  // the most positions a row of this block sees
  // Copies stage `stage`'s K and V rows into buffer buf (rows past p_end: zeros, so that
  // P V never meets stale or non-finite values).
  auto issue = [&](int stage, int buf) {
    const int base = stage * S;
    for (int c = threadIdx.x; c < S * CPR; c += kFaThreads) {
      const int row = c / CPR, col = (c % CPR) * 8;
      const int pos = base + row;
      __half* kd = sm.k[buf] + row * P + col;
      __half* vd = sm.v[buf] + row * P + col;
      if (pos < p_end) {
        const int64_t off = (static_cast<int64_t>(block_table[pos / bs]) * bs + pos % bs) * kv_dim + head_off + col;
        __pipeline_memcpy_async(kd, kc + off, 16);
        __pipeline_memcpy_async(vd, vc + off, 16);
      } else {
        *reinterpret_cast<uint4*>(kd) = uint4{0, 0, 0, 0};
        *reinterpret_cast<uint4*>(vd) = uint4{0, 0, 0, 0};
      }
    }
    __pipeline_commit();
  };
  const int n_stages = (p_end + S - 1) / S;
  if (n_stages > 0) issue(0, 0);

  // This warp's rows lr0 + lg (hi 0) and lr0 + lg + 8 (hi 1): their heads, tokens and n_kv.
  const int lr0 = 16 * warp;
  int nkv[2];
  int64_t qo[2];  // offset of the row's q / out vector
  bool valid[2];
  for (int hi = 0; hi < 2; ++hi) {
    const int r = lr0 + lg + 8 * hi;
    valid[hi] = r < rows;
    const int rr = r0 + r, h = g * group + rr % group;
    const int tok = t0 + rr / group;
    qo[hi] = valid[hi] ? (static_cast<int64_t>(tok) * a.n_heads + h) * HD : 0;
    nkv[hi] = valid[hi] ? a.tokens[tok].n_kv : 0;
  }
  // The warp's last position needed (warp-uniform after the shuffles).
  int warp_end = nkv[0] > nkv[1] ? nkv[0] : nkv[1];
  for (int off = 1; off < kWarpSize; off <<= 1) {
    const int o = static_cast<int>(__shfl_xor_sync(0xffffffffu, static_cast<float>(warp_end), off));
    warp_end = o > warp_end ? o : warp_end;
  }
  // Q fragments (A operands), times scale * log2 e.
  const float qs = a.scale * kLog2e;
  uint32_t qa[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int hi = r & 1, d = kk * 16 + 2 * lt + 8 * (r >> 1);
      float x0 = 0.0f, x1 = 0.0f;
      if (valid[hi]) {
        const float2 v = *reinterpret_cast<const float2*>(a.q + qo[hi] + d);
        x0 = v.x * qs;
        x1 = v.y * qs;
      }
      qa[kk][r] = pack_half2(x0, x1);
    }
  }
  float o[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int st = 0; st < n_stages; ++st) {
    const int buf = st & 1, base = st * S;
    if (st + 1 < n_stages) {
      issue(st + 1, buf ^ 1);
      __pipeline_wait_prior(1);  // stage st's copies (this thread's) are done
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();  // ... and every thread's
    if (base < warp_end) {  // warp-uniform: a warp whose rows see none of these positions skips
      const __half* ks = sm.k[buf];
      const __half* vs = sm.v[buf];
      // S = Q K^T, NT tiles of 16 x 8.
      float sc[NT][4];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[n][e] = 0.0f;
        const __half* krow = ks + (n * 8 + lg) * P + 2 * lt;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          const uint32_t kb[2] = {*reinterpret_cast<const uint32_t*>(krow + kk * 16),
                                  *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8)};
          mma_16816(sc[n], qa[kk], kb, sc[n]);
        }
      }
      // Online softmax of rows hi = 0, 1 (the 4 lanes of a group share a row).
      uint32_t pa[S / 16][4];
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int pos = base + n * 8 + 2 * lt + e;
            float& x = sc[n][2 * hi + e];
            x = pos < nkv[hi] ? x : -INFINITY;
            mx = fmaxf(mx, x);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[hi], mx);
        const float corr = m_new == -INFINITY ? 1.0f : exp2f(m[hi] - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = sc[n][2 * hi + e];
            x = x == -INFINITY ? 0.0f : exp2f(x - m_new);
            sum += x;
          }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l[hi] = fmaf(l[hi], corr, sum);
        m[hi] = m_new;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          o[dt][2 * hi] *= corr;
          o[dt][2 * hi + 1] *= corr;
        }
      }
      // P as A operands: positions [16 kk, 16 kk + 16) are n-tiles 2 kk and 2 kk + 1.
#pragma unroll
      for (int kk = 0; kk < S / 16; ++kk) {
        pa[kk][0] = pack_half2(sc[2 * kk][0], sc[2 * kk][1]);
        pa[kk][1] = pack_half2(sc[2 * kk][2], sc[2 * kk][3]);
        pa[kk][2] = pack_half2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        pa[kk][3] = pack_half2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
      }
      // O += P V: B operand (rows = positions 2 lt + {0, 1} (+ 8), col = lg) from V's rows.
      const auto* vbits = reinterpret_cast<const uint16_t*>(vs);
#pragma unroll
      for (int kk = 0; kk < S / 16; ++kk) {
        const uint16_t* v0 = vbits + (kk * 16 + 2 * lt) * P + lg;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          const uint16_t* vp = v0 + dt * 8;
          const uint32_t vb[2] = {static_cast<uint32_t>(vp[0]) | (static_cast<uint32_t>(vp[P]) << 16),
                                  static_cast<uint32_t>(vp[8 * P]) | (static_cast<uint32_t>(vp[9 * P]) << 16)};
          mma_16816(o[dt], pa[kk], vb, o[dt]);
        }
      }
    }
    __syncthreads();  // every warp is done with buffer buf before stage st + 2's copies into it
  }
  // O / l, two adjacent floats a lane and row.
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    if (!valid[hi]) continue;
    const float inv = l[hi] > 0.0f ? 1.0f / l[hi] : 0.0f;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      float2 v;
      v.x = o[dt][2 * hi] * inv;
      v.y = o[dt][2 * hi + 1] * inv;
      *reinterpret_cast<float2*>(a.out + qo[hi] + dt * 8 + 2 * lt) = v;
    }
  }
}

template <int HD>
cudaError_t launch_fa(const AttentionArgs& a, cudaStream_t stream) {
  const int group = a.n_heads / a.n_kv_heads;
  const int row_chunks = (kTileQ * group + kFaRows - 1) / kFaRows;
  const auto blocks = static_cast<unsigned>(a.n_tiles * a.n_kv_heads * row_chunks);
  DS_LAUNCH(attention_fa<HD>, blocks, kFaThreads, 0, stream)(a, row_chunks);
  return cudaGetLastError();
}


template <class T>
cudaError_t prefill_tc_of(const AttentionArgs& a, int tensor_cores, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (tensor_cores == 3) return a.head_dim == 64 ? launch_fa<64>(a, stream) : launch_fa<128>(a, stream);
  }
  if (tensor_cores == 1) return a.head_dim == 64 ? launch_tc<64, false, T>(a, stream) : launch_tc<128, false, T>(a, stream);
  return a.head_dim == 64 ? launch_tc<64, true, T>(a, stream) : launch_tc<128, true, T>(a, stream);
}

}  // namespace

cudaError_t attention_prefill_tc(const AttentionArgs& a, int tensor_cores, cudaStream_t stream) {
  return a.kv_type == DType::kF16 ? prefill_tc_of<uint16_t>(a, tensor_cores, stream)
                                  : prefill_tc_of<float>(a, tensor_cores, stream);
}

}  // namespace ds::cuda
