// model/forward.h: one forward pass of the transformer over a batch of tokens that
// may belong to different sequences (prefill chunks and decode tokens mixed).
//
// For each layer, in the order of the math: RMSNorm; Q, K, V projections (+ biases
// for qwen2); RoPE on Q and K; K and V written to each token's KV-cache slot;
// causal attention of each token over its sequence's cache; output projection;
// residual; RMSNorm; SwiGLU FFN; residual. Then the final norm and the output
// projection for the tokens that asked for logits. All scratch is allocated once.
// The Q/K/V projections, RoPE + the KV-cache store, the FFN's gate/up + SwiGLU and each
// projection + residual add go through Backend's fused ops (matmul_qkv, rope_store_kv,
// matmul_swiglu, matmul_add): the same ops on the CPU, one launch each for a CUDA decode
// (8 launches a layer instead of 12).
//
// Tensor parallelism (model/tensor_parallel.h): a Forward made by CreateShard runs one
// rank's slice of every layer; after the attention output and the FFN down projections
// it all-reduces the partial sums through the rank's Communicator, and it gathers the
// vocab-parallel logits, so every rank returns the same logits as an unsharded Forward
// (up to float rounding: the sums are added in another order).
//
// Thread-safety: none; one Forward per engine (per rank).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/backend_sampler.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace ds {

struct ForwardToken {
  int32_t token = 0;
  int32_t pos = 0;                              // position in its sequence
  const std::vector<int32_t>* blocks = nullptr;  // its sequence's block table (covers pos)
  bool want_logits = false;
};

class Communicator;
struct ModelShard;

class Forward {
 public:
  // max_tokens: the most tokens one run() may get. Uploads weights when the backend
  // does not use host memory (progress as in LoadOptions).
  // max_seq_positions: the most positions one sequence holds (the engine's n_ctx); 0: the
  // KV cache's total positions. It only sizes the attention's split-K chunks and workspace
  // (AttentionArgs::max_kv): a longer sequence still gets correct, just slower, attention.
  static Result<std::unique_ptr<Forward>> Create(std::shared_ptr<const Model> model, Backend& backend, KvCache& kv,
                                                 int max_tokens, const std::function<void(size_t, size_t)>& progress = {},
                                                 int max_seq_positions = 0);
  // Rank comm.rank() of a tensor-parallel group of comm.size() ranks over shard (made
  // by shard_model for that rank and size). comm works on backend's memory; kv holds
  // the rank's KV heads (kv_dim == shard->config.kv_dim()). Every rank of the group must
  // make the same calls to run()/run_sampled() with the same tokens (the collectives pair
  // up); a failed collective fails the call with kInternal.
  static Result<std::unique_ptr<Forward>> CreateShard(std::shared_ptr<const ModelShard> shard, Backend& backend,
                                                      Communicator& comm, KvCache& kv, int max_tokens,
                                                      const std::function<void(size_t, size_t)>& progress = {},
                                                      int max_seq_positions = 0);
  ~Forward();

  // Runs the tokens; logits (host memory, [n_want, n_vocab] in token order) for those
  // with want_logits. REQUIRES: tokens.size() <= max_tokens, every block table covers pos.
  Status run(const std::vector<ForwardToken>& tokens, std::vector<float>* logits);
  // As run(), then samples one token per token that wants logits (step: its rows, in
  // order; model/backend_sampler.h) where the logits are: Backend::sample_candidates, only
  // the candidates downloaded. Sharded, each rank samples its vocabulary slice and every
  // rank gathers the slices' candidates (2 + m words a row and rank instead of the row's
  // logits) and merges them, so every rank picks the same tokens. picked: the tokens, those
  // of host sampling (sample_token) from run()'s logits; *fallbacks: how many rows the
  // candidates could not tell, sampled from the whole (gathered) row.
  Status run_sampled(const std::vector<ForwardToken>& tokens, const SampleStep& step, std::vector<int32_t>* picked,
                     int* fallbacks);

  int max_tokens() const { return max_tokens_; }
  // Whether one-token steps run as the backend's one fused op (Backend::fused_decode_prepare).
  bool fused_decode() const { return fused_decode_id_ >= 0; }
  // Where the backend asked for it (Backend::fused_decode_probe), Init timed one-token steps
  // both ways on scratch cache blocks and kept the fused op only where it gave the per-op
  // path's logits bit for bit and was faster (median of kProbeSteps - kProbeWarmup steps).
  struct FusedDecodeProbe {
    bool ran = false;
    bool same = true;        // every step's logits equal bit for bit
    double per_op_us = 0;    // median host time of a step (upload, launch(es), logits download)
    double fused_us = 0;
    std::string why;         // when the fused op was dropped: the reason
  };
  const FusedDecodeProbe& fused_decode_probe() const { return probe_; }
  // Why the backend's fused decode op, asked for, was not prepared ("" otherwise).
  const std::string& fused_decode_refusal() const { return fused_refusal_; }
  static constexpr int kProbeSteps = 10, kProbeWarmup = 2;
  static constexpr double kProbeMinGain = 0.03;  // the fused op must be this much faster

 private:
  Forward(std::shared_ptr<const void> owner, const ModelConfig& config, const ModelWeights& weights, Backend& b,
          KvCache& kv, int max_tokens)
      : owner_(std::move(owner)), config_(config), weights_(weights), be_(b), kv_(kv), max_tokens_(max_tokens) {}
  Status Init(const std::function<void(size_t, size_t)>& progress);
  // Runs the layers and this rank's output rows: logits_ = [n_out, output_.rows] for the
  // *n_out tokens that want logits.
  Status forward_local(const std::vector<ForwardToken>& tokens, int64_t* n_out);
  // logits_ of the n_out tokens (gathered over the ranks when sharded) -> host [n_out, n_vocab].
  Status gather_logits(int64_t n_out, std::vector<float>* logits);
  // Enqueues the layers and the logits of n tokens (n_out of them want logits) on metadata
  // already uploaded; a decode step's sequence is recorded and replayed (Backend::replay).
  Status enqueue_layers(int64_t n, int64_t n_out);
  void prepare_fused_decode();
  Status probe_fused_decode();
  AttentionArgs attention_args(int64_t n) const;  // the layers' attention() arguments for n tokens
  Status comm_failed(const char* what) const;
  float* buffer(size_t floats);
  const float* vec(const std::vector<float>& host);

  struct Layer {
    WeightRef wq, wk, wv, wo, w_gate, w_up, w_down;
    const float *attn_norm, *ffn_norm, *bq, *bk, *bv;
  };

  std::shared_ptr<const void> owner_;  // the Model or ModelShard that config_ and weights_ live in
  const ModelConfig& config_;          // for a shard: the rank's heads and FFN rows
  const ModelWeights& weights_;
  Backend& be_;
  KvCache& kv_;
  int max_tokens_;
  int max_kv_ = 0;                  // AttentionArgs::max_kv: max_seq_positions or the cache's positions
  float* att_workspace_ = nullptr;  // [att_workspace_floats_] for the split-K attention; null when none
  size_t att_workspace_floats_ = 0;
  std::vector<void*> owned_;  // backend allocations to free
  std::vector<Layer> layers_;
  WeightRef tok_embd_, output_;  // output_: [n_vocab, n_embd], or this rank's vocab rows
  const float* output_norm_ = nullptr;

  // Tensor parallelism (comm_ null when unsharded). Rank r's logits are the vocab rows
  // [vocab_begin_[r], vocab_begin_[r + 1]); each rank's [n_out, rows] block travels in a
  // slot of vocab_stride_ * n_out floats.
  Communicator* comm_ = nullptr;
  std::vector<int64_t> vocab_begin_;
  int64_t vocab_stride_ = 0;
  float* gathered_ = nullptr;  // [n_ranks, max_tokens * vocab_stride_]
  std::vector<float> h_gathered_;
  std::unique_ptr<BackendSampler> sampler_;  // run_sampled's buffers, made on first use

  // Activations, [max_tokens, width] each (backend memory).
  float *x_, *xn_, *q_, *k_, *v_, *att_, *o_, *gate_, *up_, *logits_;
  // Per-run metadata (backend memory) and its host staging.
  int32_t *ids_, *pos_, *slots_, *tables_, *out_rows_;
  // Attention tiles of the run (AttentionArgs::tiles): [n_tiles_ + 1]; n_tiles_ 0 when every
  // token is alone in its tile (decode), which leaves the per-token kernels.
  int32_t* tiles_ = nullptr;
  int64_t n_tiles_ = 0;
  std::vector<int32_t> h_tiles_;
  AttentionToken* att_tokens_;
  std::vector<int32_t> h_ids_, h_pos_, h_slots_, h_tables_, h_out_rows_;
  std::vector<AttentionToken> h_att_;
  size_t table_capacity_ = 0;
  int fused_decode_id_ = -1;  // Backend::fused_decode_prepare's id for this Forward (-1: none)
  FusedDecodeProbe probe_;
  std::string fused_refusal_;
  uint64_t record_id_ = 0;  // this Forward's part of its recording keys (unique per process)
};

}  // namespace ds
