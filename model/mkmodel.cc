#include "model/mkmodel.h"

#include <cmath>

#include "model/gguf_writer.h"

namespace ds {
namespace {

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Deterministic uniform floats in [-scale, scale) for (seed, stream).
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream) : s_(mix(seed ^ mix(stream))) {}
  float next(float scale) {
    s_ = mix(s_);
    return (static_cast<float>(s_ >> 40) * 0x1.0p-24f * 2.0f - 1.0f) * scale;
  }

 private:
  uint64_t s_;
};

// A SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte tokens, single characters,
// then pairs and triples of characters, scored so that longer pieces merge later.
void make_vocab(int n, std::vector<std::string>* tokens, std::vector<float>* scores, std::vector<int32_t>* types) {
  tokens->push_back("<unk>");
  types->push_back(2);
  tokens->push_back("<s>");
  types->push_back(3);
  tokens->push_back("</s>");
  types->push_back(3);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    tokens->push_back(name);
    types->push_back(6);
  }
  std::vector<std::string> chars = {"\xe2\x96\x81"};  // U+2581, the SentencePiece space
  for (char c = 'a'; c <= 'z'; ++c) chars.emplace_back(1, c);
  for (char c = 'A'; c <= 'Z'; ++c) chars.emplace_back(1, c);
  for (char c = '0'; c <= '9'; ++c) chars.emplace_back(1, c);
  for (const char* p : {".", ",", "!", "?", "'", "\"", "-", ":", ";", "(", ")"}) chars.emplace_back(p);
  std::vector<std::string> pieces = chars;
  for (size_t i = 0; i < chars.size() && pieces.size() < static_cast<size_t>(n); ++i)
    for (size_t j = 0; j < chars.size(); ++j) pieces.push_back(chars[i] + chars[j]);
  for (size_t i = 0; pieces.size() < static_cast<size_t>(n) * 2 && i < chars.size(); ++i)
    for (size_t j = 0; j < chars.size(); ++j)
      for (size_t k = 0; k < chars.size() && pieces.size() < static_cast<size_t>(n) * 2; ++k)
        pieces.push_back(chars[i] + chars[j] + chars[k]);
  for (size_t i = 0; tokens->size() < static_cast<size_t>(n) && i < pieces.size(); ++i) {
    tokens->push_back(pieces[i]);
    types->push_back(1);
  }
  scores->assign(tokens->size(), 0.0f);
  for (size_t i = 259; i < tokens->size(); ++i) (*scores)[i] = -static_cast<float>(i - 259);
}

}  // namespace

std::vector<std::string> model_preset_names() { return {"tiny", "tiny-qwen2", "bench-110m", "bench-1b"}; }

Result<ModelSpec> model_preset(const std::string& name) {
  ModelSpec s;
  if (name == "tiny") return s;
  if (name == "tiny-qwen2") {
    s.arch = "qwen2";
    return s;
  }
  if (name == "bench-110m") {
    s.dim = 768; s.layers = 12; s.heads = 12; s.kv_heads = 12; s.ffn = 2048; s.vocab = 32000; s.ctx = 2048;
    return s;
  }
  if (name == "bench-1b") {
    s.dim = 2048; s.layers = 22; s.heads = 32; s.kv_heads = 4; s.ffn = 5632; s.vocab = 32000; s.ctx = 2048;
    return s;
  }
  std::string all;
  for (const auto& n : model_preset_names()) all += (all.empty() ? "" : ", ") + n;
  return Status::NotFound("unknown preset '" + name + "' (presets: " + all + ")");
}

Status validate(const ModelSpec& s) {
  auto bad = [](const std::string& m) { return Status::InvalidArgument(m); };
  if (s.arch != "llama" && s.arch != "qwen2") return bad("arch must be llama or qwen2");
  if (s.dim <= 0 || s.layers <= 0 || s.heads <= 0 || s.kv_heads <= 0 || s.ffn <= 0 || s.ctx <= 0) return bad("every dimension must be positive");
  if (s.dim > 65536 || s.ffn > 262144 || s.layers > 512 || s.ctx > (1 << 20)) return bad("dimensions are too large");
  if (s.dim % s.heads != 0) return bad("dim " + std::to_string(s.dim) + " is not a multiple of heads " + std::to_string(s.heads));
  if ((s.dim / s.heads) % 2 != 0) return bad("head dimension dim/heads must be even");
  if (s.heads % s.kv_heads != 0) return bad("heads must be a multiple of kv-heads");
  if (s.vocab < 300 || s.vocab > 1000000) return bad("vocab must be in [300, 1000000] (259 special and byte tokens come first)");
  const DTypeTraits& t = dtype_traits(s.type);
  if (!t.supported) return bad("unsupported type");
  if (s.dim % t.block_size != 0 || s.ffn % t.block_size != 0) {
    return bad(std::string("type ") + t.name + " needs dim and ffn to be multiples of " + std::to_string(t.block_size));
  }
  return Status::Ok();
}

Status write_random_model(const ModelSpec& s, const std::string& path, const std::function<void(size_t, size_t)>& progress) {
  DS_RETURN_IF_ERROR(validate(s));
  GgufWriter w;
  const std::string a = s.arch;
  const int head_dim = s.dim / s.heads;
  w.set_string("general.architecture", a);
  w.set_string("general.name", s.name.empty() ? "ds-random-" + a + "-" + std::to_string(s.dim) + "x" + std::to_string(s.layers) : s.name);
  w.set_u32("general.alignment", 32);
  w.set_u32(a + ".context_length", s.ctx);
  w.set_u32(a + ".embedding_length", s.dim);
  w.set_u32(a + ".block_count", s.layers);
  w.set_u32(a + ".feed_forward_length", s.ffn);
  w.set_u32(a + ".attention.head_count", s.heads);
  w.set_u32(a + ".attention.head_count_kv", s.kv_heads);
  w.set_u32(a + ".rope.dimension_count", head_dim);
  w.set_u32(a + ".vocab_size", s.vocab);
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_f32(a + ".rope.freq_base", a == "qwen2" ? 1000000.0f : 10000.0f);

  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  make_vocab(s.vocab, &tokens, &scores, &types);
  if (static_cast<int>(tokens.size()) != s.vocab) return Status::InvalidArgument("vocab too large for the generated tokenizer");
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string("tokenizer.ggml.pre", "default");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_f32_array("tokenizer.ggml.scores", scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_bool("tokenizer.ggml.add_eos_token", false);

  uint64_t stream = 0;
  // A matrix [rows, cols] of uniform weights with std ~ 1/sqrt(cols), in the chosen type.
  auto matrix = [&](const std::string& name, int64_t cols, int64_t rows, float gain) {
    const uint64_t id = stream++;
    const DType type = s.type;
    const uint64_t seed = s.seed;
    w.add_tensor(name, type, {cols, rows}, [=](std::vector<uint8_t>* out) {
      Rng rng(seed, id);
      const float scale = gain * std::sqrt(3.0f / static_cast<float>(cols));
      std::vector<float> row(cols);
      const size_t rb = row_bytes(type, cols);
      out->resize(rb * rows);
      for (int64_t r = 0; r < rows; ++r) {
        for (auto& x : row) x = rng.next(scale);
        quantize_row(type, row.data(), out->data() + r * rb, cols);
      }
    });
  };
  auto vector = [&](const std::string& name, int64_t n, float center, float spread) {
    const uint64_t id = stream++;
    const uint64_t seed = s.seed;
    w.add_tensor(name, DType::kF32, {n}, [=](std::vector<uint8_t>* out) {
      Rng rng(seed, id);
      out->resize(n * sizeof(float));
      auto* f = reinterpret_cast<float*>(out->data());
      for (int64_t i = 0; i < n; ++i) f[i] = center + rng.next(spread);
    });
  };

  const int q_dim = s.heads * head_dim, kv_dim = s.kv_heads * head_dim;
  matrix("token_embd.weight", s.dim, s.vocab, 1.0f * std::sqrt(static_cast<float>(s.dim) / 3.0f));
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    vector(p + "attn_norm.weight", s.dim, 1.0f, 0.1f);
    matrix(p + "attn_q.weight", s.dim, q_dim, 1.0f);
    matrix(p + "attn_k.weight", s.dim, kv_dim, 1.0f);
    matrix(p + "attn_v.weight", s.dim, kv_dim, 1.0f);
    if (a == "qwen2") {
      vector(p + "attn_q.bias", q_dim, 0.0f, 0.1f);
      vector(p + "attn_k.bias", kv_dim, 0.0f, 0.1f);
      vector(p + "attn_v.bias", kv_dim, 0.0f, 0.1f);
    }
    matrix(p + "attn_output.weight", q_dim, s.dim, 0.5f);
    vector(p + "ffn_norm.weight", s.dim, 1.0f, 0.1f);
    matrix(p + "ffn_gate.weight", s.dim, s.ffn, 1.0f);
    matrix(p + "ffn_up.weight", s.dim, s.ffn, 1.0f);
    matrix(p + "ffn_down.weight", s.ffn, s.dim, 0.5f);
  }
  vector("output_norm.weight", s.dim, 1.0f, 0.1f);
  if (!s.tied_output) matrix("output.weight", s.dim, s.vocab, 2.0f);
  return w.write(path, progress);
}

}  // namespace ds
