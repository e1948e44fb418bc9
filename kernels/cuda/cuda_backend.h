// kernels/cuda/cuda_backend.h: the CUDA implementation of Backend: one GPU, one stream,
// cuBLAS for batched matmuls. Plain C++ (no CUDA headers), so code built without nvcc may
// include it; it is only linked where DS_HAVE_CUDA is defined.
//
// Ordering: each op is enqueued on the backend's one stream and the call returns at once.
// Every pointer an op takes is device memory on that stream, so later ops see its output;
// download() waits for the stream, so whatever the caller can observe is complete, as
// backend.h requires. upload() of at most kStagedUploadBytes copies the host data into a
// pinned staging buffer and returns without waiting (the host buffer may be reused at
// once; the staging space is recycled at the next wait); larger uploads wait.
// synchronize() waits explicitly; options.sync_each_op waits after every op.
//
// Recording (backend.h's replay/record_begin/record_end): stream capture into a CUDA graph,
// instantiated once per key and launched by replay(). An op that cannot be captured (the
// cuBLAS path, a wait) fails the recording; that key is then never recorded again. Off
// under sync_each_op or when options.record_graphs is false.
//
// Errors: no CUDA or cuBLAS failure aborts. The first failure since the last clear_error()
// is kept as a message naming the op, the call, CUDA's error name and text, and the
// source file:line (plus a HINT where the likely fix is known); ok() is then false. Ops
// keep running after a failure (their output is then unspecified). After a "sticky" error
// (an illegal address in a kernel, ...) the CUDA context is unusable: the owner should
// report the failure and drop this backend. Invalid arguments (unsupported dtype,
// head_dim > 1024, ...) are reported the same way and the op does nothing.
// alloc() returns nullptr when out of memory without recording an error.
//
// Determinism: every kernel computes each output element with the same arithmetic
// whatever n, except matmul with n > gemv_limit(type) (options.gemv_max_batch), which goes to
// the tensor-core small-batch kernel (n <= 32; its arithmetic depends on the matrix shape only,
// so every n in its range gives the same bits) or to cuBLAS (its per-element arithmetic
// depends on the shape);
// set options.batch_invariant to run the GEMV kernel for every n
// (bit-identical rows whatever the batch, slower prefill).
//
// Thread-safety: as Backend: one caller at a time. Each call makes its device current.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "kernels/backend.h"

namespace ds::cuda {
struct L2Prefetch;  // kernels/cuda/ops.cuh
}  // namespace ds::cuda

namespace ds {

struct CudaBackendOptions {
  int device = 0;
  bool sync_each_op = false;    // wait for the stream after every op: pins asynchronous faults to their op
  bool batch_invariant = false; // matmul: GEMV kernel for every n (chunks of 8 rows) instead of cuBLAS for n > gemv_max_batch
  int gemv_max_batch = 0;       // matmul: GEMV kernel (chunks of 8 rows) for n <= this, the tensor-core
                                // kernel or cuBLAS above. 0: per weight type (gemv_limit), from the
                                // H200 run of 2026-11-27 (5632x2048): F16/BF16 2 (cuBLAS at n = 4
                                // 13 us vs the GEMV's 23), Q8_0/Q4_0 4 (tensor-core kernel at n = 8
                                // 25.5 us vs 41; at n = 4 25 vs 23), others 8
  bool record_graphs = true;    // record_begin() captures CUDA graphs (false: always eager)
  bool gemm_half = true;        // cuBLAS path: F16 operands (BF16 for BF16 weights; F32 weights stay F32)
                                // on the tensor cores with F32 accumulation; activations are rounded to
                                // F16 (~5e-4 relative; BF16 ~4e-3). false: F32 SGEMM after dequantizing
  bool allow_tf32 = false;      // cuBLAS F32 path: TF32 tensor cores (faster; ~1e-3 relative error)
  int gemv_version = 3;         // see kernels/cuda/gemv_kernels.cuh: 1 = simple, 2 = warp per row, 3 = live
  bool pdl = true;               // GEMV v3 launches (plain and fused) with programmatic dependent launch
                                // (sm_90+): their weight loads start while the previous kernel ends
  bool profile_ops = false;     // time every op with CUDA events (each op then waits for its kernels, and
                                // nothing is recorded as a graph): op_profile() has the breakdown
  bool tc_gemm = true;          // matmul / matmul_add with gemv_limit < n <= 32 and Q8_0 or Q4_0 weights:
                                // the tensor-core small-batch kernel (gemm_tc.cu; weights read once, no
                                // F16 copy of them) instead of cuBLAS (H200, 5632x2048 q8_0: 1.33x
                                // cuBLAS at n = 16, 1.12x at 32; engine b32 7774 vs 6148 tok/s)
  bool tc_gemm_every_type = false;  // the tensor-core kernel for F16 and Q4_K too (checks, benchmarks:
                                // slower than cuBLAS there, F16 0.33-0.42x, Q4_K 0.91-0.99x)
  bool tc_attention = true;     // attention over prefill tiles (steps that are mostly prefill, head_dim 64
                                // or 128): the tensor-core flash-attention kernel (attention.cu,
                                // attention_tc; F16 operands) instead of the CUDA-core tiled kernel
                                // (H200, bench-1b, 512 tokens: 690 us a layer; this kernel 138 us).
                                // Off under batch_invariant.
  bool tc_attention_padded = true;  // its shared-memory rows padded against bank conflicts in the WMMA
                                // loads (not yet timed on a GPU; false: the layout the H200 run timed)
  bool tc_attention_mma = true; // with an F16 KV cache, the flash-attention-2 kernel on mma.sync
                                // (S, P, O in registers; attention.cu attention_fa) instead of the
                                // WMMA one (not yet run on a GPU; false: the kernel the H200 timed)
  bool q8_0_split = true;       // upload_weight stores Q8_0 matrices split (kLayoutQ8_0Split: quants
                                // then scales a row), so that the GEMV loads 8 quants at a time
                                // instead of four 2-byte loads and a scale load per 8 (same bits
                                // from every kernel; false: the GGUF blocks; not yet timed on a GPU)
  bool int8_gemv = false;       // matmul on the GEMV path, Q8_0 weights: x quantized to int8 per 32 values (as the
                                // CPU's VNNI path) and int8 dot products (gemv_i8.cu) instead of gemv v3; the
                                // fused decode ops keep v3. Not yet timed on a GPU: off (gpu_kernel_check times it)
  bool fuse_decode = true;      // matmul_qkv / matmul_swiglu / matmul_add: one GEMV v3 launch each where
                                // the GEMV path applies (Q/K/V and gate/up: one tensor-core launch each
                                // where tc_gemm applies); rope_store_kv: one launch (false: the
                                // separate ops, Backend's defaults)
  bool fused_decode = false;    // fused_decode_prepare: a one-token decode step as one persistent
                                // cooperative kernel (decode_fused.cu; same bits as the per-op path;
                                // not yet run on a GPU, so off by default)
  bool fused_decode_auto = false;  // with fused_decode: Forward keeps it only where its probe at
                                   // Init finds the same logits and faster steps (fused_decode_probe)
  bool time_replays = false;     // replay(): each graph replay's GPU time (CUDA events), summed in
                                // replay_ms() (benchmarks: a step's GPU time against its wall time)
  bool gemv_stream = false;     // one-token steps (n = 1) on GEMV v3: matmul, matmul_add(_rmsnorm),
                                // matmul_swiglu and matmul_qkv_rope_store_kv on its streamed form (version 5: a grid of what the device
                                // holds, each warp's next rows' loads in flight while it computes; the same
                                // bits). Not yet timed on a GPU: off
  bool l2_prefetch = false;     // the GEMV and tensor-core GEMM launches ask L2 for the weights of the op that
                                // followed theirs last time (the order of matmul calls, learned as they
                                // come: a decode step's is the same every step), so that HBM streams the
                                // next matrix while this one computes (ops.cuh: L2Prefetch; sm_90, the
                                // same bits either way). Not yet timed on a GPU: off
  bool half_weight_cache = false;  // the F16/BF16 cuBLAS path (prefill, large batches): keep each quantized
                                // matrix's F16 dequantization after its first use instead of dequantizing it
                                // again every call (the same bits, one GEMM a matrix), while free device memory
                                // stays above max(2 GiB, 10% of the device); 2 more bytes a weight. Off: memory
                                // is the KV cache's (ds-bench / the GPU check time it)
  int fused_decode_blocks_per_sm = 4;  // its blocks per SM (at most what fits; above 4, a build capped at 64 registers a thread)
  bool fused_decode_prefetch = true;   // its L2 prefetch of the next phase's weights at each barrier
  bool self_check = true;       // create() runs the paths above that are on but have not run on a GPU yet
                                // (tc_attention_mma, tc_attention_padded, q8_0_split, fuse_decode) once
                                // per device and process against the paths they replace, and switches
                                // off any that disagrees or fails with an error the device survives
                                // (self_check.cc; self_check_note() says which)
  int self_check_break_for_testing = 0;  // bits 1 padded WMMA, 2 FA2, 4 Q8_0 split, 8 fused decode ops: the
                                // self-check perturbs that path's result; 16, 32, 64, 128: that path fails
                                // with an error (non-sticky; with 256 the device then looks lost and
                                // create() refuses it): checks of its verdicts
};

class CudaBackend final : public Backend {
 public:
  // nullptr (and *error set) when CUDA has no such device or fails to start.
  static std::unique_ptr<CudaBackend> create(const CudaBackendOptions& options, std::string* error);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const override { return "cuda"; }
  std::string failure() const override { return error_; }
  bool host_memory() const override { return false; }
  bool memory_info(size_t* free_bytes, size_t* total_bytes) const override;
  // The CUDA kernels cover f32, f16, bf16, q8_0, q4_0, q4_k and q6_k (every type the CPU
  // backend computes with: Q4_K_M / Q6_K files run on the GPU too).
  bool supports(DType t) const override {
    return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kQ8_0 || t == DType::kQ4_0 ||
           t == DType::kQ4_K || t == DType::kQ6_K;
  }
  void* alloc(size_t bytes) override;  // cudaMalloc (256-byte aligned), zeroed on the stream
  void free(void* p) override;         // waits for the stream first; nullptr is a no-op
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  // Q8_0 in kLayoutQ8_0Split under options.q8_0_split (rows rewritten on the host in slices,
  // then uploaded); every other weight as is.
  WeightRef upload_weight(const WeightRef& w, void* dst) override;

  void matmul(const WeightRef& w, const float* x, int64_t n, float* y) override;
  void get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out) override;
  void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) override;
  void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p) override;
  void swiglu(const float* gate, const float* up, int64_t count, float* out) override;
  void add(float* x, const float* y, int64_t count) override;
  void add_bias(float* x, const float* bias, int64_t n, int64_t dim) override;
  void store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim,
                const KvLayer& cache) override;
  // Split-K (kernels/cuda/attention.cu, version 2) when a.max_kv > 0 and a.workspace holds
  // attention_workspace_floats(a.n_tokens, ...) floats; else the one-pass version 1; the
  // tensor-core prefill kernel where tc_attention_applies(a).
  void attention(const AttentionArgs& a) override;
  size_t attention_workspace_floats(int64_t max_tokens, int n_heads, int head_dim, int max_kv) const override;
  // One launch each when the GEMV path would run (n <= gemv_limit or batch_invariant,
  // gemv_version 3, fuse_decode, the matrices of one type and shape); else Backend's default.
  void matmul_qkv(const WeightRef& wq, const WeightRef& wk, const WeightRef& wv, const float* bq, const float* bk,
                  const float* bv, const float* x, int64_t n, float* q, float* k, float* v) override;
  void matmul_swiglu(const WeightRef& w_gate, const WeightRef& w_up, const float* x, int64_t n, float* out,
                     float* up) override;
  // Likewise one GEMV v3 launch with the residual add; on the tensor-core kernel and cuBLAS
  // paths the add happens in the GEMM too (cuBLAS: beta = 1); else Backend's default.
  void matmul_add(const WeightRef& w, const float* x, int64_t n, float* y, float* tmp) override;
  // One launch (gemv_add with its norm tail) where matmul_add's fused GEMV applies and n <= 8;
  // else Backend's default.
  void matmul_add_rmsnorm(const WeightRef& w, const float* x, int64_t n, float* y, float* tmp, const float* norm_weight,
                          float eps, float* norm_out) override;
  // One launch (gemv_qkv_rope) where matmul_qkv's fused GEMV applies and the shapes are a
  // model's (q rows n_heads * head_dim, k and v rows n_kv_heads * head_dim); else Backend's
  // default (matmul_qkv, rope_store_kv).
  void matmul_qkv_rope_store_kv(const WeightRef& wq, const WeightRef& wk, const WeightRef& wv, const float* bq,
                                const float* bk, const float* bv, const float* x, int64_t n, float* q, float* k,
                                float* v, const RopeStore& r) override;
  // One launch under fuse_decode (any n; else Backend's default).
  void rope_store_kv(float* q, float* k, const float* v, int64_t n, int n_heads, int n_kv_heads, int head_dim,
                     const int32_t* pos, const RopeParams& p, const int32_t* slots, const KvLayer& cache) override;
  void sample_candidates(const SampleArgs& a) override;  // kernels/cuda/sample.cu
  // Under options.fused_decode, where the per-op path at n = 1 is GEMV v3 with the fused
  // launches and split-K attention, every matrix of one type (F32, F16, Q8_0) and head_dim <=
  // 128, and the device launches cooperatively; else -1.
  int fused_decode_prepare(const FusedDecodeModel& m) override;
  void fused_decode(int id) override;
  bool fused_decode_probe() const override { return options_.fused_decode && options_.fused_decode_auto; }
  std::string fused_decode_refusal() const override;
  // What create()'s self-check switched off and why ("" when nothing: every path it ran agreed).
  std::string self_check_note() const override { return self_check_note_; }
  bool replay(uint64_t key) override;
  bool record_begin(uint64_t key) override;
  bool record_end() override;
  void forget_recordings() override;

  static constexpr size_t kStagedUploadBytes = size_t{64} << 10;

  // ---- CUDA-specific ----
  bool ok() const { return error_.empty(); }
  // The first failure since clear_error() ("" when none).
  const std::string& last_error() const { return error_; }
  void clear_error() { error_.clear(); }
  // Waits for all queued work; false (and last_error set) when it failed.
  bool synchronize();
  // The cudaStream_t every op runs on (for timing with events).
  void* stream() const;
  const CudaBackendOptions& options() const { return options_; }
  void set_gemv_version(int v) { options_.gemv_version = v; }
  void set_int8_gemv(bool on) { options_.int8_gemv = on; }
  void set_batch_invariant(bool on) { options_.batch_invariant = on; }
  void set_fuse_decode(bool on) { options_.fuse_decode = on; }
  void set_gemm_half(bool on) { options_.gemm_half = on; }
  void set_pdl(bool on) { options_.pdl = on; }
  void set_tc_gemm(bool on) { options_.tc_gemm = on; }
  void set_tc_gemm_every_type(bool on) { options_.tc_gemm_every_type = on; }
  void set_tc_attention(bool on) { options_.tc_attention = on; }
  void set_tc_attention_padded(bool on) { options_.tc_attention_padded = on; }
  void set_tc_attention_mma(bool on) { options_.tc_attention_mma = on; }
  void set_q8_0_split(bool on) { options_.q8_0_split = on; }
  void set_l2_prefetch(bool on) { options_.l2_prefetch = on; }  // for graphs recorded after
  void set_gemv_stream(bool on) { options_.gemv_stream = on; }  // likewise
  void set_half_weight_cache(bool on) { options_.half_weight_cache = on; }
  // Bytes of device memory the F16 copies of options.half_weight_cache hold.
  size_t half_weight_cache_bytes() const;
  void set_fused_decode(bool on) { options_.fused_decode = on; }  // for models prepared after
  void set_fused_decode_prefetch(bool on) { options_.fused_decode_prefetch = on; }  // likewise
  void set_fused_decode_blocks_per_sm(int n) { options_.fused_decode_blocks_per_sm = n; }  // likewise
  // The blocks of prepared model id's launch (0: no such model).
  int fused_decode_blocks(int id) const;
  // options.l2_prefetch's learned order: the (address, bytes) ranges the op whose first matrix
  // starts at first_weight asks L2 for (what followed it last time); empty when none (tests).
  std::vector<std::pair<const void*, uint64_t>> l2_prefetch_after(const void* first_weight) const;
  // Whether attention(a) runs the tensor-core prefill kernel (options.tc_attention).
  bool tc_attention_applies(const AttentionArgs& a) const;
  void set_gemv_max_batch(int n) { options_.gemv_max_batch = n; }
  // The largest n matmul gives the GEMV kernel for weights of type t (options.gemv_max_batch,
  // or the type's measured threshold when that is 0); batch_invariant: every n.
  int gemv_limit(DType t) const;
  // Whether matmul(w, x, n, y) runs the tensor-core small-batch kernel (options.tc_gemm).
  bool tc_gemm_applies(const WeightRef& w, int64_t n) const;
  // "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"
  const std::string& device_description() const { return device_description_; }
  size_t scratch_bytes() const { return scratch_bytes_; }
  // Under options.profile_ops: calls and GPU milliseconds per op name since the last reset
  // (an op that falls back to Backend's default counts as the ops it issues).
  struct OpTime {
    int64_t calls = 0;
    double ms = 0;
  };
  const std::map<std::string, OpTime>& op_profile() const { return profile_; }
  void reset_op_profile() { profile_.clear(); }
  // Recordings kept / replays done so far (tests and benchmarks).
  size_t recordings() const;
  int64_t replays() const { return replays_; }
  // Under options.time_replays: GPU milliseconds of the replays so far (each counted at the
  // next wait for the stream, which every decode step's token download is).
  double replay_ms() const { return replay_ms_; }

 private:
  struct Impl;
  struct L2Op;  // an op's place in the learned order of weight reads (options.l2_prefetch)
  explicit CudaBackend(const CudaBackendOptions& options);

  bool start();                 // creates the stream and the cuBLAS handle
  // Runs the unproven default paths against the ones they replace (self_check.cc), switches off
  // those that disagree; returns the note ("" when all agree), or when a kernel failed (ok()
  // false) the stage it failed in.
  std::string self_check();
  // create()'s step: self_check() once per device, process and option set, its verdict applied
  // to this backend; "" or why the device is refused (a kernel failed during it).
  std::string apply_self_check();
  bool begin(const char* op);   // makes the device current
  void end(const char* op);     // sync_each_op
  bool fail(const char* op, const std::string& what, const char* file, int line);
  bool check_cuda(int code, const char* op, const char* call, const char* file, int line);
  bool check_cublas(int status, const char* op, const char* call, const char* file, int line);
  float* scratch(size_t bytes, const char* op);
  bool fused_gemv_applies(const WeightRef& a, const WeightRef& b, int64_t n) const;
  // accumulate: y += x W^T (cuBLAS's beta = 1: matmul_add's residual add in the GEMM) instead of y =.
  void matmul_cublas(const WeightRef& w, size_t row_stride, const float* x, int64_t n, float* y,
                     bool accumulate = false);
  // The F16/BF16-operand cuBLAS path for each (W, y) of parts (1..3 matrices that multiply the
  // same x: one type class and column count): x rounded to F16/BF16 once for all of them, then
  // per matrix its dequantization (quantized types) and GEMM; the bits of one call per matrix.
  void matmul_cublas_half(const char* op, std::initializer_list<std::pair<const WeightRef*, float*>> parts,
                          const float* x, int64_t n, bool accumulate);
  // Whether matmul() takes the F16/BF16 cuBLAS path for every one of ws at n, and they can share
  // x's rounding there (fuse_decode: matmul_qkv's three, matmul_swiglu's two).
  bool cublas_half_shares_x(std::initializer_list<const WeightRef*> ws, int64_t n) const;
  // y (+)= x W^T for each (W, y) of parts (1..3 matrices of one type and column count) in one
  // gemm_tc call (REQUIRES: tc_gemm_applies to each); op names the calling op.
  void matmul_tc(const char* op, std::initializer_list<std::pair<const WeightRef*, float*>> parts, const float* x,
                 int64_t n, bool add, const cuda::L2Prefetch* l2 = nullptr);
  // Whether a and b can share one gemm_tc launch at n (fuse_decode, both tc_gemm_applies, same type and columns).
  bool tc_gemm_fuses(const WeightRef& a, const WeightRef& b, int64_t n) const;
  // options.half_weight_cache: w's F16 dequantization (made on first use when memory allows;
  // never while capturing), or null (the caller dequantizes into scratch as before).
  const uint16_t* half_weight(const WeightRef& w, const char* op);
  // Drops the F16 copies of the matrices that overlap [p, p + bytes) (their bytes changed or went).
  void drop_half_copies(const void* p, size_t bytes);
  bool wait(const char* op);    // cudaStreamSynchronize; recycles the upload staging space
  // True (the recording failed) when capturing; for_now: only because a buffer must grow
  // first (the key may be recorded again after the eager run grew it).
  bool capture_refuses(const char* op, bool for_now = false);
  static constexpr int kRecordRetries = 2;

  CudaBackendOptions options_;
  std::unique_ptr<Impl> impl_;
  std::string error_;
  std::string device_description_;
  std::string self_check_note_;
  void* scratch_ = nullptr;
  unsigned* norm_counter_ = nullptr;  // gemv_add's norm tail arrival counter (0 between launches)
  size_t scratch_bytes_ = 0;
  bool capturing_ = false;
  bool capture_failed_ = false;
  bool capture_retry_ = false, capture_final_ = false;  // why it failed (capture_refuses)
  uint64_t capture_key_ = 0;
  int64_t replays_ = 0;
  double replay_ms_ = 0;
  int l2_depth_ = 0;  // L2Ops open (the ops Backend's defaults issue run inside their caller's)
  std::map<std::string, OpTime> profile_;
};

}  // namespace ds
