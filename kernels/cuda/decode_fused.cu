// kernels/cuda/decode_fused.cu: the persistent decode kernel, a whole decode step of one
// token (every layer, then the logits) in one cooperative launch (CudaBackend::fused_decode).
//
// Why: at batch 1 the step is ~110 small kernels (5 a layer since the fused launches), and
// each kernel boundary drains the GPU and fills it again (the last H200 profile: ~1.1 ms of a
// 1.75 ms q8_0 step outside the GEMVs' weight reads). Here the grid stays resident and the
// phases of a layer are separated by grid barriers (common.cuh's grid_sync; expected ~1-2 us
// each, not yet measured: gpu_kernel_check's BENCH grid_sync) instead of a launch's drain and
// fill; while a block waits at a barrier its warps have
// already asked L2 for the weights of their rows of the next phase (prefetch.global.L2), so
// HBM keeps streaming across the barrier.
//
// Per layer (the rows of a phase dealt to the grid's warps round robin, items to blocks):
//   A  every block stages xn = rmsnorm(x, attn_norm) in shared memory (rmsnorm's bits, x
//      read past L1); Q, K, V + RoPE + the cache write, a warp per RoPE pair
//      (gemv_v3.cuh's qkv_rope_pair, gemv_qkv_rope's code)                         | barrier
//   B  split-K attention, a block per (head, chunk) item, the last chunk of a head merging
//      (attention_decode.cuh's split_item, attention_split's code)                   | barrier
//   C  stage att; x += att Wo^T, a warp per row (gemv_add's dot and add)                | barrier
//   D  stage rmsnorm(x, ffn_norm); ffn = silu(x Wgate^T) * (x Wup^T), a warp per row,
//      both rows' dots at once (swiglu's expression)                                   | barrier
//   E  stage ffn; x += ffn Wdown^T                                                      | barrier
// then stage rmsnorm(x, output_norm) and logits = xn Wout^T. Every output element gets the
// instructions the separate launches give it (v3_rows_dots computes a row the same whatever
// the rows per warp; activations read from shared memory with plain loads give the values the
// global __ldg loads give), so the logits are those of the layer-by-layer path bit for bit
// (ds-gpu-engine-check compares them).
//
// Memory ordering: data one phase writes and another reads (x, q, k, v, att, ffn, the split-K
// records) is read past L1 (__ldcg) after the barrier; weights, norms and biases are read-only.
// KV cache rows written in A are read in B only by plain loads of lines no block read before
// in this launch.
#include <algorithm>

#include "kernels/cuda/attention_decode.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv_v3.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

using namespace v3;   // NOLINT: the per-row dots
using namespace att;  // NOLINT: the decode attention block bodies

constexpr int kThreads = kV3Warps * kWarpSize;  // 128, as gemv v3 and decode attention
static_assert(kV3Warps == kWarps, "a block is a GEMV block and an attention block");
constexpr int kMaxPerLane = 4;                  // head_dim <= 128

// Shared memory (floats): the staged activation row, then attention's merge space, the chunk
// weights, the norm's reduction slots and the split-K ticket.
__host__ __device__ constexpr int64_t merge_floats() { return kWarps * kMaxPerLane * kWarpSize + 2 * kWarps; }
int64_t stage_floats(const FusedDecodeArgs& a) {
  return std::max({a.n_embd, static_cast<int64_t>(a.att.n_heads) * a.att.head_dim, a.n_ff});
}

// xs[k] = rmsnorm(x)[k] for the whole row, with rmsnorm_kernel's arithmetic (rms_sum_sq at
// 128 threads plays its 256), x read past L1. Ends with a barrier.
__device__ __forceinline__ void stage_norm(const float* x, const float* w, int64_t dim, float eps, float* xs,
                                           float* red) {
  const float ss = rms_sum_sq<true>(x, dim, red);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) xs[k] = __ldcg(x + k) * scale * w[k];
  __syncthreads();
}

// xs[0, dim) = src[0, dim), read past L1. Ends with a barrier.
__device__ __forceinline__ void stage_copy(const float* src, int64_t dim, float* xs) {
  for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) xs[k] = __ldcg(src + k);
  __syncthreads();
}

// Asks L2 for rows [r, r + n_gw, ...) of a matrix (row_bytes each, every 128-byte line), the
// rows this warp takes in the next phase: issued before a barrier, so that HBM streams them
// while the grid waits. A hint: no effect on any value.
__device__ __forceinline__ void prefetch_rows(const void* w, size_t row_stride, int64_t rows, int64_t r0, int64_t step) {
#if !defined(DS_CUDA_EMULATION)
  const int lane = threadIdx.x & 31;
  for (int64_t r = r0; r < rows; r += step) {
    const char* row = static_cast<const char*>(w) + r * static_cast<int64_t>(row_stride);
    for (size_t off = static_cast<size_t>(lane) * 128; off < row_stride; off += kWarpSize * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(row + off));
  }
#else
  (void)w, (void)row_stride, (void)rows, (void)r0, (void)step;
#endif
}

// y[r] = y[r] + x . W[r, :] for the rows r = gw, gw + n_gw, ... (gemv_add's dot and add; x in
// shared memory). y[r] is only ever written by this warp's lane 0 in a launch (the rows of
// the O and down projections are dealt alike), but read past L1 all the same.
template <DType T>
__device__ __forceinline__ void rows_add(const void* w, size_t row_stride, int64_t rows, int64_t cols, const float* xs,
                                         float* y, bool w_vec, bool x_vec, int64_t gw, int64_t n_gw) {
  for (int64_t r = gw; r < rows; r += n_gw) {
    const uint8_t* row_ptrs[1] = {static_cast<const uint8_t*>(w) + r * static_cast<int64_t>(row_stride)};
    float dots[1][1] = {};
    v3_rows_dots<T, 1, 1, false>(row_ptrs, cols, xs, 1, w_vec, x_vec, dots);
    if ((threadIdx.x & 31) == 0) y[r] = __ldcg(y + r) + dots[0][0];
  }
}

// Phase B's work: the block's (head, chunk) items; KvT and kPerLane as attention() picks them.
template <class KvT, int kPerLane>
__device__ __forceinline__ void attention_items(const AttentionArgs& a, const FusedDecodeArgs& p, int64_t items,
                                                float* s_merge, float* s_w, unsigned* ticket) {
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x)
    split_item<kPerLane, KvT, true>(a, p.chunk, p.n_chunks, item, s_merge, s_w, ticket);
}

// The step; the cache type and head size only select phase A's and B's code, so the GEMV
// code is instantiated once per weight type.
template <DType T>
__device__ __forceinline__ void decode_step(const FusedDecodeArgs& p, float* smem) {
  const bool kv_f16 = p.rope.kv_f16;
  const bool wide_heads = (p.att.head_dim + kWarpSize - 1) / kWarpSize > 2;  // attention(): kPerLane 4, else 2
  float* xs = smem;
  float* s_merge = xs + p.stage_floats;
  float* s_w = s_merge + merge_floats();
  float* red = s_w + kMaxChunks;
  auto* ticket = reinterpret_cast<unsigned*>(red + 32);
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kV3Warps + (threadIdx.x >> 5);
  const int64_t n_gw = static_cast<int64_t>(gridDim.x) * kV3Warps;
  const int64_t D = p.n_embd, F = p.n_ff;
  const int64_t q_dim = static_cast<int64_t>(p.att.n_heads) * p.att.head_dim;
  const int64_t pairs = (p.qkv.rows[0] + p.qkv.rows[1] + p.qkv.rows[2]) / 2;
  const int64_t items = static_cast<int64_t>(p.att.n_heads) * p.n_chunks;
  const bool x_vec_d = D % 8 == 0, x_vec_q = q_dim % 8 == 0, x_vec_f = F % 8 == 0;
  const bool pf = p.prefetch;
  for (int l = 0; l < p.n_layers; ++l) {
    const FusedDecodeLayer& L = p.layers[l];
    // A: Q, K, V, RoPE, the cache write.
    stage_norm(p.x, L.attn_norm, D, p.eps, xs, red);
    GemvQkv qkv = p.qkv;
    qkv.w[0] = L.wq, qkv.w[1] = L.wk, qkv.w[2] = L.wv;
    qkv.bias[0] = L.bq, qkv.bias[1] = L.bk, qkv.bias[2] = L.bv;
    GemvQkvRope rp = p.rope;
    rp.k_cache = L.k_cache, rp.v_cache = L.v_cache;
    for (int64_t g = gw; g < pairs; g += n_gw) {
      if (kv_f16) qkv_rope_pair<T, 1, uint16_t, false>(qkv, rp, p.stride_d, D, xs, 1, p.w_vec, x_vec_d, g);
      else qkv_rope_pair<T, 1, float, false>(qkv, rp, p.stride_d, D, xs, 1, p.w_vec, x_vec_d, g);
    }
    if (pf) prefetch_rows(L.wo, p.stride_q, D, gw, n_gw);
    grid_sync(p.barrier);
    // B: attention over the cache, split-K, merged by each head's last chunk.
    AttentionArgs a = p.att;
    a.k_cache = L.k_cache, a.v_cache = L.v_cache;
    if (kv_f16 && wide_heads) attention_items<uint16_t, 4>(a, p, items, s_merge, s_w, ticket);
    else if (kv_f16) attention_items<uint16_t, 2>(a, p, items, s_merge, s_w, ticket);
    else if (wide_heads) attention_items<float, 4>(a, p, items, s_merge, s_w, ticket);
    else attention_items<float, 2>(a, p, items, s_merge, s_w, ticket);
    if (pf) {
      prefetch_rows(L.w_gate, p.stride_d, F, gw, n_gw);
      prefetch_rows(L.w_up, p.stride_d, F, gw, n_gw);
    }
    grid_sync(p.barrier);
    // C: x += att Wo^T.
    stage_copy(p.att.out, q_dim, xs);
    rows_add<T>(L.wo, p.stride_q, D, q_dim, xs, p.x, p.w_vec, x_vec_q, gw, n_gw);
    grid_sync(p.barrier);
    // D: ffn = silu(xn Wgate^T) * (xn Wup^T).
    stage_norm(p.x, L.ffn_norm, D, p.eps, xs, red);
    for (int64_t r = gw; r < F; r += n_gw) {
      const uint8_t* row_ptrs[2] = {static_cast<const uint8_t*>(L.w_gate) + r * static_cast<int64_t>(p.stride_d),
                                    static_cast<const uint8_t*>(L.w_up) + r * static_cast<int64_t>(p.stride_d)};
      float dots[2][1] = {};
      v3_rows_dots<T, 1, 2, false>(row_ptrs, D, xs, 1, p.w_vec, x_vec_d, dots);
      if ((threadIdx.x & 31) == 0) {
        const float g = dots[0][0];
        p.ffn[r] = g / (1.0f + expf(-g)) * dots[1][0];
      }
    }
    if (pf) prefetch_rows(L.w_down, p.stride_f, D, gw, n_gw);
    grid_sync(p.barrier);
    // E: x += ffn Wdown^T.
    stage_copy(p.ffn, F, xs);
    rows_add<T>(L.w_down, p.stride_f, D, F, xs, p.x, p.w_vec, x_vec_f, gw, n_gw);
    if (pf) {
      if (l + 1 < p.n_layers) {  // all of Q, K and V over the grid (not each warp's own pairs)
        const FusedDecodeLayer& N = p.layers[l + 1];
        const int64_t kv_rows = p.qkv.rows[1];
        prefetch_rows(N.wq, p.stride_d, p.qkv.rows[0], gw, n_gw);
        prefetch_rows(N.wk, p.stride_d, kv_rows, gw, n_gw);
        prefetch_rows(N.wv, p.stride_d, kv_rows, gw, n_gw);
      } else {
        prefetch_rows(p.output, p.stride_d, p.n_vocab, gw, n_gw);
      }
    }
    grid_sync(p.barrier);
  }
  // The logits of the output norm.
  stage_norm(p.x, p.output_norm, D, p.eps, xs, red);
  for (int64_t r = gw; r < p.n_vocab; r += n_gw) {
    const uint8_t* row_ptrs[1] = {static_cast<const uint8_t*>(p.output) + r * static_cast<int64_t>(p.stride_d)};
    float dots[1][1] = {};
    v3_rows_dots<T, 1, 1, false>(row_ptrs, D, xs, 1, p.w_vec, x_vec_d, dots);
    if ((threadIdx.x & 31) == 0) p.logits[r] = dots[0][0];
  }
}

// Two builds of the kernel, chosen by the blocks an SM asked for (fused_decode_lean):
// kMinBlocks 1 lets the compiler take the registers it likes (160 a thread on sm_90: 3 blocks
// an SM fit), kLeanBlocks caps them at 64 (8 blocks fit; some values spill to local memory).
// The phases are bound by memory latency: the 8th session's figures rose with every block an
// SM (1, 2, 3: 342, 431, 480 tok/s). Registers change no value: both builds give the same bits.
constexpr int kLeanBlocks = 8;
constexpr int kWideMaxBlocks = 4;  // more blocks an SM than this take the lean build

template <DType T, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) decode_fused_kernel(FusedDecodeArgs p) {
  DS_DYNAMIC_SHARED(float, smem);
  decode_step<T>(p, smem);
}

// grid_sync's check (gpu_kernel_check): `rounds` times, block b writes data[b] = round *
// gridDim.x + b + 1, the grid meets, thread 0 of every block adds all blocks' entries (past
// L1) and counts a wrong total in *errors, the grid meets again (before the next round's
// writes). The time of a launch over its 2 * rounds barriers is grid_sync's cost.
// errors == nullptr: the barriers alone (the timing).
__global__ void grid_sync_check_kernel(unsigned* bar, unsigned* data, int rounds, unsigned* errors) {
  const unsigned g = gridDim.x;
  for (int r = 0; r < rounds; ++r) {
    if (errors == nullptr) {
      grid_sync(bar);
      grid_sync(bar);
      continue;
    }
    if (threadIdx.x == 0) data[blockIdx.x] = static_cast<unsigned>(r) * g + blockIdx.x + 1;
    grid_sync(bar);
    if (threadIdx.x == 0) {
      unsigned sum = 0;
      for (unsigned b = 0; b < g; ++b) sum += __ldcg(data + b);
      const unsigned want = static_cast<unsigned>(r) * g * g + g * (g + 1) / 2;
      if (sum != want) atomicAdd(errors, 1u);
    }
    grid_sync(bar);
  }
}

// A cooperative launch of `blocks` blocks of kThreads threads (every block resident at once,
// or an error): what grid_sync needs.
template <class K, class... A>
void launch_cooperative(K kernel, int blocks, size_t shm, cudaStream_t stream, A... args) {
#ifdef DS_CUDA_EMULATION
  ::emu::Launch(blocks, kThreads, shm, stream, kernel, /*cooperative=*/true)(args...);
#else
  cudaLaunchAttribute attr = {};
  attr.id = cudaLaunchAttributeCooperative;
  attr.val.cooperative = 1;
  launch_with(attr, kernel, dim3(blocks), dim3(kThreads), shm, stream, args...);
#endif
}

template <class F>
bool dispatch_fused_type(DType t, F&& f) {
  switch (t) {
    case DType::kF32: f(std::integral_constant<DType, DType::kF32>{}); return true;
    case DType::kF16: f(std::integral_constant<DType, DType::kF16>{}); return true;
    case DType::kQ8_0: f(std::integral_constant<DType, DType::kQ8_0>{}); return true;
    case kQ8_0Split: f(std::integral_constant<DType, kQ8_0Split>{}); return true;
    default: return false;
  }
}

}  // namespace

bool fused_decode_lean(int blocks_per_sm) { return blocks_per_sm > kWideMaxBlocks; }

bool fused_decode_supports(DType t, int head_dim) {
  return dispatch_fused_type(t, [](auto) {}) && head_dim >= 1 && head_dim <= kMaxPerLane * kWarpSize;
}

size_t fused_decode_shared_bytes(const FusedDecodeArgs& a) {
  return static_cast<size_t>(stage_floats(a) + merge_floats() + kMaxChunks + 32 + 1) * sizeof(float);
}

int fused_decode_blocks(DType t, size_t shared_bytes, int blocks_per_sm) {
#ifdef DS_CUDA_EMULATION
  (void)t, (void)shared_bytes;
  return std::clamp(blocks_per_sm, 1, 8);  // a few blocks: the emulation runs them all at once
#else
  int device = 0, sms = 0, coop = 0, fit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device) != cudaSuccess || !coop)
    return 0;
  const bool lean = fused_decode_lean(blocks_per_sm);
  bool ok = dispatch_fused_type(t, [&](auto tag) {
    auto* kernel = lean ? decode_fused_kernel<decltype(tag)::value, kLeanBlocks> : decode_fused_kernel<decltype(tag)::value, 1>;
    if (shared_bytes > 48 * 1024 &&
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)) !=
            cudaSuccess)
      return;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, kThreads, shared_bytes);
  });
  cudaGetLastError();
  if (!ok || fit <= 0) return 0;
  return sms * std::min(fit, std::max(blocks_per_sm, 1));
#endif
}

void fused_decode_chunks(int max_kv, int* chunk, int* n_chunks) {
  *chunk = chunk_size(max_kv);
  *n_chunks = chunk_count(max_kv);
}

cudaError_t fused_decode(const FusedDecodeArgs& args, int blocks, cudaStream_t stream) {
  FusedDecodeArgs a = args;
  a.stage_floats = stage_floats(a);
  const size_t shm = fused_decode_shared_bytes(a);
  const bool ok = dispatch_fused_type(a.wtype, [&](auto tag) {
    if (a.lean) launch_cooperative(decode_fused_kernel<decltype(tag)::value, kLeanBlocks>, blocks, shm, stream, a);
    else launch_cooperative(decode_fused_kernel<decltype(tag)::value, 1>, blocks, shm, stream, a);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

int grid_sync_blocks(int blocks_per_sm) {
#ifdef DS_CUDA_EMULATION
  return std::clamp(blocks_per_sm, 1, 8);
#else
  int device = 0, sms = 0, coop = 0, fit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device) != cudaSuccess || !coop ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, grid_sync_check_kernel, kThreads, 0) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return sms * std::min(fit, std::max(blocks_per_sm, 1));
#endif
}

cudaError_t grid_sync_check(int blocks, int rounds, unsigned* bar, unsigned* data, unsigned* errors,
                            cudaStream_t stream) {
  launch_cooperative(grid_sync_check_kernel, blocks, 0, stream, bar, data, rounds, errors);
  return cudaGetLastError();
}

}  // namespace ds::cuda
