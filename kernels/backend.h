// kernels/backend.h: the compute interface the forward pass runs on.
//
// A Backend owns its threads (CPU) or stream (CUDA) and executes one op at a time,
// synchronously: when a call returns, its output is complete. Pointers are in the
// backend's memory (host memory for the CPU backend, device memory for CUDA); get
// buffers with alloc(); every pointer an op takes, including those inside
// AttentionArgs (tokens, block tables), is backend memory. Shapes are given in elements, row-major, rows contiguous.
//
// Determinism contract: every op computes each output element with the same
// arithmetic whatever the batch size n and thread count, so a sequence decoded in a
// batch gets bit-identical logits to the same sequence decoded alone.
//
// Thread-safety: not thread-safe; one caller at a time (a worker owns its backend).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace ds {

// Weight layouts in backend memory. Every backend reads kLayoutGguf (the file's bytes);
// Backend::upload_weight may store a matrix in a layout of its own, of the same size, that
// only that backend reads.
constexpr uint32_t kLayoutGguf = 0;
// Q8_0 split rows (the CUDA backend): each row of `cols` weights holds its cols int8 quants,
// in order, then its cols / 32 F16 scales (the same bytes as the row's 34-byte blocks, so that
// quants load 8 and 16 bytes at a time). Element k = scale[k / 32] * quant[k], as in GGUF.
constexpr uint32_t kLayoutQ8_0Split = 1;
// Q8_0 / Q4_0 rows interleaved by 16 (the CPU backend on x86 with AVX2 or AVX-512; rows % 16 == 0): the
// 16 rows of group g are bytes [g * 16 * row_stride(), (g + 1) * 16 * row_stride()), in which
// block b (of 32 weights) of all 16 rows is one record: their 16 F16 scales, then the quants
// as 4-byte groups, group j of rows 0..15 before group j + 1. Q8_0: 8 groups of (quant + 128)
// as unsigned bytes (544-byte records); Q4_0: 4 groups of the GGUF nibble bytes, group j's byte
// i holding weight 4 j + i in its low nibble and 16 + 4 j + i in its high one (288 bytes).
constexpr uint32_t kLayoutQ8_0R16 = 2;
constexpr uint32_t kLayoutQ4_0R16 = 3;
// Q4_K rows interleaved by 16 likewise: per super-block of 256 weights one 2304-byte record of
// the 16 rows' F16 d, their F16 dmin, their 12 bytes of packed scales as three arrays of 16
// dwords (bytes 0-3, 4-7, 8-11 of each row), then the nibble bytes as 32 arrays of 16 4-byte
// groups (group j of each row: bytes 4 j .. 4 j + 3 of its 128).
constexpr uint32_t kLayoutQ4_KR16 = 4;
// Q6_K rows interleaved by 16: per super-block one 3360-byte record of the 16 rows' F16 d, their
// 16 int8 scales as four arrays of 16 dwords, then the 6-bit values q (0..63) of each 4-weight
// group g (weights 4 g .. 4 g + 3) of each row: their low 4 bits in 32 arrays of 16 4-byte groups
// (array g % 32, high nibble for g >= 32), their top 2 bits in 16 arrays (array g % 16, bits
// 2 (g / 16) and up). Weight = d * scale[k / 16] * (q - 32), as in GGUF.
constexpr uint32_t kLayoutQ6_KR16 = 5;

// A 2-D weight matrix [rows, cols] of any supported type; rows are contiguous.
struct WeightRef {
  DType type = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  uint32_t layout = kLayoutGguf;  // how rows are stored (row_stride() bytes each, whatever the layout)
  size_t row_stride() const { return row_bytes(type, cols); }
};

enum class RopeStyle { kNormal, kNeox };  // adjacent pairs (llama) / halves (qwen2, neox)

struct RopeParams {
  RopeStyle style = RopeStyle::kNormal;
  int n_rot = 0;             // rotated dimensions per head (== head_dim here)
  float freq_base = 10000;
  float freq_scale = 1;      // linear scaling: position * freq_scale
};

// Paged KV cache of one layer: k and v are [n_blocks, block_size, kv_dim] elements of its
// type: F32, or F16 (half the memory; store_kv rounds to nearest even, attention reads the
// halves exactly, so F16 attention is F32 attention over the rounded K and V).
// Token position p of a sequence lives in block block_table[p / block_size], row p % block_size.
struct KvLayer {
  void* k = nullptr;
  void* v = nullptr;
  DType type = DType::kF32;  // kF32 or kF16
};
inline bool kv_type_supported(DType t) { return t == DType::kF32 || t == DType::kF16; }
inline size_t kv_elem_bytes(DType t) { return t == DType::kF16 ? 2 : 4; }
struct AttentionToken {
  const int32_t* block_table = nullptr;
  int32_t n_kv = 0;  // attend to positions [0, n_kv)
};

struct AttentionArgs {
  const float* q = nullptr;    // [n_tokens, n_heads * head_dim]
  float* out = nullptr;        // [n_tokens, n_heads * head_dim]
  const void* k_cache = nullptr;  // KvLayer::k / v, of kv_type elements (below)
  const void* v_cache = nullptr;
  const AttentionToken* tokens = nullptr;  // [n_tokens]
  int64_t n_tokens = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;
  float scale = 1;             // usually 1/sqrt(head_dim)
  // Split-K decode (optional; backends without attention_workspace_floats() ignore these).
  // max_kv: an upper bound on every token's n_kv, fixed for all calls whose outputs must
  // agree bit for bit (a Forward: the per-sequence context capacity); 0: unknown. The
  // backend may cut positions into chunks whose size depends on max_kv (never on n_tokens),
  // using workspace (backend memory, workspace_floats floats, zeroed when allocated, one
  // caller at a time) for the partial results; with max_kv 0 or too small a workspace it runs
  // its one-pass kernel.
  int max_kv = 0;
  float* workspace = nullptr;
  size_t workspace_floats = 0;
  // Prefill tiles (optional; backends may ignore them): tokens [tiles[i], tiles[i + 1]) are
  // consecutive tokens of one sequence (one block table), at most kAttentionTileTokens of
  // them, and tiles[n_tiles] == n_tokens. A backend may then read each position's K and V
  // once per tile instead of once per token; every output has the bits it has without tiles.
  const int32_t* tiles = nullptr;  // [n_tiles + 1], backend memory
  int64_t n_tiles = 0;
  DType kv_type = DType::kF32;     // k_cache / v_cache elements (KvLayer::type)
};

// The most tokens of one AttentionArgs tile.
constexpr int kAttentionTileTokens = 8;

// ---- backend-side sampling (model/sampler.h has the pipeline; kernels/sampling.h the
// arithmetic both sides share) ----------------------------------------------------------

// The most candidates Backend::sample_candidates returns per row.
constexpr int kSampleMaxCandidates = 1024;

// One logits row of Backend::sample_candidates.
struct SampleRow {
  int32_t m = 1;          // candidates wanted: 1 <= m <= min(kSampleMaxCandidates, n_vocab)
  int32_t pen_begin = 0;  // penalties: entries [pen_begin, pen_begin + pen_count) of the pen_ arrays
  int32_t pen_count = 0;
  float repeat_penalty = 1.0f, frequency_penalty = 0.0f, presence_penalty = 0.0f;
  float temperature = 0.0f;  // > 0 when want_sums
  int32_t want_sums = 0;     // 1: also the two softmax sums over the whole row (see below)
  int64_t out = 0;           // this row's first word in SampleArgs::out (2 + m words)
};

struct SampleArgs {
  float* logits = nullptr;   // [n_rows, n_vocab]; penalties are applied in place, NaN becomes -inf
  int64_t n_rows = 0;
  int64_t n_vocab = 0;
  const SampleRow* rows = nullptr;       // [n_rows]
  const int32_t* pen_tokens = nullptr;   // distinct token ids of a row's penalty entries, in [0, n_vocab)
  const int32_t* pen_counts = nullptr;   // how often each was seen (>= 1)
  // Row r's words from rows[r].out: [0] s1 and [1] s2 as double bits (0 unless want_sums),
  // then m candidates, word = (uint64(id) << 32) | float bits of its (penalized) logit, in
  // the sampler's order: logit descending, id ascending on ties (-0 ranks as +0).
  // s1 = sum over the row of exp(l - l_max), s2 = sum of exp((l - l_max) / temperature), in
  // double (l_max = the first candidate's logit); the summation order is the backend's.
  uint64_t* out = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // True when backend memory is host memory (CPU): weights are then used in place
  // (from the mmapped file) instead of being uploaded.
  virtual bool host_memory() const = 0;
  // The backend's first failure since it was made ("" while healthy): a CUDA error, memory
  // running out at run time. Ops do not report failures one by one (they are asynchronous);
  // once this is non-empty their outputs are unspecified, and the owner should fail the work
  // and drop the backend (the CUDA context may be unusable).
  virtual std::string failure() const { return {}; }
  // Whether matmul/get_rows handle weights of type t.
  virtual bool supports(DType t) const { return dtype_traits(t).supported; }
  // Device memory now free and in all, for backends whose memory is not host memory (GPUs):
  // the engine fits its KV cache into it (EngineOptions::memory_percent). False: unknown.
  virtual bool memory_info(size_t* /*free_bytes*/, size_t* /*total_bytes*/) const { return false; }
  virtual void* alloc(size_t bytes) = 0;  // 64-byte aligned, zeroed; nullptr when out of memory
  virtual void free(void* p) = 0;
  // Copies between host memory and backend memory.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  // Uploads weight w (host memory, GGUF layout) to dst (backend memory of w.row_stride() *
  // w.rows bytes) and returns the reference to compute with: dst, in the layout this backend
  // reads fastest (kLayoutGguf by default; the CUDA backend splits Q8_0 rows).
  virtual WeightRef upload_weight(const WeightRef& w, void* dst) {
    upload(dst, w.data, w.row_stride() * static_cast<size_t>(w.rows));
    WeightRef d = w;
    d.data = dst;
    return d;
  }
  // Whether upload_weight stores w in a layout of its own. A backend whose memory is host
  // memory computes on the file's bytes where this is false, and on an upload_weight copy
  // where it is true (the CPU backend: Q8_0 / Q4_0 / Q4_K / Q6_K rows interleaved by 16).
  virtual bool relayouts(const WeightRef& /*w*/) const { return false; }

  // y[n, w.rows] = x[n, w.cols] * W^T
  virtual void matmul(const WeightRef& w, const float* x, int64_t n, float* y) = 0;
  // out[i, :] = dequantized row ids[i] of w. REQUIRES: 0 <= ids[i] < w.rows.
  virtual void get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out) = 0;
  // out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight
  virtual void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) = 0;
  // Rotates x[n, n_heads * head_dim] in place; token i is at position pos[i].
  virtual void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p) = 0;
  // out = silu(gate) * up, elementwise over count elements.
  virtual void swiglu(const float* gate, const float* up, int64_t count, float* out) = 0;
  // x += y, elementwise.
  virtual void add(float* x, const float* y, int64_t count) = 0;
  // x[i, :] += bias, for i < n.
  virtual void add_bias(float* x, const float* bias, int64_t n, int64_t dim) = 0;
  // Writes k[i], v[i] (kv_dim floats each) to cache row slots[i] (block * block_size + offset),
  // converted to cache.type (F16: rounded to nearest even).
  virtual void store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim,
                        const KvLayer& cache) = 0;
  // Causal attention of each query token over its sequence's cached keys and values (GQA:
  // head h reads KV head h / (n_heads / n_kv_heads)).
  virtual void attention(const AttentionArgs& a) = 0;
  // Floats of AttentionArgs::workspace that attention() needs to use its split-K path for
  // up to max_tokens tokens with these shapes and max_kv; 0: it has none (no workspace).
  virtual size_t attention_workspace_floats(int64_t /*max_tokens*/, int /*n_heads*/, int /*head_dim*/,
                                            int /*max_kv*/) const {
    return 0;
  }

  // Fused ops (decode): each default issues the separate ops above, in the order written,
  // so a backend overrides one only to save launches. An override computes every output
  // element with the arithmetic of that default sequence on the same backend (same bits).
  //
  // Q, K and V projections of one activation x[n, cols]: q = x Wq^T, k = x Wk^T, v = x Wv^T,
  // then q += bq, k += bk, v += bv for the biases that are non-null (qwen2 has them).
  // REQUIRES: wq.cols == wk.cols == wv.cols; no output aliases x or another output.
  virtual void matmul_qkv(const WeightRef& wq, const WeightRef& wk, const WeightRef& wv, const float* bq,
                          const float* bk, const float* bv, const float* x, int64_t n, float* q, float* k, float* v) {
    matmul(wq, x, n, q);
    matmul(wk, x, n, k);
    matmul(wv, x, n, v);
    if (bq) add_bias(q, bq, n, wq.rows);
    if (bk) add_bias(k, bk, n, wk.rows);
    if (bv) add_bias(v, bv, n, wv.rows);
  }
  // The SwiGLU FFN's first half: out[n, w_gate.rows] = silu(x W_gate^T) * (x W_up^T).
  // up: scratch [n, w_up.rows] for the up projection; what it holds afterwards is
  // unspecified (a fused override may not touch it).
  // REQUIRES: w_gate and w_up of the same shape; out aliases neither x nor up.
  virtual void matmul_swiglu(const WeightRef& w_gate, const WeightRef& w_up, const float* x, int64_t n, float* out,
                             float* up) {
    matmul(w_gate, x, n, out);
    matmul(w_up, x, n, up);
    swiglu(out, up, n * w_gate.rows, out);
  }

  // Sampling support: for each row, applies the penalty entries to the logits in place
  // (penalize_logit, kernels/sampling.h), turns NaN into -inf, and writes the row's m best
  // candidates and (want_sums) the softmax sums to out, as SampleArgs describes. Every
  // pointer is backend memory. The default is the host reference (ref::sample_candidates),
  // so it serves backends whose memory is host memory; the CUDA backend overrides it.
  virtual void sample_candidates(const SampleArgs& a);

  // y[n, w.rows] += x[n, w.cols] * W^T: a projection and the residual add after it. tmp:
  // scratch [n, w.rows] for the product (what it holds afterwards is unspecified).
  // REQUIRES: y aliases neither x nor tmp.
  virtual void matmul_add(const WeightRef& w, const float* x, int64_t n, float* y, float* tmp) {
    matmul(w, x, n, tmp);
    add(y, tmp, n * w.rows);
  }
  // matmul_add, then norm_out[n, w.rows] = rmsnorm(y, norm_weight, eps): a layer's residual
  // add and the next RMSNorm. REQUIRES: as matmul_add; norm_out aliases none of x, y, tmp.
  virtual void matmul_add_rmsnorm(const WeightRef& w, const float* x, int64_t n, float* y, float* tmp,
                                  const float* norm_weight, float eps, float* norm_out) {
    matmul_add(w, x, n, y, tmp);
    rmsnorm(y, norm_weight, n, w.rows, eps, norm_out);
  }
  // RoPE on q [n, n_heads * head_dim] and k [n, n_kv_heads * head_dim] in place (positions
  // pos), then k and v into the cache rows slots (store_kv with kv_dim = n_kv_heads * head_dim).
  virtual void rope_store_kv(float* q, float* k, const float* v, int64_t n, int n_heads, int n_kv_heads, int head_dim,
                             const int32_t* pos, const RopeParams& p, const int32_t* slots, const KvLayer& cache) {
    rope(q, n, n_heads, head_dim, pos, p);
    rope(k, n, n_kv_heads, head_dim, pos, p);
    store_kv(k, v, n, slots, static_cast<int64_t>(n_kv_heads) * head_dim, cache);
  }

  // A decode step's attention input in one op: matmul_qkv (biases included), then
  // rope_store_kv on its outputs (q and k rotated in place, k and v into the cache rows
  // slots). The default issues those two; an override computes every output with their bits.
  // REQUIRES: wq.rows == n_heads * head_dim, wk.rows == wv.rows == n_kv_heads * head_dim, and
  // matmul_qkv's and rope_store_kv's requirements.
  struct RopeStore {
    int n_heads = 0, n_kv_heads = 0, head_dim = 0;
    const int32_t* pos = nullptr;    // [n] positions
    RopeParams rope;
    const int32_t* slots = nullptr;  // [n] cache rows
    KvLayer cache;
  };
  virtual void matmul_qkv_rope_store_kv(const WeightRef& wq, const WeightRef& wk, const WeightRef& wv, const float* bq,
                                        const float* bk, const float* bv, const float* x, int64_t n, float* q, float* k,
                                        float* v, const RopeStore& r) {
    matmul_qkv(wq, wk, wv, bq, bk, bv, x, n, q, k, v);
    rope_store_kv(q, k, v, n, r.n_heads, r.n_kv_heads, r.head_dim, r.pos, r.rope, r.slots, r.cache);
  }

  // A whole decode step of one token in one op (optional; the CUDA backend's persistent
  // kernel): for a batch of one token that wants its logits, the ops Forward issues layer by
  // layer (rmsnorm, matmul_qkv_rope_store_kv, attention, matmul_add_rmsnorm, matmul_swiglu,
  // matmul_add_rmsnorm, ..., the output matmul), every output with their bits. Every pointer
  // and weight is fixed when prepared; the step's inputs (x: the token's embedding, positions,
  // cache slots, block tables) change in backend memory.
  struct FusedDecodeLayer {
    WeightRef wq, wk, wv, wo, w_gate, w_up, w_down;
    const float* bq = nullptr;  // may be null
    const float* bk = nullptr;
    const float* bv = nullptr;
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    KvLayer cache;
  };
  struct FusedDecodeModel {
    std::vector<FusedDecodeLayer> layers;
    const float* output_norm = nullptr;
    WeightRef output;            // [n_vocab, n_embd]
    float eps = 0;
    RopeStore rope;              // heads, pos, RoPE, slots (cache: per layer)
    AttentionArgs att;           // one token: q, out, tokens, heads, scale, max_kv, workspace
    float* x = nullptr;          // [n_embd]: in the embedding, out the last residual
    float* k = nullptr;          // [kv_dim] (q is att.q)
    float* v = nullptr;
    float* ffn = nullptr;        // [n_ff]
    float* logits = nullptr;     // [n_vocab]
  };
  // An id >= 0 for fused_decode(id) when this backend runs m that way, else -1 (the default:
  // issue the ops one by one).
  virtual int fused_decode_prepare(const FusedDecodeModel& /*m*/) { return -1; }
  // The step of prepared model id: logits = the model's output for the token at x.
  virtual void fused_decode(int /*id*/) {}
  // True when the caller should keep a prepared id only after timing one-token steps both
  // ways and finding the fused op bit-identical and faster on this device (Forward does).
  virtual bool fused_decode_probe() const { return false; }
  // Why the last fused_decode_prepare() returned -1 although the op was asked for ("" when it
  // was not asked for, or was prepared): for the operator's log.
  virtual std::string fused_decode_refusal() const { return ""; }
  // What the backend's start-up self-check of its kernels switched off, and why ("" when
  // nothing; the CUDA backend's, kernels/cuda/self_check.cc).
  virtual std::string self_check_note() const { return ""; }

  // Recording and replay of a fixed op sequence (CUDA graphs): for a caller that issues the
  // same ops with the same arguments step after step (a decode step, whose varying inputs
  // live in backend memory). The defaults record nothing, so callers always have the
  // eager path.
  //   replay(key): true when ops recorded under key were enqueued (as if issued again).
  //   record_begin(key): true when the ops issued until record_end() are recorded rather
  //     than run; then record_end() true means the recording is kept under key (call
  //     replay(key) to run it), false that it failed and nothing ran (issue the ops again).
  //   forget_recordings(): drops every recording (a pointer they hold changed).
  // REQUIRES: no upload, download, alloc or free between record_begin and record_end.
  virtual bool replay(uint64_t /*key*/) { return false; }
  virtual bool record_begin(uint64_t /*key*/) { return false; }
  virtual bool record_end() { return false; }
  virtual void forget_recordings() {}
};

struct CpuBackendOptions {
  int threads = 0;  // 0: all cores
  bool interleave_quant = true;  // Q8_0 / Q4_0 / Q4_K / Q6_K matrices interleaved by 16 rows (Backend::relayouts) where
                                 // their kernels are built (AVX2 or AVX-512); false: computed on the file's bytes
};
std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& opts = {});

// The ISA the CPU kernels were built for: "avx512+vnni", "avx512", "avx2+vnni" (AVX-VNNI),
// "avx2" or "scalar".
const char* cpu_kernel_isa();
// Whether this build's CPU backend has the interleaved quantized kernels (x86 with AVX2 at
// least), so that CpuBackendOptions::interleave_quant takes effect.
bool cpu_interleaves_quant();

// What a tool may choose of the CUDA backend's options (kernels/cuda/cuda_backend.h; the
// rest keep their defaults).
struct CudaBackendChoices {
  bool fused_decode = false;       // one-token steps as one persistent kernel (decode_fused.cu)
  bool fused_decode_auto = false;  // with it: only where a probe at load finds it faster (same bits)
  bool proven_only = false;        // only the kernel paths that have run on a GPU (no self-check needed):
                                   // off flash attention 2, padded WMMA rows, split Q8_0, fused decode ops
                                   // and the persistent kernel (CudaBackendOptions)
  // Performance options, off by default until a GPU run times them (each keeps every result's bits):
  bool l2_prefetch = false;        // "l2-prefetch": GEMV launches ask L2 for the next op's weights
  bool gemv_stream = false;        // "stream-gemv": one-token steps on the streamed GEMV (version 5)
  bool half_weight_cache = false;  // "half-weights": F16 copies of quantized matrices kept for the
                                   // cuBLAS path (prefill), while device memory allows (2 bytes a weight)
};
// Parses a comma-separated list of the tuning names above ("" or "none": none of them) into
// *choices; false and *error naming the bad item and the valid names otherwise.
bool parse_cuda_tuning(const std::string& list, CudaBackendChoices* choices, std::string* error);
// The CUDA backend on GPU `device` (kernels/cuda/cuda_backend.h has its options and
// last_error()). Returns nullptr and sets *error (when error is non-null) when the
// build has no CUDA, there is no such device, or CUDA/cuBLAS fails to start.
std::unique_ptr<Backend> make_cuda_backend(int device, std::string* error, const CudaBackendChoices& choices = {});
// True when this build has the CUDA backend and at least one GPU is visible.
bool cuda_backend_available();

}  // namespace ds
