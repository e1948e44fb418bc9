#include "model/tensor_parallel.h"

#include <cstdlib>
#include <cstring>

namespace ds {
namespace {

// Rows [first, first + count) of w: a view into the same memory (rows are contiguous).
WeightRef row_slice(const WeightRef& w, int64_t first, int64_t count) {
  WeightRef s = w;
  s.data = static_cast<const uint8_t*>(w.data) + first * w.row_stride();
  s.rows = count;
  return s;
}

// Columns [first, first + count) of w, copied into owned memory.
// REQUIRES: first and count are multiples of w's block size.
WeightRef column_slice(const WeightRef& w, int64_t first, int64_t count, std::vector<std::shared_ptr<void>>* owned) {
  const size_t skip = row_bytes(w.type, first), row = row_bytes(w.type, count);
  const size_t bytes = row * w.rows;
  std::shared_ptr<void> mem(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64), std::free);
  uint8_t* dst = static_cast<uint8_t*>(mem.get());
  const uint8_t* src = static_cast<const uint8_t*>(w.data);
  for (int64_t r = 0; r < w.rows; ++r) std::memcpy(dst + r * row, src + r * w.row_stride() + skip, row);
  owned->push_back(std::move(mem));
  return WeightRef{w.type, dst, w.rows, count};
}

std::vector<float> vec_slice(const std::vector<float>& v, int64_t first, int64_t count) {
  if (v.empty()) return {};
  return std::vector<float>(v.begin() + first, v.begin() + first + count);
}

Status split_problem(const Model& model, int n) {
  const ModelConfig& c = model.config();
  auto divides = [&](const char* what, int64_t value) -> Status {
    if (value % n == 0) return Status::Ok();
    return Status::InvalidArgument(std::string(what) + " " + std::to_string(value) + " is not a multiple of " + std::to_string(n));
  };
  DS_RETURN_IF_ERROR(divides("head_count", c.n_head));
  DS_RETURN_IF_ERROR(divides("head_count_kv", c.n_head_kv));
  DS_RETURN_IF_ERROR(divides("feed_forward_length", c.n_ff));
  if (c.n_vocab < n) return Status::InvalidArgument("the vocabulary (" + std::to_string(c.n_vocab) + ") has fewer rows than ranks");
  // Column-parallel halves (wo, down) are copied by columns: whole blocks per rank.
  for (size_t l = 0; l < model.weights().layers.size(); ++l) {
    const LayerWeights& L = model.weights().layers[l];
    const std::pair<const char*, const WeightRef*> split_by_columns[] = {{"attn_output", &L.wo}, {"ffn_down", &L.w_down}};
    for (const auto& [name, w] : split_by_columns) {
      const int block = dtype_traits(w->type).block_size;
      if ((w->cols / n) % block != 0) {
        return Status::InvalidArgument("blk." + std::to_string(l) + "." + name + ".weight is " + dtype_name(w->type) +
                                       " (blocks of " + std::to_string(block) + " columns): each rank would get " +
                                       std::to_string(w->cols / n) + " of its " + std::to_string(w->cols) +
                                       " columns, not whole blocks");
      }
    }
  }
  return Status::Ok();
}

}  // namespace

int64_t vocab_shard_begin(int64_t n_vocab, int rank, int n_ranks) { return n_vocab * rank / n_ranks; }

Status check_tensor_parallel(const Model& model, int n_ranks) {
  if (n_ranks < 1) return Status::InvalidArgument("tensor parallelism needs at least 1 rank, got " + std::to_string(n_ranks));
  Status s = split_problem(model, n_ranks);
  if (s.ok()) return s;
  std::string fit;
  for (int n = 1; n <= 16; ++n) {
    if (split_problem(model, n).ok()) fit += (fit.empty() ? "" : ", ") + std::to_string(n);
  }
  return Status::InvalidArgument("cannot split model '" + model.config().name + "' over " + std::to_string(n_ranks) +
                                 " tensor-parallel ranks: " + s.message() + " (rank counts that fit: " + fit + ")");
}

Result<std::shared_ptr<const ModelShard>> shard_model(std::shared_ptr<const Model> model, int rank, int n_ranks) {
  DS_RETURN_IF_ERROR(check_tensor_parallel(*model, n_ranks));
  if (rank < 0 || rank >= n_ranks) {
    return Status::InvalidArgument("rank " + std::to_string(rank) + " is outside [0, " + std::to_string(n_ranks) + ")");
  }
  const ModelConfig& c = model->config();
  const ModelWeights& w = model->weights();
  auto s = std::make_shared<ModelShard>();
  s->rank = rank;
  s->n_ranks = n_ranks;
  s->config = c;
  s->config.n_head = c.n_head / n_ranks;
  s->config.n_head_kv = c.n_head_kv / n_ranks;
  s->config.n_ff = c.n_ff / n_ranks;
  s->config.tied_output = false;
  s->vocab_begin = vocab_shard_begin(c.n_vocab, rank, n_ranks);
  s->vocab_rows = vocab_shard_begin(c.n_vocab, rank + 1, n_ranks) - s->vocab_begin;

  const int64_t q_dim = static_cast<int64_t>(s->config.n_head) * c.head_dim;  // this rank's
  const int64_t kv_dim = s->config.kv_dim();
  const int64_t ff = s->config.n_ff;
  ModelWeights& o = s->weights;
  auto bytes = [](const WeightRef& x) { return x.row_stride() * x.rows; };
  o.tok_embd = w.tok_embd;
  o.output = row_slice(w.output, s->vocab_begin, s->vocab_rows);
  o.output_norm = w.output_norm;
  o.bytes = bytes(o.tok_embd) + bytes(o.output);
  o.layers.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    LayerWeights& D = o.layers[l];
    D.wq = row_slice(L.wq, rank * q_dim, q_dim);
    D.wk = row_slice(L.wk, rank * kv_dim, kv_dim);
    D.wv = row_slice(L.wv, rank * kv_dim, kv_dim);
    D.wo = column_slice(L.wo, rank * q_dim, q_dim, &s->owned);
    D.w_gate = row_slice(L.w_gate, rank * ff, ff);
    D.w_up = row_slice(L.w_up, rank * ff, ff);
    D.w_down = column_slice(L.w_down, rank * ff, ff, &s->owned);
    D.attn_norm = L.attn_norm;
    D.ffn_norm = L.ffn_norm;
    D.bq = vec_slice(L.bq, rank * q_dim, q_dim);
    D.bk = vec_slice(L.bk, rank * kv_dim, kv_dim);
    D.bv = vec_slice(L.bv, rank * kv_dim, kv_dim);
    for (const WeightRef* x : {&D.wq, &D.wk, &D.wv, &D.wo, &D.w_gate, &D.w_up, &D.w_down}) o.bytes += bytes(*x);
  }
  s->model = std::move(model);
  return std::shared_ptr<const ModelShard>(std::move(s));
}

}  // namespace ds
