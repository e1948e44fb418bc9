#include "model/model.h"

#include <sys/mman.h>

#include <cmath>
#include <map>

namespace ds {
namespace {

std::string base_name(const std::string& path) {
  const size_t s = path.find_last_of('/');
  return s == std::string::npos ? path : path.substr(s + 1);
}

}  // namespace

Result<std::shared_ptr<Model>> Model::Load(const std::string& path, const LoadOptions& opts) {
  Result<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  if (!f.ok()) return f.status();
  return FromGguf(std::move(f).value(), opts);
}

Result<std::shared_ptr<Model>> Model::FromGguf(std::unique_ptr<GgufFile> file, const LoadOptions& opts) {
  const std::string path = file->path();
  std::shared_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  Result<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromGguf(*m->file_);
  if (!tok.ok()) return Status(tok.status().code() == StatusCode::kNotFound
                                   ? Status::Corruption("'" + path + "' has no usable tokenizer: " + tok.status().message())
                                   : tok.status());
  m->tokenizer_ = std::move(tok).value();
  if (opts.vocab_only) return m;
  DS_RETURN_IF_ERROR(m->ReadConfig());
  DS_RETURN_IF_ERROR(m->BindWeights());

  // Page the weights in now (with progress) so the first request does not pay for it.
  const auto& ts = m->file_->tensors();
  size_t done = 0;
  volatile uint8_t sink = 0;
  for (const GgufTensor& t : ts) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(t.data);
    const uintptr_t page = addr & ~uintptr_t{4095};
    madvise(reinterpret_cast<void*>(page), t.nbytes + (addr - page), MADV_WILLNEED);
    for (size_t off = 0; off < t.nbytes; off += 4096) {
      sink = sink + t.data[off];
      if (opts.progress && ((done + off) & ((64u << 20) - 1)) < 4096) opts.progress(done + off, m->weights_.bytes);
    }
    done += t.nbytes;
  }
  (void)sink;
  if (opts.progress) opts.progress(m->weights_.bytes, m->weights_.bytes);
  return m;
}

Status Model::ReadConfig() {
  const GgufFile& f = *file_;
  ModelConfig& c = config_;
  if (Status s = f.get_string("general.architecture", &c.arch_name); !s.ok()) return Status::Corruption(s.message());
  if (c.arch_name == "llama") c.arch = Arch::kLlama;
  else if (c.arch_name == "qwen2") c.arch = Arch::kQwen2;
  else return Status::NotSupported("architecture '" + c.arch_name + "' is not supported (ds runs 'llama' and 'qwen2')");
  if (!f.get_string("general.name", &c.name).ok()) c.name = base_name(f.path());

  const std::string a = c.arch_name + ".";
  auto u32 = [&](const std::string& key, int* out, bool required) -> Status {
    uint32_t v;
    Status s = f.get_u32(a + key, &v);
    if (s.code() == StatusCode::kNotFound && !required) return Status::Ok();
    if (!s.ok()) return Status::Corruption(s.message());
    if (v == 0 || v > (1u << 24)) return Status::Corruption("metadata '" + a + key + "' = " + std::to_string(v) + " is out of range");
    *out = static_cast<int>(v);
    return Status::Ok();
  };
  DS_RETURN_IF_ERROR(u32("embedding_length", &c.n_embd, true));
  DS_RETURN_IF_ERROR(u32("block_count", &c.n_layer, true));
  DS_RETURN_IF_ERROR(u32("feed_forward_length", &c.n_ff, true));
  DS_RETURN_IF_ERROR(u32("attention.head_count", &c.n_head, true));
  c.n_head_kv = c.n_head;
  DS_RETURN_IF_ERROR(u32("attention.head_count_kv", &c.n_head_kv, false));
  c.n_ctx_train = 2048;
  DS_RETURN_IF_ERROR(u32("context_length", &c.n_ctx_train, false));
  if (c.n_embd % c.n_head != 0) return Status::Corruption("embedding_length " + std::to_string(c.n_embd) + " is not a multiple of head_count " + std::to_string(c.n_head));
  c.head_dim = c.n_embd / c.n_head;
  DS_RETURN_IF_ERROR(u32("attention.key_length", &c.head_dim, false));
  if (c.n_head % c.n_head_kv != 0) return Status::Corruption("head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " + std::to_string(c.n_head_kv));
  if (c.head_dim % 2 != 0 || c.head_dim > 1024) return Status::NotSupported("head dimension " + std::to_string(c.head_dim) + " (must be even and at most 1024)");
  c.n_vocab = tokenizer_->n_vocab();

  float eps;
  if (f.get_f32(a + "attention.layer_norm_rms_epsilon", &eps).ok()) c.rms_eps = eps;
  if (!(c.rms_eps > 0 && c.rms_eps < 1)) return Status::Corruption("rms epsilon " + std::to_string(c.rms_eps) + " is out of range");
  c.rope.style = c.arch == Arch::kQwen2 ? RopeStyle::kNeox : RopeStyle::kNormal;
  c.rope.n_rot = c.head_dim;
  int n_rot = c.head_dim;
  DS_RETURN_IF_ERROR(u32("rope.dimension_count", &n_rot, false));
  if (n_rot != c.head_dim) return Status::NotSupported("partial RoPE (rope.dimension_count " + std::to_string(n_rot) + " != head dim " + std::to_string(c.head_dim) + ")");
  c.rope.freq_base = c.arch == Arch::kQwen2 ? 1000000.0f : 10000.0f;
  float x;
  if (f.get_f32(a + "rope.freq_base", &x).ok()) c.rope.freq_base = x;
  if (f.get_f32(a + "rope.scale_linear", &x).ok() && x > 0) c.rope.freq_scale = 1.0f / x;
  std::string scaling;
  if (f.get_string(a + "rope.scaling.type", &scaling).ok() && scaling != "none") {
    if (scaling != "linear") return Status::NotSupported("RoPE scaling '" + scaling + "' (ds supports none and linear)");
    if (f.get_f32(a + "rope.scaling.factor", &x).ok() && x > 0) c.rope.freq_scale = 1.0f / x;
  }
  if (!(c.rope.freq_base > 1)) return Status::Corruption("rope.freq_base must be > 1");
  c.qkv_bias = c.arch == Arch::kQwen2;
  return Status::Ok();
}

Status Model::BindWeights() {
  const ModelConfig& c = config_;
  const GgufFile& f = *file_;
  auto matrix = [&](const std::string& name, int64_t cols, int64_t rows, WeightRef* out) -> Status {
    const GgufTensor* t = f.find_tensor(name);
    if (!t) return Status::Corruption("tensor '" + name + "' is missing");
    if (t->n_dims != 2 || t->ne[0] != cols || t->ne[1] != rows) {
      return Status::Corruption("tensor '" + name + "' has shape " + t->shape_string() + ", expected [" + std::to_string(cols) + ", " + std::to_string(rows) + "]");
    }
    if (!dtype_traits(t->type).supported) {
      return Status::NotSupported("tensor '" + name + "' has type " + dtype_name(t->type) + " (ds computes with f32, f16, bf16, q8_0, q4_0, q4_k, q6_k)");
    }
    *out = WeightRef{t->type, t->data, rows, cols};
    weights_.bytes += t->nbytes;
    return Status::Ok();
  };
  auto vector = [&](const std::string& name, int64_t n, std::vector<float>* out) -> Status {
    const GgufTensor* t = f.find_tensor(name);
    if (!t) return Status::Corruption("tensor '" + name + "' is missing");
    if (t->n_elements() != n || t->ne[0] != n) return Status::Corruption("tensor '" + name + "' has shape " + t->shape_string() + ", expected [" + std::to_string(n) + "]");
    if (!dtype_traits(t->type).supported) return Status::NotSupported("tensor '" + name + "' has type " + dtype_name(t->type));
    out->resize(n);
    dequantize_row(t->type, t->data, out->data(), n);
    return Status::Ok();
  };
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  DS_RETURN_IF_ERROR(matrix("token_embd.weight", c.n_embd, c.n_vocab, &weights_.tok_embd));
  DS_RETURN_IF_ERROR(vector("output_norm.weight", c.n_embd, &weights_.output_norm));
  if (f.find_tensor("output.weight")) {
    DS_RETURN_IF_ERROR(matrix("output.weight", c.n_embd, c.n_vocab, &weights_.output));
  } else {
    config_.tied_output = true;
    weights_.output = weights_.tok_embd;
  }
  // Every layer has tensors: a block_count beyond the tensor count is a lie (and must not
  // make us allocate for millions of layers).
  if (static_cast<size_t>(c.n_layer) > f.tensors().size()) {
    return Status::Corruption("block_count " + std::to_string(c.n_layer) + " but the file has only " +
                              std::to_string(f.tensors().size()) + " tensors");
  }
  weights_.layers.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    LayerWeights& L = weights_.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    DS_RETURN_IF_ERROR(vector(p + "attn_norm.weight", c.n_embd, &L.attn_norm));
    DS_RETURN_IF_ERROR(matrix(p + "attn_q.weight", c.n_embd, q_dim, &L.wq));
    DS_RETURN_IF_ERROR(matrix(p + "attn_k.weight", c.n_embd, c.kv_dim(), &L.wk));
    DS_RETURN_IF_ERROR(matrix(p + "attn_v.weight", c.n_embd, c.kv_dim(), &L.wv));
    DS_RETURN_IF_ERROR(matrix(p + "attn_output.weight", q_dim, c.n_embd, &L.wo));
    DS_RETURN_IF_ERROR(vector(p + "ffn_norm.weight", c.n_embd, &L.ffn_norm));
    DS_RETURN_IF_ERROR(matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff, &L.w_gate));
    DS_RETURN_IF_ERROR(matrix(p + "ffn_up.weight", c.n_embd, c.n_ff, &L.w_up));
    DS_RETURN_IF_ERROR(matrix(p + "ffn_down.weight", c.n_ff, c.n_embd, &L.w_down));
    if (c.qkv_bias) {
      DS_RETURN_IF_ERROR(vector(p + "attn_q.bias", q_dim, &L.bq));
      DS_RETURN_IF_ERROR(vector(p + "attn_k.bias", c.kv_dim(), &L.bk));
      DS_RETURN_IF_ERROR(vector(p + "attn_v.bias", c.kv_dim(), &L.bv));
    }
  }
  return Status::Ok();
}

std::string Model::weight_type_name() const {
  std::map<DType, size_t> bytes;
  for (const auto& L : weights_.layers)
    for (const WeightRef* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      bytes[w->type] += w->row_stride() * w->rows;
  if (bytes.empty()) return "none";
  auto best = bytes.begin();
  for (auto it = bytes.begin(); it != bytes.end(); ++it)
    if (it->second > best->second) best = it;
  return dtype_name(best->first);
}

}  // namespace ds
