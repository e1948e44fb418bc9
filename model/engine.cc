#include "model/engine.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "kernels/sampling.h"

#include "model/shard_group.h"
#include "model/tensor_parallel.h"

namespace ds {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "unknown";
}

namespace {

// opts with defaults filled in, or InvalidArgument. kv_dim: the KV width one rank's cache
// holds (the model's, or a shard's), for the default capacity.
// gpu: the backends' memory is not host memory (the default KV type is then F16).
// memory_known: the backend reports its device memory; an automatic KV capacity is then left at
// max_batch * n_ctx (no 4 GiB cap) for fit_memory() to cut to what fits.
Result<EngineOptions> normalize(const ModelConfig& c, const EngineOptions& o, int kv_dim, bool gpu, bool memory_known) {
  EngineOptions opts = o;
  if (!opts.kv_type) opts.kv_type = gpu ? DType::kF16 : DType::kF32;
  if (!kv_type_supported(*opts.kv_type))
    return Status::InvalidArgument(std::string("no KV cache type ") + dtype_name(*opts.kv_type) + " (f32 or f16)");
  if (opts.max_batch <= 0 || opts.max_batch > 1024) return Status::InvalidArgument("max_batch must be in [1, 1024]");
  if (opts.kv_block_size <= 0 || opts.kv_block_size > 1024) return Status::InvalidArgument("kv block size must be in [1, 1024]");
  if (opts.n_ctx <= 0) opts.n_ctx = c.n_ctx_train;
  if (opts.n_ctx < 2 || opts.n_ctx > (1 << 20)) return Status::InvalidArgument("context length must be in [2, 1048576]");
  opts.max_step_tokens = std::max(opts.max_step_tokens, opts.max_batch);
  if (opts.backend_sample_candidates < 1 || opts.backend_sample_candidates > kSampleMaxCandidates)
    return Status::InvalidArgument("backend sample candidates must be in [1, " + std::to_string(kSampleMaxCandidates) + "]");
  if (opts.memory_percent < 0 || opts.memory_percent > 100) return Status::InvalidArgument("memory percent must be in [0, 100]");
  const size_t bytes_per_pos = static_cast<size_t>(c.n_layer) * kv_dim * 2 * kv_elem_bytes(*opts.kv_type);
  if (opts.kv_cache_tokens <= 0) {
    // Room for every running sequence at full context (in whole blocks), within 4 GiB when
    // the memory is not known (the CPU), else within the device's memory (fit_memory).
    const size_t cap = memory_known ? size_t{INT32_MAX} / 2 : (size_t{4} << 30) / bytes_per_pos;
    const size_t per_seq = (static_cast<size_t>(opts.n_ctx) + opts.kv_block_size - 1) / opts.kv_block_size * opts.kv_block_size;
    opts.kv_cache_tokens = static_cast<int>(std::clamp<size_t>(static_cast<size_t>(opts.max_batch) * per_seq,
                                                               std::min<size_t>(per_seq, cap), cap));
  }
  return opts;
}

int kv_blocks(const EngineOptions& opts) { return (opts.kv_cache_tokens + opts.kv_block_size - 1) / opts.kv_block_size; }

size_t kv_bytes_per_position(const ModelConfig& c, int kv_dim, DType t) {
  return static_cast<size_t>(c.n_layer) * kv_dim * 2 * kv_elem_bytes(t);
}

// Device memory a Forward takes besides weights and KV cache, over-estimated: its activation
// buffers (model/forward.cc), the split-K attention workspace, the GEMM operands in half
// precision (kernels/cuda: x and a dequantized weight slice of at most 64 MiB), block tables,
// and 64 MiB for the rest (cuBLAS workspace, CUDA graphs, sampling buffers).
size_t working_bytes(const ModelConfig& c, const EngineOptions& o, const Backend& be) {
  const size_t T = static_cast<size_t>(o.max_step_tokens), D = c.n_embd, F = c.n_ff, V = c.n_vocab;
  const size_t q = static_cast<size_t>(c.n_head) * c.head_dim, kv = c.kv_dim();
  const size_t floats = T * (3 * D + 2 * q + 2 * kv + 2 * F + V + 9) +
                        be.attention_workspace_floats(o.max_step_tokens, c.n_head, c.head_dim, o.n_ctx);
  const size_t tables = static_cast<size_t>(o.max_batch) * ((o.n_ctx + o.kv_block_size - 1) / o.kv_block_size) * 4 * 2;
  return floats * 4 + (size_t{64} << 20) + 2 * T * std::max(D, F) + tables + (size_t{64} << 20);
}

std::string mib(size_t bytes) { return std::to_string((bytes + (size_t{1} << 19)) >> 20) + " MiB"; }

// GPUs: fits opts->kv_cache_tokens into the devices' memory (the least free of them), with
// `weights` bytes of weights on each; *out: the plan (its note says what was decided).
Status fit_memory(const ModelConfig& c, EngineOptions* opts, int requested_tokens, int kv_dim,
                  const std::vector<const Backend*>& backends, size_t weights, KvMemoryPlan* out) {
  size_t free = SIZE_MAX, total = SIZE_MAX;
  for (const Backend* b : backends) {
    size_t f = 0, t = 0;
    if (!b || !b->memory_info(&f, &t)) return Status::Ok();  // unknown: as on the CPU
    free = std::min(free, f);
    total = std::min(total, t);
  }
  if (backends.empty()) return Status::Ok();
  Result<KvMemoryPlan> plan = plan_kv_memory(*opts, requested_tokens, weights, working_bytes(c, *opts, *backends[0]),
                                             kv_bytes_per_position(c, kv_dim, *opts->kv_type), free, total);
  if (!plan.ok()) return plan.status();
  opts->kv_cache_tokens = plan->kv_tokens;
  *out = std::move(plan).value();
  return Status::Ok();
}

}  // namespace

Result<KvMemoryPlan> plan_kv_memory(const EngineOptions& o, int requested_tokens, size_t weights,
                                    size_t working, size_t per_position, size_t free, size_t total) {
  KvMemoryPlan p;
  p.budget = std::min(free, total / 100 * static_cast<size_t>(o.memory_percent));
  p.weights = weights;
  p.working = working;
  p.per_position = std::max<size_t>(per_position, 1);
  const size_t bs = static_cast<size_t>(o.kv_block_size);
  const size_t one_seq = (static_cast<size_t>(o.n_ctx) + bs - 1) / bs * bs;
  const size_t fixed = weights + working;
  const std::string figures = mib(p.budget) + " usable (" + std::to_string(o.memory_percent) + "% of " + mib(total) +
                              ", " + mib(free) + " free), weights " + mib(weights) + ", working buffers " + mib(working);
  if (p.budget < fixed || (p.budget - fixed) / p.per_position < one_seq) {
    return Status::ResourceExhausted(
        "not enough GPU memory for the KV cache of one " + std::to_string(o.n_ctx) + "-position sequence (" +
        mib(one_seq * p.per_position) + "): " + figures +
        "; lower --ctx or --max-step-tokens, use --kv-type f16 or a smaller quantization, or raise --gpu-memory-percent");
  }
  const size_t fit = std::min<size_t>((p.budget - fixed) / p.per_position / bs * bs, size_t{INT32_MAX} / bs * bs);
  const size_t want = (static_cast<size_t>(o.kv_cache_tokens) + bs - 1) / bs * bs;
  if (want <= fit) {
    p.kv_tokens = o.kv_cache_tokens;
    p.note = "KV cache of " + std::to_string(want) + " positions (" + mib(want * p.per_position) + ") fits: " + figures;
    return p;
  }
  if (requested_tokens > 0) {
    return Status::ResourceExhausted("--kv-cache-tokens " + std::to_string(requested_tokens) + " needs " +
                                     mib(want * p.per_position) + " but at most " + std::to_string(fit) +
                                     " positions fit: " + figures + "; ask for fewer or use 0 (auto)");
  }
  p.kv_tokens = static_cast<int>(fit);
  p.reduced = true;
  p.note = "KV cache cut from " + std::to_string(want) + " positions (max-batch x ctx) to " + std::to_string(fit) +
           " (" + mib(fit * p.per_position) + ") to fit: " + figures +
           "; sequences wait for cache blocks when all are taken";
  return p;
}

Result<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model, std::unique_ptr<Backend> backend,
                                               const EngineOptions& o) {
  const ModelConfig& c = model->config();
  if (!backend) return Status::InvalidArgument("no backend");
  size_t free_bytes = 0, total_bytes = 0;
  const bool memory_known = o.memory_percent > 0 && backend->memory_info(&free_bytes, &total_bytes);
  Result<EngineOptions> opts = normalize(c, o, c.kv_dim(), !backend->host_memory(), memory_known);
  if (!opts.ok()) return opts.status();
  KvMemoryPlan plan;
  if (memory_known) {
    DS_RETURN_IF_ERROR(fit_memory(c, &*opts, o.kv_cache_tokens, c.kv_dim(), {backend.get()}, model->weights().bytes, &plan));
  }
  std::unique_ptr<Engine> e(new Engine(std::move(model), std::move(backend), *opts));
  e->memory_plan_ = std::move(plan);
  Result<std::unique_ptr<KvCache>> kv =
      KvCache::Create(*e->backend_, c.n_layer, c.kv_dim(), opts->kv_block_size, kv_blocks(*opts), *opts->kv_type);
  if (!kv.ok()) return kv.status();
  e->kv_ = std::move(kv).value();
  Result<std::unique_ptr<Forward>> f =
      Forward::Create(e->model_, *e->backend_, *e->kv_, opts->max_step_tokens, {}, opts->n_ctx);
  if (!f.ok()) return f.status();
  e->fwd_ = std::move(f).value();
  e->sample_on_backend_ = opts->backend_sampling == BackendSampling::kOn ||
                          (opts->backend_sampling == BackendSampling::kAuto && !e->backend_->host_memory());
  return e;
}

std::string Engine::decode_note() const {
  if (!fwd_) return "";
  const Forward::FusedDecodeProbe& p = fwd_->fused_decode_probe();
  const std::string how = fwd_->fused_decode() ? "one-token steps run as one persistent kernel" : "one-token steps run a kernel per op";
  if (!fwd_->fused_decode_refusal().empty())
    return how + " (the persistent decode kernel does not take this model: " + fwd_->fused_decode_refusal() + ")";
  if (!p.ran) return fwd_->fused_decode() ? how : "";
  char probe[160];
  std::snprintf(probe, sizeof probe, " (load probe: %.0f us a step with the persistent kernel, %.0f us with a kernel per op", p.fused_us, p.per_op_us);
  return how + probe + (p.why.empty() ? std::string(")") : "; the persistent kernel was dropped: " + p.why + ")");
}

Result<std::unique_ptr<Engine>> Engine::CreateTensorParallel(std::shared_ptr<const Model> model,
                                                             std::vector<std::unique_ptr<Backend>> backends,
                                                             std::vector<std::unique_ptr<Communicator>> comms,
                                                             const EngineOptions& o,
                                                             std::vector<std::function<Status()>> rank_health) {
  // Pair the parts up first: a ShardRank frees its communicator before its backend (an
  // NCCL communicator synchronizes its backend's stream when it goes), on every path.
  const int n = static_cast<int>(backends.size());
  std::vector<ShardRank> ranks(std::max(backends.size(), comms.size()));
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (r < backends.size()) ranks[r].backend = std::move(backends[r]);
    if (r < comms.size()) ranks[r].comm = std::move(comms[r]);
    if (r < rank_health.size()) ranks[r].health = std::move(rank_health[r]);
  }
  if (n < 1) return Status::InvalidArgument("a tensor-parallel engine needs at least one backend");
  if (comms.size() != backends.size()) {
    return Status::InvalidArgument("a tensor-parallel engine needs one communicator per backend (" + std::to_string(n) +
                                   " backends, " + std::to_string(comms.size()) + " communicators)");
  }
  if (!rank_health.empty() && static_cast<int>(rank_health.size()) != n) {
    return Status::InvalidArgument("rank health checks: " + std::to_string(rank_health.size()) + " for " + std::to_string(n) + " ranks");
  }
  const ModelConfig& c = model->config();
  DS_RETURN_IF_ERROR(check_tensor_parallel(*model, n));
  std::vector<const Backend*> rank_backends;
  bool memory_known = o.memory_percent > 0;
  for (const ShardRank& r : ranks) {
    size_t f = 0, t = 0;
    rank_backends.push_back(r.backend.get());
    memory_known = memory_known && r.backend && r.backend->memory_info(&f, &t);
  }
  Result<EngineOptions> opts =
      normalize(c, o, c.kv_dim() / n, ranks[0].backend && !ranks[0].backend->host_memory(), memory_known);
  if (!opts.ok()) return opts.status();
  KvMemoryPlan plan;
  if (memory_known) {  // each rank holds about 1/n of the weights (embeddings and norms are replicated)
    DS_RETURN_IF_ERROR(fit_memory(c, &*opts, o.kv_cache_tokens, c.kv_dim() / n, rank_backends,
                                  model->weights().bytes / n + model->weights().tok_embd.row_stride() *
                                                                   static_cast<size_t>(model->weights().tok_embd.rows),
                                  &plan));
  }
  Result<std::unique_ptr<ShardGroup>> g = ShardGroup::Create(model, std::move(ranks), opts->kv_block_size, kv_blocks(*opts), opts->max_step_tokens,
                                                             std::chrono::milliseconds(opts->shard_step_timeout_ms), opts->n_ctx,
                                                             *opts->kv_type);
  if (!g.ok()) return g.status();
  std::unique_ptr<Engine> e(new Engine(std::move(model), nullptr, *opts));
  e->group_ = std::move(g).value();
  e->sample_on_backend_ = opts->backend_sampling != BackendSampling::kOff;
  e->memory_plan_ = std::move(plan);
  return e;
}

Result<std::unique_ptr<Engine>> Engine::CreateCpuTensorParallel(std::shared_ptr<const Model> model, int n_ranks,
                                                                int threads_per_rank, const EngineOptions& opts,
                                                                bool interleave_quant) {
  if (n_ranks < 1 || n_ranks > 64) return Status::InvalidArgument("tensor-parallel ranks must be in [1, 64], got " + std::to_string(n_ranks));
  if (threads_per_rank < 0) return Status::InvalidArgument("threads per rank must be >= 0 (0: all cores)");
  std::vector<std::unique_ptr<Backend>> backends;
  for (int r = 0; r < n_ranks; ++r) backends.push_back(make_cpu_backend({threads_per_rank, interleave_quant}));
  return CreateTensorParallel(std::move(model), std::move(backends), make_cpu_comm_group(n_ranks), opts);
}

Engine::Engine(std::shared_ptr<const Model> m, std::unique_ptr<Backend> b, const EngineOptions& o)
    : model_(std::move(m)), backend_(std::move(b)), opts_(o) {}

Engine::~Engine() {
  group_.reset();  // joins the rank threads
  fwd_.reset();
  kv_.reset();
}

KvCache& Engine::kv() const { return group_ ? group_->kv() : *kv_; }

Backend& Engine::backend() { return group_ ? group_->backend(0) : *backend_; }

std::string Engine::backend_note() {
  const std::string note = backend().self_check_note();
  return note.empty() ? "" : "the " + std::string(backend().name()) + " backend's self-check switched off: " + note;
}

int Engine::ranks() const { return group_ ? group_->size() : 1; }

Status Engine::add(SequenceRequest req) {
  const ModelConfig& c = model_->config();
  if (group_ && group_->failed()) return group_->failure();
  DS_RETURN_IF_ERROR(validate(req.params));
  if (req.prompt.empty()) return Status::InvalidArgument("the prompt is empty (it needs at least one token, e.g. BOS)");
  for (const std::vector<int32_t>* v : {&req.prompt, &req.generated})
    for (int32_t t : *v)
      if (t < 0 || t >= c.n_vocab) return Status::InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary (0.." + std::to_string(c.n_vocab - 1) + ")");
  const int64_t n_in = static_cast<int64_t>(req.prompt.size() + req.generated.size());
  if (n_in >= opts_.n_ctx) {
    return Status::InvalidArgument("the prompt has " + std::to_string(n_in) + " tokens but the context holds " + std::to_string(opts_.n_ctx));
  }
  if (static_cast<int64_t>(req.generated.size()) >= req.params.max_tokens) {
    return Status::InvalidArgument("resume: " + std::to_string(req.generated.size()) + " tokens already generated, max_tokens is " + std::to_string(req.params.max_tokens));
  }
  const int64_t positions = std::min<int64_t>(static_cast<int64_t>(req.prompt.size()) + req.params.max_tokens, opts_.n_ctx);
  if (kv().blocks_for(static_cast<int>(positions)) > kv().blocks().n_blocks()) {
    return Status::InvalidArgument("prompt + max_tokens (" + std::to_string(positions) + " positions) exceed this engine's whole KV cache (" +
                                   std::to_string(kv().blocks().n_blocks() * kv().block_size()) + ")");
  }
  auto has_id = [&](const std::unique_ptr<Seq>& s) { return s->req.id == req.id; };
  if (std::any_of(running_.begin(), running_.end(), has_id) || std::any_of(waiting_.begin(), waiting_.end(), has_id)) {
    return Status::InvalidArgument("sequence id " + std::to_string(req.id) + " is already in use");
  }

  auto s = std::make_unique<Seq>();
  s->tokens = req.prompt;
  s->sampler = SamplerState{req.params.seed, 0};
  s->decoder = std::make_unique<IncrementalDecoder>(model_->tokenizer());
  // Resume: replay the delivered tokens through the detokenizer and stop-string state
  // (their events were delivered before), then continue after them.
  std::vector<TokenEvent> replay;
  for (int32_t t : req.generated) {
    s->tokens.push_back(t);
    s->n_generated++;
    s->sampler.counter++;
    emit_token(*s, t, &replay);
  }
  s->req = std::move(req);
  waiting_.push_back(std::move(s));
  return Status::Ok();
}

void Engine::cancel(uint64_t id) { cancelled_.push_back(id); }

void Engine::admit() {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < opts_.max_batch) {
    Seq& s = *waiting_.front();
    const int64_t positions = std::min<int64_t>(static_cast<int64_t>(s.req.prompt.size()) + s.req.params.max_tokens, opts_.n_ctx);
    if (!kv().blocks().allocate(kv().blocks_for(static_cast<int>(positions)), &s.blocks)) break;  // FIFO: wait for blocks
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void Engine::finish(Seq& s, FinishReason r, std::vector<TokenEvent>* events, std::string error) {
  TokenEvent ev;
  ev.id = s.req.id;
  ev.finish = r;
  ev.error = std::move(error);
  if (r == FinishReason::kLength || r == FinishReason::kStop) ev.text = s.held + s.decoder->flush();
  s.held.clear();
  // Merge into this step's token event for the sequence when there is one.
  if (!events->empty() && events->back().id == s.req.id && events->back().finish == FinishReason::kNone) {
    events->back().text += ev.text;
    events->back().finish = r;
    events->back().error = ev.error;
  } else {
    events->push_back(std::move(ev));
  }
  kv().blocks().release(&s.blocks);
}

bool Engine::emit_token(Seq& s, int32_t tok, std::vector<TokenEvent>* events) {
  TokenEvent ev;
  ev.id = s.req.id;
  ev.index = s.n_generated - 1;
  ev.token = tok;
  const std::vector<std::string>& stops = s.req.params.stop;
  std::string cand = s.held + s.decoder->push(tok);
  s.held.clear();
  bool stopped = false;
  if (!stops.empty()) {
    const std::string buf = s.tail + cand;
    size_t best = std::string::npos;
    for (const std::string& st : stops) {
      // Earliest match that ends inside the new text.
      size_t from = s.tail.size() >= st.size() ? s.tail.size() - st.size() + 1 : 0;
      const size_t p = buf.find(st, from);
      if (p != std::string::npos) best = std::min(best, p);
    }
    if (best != std::string::npos) {
      cand = best > s.tail.size() ? buf.substr(s.tail.size(), best - s.tail.size()) : "";
      stopped = true;
    } else {
      // Hold back the longest suffix that could start a stop string.
      size_t hold = 0;
      for (const std::string& st : stops)
        for (size_t k = std::min(st.size() - 1, cand.size()); k > hold; --k)
          if (buf.compare(buf.size() - k, k, st, 0, k) == 0) {
            hold = k;
            break;
          }
      s.held = cand.substr(cand.size() - hold);
      cand.resize(cand.size() - hold);
      size_t max_stop = 0;
      for (const std::string& st : stops) max_stop = std::max(max_stop, st.size());
      s.tail += cand;
      if (s.tail.size() > max_stop) s.tail.erase(0, s.tail.size() - max_stop);
    }
  }
  ev.text = std::move(cand);
  events->push_back(std::move(ev));
  return stopped;
}

Status Engine::step(std::vector<TokenEvent>* events) {
  if (group_ && group_->failed()) {  // every sequence already ended with kError
    cancelled_.clear();
    return group_->failure();
  }
  // Cancellations first: their blocks free up for admission.
  for (uint64_t id : cancelled_) {
    for (auto it = running_.begin(); it != running_.end(); ++it)
      if ((*it)->req.id == id) {
        finish(**it, FinishReason::kCancelled, events);
        running_.erase(it);
        break;
      }
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
      if ((*it)->req.id == id) {
        finish(**it, FinishReason::kCancelled, events);
        waiting_.erase(it);
        break;
      }
  }
  cancelled_.clear();
  admit();
  if (running_.empty()) return Status::Ok();

  // Build the batch: decode tokens first, then prompt chunks within the budget.
  std::vector<ForwardToken> batch;
  std::vector<std::pair<Seq*, int32_t>> work;  // sequence, tokens taken this step
  std::vector<Seq*> wants;                      // sequences whose logits come back, in order
  int budget = opts_.max_step_tokens;
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& sp : running_) {
      Seq& s = *sp;
      const int32_t pending = static_cast<int32_t>(s.tokens.size()) - s.n_done;
      if (pending <= 0 || budget <= 0) continue;
      if ((pass == 0) != (pending == 1)) continue;
      const int32_t take = std::min(pending, budget);
      for (int32_t k = 0; k < take; ++k) {
        const int32_t pos = s.n_done + k;
        const bool last = pos == static_cast<int32_t>(s.tokens.size()) - 1;
        batch.push_back(ForwardToken{s.tokens[pos], pos, &s.blocks, last});
        if (last) wants.push_back(&s);
      }
      work.emplace_back(&s, take);
      budget -= take;
    }
  }

  // Sampling where the logits are (sample_on_backend_): each row's draw number is its
  // sampler's counter, advanced once the step succeeded.
  const int32_t n_vocab = model_->config().n_vocab;
  SampleStep sampling;
  if (sample_on_backend_) {
    for (Seq* s : wants)
      sampling.add(s->req.params, s->tokens, n_vocab, opts_.backend_sample_candidates, s->sampler.seed, s->sampler.counter);
  }
  std::vector<int32_t> picked(wants.size());
  int fallbacks = 0;
  Status st;
  if (sample_on_backend_) {
    st = group_ ? group_->run_sampled(batch, sampling, &picked, &fallbacks)
                : fwd_->run_sampled(batch, sampling, &picked, &fallbacks);
  } else {
    st = group_ ? group_->run(batch, &logits_) : fwd_->run(batch, &logits_);
  }
  ++steps_;
  if (!st.ok()) return fail_step(st, events);
  for (auto& [s, take] : work) s->n_done += take;

  if (sample_on_backend_) {
    for (Seq* s : wants) s->sampler.counter++;
    backend_samples_ += wants.size();
    backend_sample_fallbacks_ += fallbacks;
  } else {
    std::vector<float> row(n_vocab);
    for (size_t j = 0; j < wants.size(); ++j) {
      Seq& s = *wants[j];
      std::copy(logits_.begin() + j * n_vocab, logits_.begin() + (j + 1) * n_vocab, row.begin());
      picked[j] = sample_token(row, s.req.params, s.tokens, &s.sampler);
    }
  }
  // A failed backend (a CUDA error, memory running out) leaves its outputs unspecified: fail the
  // step (the worker then restarts with a fresh backend) instead of emitting garbage tokens.
  if (backend_) {
    const std::string failure = backend_->failure();
    if (!failure.empty()) return fail_step(Status::Internal(std::string(backend_->name()) + " backend failed: " + failure), events);
  }
  for (int32_t tok : picked) {
    if (tok < 0 || tok >= n_vocab) {
      return fail_step(Status::Internal("sampling gave token id " + std::to_string(tok) + " (vocabulary " +
                                        std::to_string(n_vocab) + ")"),
                       events);
    }
  }
  for (size_t j = 0; j < wants.size(); ++j) {
    Seq& s = *wants[j];
    const int32_t tok = picked[j];
    ++tokens_generated_;
    if (model_->tokenizer().is_eog(tok) && !s.req.params.ignore_eos) {
      finish(s, FinishReason::kStop, events);
      continue;
    }
    s.tokens.push_back(tok);
    s.n_generated++;
    const bool stopped = emit_token(s, tok, events);
    if (stopped) finish(s, FinishReason::kStop, events);
    else if (s.n_generated >= s.req.params.max_tokens || static_cast<int>(s.tokens.size()) >= opts_.n_ctx)
      finish(s, FinishReason::kLength, events);
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(), [](const std::unique_ptr<Seq>& s) { return s->blocks.empty(); }),
                 running_.end());
  return Status::Ok();
}

Status Engine::fail_step(const Status& st, std::vector<TokenEvent>* events) {
  for (auto& sp : running_) finish(*sp, FinishReason::kError, events, st.ToString());
  running_.clear();
  if (group_) {  // the group is gone: nothing waiting can ever run
    for (auto& sp : waiting_) finish(*sp, FinishReason::kError, events, st.ToString());
    waiting_.clear();
  }
  return st;
}

EngineStats Engine::stats() const {
  EngineStats s;
  s.running = static_cast<int>(running_.size());
  s.waiting = static_cast<int>(waiting_.size());
  s.kv_blocks_total = kv().blocks().n_blocks();
  s.kv_blocks_used = s.kv_blocks_total - kv().blocks().n_free();
  s.kv_type = kv().type();
  s.kv_bytes = kv().bytes();
  s.tokens_generated = tokens_generated_;
  s.steps = steps_;
  s.backend_samples = backend_samples_;
  s.backend_sample_fallbacks = backend_sample_fallbacks_;
  return s;
}

}  // namespace ds
