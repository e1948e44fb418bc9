#include "model/forward.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>

#include "kernels/comm.h"
#include "kernels/sampling.h"
#include "model/tensor_parallel.h"

namespace ds {

Result<std::unique_ptr<Forward>> Forward::Create(std::shared_ptr<const Model> model, Backend& backend, KvCache& kv,
                                                 int max_tokens, const std::function<void(size_t, size_t)>& progress,
                                                 int max_seq_positions) {
  if (max_tokens <= 0) return Status::InvalidArgument("max tokens per step must be positive");
  const Model& m = *model;
  std::unique_ptr<Forward> f(new Forward(std::move(model), m.config(), m.weights(), backend, kv, max_tokens));
  f->max_kv_ = max_seq_positions;
  DS_RETURN_IF_ERROR(f->Init(progress));
  return f;
}

Result<std::unique_ptr<Forward>> Forward::CreateShard(std::shared_ptr<const ModelShard> shard, Backend& backend,
                                                      Communicator& comm, KvCache& kv, int max_tokens,
                                                      const std::function<void(size_t, size_t)>& progress,
                                                      int max_seq_positions) {
  if (max_tokens <= 0) return Status::InvalidArgument("max tokens per step must be positive");
  if (shard->rank != comm.rank() || shard->n_ranks != comm.size()) {
    return Status::InvalidArgument("the shard is rank " + std::to_string(shard->rank) + " of " + std::to_string(shard->n_ranks) +
                                   ", its communicator rank " + std::to_string(comm.rank()) + " of " + std::to_string(comm.size()));
  }
  const ModelShard& s = *shard;
  std::unique_ptr<Forward> f(new Forward(std::move(shard), s.config, s.weights, backend, kv, max_tokens));
  f->comm_ = &comm;
  f->max_kv_ = max_seq_positions;
  for (int r = 0; r <= s.n_ranks; ++r) f->vocab_begin_.push_back(vocab_shard_begin(s.config.n_vocab, r, s.n_ranks));
  for (int r = 0; r < s.n_ranks; ++r) f->vocab_stride_ = std::max(f->vocab_stride_, f->vocab_begin_[r + 1] - f->vocab_begin_[r]);
  DS_RETURN_IF_ERROR(f->Init(progress));
  return f;
}

Forward::~Forward() {
  be_.forget_recordings();  // they hold this Forward's buffers
  for (void* p : owned_) be_.free(p);
}

namespace {
// A host matrix the backend copied into a layout of its own is not read again: its whole pages
// go back to the kernel (MADV_PAGEOUT: the model file's clean pages are dropped from this
// process and can be read again if anything asks; other memory keeps its contents), so that a
// CPU node does not hold a quantized model twice.
void release_pages(const void* p, size_t bytes) {
#ifdef MADV_PAGEOUT
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);
#else
  (void)p;
  (void)bytes;
#endif
}
}  // namespace

float* Forward::buffer(size_t floats) {
  void* p = be_.alloc(floats * sizeof(float));
  if (p) owned_.push_back(p);
  return static_cast<float*>(p);
}

const float* Forward::vec(const std::vector<float>& host) {
  if (host.empty()) return nullptr;
  if (be_.host_memory()) return host.data();
  float* p = buffer(host.size());
  if (p) be_.upload(p, host.data(), host.size() * sizeof(float));
  return p;
}

Status Forward::Init(const std::function<void(size_t, size_t)>& progress) {
  static std::atomic<uint64_t> next_record_id{1};
  record_id_ = next_record_id++;
  const ModelConfig& c = config_;
  const ModelWeights& w = weights_;
  size_t done = 0;
  if (kv_.kv_dim() != c.kv_dim()) {
    return Status::InvalidArgument("KV cache rows hold " + std::to_string(kv_.kv_dim()) + " floats, the model needs " + std::to_string(c.kv_dim()));
  }
  auto weight = [&](const WeightRef& h, WeightRef* out) -> Status {
    if (!be_.supports(h.type)) {
      return Status::NotSupported(std::string("the ") + be_.name() + " backend cannot compute with " + dtype_name(h.type) + " weights");
    }
    *out = h;
    const size_t bytes = h.row_stride() * h.rows;
    if (be_.host_memory() && !be_.relayouts(h)) return Status::Ok();  // computes on the file's bytes
    void* p = be_.alloc(bytes);
    if (!p) return Status::ResourceExhausted(std::string("out of ") + be_.name() + " memory while uploading weights");
    owned_.push_back(p);
    *out = be_.upload_weight(h, p);  // in the backend's layout (CUDA: Q8_0 rows split; CPU: quantized rows interleaved)
    if (be_.host_memory()) release_pages(h.data, bytes);
    done += bytes;
    if (progress) progress(done, w.bytes);
    return Status::Ok();
  };
  DS_RETURN_IF_ERROR(weight(w.tok_embd, &tok_embd_));
  if (c.tied_output) output_ = tok_embd_;
  else DS_RETURN_IF_ERROR(weight(w.output, &output_));
  output_norm_ = vec(w.output_norm);
  layers_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = w.layers[l];
    Layer& D = layers_[l];
    DS_RETURN_IF_ERROR(weight(L.wq, &D.wq));
    DS_RETURN_IF_ERROR(weight(L.wk, &D.wk));
    DS_RETURN_IF_ERROR(weight(L.wv, &D.wv));
    DS_RETURN_IF_ERROR(weight(L.wo, &D.wo));
    DS_RETURN_IF_ERROR(weight(L.w_gate, &D.w_gate));
    DS_RETURN_IF_ERROR(weight(L.w_up, &D.w_up));
    DS_RETURN_IF_ERROR(weight(L.w_down, &D.w_down));
    D.attn_norm = vec(L.attn_norm);
    D.ffn_norm = vec(L.ffn_norm);
    D.bq = vec(L.bq);
    D.bk = vec(L.bk);
    D.bv = vec(L.bv);
  }

  const size_t T = max_tokens_;
  const size_t q_dim = static_cast<size_t>(c.n_head) * c.head_dim;
  x_ = buffer(T * c.n_embd);
  xn_ = buffer(T * c.n_embd);
  q_ = buffer(T * q_dim);
  k_ = buffer(T * c.kv_dim());
  v_ = buffer(T * c.kv_dim());
  att_ = buffer(T * q_dim);
  o_ = buffer(T * c.n_embd);
  gate_ = buffer(T * c.n_ff);
  up_ = buffer(T * c.n_ff);
  logits_ = buffer(T * output_.rows);
  ids_ = reinterpret_cast<int32_t*>(buffer(T));
  pos_ = reinterpret_cast<int32_t*>(buffer(T));
  slots_ = reinterpret_cast<int32_t*>(buffer(T));
  out_rows_ = reinterpret_cast<int32_t*>(buffer(T));
  tiles_ = reinterpret_cast<int32_t*>(buffer(T + 1));
  att_tokens_ = static_cast<AttentionToken*>(be_.alloc(T * sizeof(AttentionToken)));
  if (att_tokens_) owned_.push_back(att_tokens_);
  table_capacity_ = 0;
  tables_ = nullptr;
  for (void* p : {static_cast<void*>(x_), static_cast<void*>(xn_), static_cast<void*>(q_), static_cast<void*>(k_),
                  static_cast<void*>(v_), static_cast<void*>(att_), static_cast<void*>(o_), static_cast<void*>(gate_),
                  static_cast<void*>(up_), static_cast<void*>(logits_), static_cast<void*>(ids_), static_cast<void*>(pos_),
                  static_cast<void*>(slots_), static_cast<void*>(out_rows_), static_cast<void*>(tiles_),
                  static_cast<void*>(att_tokens_)}) {
    if (!p) return Status::ResourceExhausted(std::string("out of ") + be_.name() + " memory for activation buffers");
  }
  // Split-K attention workspace (CUDA), sized once for max_tokens so that every run(),
  // whatever its batch, takes the same path with the same chunks (determinism contract).
  if (max_kv_ <= 0) {
    const int64_t positions = static_cast<int64_t>(kv_.blocks().n_blocks()) * kv_.block_size();
    max_kv_ = static_cast<int>(std::min<int64_t>(positions, INT32_MAX));
  }
  att_workspace_floats_ = be_.attention_workspace_floats(max_tokens_, c.n_head, c.head_dim, max_kv_);
  if (att_workspace_floats_ > 0) {
    att_workspace_ = buffer(att_workspace_floats_);
    if (!att_workspace_) return Status::ResourceExhausted(std::string("out of ") + be_.name() + " memory for the attention workspace");
  }
  if (comm_) {
    const size_t R = comm_->size();
    gathered_ = buffer(R * T * vocab_stride_);
    if (!gathered_) {
      return Status::ResourceExhausted(std::string("out of ") + be_.name() + " memory for the logit gather buffers");
    }
  } else {
    prepare_fused_decode();
    if (fused_decode_id_ >= 0 && be_.fused_decode_probe()) DS_RETURN_IF_ERROR(probe_fused_decode());
  }
  return Status::Ok();
}

// A backend that runs a whole one-token decode step as one op (the CUDA backend's persistent
// kernel, when enabled) gets this Forward's weights and buffers once; enqueue_layers() then
// issues that op for steps of one token instead of the layers' ops.
void Forward::prepare_fused_decode() {
  const ModelConfig& c = config_;
  Backend::FusedDecodeModel m;
  for (int l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    Backend::FusedDecodeLayer f;
    f.wq = L.wq, f.wk = L.wk, f.wv = L.wv, f.wo = L.wo;
    f.w_gate = L.w_gate, f.w_up = L.w_up, f.w_down = L.w_down;
    f.bq = L.bq, f.bk = L.bk, f.bv = L.bv;
    f.attn_norm = L.attn_norm, f.ffn_norm = L.ffn_norm;
    f.cache = kv_.layer(l);
    m.layers.push_back(f);
  }
  m.output_norm = output_norm_;
  m.output = output_;
  m.eps = c.rms_eps;
  m.rope = Backend::RopeStore{c.n_head, c.n_head_kv, c.head_dim, pos_, c.rope, slots_, KvLayer{}};
  m.att = attention_args(1);
  m.x = x_, m.k = k_, m.v = v_, m.ffn = gate_, m.logits = logits_;
  fused_decode_id_ = be_.fused_decode_prepare(m);
  if (fused_decode_id_ < 0) fused_refusal_ = be_.fused_decode_refusal();
}

// One-token steps at positions 0, 1, ... (round again past max_kv_, what attention is sized
// for) of a scratch sequence (cache blocks taken from and given back to the pool, which is
// untouched at Init), each run through the layers' ops and then through the fused op: both
// write the same K/V to the step's slot, so the steps stay comparable. The fused op stays only
// where every step's logits are the same bits and its median step is kProbeMinGain faster; a
// failing step is an error (the backend's health).
Status Forward::probe_fused_decode() {
  const int fused = fused_decode_id_;
  probe_ = FusedDecodeProbe{};
  probe_.ran = true;
  std::vector<int32_t> table;
  // Positions 0, 1, ... up to what attention is sized for (max_kv_), then round again.
  const int positions = std::max(1, std::min(kProbeSteps, max_kv_));
  const int n_blocks = (positions + kv_.block_size() - 1) / kv_.block_size();
  if (!kv_.blocks().allocate(n_blocks, &table)) {
    fused_decode_id_ = -1;
    probe_.why = "no free cache blocks to probe with";
    return Status::Ok();
  }
  std::vector<double> t_ops, t_fused;
  std::vector<float> a, b;
  Status st = Status::Ok();
  for (int s = 0; s < kProbeSteps && st.ok(); ++s) {
    const std::vector<ForwardToken> tok = {
        ForwardToken{static_cast<int32_t>((1 + 37 * s) % config_.n_vocab), s % positions, &table, true}};
    for (int way = 0; way < 2 && st.ok(); ++way) {
      fused_decode_id_ = way ? fused : -1;
      const auto t0 = std::chrono::steady_clock::now();
      st = run(tok, way ? &b : &a);
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      if (s >= kProbeWarmup) (way ? t_fused : t_ops).push_back(us);
    }
    probe_.same = probe_.same && a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  }
  kv_.blocks().release(&table);
  fused_decode_id_ = -1;
  if (!st.ok()) return st;
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };
  probe_.per_op_us = median(t_ops);
  probe_.fused_us = median(t_fused);
  if (!probe_.same) {
    probe_.why = "its logits differ from the per-op path's";
  } else if (probe_.fused_us > (1.0 - kProbeMinGain) * probe_.per_op_us) {
    probe_.why = "not faster than the per-op path";
  } else {
    fused_decode_id_ = fused;
  }
  return Status::Ok();
}

AttentionArgs Forward::attention_args(int64_t n) const {
  const ModelConfig& c = config_;
  AttentionArgs aa;
  aa.q = q_;
  aa.out = att_;
  aa.tokens = att_tokens_;
  aa.n_tokens = n;
  aa.n_heads = c.n_head;
  aa.n_kv_heads = c.n_head_kv;
  aa.head_dim = c.head_dim;
  aa.block_size = kv_.block_size();
  aa.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  aa.max_kv = max_kv_;
  aa.workspace = att_workspace_;
  aa.workspace_floats = att_workspace_floats_;
  aa.tiles = n_tiles_ > 0 ? tiles_ : nullptr;
  aa.n_tiles = n_tiles_;
  return aa;
}

Status Forward::comm_failed(const char* what) const {
  return Status::Internal(std::string("tensor-parallel ") + what + " failed on rank " + std::to_string(comm_->rank()) + " of " +
                          std::to_string(comm_->size()) + ": " + comm_->last_error());
}

Status Forward::forward_local(const std::vector<ForwardToken>& tokens, int64_t* n_out_tokens) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  *n_out_tokens = 0;
  if (n == 0) return Status::Ok();
  if (n > max_tokens_) return Status::Internal("forward batch larger than max_tokens");
  const int bs = kv_.block_size();

  // ---- per-run metadata: ids, positions, cache slots, block tables ----
  h_ids_.resize(n);
  h_pos_.resize(n);
  h_slots_.resize(n);
  h_att_.resize(n);
  h_out_rows_.clear();
  h_tables_.clear();
  std::vector<size_t> table_off(n);
  const std::vector<int32_t>* last_table = nullptr;
  size_t last_off = 0;
  for (int64_t i = 0; i < n; ++i) {
    const ForwardToken& t = tokens[i];
    if (t.token < 0 || t.token >= c.n_vocab) return Status::InvalidArgument("token id " + std::to_string(t.token) + " is outside the vocabulary");
    if (t.blocks == nullptr || static_cast<size_t>(t.pos / bs) >= t.blocks->size()) return Status::Internal("KV block table does not cover the position");
    h_ids_[i] = t.token;
    h_pos_[i] = t.pos;
    h_slots_[i] = (*t.blocks)[t.pos / bs] * bs + t.pos % bs;
    if (t.blocks != last_table) {  // tokens of one sequence are adjacent: share its table
      last_off = h_tables_.size();
      h_tables_.insert(h_tables_.end(), t.blocks->begin(), t.blocks->end());
      last_table = t.blocks;
    }
    table_off[i] = last_off;
    if (t.want_logits) h_out_rows_.push_back(static_cast<int32_t>(i));
  }
  if (h_tables_.size() > table_capacity_) {
    if (tables_) {
      be_.free(tables_);
      owned_.erase(std::find(owned_.begin(), owned_.end(), static_cast<void*>(tables_)));
    }
    table_capacity_ = h_tables_.size() * 2;
    tables_ = static_cast<int32_t*>(be_.alloc(table_capacity_ * sizeof(int32_t)));
    if (!tables_) return Status::ResourceExhausted("out of memory for block tables");
    owned_.push_back(tables_);
  }
  be_.upload(tables_, h_tables_.data(), h_tables_.size() * sizeof(int32_t));
  for (int64_t i = 0; i < n; ++i) h_att_[i] = AttentionToken{tables_ + table_off[i], h_pos_[i] + 1};
  be_.upload(ids_, h_ids_.data(), n * sizeof(int32_t));
  be_.upload(pos_, h_pos_.data(), n * sizeof(int32_t));
  be_.upload(slots_, h_slots_.data(), n * sizeof(int32_t));
  be_.upload(att_tokens_, h_att_.data(), n * sizeof(AttentionToken));
  // Attention tiles: runs of up to kAttentionTileTokens adjacent tokens of one sequence
  // (a prompt chunk's tokens share their K/V reads); none when every run has one token.
  h_tiles_.assign(1, 0);
  for (int64_t i = 1; i <= n; ++i) {
    if (i == n || tokens[i].blocks != tokens[i - 1].blocks || i - h_tiles_.back() == kAttentionTileTokens)
      h_tiles_.push_back(static_cast<int32_t>(i));
  }
  n_tiles_ = static_cast<int64_t>(h_tiles_.size()) - 1;
  if (n_tiles_ == n) n_tiles_ = 0;
  else be_.upload(tiles_, h_tiles_.data(), h_tiles_.size() * sizeof(int32_t));
  const int64_t n_out = static_cast<int64_t>(h_out_rows_.size());
  *n_out_tokens = n_out;
  if (n_out > 0 && n_out < n) be_.upload(out_rows_, h_out_rows_.data(), n_out * sizeof(int32_t));

  // ---- the transformer and the logits, recorded once per batch size and replayed ----
  // Every argument of the ops below is fixed for a given (n, n_out): what changes from step
  // to step (ids, positions, slots, block tables) was uploaded above into fixed buffers.
  // Only decode-shaped steps (every token wants logits) of an unsharded Forward are recorded
  // (they have one token per sequence, so no attention tiles).
  if (comm_ || n_out != n) return enqueue_layers(n, n_out);
  // (A one-token step through the fused op is another recording than through the layers' ops.)
  const uint64_t fused = fused_decode_id_ >= 0 && n == 1 ? uint64_t{1} << 31 : 0;
  const uint64_t key = (record_id_ << 32) | fused | static_cast<uint64_t>(n);
  if (be_.replay(key)) return Status::Ok();
  if (!be_.record_begin(key)) return enqueue_layers(n, n_out);
  DS_RETURN_IF_ERROR(enqueue_layers(n, n_out));
  if (be_.record_end() && be_.replay(key)) return Status::Ok();
  return enqueue_layers(n, n_out);  // the recording failed and ran nothing
}

Status Forward::enqueue_layers(int64_t n, int64_t n_out) {
  const ModelConfig& c = config_;
  const int64_t D = c.n_embd;
  be_.get_rows(tok_embd_, ids_, n, x_);
  if (fused_decode_id_ >= 0 && n == 1 && n_out == 1) {  // the whole step in one op
    be_.fused_decode(fused_decode_id_);
    return Status::Ok();
  }
  AttentionArgs aa = attention_args(n);
  // xn_ = the norm of x_ before each projection: here for layer 0, then after each residual
  // add (matmul_add_rmsnorm: the add and the next norm, the last layer's the output norm).
  be_.rmsnorm(x_, layers_[0].attn_norm, n, D, c.rms_eps, xn_);
  for (int l = 0; l < c.n_layer; ++l) {
    const Layer& L = layers_[l];
    const float* next_norm = l + 1 < c.n_layer ? layers_[l + 1].attn_norm : output_norm_;
    const KvLayer cache = kv_.layer(l);
    // Q, K, V (+ biases, qwen2), RoPE on q and k, k and v into the cache.
    be_.matmul_qkv_rope_store_kv(L.wq, L.wk, L.wv, L.bq, L.bk, L.bv, xn_, n, q_, k_, v_,
                                 Backend::RopeStore{c.n_head, c.n_head_kv, c.head_dim, pos_, c.rope, slots_, cache});
    aa.k_cache = cache.k;
    aa.v_cache = cache.v;
    aa.kv_type = cache.type;
    be_.attention(aa);
    if (comm_) {
      be_.matmul(L.wo, att_, n, o_);
      if (!comm_->all_reduce_sum(o_, n * D)) return comm_failed("all-reduce of the attention output");
      be_.add(x_, o_, n * D);
      be_.rmsnorm(x_, L.ffn_norm, n, D, c.rms_eps, xn_);
    } else {
      be_.matmul_add_rmsnorm(L.wo, att_, n, x_, o_, L.ffn_norm, c.rms_eps, xn_);  // x += att Wo^T; xn = norm(x)
    }
    be_.matmul_swiglu(L.w_gate, L.w_up, xn_, n, gate_, up_);  // gate_ = silu(gate) * up; up_ scratch
    if (comm_) {
      be_.matmul(L.w_down, gate_, n, o_);
      if (!comm_->all_reduce_sum(o_, n * D)) return comm_failed("all-reduce of the FFN output");
      be_.add(x_, o_, n * D);
      be_.rmsnorm(x_, next_norm, n, D, c.rms_eps, xn_);
    } else {
      be_.matmul_add_rmsnorm(L.w_down, gate_, n, x_, o_, next_norm, c.rms_eps, xn_);  // x += ffn Wdown^T; xn = norm(x)
    }
  }

  // ---- this rank's logits for the tokens that want them (xn_: the output norm of x_) ----
  if (n_out == 0) return Status::Ok();
  if (n_out == n) {
    be_.matmul(output_, xn_, n, logits_);
  } else {
    // Gather the wanted rows of xn into o_ (get_rows over xn viewed as an F32 matrix; out_rows_
    // was uploaded with the other metadata).
    be_.get_rows(WeightRef{DType::kF32, xn_, n, D}, out_rows_, n_out, o_);
    be_.matmul(output_, o_, n_out, logits_);
  }
  return Status::Ok();
}

Status Forward::run(const std::vector<ForwardToken>& tokens, std::vector<float>* logits) {
  int64_t n_out = 0;
  DS_RETURN_IF_ERROR(forward_local(tokens, &n_out));
  return gather_logits(n_out, logits);
}

Status Forward::gather_logits(int64_t n_out, std::vector<float>* logits) {
  const int64_t V = config_.n_vocab;
  logits->resize(static_cast<size_t>(n_out) * V);
  if (n_out == 0) return Status::Ok();
  if (!comm_) {
    be_.download(logits->data(), logits_, static_cast<size_t>(n_out) * V * sizeof(float));
    return Status::Ok();
  }
  // Rank r's block [n_out, rows_r] lands in slot r of gathered_; unpack into [n_out, V].
  const int R = comm_->size();
  const size_t slot = static_cast<size_t>(n_out) * vocab_stride_;
  if (!comm_->all_gather(logits_, slot, gathered_)) return comm_failed("all-gather of the logits");
  h_gathered_.resize(R * slot);
  be_.download(h_gathered_.data(), gathered_, h_gathered_.size() * sizeof(float));
  for (int r = 0; r < R; ++r) {
    const int64_t begin = vocab_begin_[r], rows = vocab_begin_[r + 1] - begin;
    for (int64_t t = 0; t < n_out; ++t) {
      std::memcpy(logits->data() + t * V + begin, h_gathered_.data() + r * slot + t * rows, rows * sizeof(float));
    }
  }
  return Status::Ok();
}

Status Forward::run_sampled(const std::vector<ForwardToken>& tokens, const SampleStep& step,
                            std::vector<int32_t>* picked, int* fallbacks) {
  int64_t n_out = 0;
  DS_RETURN_IF_ERROR(forward_local(tokens, &n_out));
  if (n_out != static_cast<int64_t>(step.size())) {
    return Status::Internal("run_sampled: " + std::to_string(step.size()) + " sampling rows for " +
                            std::to_string(n_out) + " tokens that want logits");
  }
  picked->assign(n_out, -1);
  *fallbacks = 0;
  if (n_out == 0) return Status::Ok();
  if (!sampler_) sampler_ = std::make_unique<BackendSampler>(be_);
  const int32_t V = config_.n_vocab;
  const int R = comm_ ? comm_->size() : 1, rank = comm_ ? comm_->rank() : 0;
  const int64_t begin = comm_ ? vocab_begin_[rank] : 0, rows = output_.rows;

  // This rank's slice of each row: at most its rows as candidates, the penalty entries of
  // its ids (made local); every rank keeps the step's word layout, so slots line up.
  std::vector<SampleRow> local = step.rows;
  std::vector<int32_t> pen_tokens, pen_counts;
  for (SampleRow& r : local) {
    r.m = static_cast<int32_t>(std::min<int64_t>(r.m, rows));
    const int32_t b = r.pen_begin, e = r.pen_begin + r.pen_count;
    r.pen_begin = static_cast<int32_t>(pen_tokens.size());
    for (int32_t i = b; i < e; ++i) {
      const int64_t id = step.pen_tokens[i] - begin;
      if (id < 0 || id >= rows) continue;
      pen_tokens.push_back(static_cast<int32_t>(id));
      pen_counts.push_back(step.pen_counts[i]);
    }
    r.pen_count = static_cast<int32_t>(pen_tokens.size()) - r.pen_begin;
  }
  DS_RETURN_IF_ERROR(sampler_->run(logits_, rows, local, pen_tokens, pen_counts, step.words));

  std::vector<uint64_t> words(static_cast<size_t>(step.words));
  if (!comm_) {
    be_.download(words.data(), sampler_->words(), words.size() * sizeof(uint64_t));
  } else {
    // Every rank gathers every slice's words (the bits travel as floats, never added) and
    // merges them the same way, so all ranks pick the same tokens and agree on the fallbacks.
    const size_t per_rank = 2 * static_cast<size_t>(step.words);
    float* all = sampler_->gather_buffer(R * per_rank);
    if (!all) return Status::ResourceExhausted(std::string("out of ") + be_.name() + " memory for sampling buffers");
    if (!comm_->all_gather(reinterpret_cast<const float*>(sampler_->words()), per_rank, all))
      return comm_failed("all-gather of the sampling candidates");
    std::vector<uint64_t> h(R * static_cast<size_t>(step.words));
    be_.download(h.data(), all, h.size() * sizeof(uint64_t));
    std::vector<const uint64_t*> slices(R);
    std::vector<int32_t> slice_m(R);
    for (int64_t j = 0; j < n_out; ++j) {
      const SampleRow& r = step.rows[j];
      for (int q = 0; q < R; ++q) {
        slices[q] = h.data() + q * step.words + r.out;
        slice_m[q] = static_cast<int32_t>(std::min<int64_t>(r.m, vocab_begin_[q + 1] - vocab_begin_[q]));
      }
      merge_sampled_slices(slices, slice_m, vocab_begin_, r.m, r.want_sums != 0, r.temperature,
                           words.data() + r.out);
    }
  }
  std::vector<int64_t> whole;  // rows the candidates cannot tell
  for (int64_t j = 0; j < n_out; ++j) {
    (*picked)[j] = pick_token(step, j, V, words.data());
    if ((*picked)[j] < 0) whole.push_back(j);
  }
  if (whole.empty()) return Status::Ok();
  // The whole penalized rows (sample_candidates penalized logits_ in place): sharded, every
  // rank takes part in the gather, as every rank found the same rows.
  *fallbacks = static_cast<int>(whole.size());
  std::vector<float> all_rows, row(V);
  DS_RETURN_IF_ERROR(gather_logits(n_out, &all_rows));
  for (int64_t j : whole) {
    std::copy(all_rows.begin() + j * V, all_rows.begin() + (j + 1) * V, row.begin());
    (*picked)[j] = sample_penalized(row, step.params[j], step.seeds[j], step.draws[j]);
  }
  return Status::Ok();
}

}  // namespace ds
