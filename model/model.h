// model/model.h: a transformer model loaded from GGUF: hyper-parameters read from
// metadata, every weight tensor located and shape-checked, and the tokenizer.
//
// Architectures: "llama" (GQA, RoPE with adjacent pairs, optional tied output) and
// "qwen2" (as llama plus Q/K/V biases, NeoX-style RoPE). Weights stay in the mmapped
// file; 1-D tensors (norms, biases) are converted to owned F32 arrays.
//
// Thread-safety: immutable after Load(); share one Model between engines.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/status.h"
#include "model/tokenizer.h"

namespace ds {

enum class Arch { kLlama, kQwen2 };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string arch_name;  // "llama" / "qwen2"
  std::string name;       // general.name, or the file name
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;
  RopeParams rope;
  bool tied_output = false;
  bool qkv_bias = false;
  int kv_dim() const { return n_head_kv * head_dim; }
};

struct LayerWeights {
  WeightRef wq, wk, wv, wo;        // [n_head*hd, n_embd], [kv_dim, n_embd] x2, [n_embd, n_head*hd]
  WeightRef w_gate, w_up, w_down;  // [n_ff, n_embd] x2, [n_embd, n_ff]
  std::vector<float> attn_norm, ffn_norm;  // [n_embd]
  std::vector<float> bq, bk, bv;           // qwen2 only: [n_head*hd], [kv_dim], [kv_dim]
};

struct ModelWeights {
  WeightRef tok_embd;  // [n_vocab, n_embd]
  WeightRef output;    // [n_vocab, n_embd] (== tok_embd when tied)
  std::vector<float> output_norm;  // [n_embd]
  std::vector<LayerWeights> layers;
  size_t bytes = 0;  // total bytes of the 2-D weights
  // What a one-token decode step reads of them: all but the embedding table's other rows (all
  // of it when tied: the table is the output projection too).
  size_t decode_bytes() const {
    return output.data == tok_embd.data ? bytes : bytes - tok_embd.row_stride() * (tok_embd.rows - 1);
  }
};

struct LoadOptions {
  // Called while the weights are paged in: (bytes done, bytes total).
  std::function<void(size_t, size_t)> progress;
  bool vocab_only = false;  // tokenizer only (vocabulary GGUFs have no weights)
};

class Model {
 public:
  static Result<std::shared_ptr<Model>> Load(const std::string& path, const LoadOptions& opts = {});
  // Builds a model from an already opened GGUF (e.g. GgufFile::FromMemory, for fuzzing).
  static Result<std::shared_ptr<Model>> FromGguf(std::unique_ptr<GgufFile> file, const LoadOptions& opts = {});

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const GgufFile& gguf() const { return *file_; }
  // The dominant weight type ("q8_0", "f16", ... or "mixed").
  std::string weight_type_name() const;

 private:
  Model() = default;
  Status ReadConfig();
  Status BindWeights();

  std::unique_ptr<GgufFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace ds
