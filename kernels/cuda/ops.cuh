// kernels/cuda/ops.cuh: host-side launchers of the CUDA kernels, one per Backend op.
//
// Each launcher enqueues its kernel(s) on `stream` and returns cudaGetLastError() (a
// launch failure; faults inside the kernel surface at the next synchronisation). They
// check nothing else: CudaBackend (cuda_backend.cu) validates arguments first. Every
// pointer is device memory. The scalar reference of each op is the function of the same
// name in kernels/ref.cc; each kernel's comment says how it departs from it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"

namespace ds::cuda {

// The kernels' name for Q8_0 weights in kLayoutQ8_0Split (backend.h: per row, the int8 quants
// then the F16 scales), a value no GGUF type has. Every launcher taking a DType takes it.
// Each kernel computes with it the bits it computes with DType::kQ8_0 on the GGUF blocks.
constexpr DType kQ8_0Split = DType::kQ8_0Split;

// ---- elementwise.cu ---------------------------------------------------------------

// out[i, :] = dequantized row (ids ? ids[i] : i) of w[*, cols]. Bit-identical to dequantize_row().
cudaError_t get_rows(DType t, const void* w, size_t row_stride, int64_t cols, const int32_t* ids, int64_t n,
                     float* out, cudaStream_t stream);
// out[i, :] = row i of w[n, cols] (type t, dequantized as get_rows does) rounded to F16 bits
// (bf16: BF16 bits), round to nearest even: the tensor-core GEMM's operands.
cudaError_t to_half(DType t, const void* w, size_t row_stride, int64_t cols, int64_t n, bool bf16, uint16_t* out,
                    cudaStream_t stream);
cudaError_t rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
                    cudaStream_t stream);
cudaError_t rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p,
                 cudaStream_t stream);
// Backend::rope_store_kv in one launch, each element with rope's and store_kv's bits.
// REQUIRES: head_dim even, 0 < n_rot <= head_dim, n_rot even.
cudaError_t rope_store_kv(float* q, float* k, const float* v, int64_t n, int n_heads, int n_kv_heads, int head_dim,
                          const int32_t* pos, const RopeParams& p, const int32_t* slots, const KvLayer& cache,
                          cudaStream_t stream);
cudaError_t swiglu(const float* gate, const float* up, int64_t count, float* out, cudaStream_t stream);
cudaError_t add(float* x, const float* y, int64_t count, cudaStream_t stream);
cudaError_t add_bias(float* x, const float* bias, int64_t n, int64_t dim, cudaStream_t stream);
cudaError_t store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim,
                     const KvLayer& cache, cudaStream_t stream);

// ---- L2 prefetch of the next op's weights ---------------------------------------------
//
// A decode step reads each weight matrix once, in the same order every step, and no kernel
// writes weights: so while one op's kernel computes, the bytes of the op after it can already
// stream from HBM into L2 (sm_90: cp.async.bulk.prefetch.L2, one instruction a piece, done by
// the copy engine, not the SM's load units). The next kernel then reads its weights from L2,
// and HBM stays busy across the kernel boundaries where a kernel per op leaves it idle (the
// ramp-up and the tail of each launch). A hint: the results are the same bits with or without
// it; below sm_90 and under the CPU emulation it does nothing. CudaBackend learns which
// weights follow which from the order of its matmul calls (CudaBackendOptions::l2_prefetch).

#if defined(__CUDACC__)
#define DS_HOST_DEVICE __host__ __device__
#else
#define DS_HOST_DEVICE
#endif

constexpr int kL2PrefetchRanges = 3;           // the most matrices one op reads (Q, K, V)
constexpr uint32_t kL2PrefetchPiece = 1 << 16;  // the most bytes one prefetch instruction asks for

struct L2Prefetch {
  const void* ptr[kL2PrefetchRanges] = {};  // 16-byte aligned
  uint64_t bytes[kL2PrefetchRanges] = {};   // multiples of 16; 0: unused
};

// The pieces of pf that block `block` of a launch of `grid` blocks asks L2 for: every block an
// equal share (a multiple of 16 bytes) of the ranges laid end to end, cut at the ranges' ends
// and into pieces of at most kL2PrefetchPiece bytes; f(ptr, bytes) for each. Over the blocks of
// one launch the pieces cover each range exactly once.
template <class F>
DS_HOST_DEVICE inline void l2_prefetch_pieces(const L2Prefetch& pf, uint32_t block, uint32_t grid, F&& f) {
  uint64_t total = 0;
  for (int i = 0; i < kL2PrefetchRanges; ++i) total += pf.bytes[i];
  if (total == 0 || grid == 0) return;
  const uint64_t share = ((total + grid - 1) / grid + 15) / 16 * 16;
  const uint64_t lo = share * block, hi = lo + share < total ? lo + share : total;
  uint64_t base = 0;
  for (int i = 0; i < kL2PrefetchRanges && lo < hi; ++i) {
    const uint64_t a = lo > base ? lo : base, b = hi < base + pf.bytes[i] ? hi : base + pf.bytes[i];
    for (uint64_t at = a; at < b; at += kL2PrefetchPiece) {
      const uint64_t n = b - at < kL2PrefetchPiece ? b - at : kL2PrefetchPiece;
      f(static_cast<const char*>(pf.ptr[i]) + (at - base), static_cast<uint32_t>(n));
    }
    base += pf.bytes[i];
  }
}

// ---- gemv.cu (kernels: gemv_kernels.cuh) --------------------------------------------

constexpr int kGemvMaxN = 8;  // activation rows one GEMV launch handles
constexpr int kGemvVersions = 5;

// y[n, rows] = x[n, cols] * W^T for n <= kGemvMaxN. Each y element is computed by the
// same instructions whatever n (determinism contract). Versions:
//   1: one thread per output element, scalar loads (simple, slow; a second opinion)
//   2: one warp per weight row, 8-element chunks with 16-byte loads, 4 chunks in flight
//   3: one warp per row, 4 rows per block, all 8 chunks' loads issued before any math,
//      n a template parameter, int8 -> float by byte permute (the live version); for n > 1 a
//      warp takes two rows and loads each activation chunk once for both
//   4: version 3 with one row per warp for every n (v3 as it was before two rows per warp),
//      bit-identical to it: kept so that one GPU run times both (gpu_kernel_check)
//   5: for n = 1, version 3's dots streamed (gemv_v3.cuh: v3_stream_rows): a grid of what the
//      device holds at once, each warp taking several rows with its next unit's loads in
//      flight while it computes; bit-identical to version 3 (for n > 1: version 3)
// REQUIRES: 1 <= n <= kGemvMaxN; 1 <= version <= kGemvVersions; supported t.
// pdl (version 3 and the fused launches below): programmatic dependent launch (common.cuh),
// the weight loads overlapping the end of the previous kernel.
// l2 (versions 3 and 4 and the fused launches below; null: none): what the launch's blocks ask
// L2 for (the next op's weights), each its share, at their start.
cudaError_t gemv(int version, DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols,
                 const float* x, int n, float* y, cudaStream_t stream, bool pdl = false,
                 const L2Prefetch* l2 = nullptr);

// Fused decode launches (v3's per-row code; each output element gets the bits that gemv
// version 3 followed by add_bias / swiglu gives it, whatever n).
//
// Q, K and V: y[m][j, r] = x[j, :] . W_m[r, :] (+ bias[m][r] where bias[m] is non-null),
// m = 0, 1, 2, for the three matrices of one type and column count (row_stride bytes a row).
struct GemvQkv {
  const void* w[3];
  const float* bias[3];  // each may be null
  float* y[3];           // [n, rows[m]]
  int64_t rows[3];
};
// REQUIRES: 1 <= n <= kGemvMaxN; supported t; cols a multiple of t's block.
cudaError_t gemv_qkv(DType t, const GemvQkv& a, size_t row_stride, int64_t cols, const float* x, int n,
                     cudaStream_t stream, bool pdl = false, const L2Prefetch* l2 = nullptr);
// gemv_qkv, then rope_store_kv on its outputs, in one launch: a warp takes two rows of one
// matrix, a RoPE pair of a Q or K head (normal style: rows 2d, 2d + 1 of the head; neox: d,
// d + n_rot / 2; the unrotated dimensions [n_rot, head_dim) two at a time) or two rows of V,
// and writes q (rotated), k (rotated, to y[1] and the cache row slots[j]) and v (y[2] and the
// cache), each element with the bits gemv_qkv and rope_store_kv give it.
struct GemvQkvRope {
  int head_dim = 0, n_rot = 0;
  bool neox = false;
  float freq_base = 10000, freq_scale = 1;
  const int32_t* pos = nullptr;    // [n]
  const int32_t* slots = nullptr;  // [n]
  void* k_cache = nullptr;         // KvLayer k, v: F32 or F16 elements
  void* v_cache = nullptr;
  bool kv_f16 = false;
};
// REQUIRES: as gemv_qkv; rows[0] and rows[1] == rows[2] multiples of head_dim; head_dim and
// n_rot even, 0 < n_rot <= head_dim.
// stream_rows: for n = 1, pairs streamed as gemv version 5 streams rows (the same bits).
cudaError_t gemv_qkv_rope(DType t, const GemvQkv& a, const GemvQkvRope& r, size_t row_stride, int64_t cols,
                          const float* x, int n, cudaStream_t stream, bool pdl = false,
                          const L2Prefetch* l2 = nullptr, bool stream_rows = false);
// gemv_add's optional RMSNorm of the result: out[j, :] = rmsnorm(y[j, :], weight, eps), the
// bits of rmsnorm() (a layer's residual add and the next norm in one launch). counter: a
// device unsigned that is 0 before the launch (the launch leaves it 0 again).
struct GemvNorm {
  const float* weight = nullptr;
  float eps = 0;
  float* out = nullptr;  // [n, rows]; aliases neither x nor y
  unsigned* counter = nullptr;
};
// y[j, r] += x[j, :] . W[r, :] (v3's dot, then the one float add of add()): a projection with
// the residual add fused in; then, with norm, out = rmsnorm(y). REQUIRES: as gemv_qkv; y does
// not alias x.
// stream_rows (here and in gemv_swiglu): for n = 1, gemv version 5's streamed rows (the same bits).
cudaError_t gemv_add(DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n,
                     float* y, cudaStream_t stream, bool pdl = false, const GemvNorm* norm = nullptr,
                     const L2Prefetch* l2 = nullptr, bool stream_rows = false);
// out[j, r] = silu(x[j, :] . W_gate[r, :]) * (x[j, :] . W_up[r, :]), both [rows, cols] of type t.
// REQUIRES: as gemv_qkv; out does not alias x.
cudaError_t gemv_swiglu(DType t, const void* w_gate, const void* w_up, size_t row_stride, int64_t rows, int64_t cols,
                        const float* x, int n, float* out, cudaStream_t stream, bool pdl = false,
                        const L2Prefetch* l2 = nullptr, bool stream_rows = false);

// Whether the GEMV kernels load this matrix's rows with wide (8- / 16-byte) loads (its type,
// columns, row bytes and alignment allow them); the arithmetic is the same either way.
bool gemv_wide_loads(DType t, const void* w, int64_t cols, size_t row_stride);


// ---- gemv_i8.cu ---------------------------------------------------------------------

// Decode GEMV of Q8_0 weights (GGUF blocks, or split rows: t = kQ8_0Split) on int8 dot
// products: x quantized per 32 values as the CPU backend's VNNI path quantizes it, then
// y[j, r] = sum over blocks of d_w d_x * (exact int32 dot). Batch invariant, and the same bits
// for both layouts (gemv_i8.cu). scratch: gemv_i8_scratch_bytes(cols, n) bytes of device
// memory. REQUIRES: gemv_i8_supports(t, cols); 1 <= n <= kGemvMaxN.
bool gemv_i8_supports(DType t, int64_t cols);
size_t gemv_i8_scratch_bytes(int64_t cols, int n);
cudaError_t gemv_i8(DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n,
                    float* y, void* scratch, cudaStream_t stream);
// ---- gemm_tc.cu ---------------------------------------------------------------------

// y[n, rows] (+)= x[n, cols] * W^T on the tensor cores for the small batches above the GEMV's
// (decode at batch 9..32): each weight byte read once, dequantized on the chip to the F16
// values cuBLAS's operand would hold, x rounded to F16, F32 accumulation (gemm_tc.cu). Each
// y element's arithmetic depends on the matrix shape only, not on n.
constexpr int kGemmTcMaxN = 32;
// Whether gemm_tc takes this matrix and n: F16 (cols % 16 == 0), Q8_0 / Q4_0, Q4_K; the data
// and its rows 4-byte aligned; 1 <= n <= kGemmTcMaxN.
bool gemm_tc_supports(DType t, const void* w, size_t row_stride, int64_t cols, int n);
// Bytes of x rounded to F16 (padded to a multiple of 8 rows) at the start of the scratch.
size_t gemm_tc_x_bytes(int64_t cols, int n);
// One matrix of a gemm_tc call: y[n, rows] (+)= x W^T.
struct GemmTcMatrix {
  const void* w;
  int64_t rows;
  float* y;
};
constexpr int kGemmTcMaxParts = 3;  // matrices one call takes (Q, K, V)
// Device scratch gemm_tc needs for these matrices (x in F16, the column splits' partial sums,
// arrival counters).
size_t gemm_tc_scratch_bytes(DType t, const GemmTcMatrix* m, int count, int64_t cols, int n);
// count (1..kGemmTcMaxParts) matrices of type t and cols columns (row_stride bytes a row) times
// the same x, in two launches (x rounded to F16 once). add: y += x W^T (y[j, r] = y[j, r] +
// dot, one float add) instead of y = x W^T. Each matrix's outputs get the bits they get alone.
// REQUIRES: gemm_tc_supports for each; scratch holds gemm_tc_scratch_bytes, 256-byte aligned;
// no y aliases x or another y.
// l2: as gemv's (the next op's weights asked of L2; null: none).
cudaError_t gemm_tc(DType t, const GemmTcMatrix* m, int count, size_t row_stride, int64_t cols, const float* x, int n,
                    bool add, void* scratch, cudaStream_t stream, const L2Prefetch* l2 = nullptr);

// ---- attention.cu -------------------------------------------------------------------

constexpr int kAttentionMaxHeadDim = 1024;

// Backend::attention: version 2 (split-K, two launches) when a.max_kv > 0 and a.workspace
// holds attention_workspace_floats(a.n_tokens, ...) floats, else version 1 (one launch).
// REQUIRES: 1 <= head_dim <= kAttentionMaxHeadDim, n_heads % n_kv_heads == 0.
// tensor_cores: the tensor-core prefill kernels where attention_tc_applies (attention.cu: not
// bit-identical to the decode kernels; F16 error): 1 WMMA with unpadded shared-memory rows, 2
// WMMA with padded ones, 3 flash attention 2 on mma.sync for F16 caches (F32 caches: 2); 0: never.
cudaError_t attention(const AttentionArgs& a, cudaStream_t stream, int tensor_cores = 0);
// Whether the tensor-core prefill kernel takes a: tiles that average >= 4 tokens (a step that
// is mostly prefill) and head_dim 64 or 128.
bool attention_tc_applies(const AttentionArgs& a);
// The tensor-core prefill kernels (attention_tc.cu), attention()'s path where
// attention_tc_applies(a): tensor_cores 1 / 2 WMMA (unpadded / padded rows), 3 mma.sync
// flash attention 2 for F16 caches (F32 caches: 2). REQUIRES: attention_tc_applies(a).
cudaError_t attention_prefill_tc(const AttentionArgs& a, int tensor_cores, cudaStream_t stream);
// Workspace floats version 2 needs for n_tokens tokens: n_tokens * n_heads * (n_chunks *
// (head_dim + 2) + 1), n_chunks <= 32 set by max_kv (attention.cu): the chunks' records and an
// arrival counter a pair; 0 when max_kv <= 0. The workspace must start zeroed (alloc does)
// and be used by one stream at a time; version 2 leaves the counters zero.
size_t attention_workspace_floats(int64_t n_tokens, int n_heads, int head_dim, int max_kv);

// ---- decode_fused.cu -------------------------------------------------------------------

// The persistent decode kernel (decode_fused.cu): one decode step of one token, every layer
// and the logits, in one cooperative launch, with the bits of the layer-by-layer launches
// (gemv v3 and its fused QKV + RoPE / add / SwiGLU launches, split-K attention).
struct FusedDecodeLayer {
  const void* wq;
  const void* wk;
  const void* wv;
  const void* wo;
  const void* w_gate;
  const void* w_up;
  const void* w_down;
  const float* bq;  // biases: each may be null
  const float* bk;
  const float* bv;
  const float* attn_norm;
  const float* ffn_norm;
  void* k_cache;  // KvLayer k, v
  void* v_cache;
};
struct FusedDecodeArgs {
  DType wtype = DType::kF32;  // every matrix's kernel type (kQ8_0Split for split rows)
  bool w_vec = false;         // wide weight loads (gemv_kernels.cuh's vec_weights, every matrix aligned)
  bool prefetch = true;       // ask L2 for the next phase's weights before each grid barrier
  int n_layers = 0;
  const FusedDecodeLayer* layers = nullptr;  // device memory, [n_layers]
  int64_t n_embd = 0, n_ff = 0, n_vocab = 0;
  size_t stride_d = 0, stride_q = 0, stride_f = 0;  // row bytes: n_embd, q_dim, n_ff columns
  float eps = 0;
  const float* output_norm = nullptr;
  const void* output = nullptr;  // [n_vocab, n_embd]
  GemvQkv qkv = {};              // rows and y (q, k, v [1, rows]); w and bias per layer
  GemvQkvRope rope = {};         // RoPE, pos, slots, kv_f16; caches per layer
  AttentionArgs att = {};        // one token: q, out, tokens, heads, scale, split-K workspace
  int chunk = 0, n_chunks = 0;   // split-K chunking of att.max_kv (attention.cu)
  float* x = nullptr;            // [n_embd]: in the embedding, out the last residual
  float* ffn = nullptr;          // [n_ff] scratch
  float* logits = nullptr;       // [n_vocab]
  unsigned* barrier = nullptr;   // a device unsigned for the grid barrier (any value)
  int64_t stage_floats = 0;      // set by fused_decode
  bool lean = false;             // the register-capped build: fused_decode_lean(blocks an SM asked for)
};
// Whether the kernel takes matrices of kernel type t (F32, F16, Q8_0, split Q8_0) and this
// head_dim (<= 128).
bool fused_decode_supports(DType t, int head_dim);
// The split-K chunking attention() uses for max_kv (> 0): chunk size and count.
void fused_decode_chunks(int max_kv, int* chunk, int* n_chunks);
size_t fused_decode_shared_bytes(const FusedDecodeArgs& a);
// Whether blocks_per_sm blocks an SM take the kernel's register-capped build (more than 4:
// the other build fits 3 an SM on sm_90); FusedDecodeArgs::lean.
bool fused_decode_lean(int blocks_per_sm);
// Blocks of a launch on the current device: SMs x min(blocks_per_sm, what fits, of the build
// fused_decode_lean picks); 0 where the device cannot launch cooperatively (the caller keeps
// the layer-by-layer path).
int fused_decode_blocks(DType t, size_t shared_bytes, int blocks_per_sm);
// REQUIRES: fused_decode_supports; att.max_kv > 0 with its split-K workspace; blocks from
// fused_decode_blocks; every matrix of wtype with rows of stride_* bytes.
cudaError_t fused_decode(const FusedDecodeArgs& a, int blocks, cudaStream_t stream);
// common.cuh's grid_sync, checked and timed (decode_fused.cu): a cooperative launch of
// `blocks` 128-thread blocks doing `rounds` rounds of write / barrier / read every block's
// write / barrier, counting wrong reads in *errors (null errors: 2 * rounds barriers and
// nothing else, to time them). bar, data ([blocks]) and errors: device memory. grid_sync_blocks: blocks_per_sm blocks an SM, at most what fits (0: the device
// cannot launch cooperatively).
int grid_sync_blocks(int blocks_per_sm);
cudaError_t grid_sync_check(int blocks, int rounds, unsigned* bar, unsigned* data, unsigned* errors,
                            cudaStream_t stream);

// ---- sample.cu ------------------------------------------------------------------------

// Backend::sample_candidates (one block per row). REQUIRES: 1 <= n_rows <= INT_MAX,
// 1 <= n_vocab <= INT32_MAX, pen entries valid (CudaBackend checks the shapes only).
cudaError_t sample_candidates(const SampleArgs& a, cudaStream_t stream);

}  // namespace ds::cuda
