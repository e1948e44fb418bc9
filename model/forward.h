// model/forward.h: one forward pass of the transformer over a batch of tokens that
// may belong to different sequences (prefill chunks and decode tokens mixed).
//
// For each layer, in the order of the math: RMSNorm; Q, K, V projections (+ biases
// for qwen2); RoPE on Q and K; K and V written to each token's KV-cache slot;
// causal attention of each token over its sequence's cache; output projection;
// residual; RMSNorm; SwiGLU FFN; residual. Then the final norm and the output
// projection for the tokens that asked for logits. All scratch is allocated once.
//
// Thread-safety: none; one Forward per engine.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace ds {

struct ForwardToken {
  int32_t token = 0;
  int32_t pos = 0;                              // position in its sequence
  const std::vector<int32_t>* blocks = nullptr;  // its sequence's block table (covers pos)
  bool want_logits = false;
};

class Forward {
 public:
  // max_tokens: the most tokens one run() may get. Uploads weights when the backend
  // does not use host memory (progress as in LoadOptions).
  static Result<std::unique_ptr<Forward>> Create(std::shared_ptr<const Model> model, Backend& backend, KvCache& kv,
                                                 int max_tokens, const std::function<void(size_t, size_t)>& progress = {});
  ~Forward();

  // Runs the tokens; logits (host memory, [n_want, n_vocab] in token order) for those
  // with want_logits. REQUIRES: tokens.size() <= max_tokens, every block table covers pos.
  Status run(const std::vector<ForwardToken>& tokens, std::vector<float>* logits);

  int max_tokens() const { return max_tokens_; }

 private:
  Forward(std::shared_ptr<const Model> m, Backend& b, KvCache& kv, int max_tokens)
      : model_(std::move(m)), be_(b), kv_(kv), max_tokens_(max_tokens) {}
  Status Init(const std::function<void(size_t, size_t)>& progress);
  float* buffer(size_t floats);
  const float* vec(const std::vector<float>& host);

  struct Layer {
    WeightRef wq, wk, wv, wo, w_gate, w_up, w_down;
    const float *attn_norm, *ffn_norm, *bq, *bk, *bv;
  };

  std::shared_ptr<const Model> model_;
  Backend& be_;
  KvCache& kv_;
  int max_tokens_;
  std::vector<void*> owned_;  // backend allocations to free
  std::vector<Layer> layers_;
  WeightRef tok_embd_, output_;
  const float* output_norm_ = nullptr;

  // Activations, [max_tokens, width] each (backend memory).
  float *x_, *xn_, *q_, *k_, *v_, *att_, *o_, *gate_, *up_, *logits_;
  // Per-run metadata (backend memory) and its host staging.
  int32_t *ids_, *pos_, *slots_, *tables_, *out_rows_;
  AttentionToken* att_tokens_;
  std::vector<int32_t> h_ids_, h_pos_, h_slots_, h_tables_, h_out_rows_;
  std::vector<AttentionToken> h_att_;
  size_t table_capacity_ = 0;
};

}  // namespace ds
