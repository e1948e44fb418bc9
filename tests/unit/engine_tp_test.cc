// The tensor-parallel engine (Engine::CreateTensorParallel over CPU rank threads): the
// same tokens as the single-rank engine (greedy, seeded sampling, continuous batching,
// resume, stop strings, cancel), a clear error for shapes that do not split, and a rank
// failure that fails the step, the group and nothing else (no hang, clean destruction).
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>

#include "model/engine.h"
#include "model/mkmodel.h"
#include "model/tensor_parallel.h"
#include "test_util.h"

namespace ds {
namespace {

// ---- models ---------------------------------------------------------------------------

ModelSpec tp_spec(const std::string& arch, DType type) { return test::tp_spec(arch, type, 33); }

std::shared_ptr<const Model> load(const std::string& path) {
  auto m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << path << ": " << m.status().ToString();
  return m.ok() ? std::shared_ptr<const Model>(*m) : nullptr;
}

// Written once per test binary run.
std::shared_ptr<const Model> random_model(const ModelSpec& spec) {
  static test::TempDir dir;
  static std::map<std::string, std::shared_ptr<const Model>> cache;
  const std::string key = spec.arch + "-" + dtype_name(spec.type) + "-" + std::to_string(spec.heads) + "x" +
                          std::to_string(spec.kv_heads) + "-" + std::to_string(spec.ffn);
  if (cache.count(key)) return cache[key];
  Status s = write_random_model(spec, dir.file(key + ".gguf"));
  EXPECT_TRUE(s.ok()) << s.ToString();
  return cache[key] = load(dir.file(key + ".gguf"));
}

std::shared_ptr<const Model> stories() { return load(test::shared_models() + "/stories260K.gguf"); }

// ---- engines and runs ----------------------------------------------------------------

EngineOptions options(int max_batch = 8, int step_tokens = 256) {
  EngineOptions o;
  o.max_batch = max_batch;
  o.max_step_tokens = step_tokens;
  o.n_ctx = 256;
  return o;
}

std::unique_ptr<Engine> single_engine(std::shared_ptr<const Model> m, const EngineOptions& o = options()) {
  auto e = Engine::Create(std::move(m), make_cpu_backend({1}), o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(e).value() : nullptr;
}

std::unique_ptr<Engine> tp_engine(std::shared_ptr<const Model> m, int ranks, const EngineOptions& o = options()) {
  auto e = Engine::CreateCpuTensorParallel(std::move(m), ranks, 1, o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  if (e.ok()) {
    EXPECT_EQ((*e)->ranks(), ranks);
  }
  return e.ok() ? std::move(e).value() : nullptr;
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<int32_t> indices;
  std::string text;
  FinishReason finish = FinishReason::kNone;
  std::string error;
};

void collect(const std::vector<TokenEvent>& evs, std::map<uint64_t, Outcome>* out) {
  for (const auto& ev : evs) {
    Outcome& o = (*out)[ev.id];
    if (ev.token >= 0) {
      o.tokens.push_back(ev.token);
      o.indices.push_back(ev.index);
    }
    o.text += ev.text;
    if (ev.finish != FinishReason::kNone) o.finish = ev.finish;
    o.error += ev.error;
  }
}

// Steps until idle; adds[k] are added just before step k (continuous batching).
std::map<uint64_t, Outcome> run(Engine& e, std::map<int, std::vector<SequenceRequest>> adds = {}) {
  std::map<uint64_t, Outcome> out;
  for (int k = 0; k < 100000 && (!e.idle() || !adds.empty()); ++k) {
    if (adds.count(k)) {
      for (SequenceRequest& r : adds[k]) EXPECT_TRUE(e.add(r).ok());
      adds.erase(k);
    }
    std::vector<TokenEvent> evs;
    Status s = e.step(&evs);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) break;
    collect(evs, &out);
  }
  return out;
}

SequenceRequest request(uint64_t id, std::vector<int32_t> prompt, int max_tokens, float temp = 0, uint64_t seed = 0) {
  SequenceRequest r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.params.max_tokens = max_tokens;
  r.params.temperature = temp;
  r.params.top_k = temp > 0 ? 40 : 0;
  r.params.top_p = temp > 0 ? 0.95f : 1.0f;
  r.params.seed = seed;
  r.params.ignore_eos = true;  // random models: full-length streams
  return r;
}

std::vector<int32_t> prompt_of(const Model& m, int i) {
  std::vector<int32_t> p = {m.tokenizer().bos()};
  const int32_t V = m.config().n_vocab;
  for (int k = 0; k <= i * 5; ++k) p.push_back(3 + (i * 31 + k * 7) % (V - 3));
  return p;
}

void expect_same(const std::map<uint64_t, Outcome>& got, const std::map<uint64_t, Outcome>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [id, w] : want) {
    const Outcome& g = got.at(id);
    EXPECT_EQ(g.tokens, w.tokens) << "sequence " << id;
    EXPECT_EQ(g.indices, w.indices) << "sequence " << id;
    EXPECT_EQ(g.text, w.text) << "sequence " << id;
    EXPECT_EQ(g.finish, w.finish) << "sequence " << id;
  }
}

// ---- equality with the single-rank engine --------------------------------------------

struct TpCase {
  const char* name;
  int ranks;
  std::function<std::shared_ptr<const Model>()> model;
};

class TpEngine : public ::testing::TestWithParam<TpCase> {
 protected:
  void SetUp() override {
    if (std::string(GetParam().name).find("stories") != std::string::npos) DS_REQUIRE_SHARED_MODELS();
    model_ = GetParam().model();
    ASSERT_TRUE(model_);
    ASSERT_TRUE(check_tensor_parallel(*model_, GetParam().ranks).ok());
  }
  int ranks() const { return GetParam().ranks; }
  std::shared_ptr<const Model> model_;
};

TEST_P(TpEngine, GreedyAloneMatchesSingleRank) {
  for (int i = 0; i < 4; ++i) {
    auto one = single_engine(model_);
    auto tp = tp_engine(model_, ranks());
    ASSERT_TRUE(one && tp);
    ASSERT_TRUE(one->add(request(i, prompt_of(*model_, i), 24)).ok());
    ASSERT_TRUE(tp->add(request(i, prompt_of(*model_, i), 24)).ok());
    const auto want = run(*one);
    expect_same(run(*tp), want);
    EXPECT_EQ(want.at(i).tokens.size(), 24u);
  }
}

// With F16 KV caches on every rank, the group still decodes the single-rank engine's greedy
// tokens, and each rank's cache is half the size of an F32 one. (Greedy only: the row-parallel
// all-reduce rounds differently from one rank's sums, and a last-bit difference can round a
// key or value to a neighbouring half, so a seeded draw near a boundary may pick another
// token; qwen2_q8_0 does at its 17th sampled token.)
TEST_P(TpEngine, AnF16CacheMatchesTheSingleRankF16Engine) {
  EngineOptions o = options();
  o.kv_type = DType::kF16;
  auto one = single_engine(model_, o);
  auto tp = tp_engine(model_, ranks(), o);
  auto tp32 = tp_engine(model_, ranks());
  ASSERT_TRUE(one && tp && tp32);
  EXPECT_EQ(tp->stats().kv_type, DType::kF16);
  EXPECT_EQ(tp->stats().kv_bytes * 2, tp32->stats().kv_bytes);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(one->add(request(i, prompt_of(*model_, i), 20)).ok());
    ASSERT_TRUE(tp->add(request(i, prompt_of(*model_, i), 20)).ok());
  }
  expect_same(run(*tp), run(*one));
}

// Sequences join at different steps with a small step budget, so prefill chunks and
// decodes of several sequences share steps; greedy and seeded sampling.
TEST_P(TpEngine, ContinuousBatchingMatchesSingleRankGreedyAndSampled) {
  for (float temp : {0.0f, 0.8f}) {
    SCOPED_TRACE(temp);
    std::map<int, std::vector<SequenceRequest>> adds;
    for (int i = 0; i < 6; ++i) adds[(i % 3) * 4 + i / 3].push_back(request(i, prompt_of(*model_, i), 12 + 3 * i, temp, 500 + i));
    auto one = single_engine(model_, options(4, 16));
    auto tp = tp_engine(model_, ranks(), options(4, 16));
    ASSERT_TRUE(one && tp);
    const auto want = run(*one, adds);
    const auto got = run(*tp, adds);
    expect_same(got, want);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(want.at(i).tokens.size(), static_cast<size_t>(12 + 3 * i));
    EXPECT_EQ(tp->stats().kv_blocks_used, 0);
    EXPECT_EQ(tp->stats().tokens_generated, one->stats().tokens_generated);
  }
}

// The group samples each rank's vocabulary slice and gathers only the candidates
// (BackendSampling::kAuto); its tokens are those of host sampling from the gathered logits
// (kOff), for every kind of request, also with 8 candidates (flat nuclei then need the whole
// row, gathered for those rows only).
TEST_P(TpEngine, SamplingTheSlicesGivesHostSamplingsTokens) {
  auto requests = [&] {
    std::vector<SequenceRequest> rs;
    for (int i = 0; i < 5; ++i) {
      SequenceRequest r = request(i, prompt_of(*model_, i), 16, 0.0f, 900 + i);
      SamplingParams& p = r.params;
      if (i == 1) { p.temperature = 0.7f; p.top_p = 0.9f; }
      if (i == 2) { p.temperature = 1.0f; }
      if (i == 3) { p.temperature = 1.2f; p.min_p = 0.05f; p.repeat_penalty = 1.3f; p.frequency_penalty = 0.4f; }
      if (i == 4) { p.temperature = 0.9f; p.top_k = 20; p.presence_penalty = 0.5f; p.penalty_last_n = 8; }
      rs.push_back(r);
    }
    return rs;
  };
  auto go = [&](BackendSampling where, int candidates, EngineStats* st) {
    EngineOptions o = options();
    o.backend_sampling = where;
    o.backend_sample_candidates = candidates;
    auto e = tp_engine(model_, ranks(), o);
    EXPECT_TRUE(e);
    if (!e) return std::map<uint64_t, Outcome>{};
    for (auto& r : requests()) EXPECT_TRUE(e->add(r).ok());
    auto out = run(*e);
    *st = e->stats();
    return out;
  };
  EngineStats host, slices, few;
  const auto want = go(BackendSampling::kOff, kSampleMaxCandidates, &host);
  expect_same(go(BackendSampling::kAuto, kSampleMaxCandidates, &slices), want);
  expect_same(go(BackendSampling::kAuto, 8, &few), want);
  EXPECT_EQ(host.backend_samples, 0u);
  EXPECT_EQ(slices.backend_samples, 5u * 16);
  EXPECT_EQ(few.backend_samples, 5u * 16);
  if (model_->config().n_vocab > 64) {
    EXPECT_GT(few.backend_sample_fallbacks, 0u);  // 8 candidates cannot hold a flat nucleus
  }
  EXPECT_LT(few.backend_sample_fallbacks, few.backend_samples);
}

TEST_P(TpEngine, ResumeContinuesExactly) {
  for (float temp : {0.0f, 0.8f}) {
    SCOPED_TRACE(temp);
    const std::vector<int32_t> prompt = prompt_of(*model_, 2);
    auto tp = tp_engine(model_, ranks());
    ASSERT_TRUE(tp && tp->add(request(1, prompt, 30, temp, 77)).ok());
    const Outcome full = run(*tp)[1];
    ASSERT_EQ(full.tokens.size(), 30u);
    auto one = single_engine(model_);
    ASSERT_TRUE(one->add(request(1, prompt, 30, temp, 77)).ok());
    EXPECT_EQ(run(*one)[1].tokens, full.tokens);
    for (int cut : {1, 13, 29}) {
      SequenceRequest r = request(2, prompt, 30, temp, 77);
      r.generated.assign(full.tokens.begin(), full.tokens.begin() + cut);
      auto tp2 = tp_engine(model_, ranks());
      ASSERT_TRUE(tp2->add(r).ok());
      const Outcome rest = run(*tp2)[2];
      std::vector<int32_t> joined(full.tokens.begin(), full.tokens.begin() + cut);
      joined.insert(joined.end(), rest.tokens.begin(), rest.tokens.end());
      EXPECT_EQ(joined, full.tokens) << "resumed after " << cut;
      ASSERT_FALSE(rest.indices.empty());
      EXPECT_EQ(rest.indices.front(), cut);
    }
  }
}

TEST_P(TpEngine, StopStringEndsTheStreamAsSingleRankDoes) {
  // A stop string taken from the middle of the single-rank engine's own text.
  auto one = single_engine(model_);
  ASSERT_TRUE(one->add(request(1, prompt_of(*model_, 1), 40)).ok());
  const std::string text = run(*one)[1].text;
  ASSERT_GT(text.size(), 12u);
  SequenceRequest r = request(1, prompt_of(*model_, 1), 40);
  r.params.stop = {text.substr(text.size() / 2, 3)};
  one = single_engine(model_);
  auto tp = tp_engine(model_, ranks());
  ASSERT_TRUE(one->add(r).ok() && tp->add(r).ok());
  const auto want = run(*one);
  EXPECT_EQ(want.at(1).finish, FinishReason::kStop);
  EXPECT_LT(want.at(1).text.size(), text.size());
  expect_same(run(*tp), want);
}

TEST_P(TpEngine, CancelFreesTheSequenceAtOnce) {
  auto tp = tp_engine(model_, ranks());
  ASSERT_TRUE(tp->add(request(1, prompt_of(*model_, 0), 200)).ok());
  ASSERT_TRUE(tp->add(request(2, prompt_of(*model_, 1), 10)).ok());
  std::vector<TokenEvent> evs;
  ASSERT_TRUE(tp->step(&evs).ok());
  EXPECT_GT(tp->stats().kv_blocks_used, 0);
  tp->cancel(1);
  evs.clear();
  ASSERT_TRUE(tp->step(&evs).ok());
  bool cancelled = false;
  for (const auto& ev : evs) cancelled |= ev.id == 1 && ev.finish == FinishReason::kCancelled;
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(tp->stats().running, 1);
  auto rest = run(*tp);
  EXPECT_EQ(rest[2].finish, FinishReason::kLength);
  EXPECT_EQ(tp->stats().kv_blocks_used, 0);
  EXPECT_TRUE(tp->idle());
}

INSTANTIATE_TEST_SUITE_P(
    Models, TpEngine,
    ::testing::Values(TpCase{"llama_f32_2", 2, [] { return random_model(tp_spec("llama", DType::kF32)); }},
                      TpCase{"llama_f32_4", 4, [] { return random_model(tp_spec("llama", DType::kF32)); }},
                      TpCase{"qwen2_q8_0_2", 2, [] { return random_model(tp_spec("qwen2", DType::kQ8_0)); }},
                      TpCase{"qwen2_f16_4", 4, [] { return random_model(tp_spec("qwen2", DType::kF16)); }},
                      TpCase{"stories260K_2", 2, stories}, TpCase{"stories260K_4", 4, stories}),
    [](const auto& info) { return std::string(info.param.name); });

// The golden text of stories260K (engine_test.cc) through two ranks.
TEST(TpEngineStories, StopStringOnTheRealModel) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = stories();
  auto tp = tp_engine(model, 2, options());
  SequenceRequest r = request(1, model->tokenizer().encode("Once upon a time", true), 64);
  r.params.ignore_eos = false;
  r.params.stop = {"Lily"};
  ASSERT_TRUE(tp->add(r).ok());
  const Outcome o = run(*tp)[1];
  EXPECT_EQ(o.finish, FinishReason::kStop);
  EXPECT_EQ(o.text, ", there was a little girl named ");
}

// ---- construction errors ---------------------------------------------------------------

TEST(TpEngineCreate, RefusesShapesThatDoNotSplitWithAClearError) {
  auto spec = model_preset("tiny");  // 4 heads, 2 KV heads
  ASSERT_TRUE(spec.ok());
  auto model = random_model(*spec);
  auto e = Engine::CreateCpuTensorParallel(model, 4, 1, options());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("head_count_kv 2 is not a multiple of 4"), std::string::npos) << e.status().message();
  EXPECT_NE(e.status().message().find("rank counts that fit: 1, 2"), std::string::npos) << e.status().message();
  EXPECT_TRUE(Engine::CreateCpuTensorParallel(model, 2, 1, options()).ok());
}

TEST(TpEngineCreate, RefusesMismatchedParts) {
  auto model = random_model(tp_spec("llama", DType::kF32));
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(make_cpu_backend({1}));
  backends.push_back(make_cpu_backend({1}));
  auto e = Engine::CreateTensorParallel(model, std::move(backends), make_cpu_comm_group(4), options());
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("one communicator per backend (2 backends, 4 communicators)"), std::string::npos)
      << e.status().message();

  backends.clear();
  backends.push_back(make_cpu_backend({1}));
  backends.push_back(make_cpu_backend({1}));
  auto comms = make_cpu_comm_group(2);
  std::swap(comms[0], comms[1]);
  e = Engine::CreateTensorParallel(model, std::move(backends), std::move(comms), options());
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("rank 0 of 2 was given the communicator of rank 1 of 2"), std::string::npos)
      << e.status().message();
  EXPECT_EQ(Engine::CreateCpuTensorParallel(model, 0, 1, options()).status().code(), StatusCode::kInvalidArgument);
}

TEST(TpEngineCreate, CudaFactoryExplainsWhatIsMissing) {
  auto model = random_model(tp_spec("llama", DType::kF32));
  auto e = Engine::CreateCudaTensorParallel(model, {0, 1}, options());
  if (e.ok()) GTEST_SKIP() << "two GPUs with NCCL are present";
  EXPECT_FALSE(e.status().message().empty());
  std::printf("CreateCudaTensorParallel here: %s\n", e.status().ToString().c_str());
#ifdef DS_HAVE_CUDA
  EXPECT_EQ(Engine::CreateCudaTensorParallel(model, {}, options()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Engine::CreateCudaTensorParallel(model, {0, 0}, options()).status().code(), StatusCode::kInvalidArgument);
#else
  EXPECT_EQ(e.status().code(), StatusCode::kNotSupported);
#endif
}

// On a GPU machine: the NCCL group of one rank per GPU (one GPU: a group of one, which
// still runs the sharded forward, the collectives and the health checks) gives the
// single-GPU engine's tokens. Skipped without a usable GPU or NCCL.
TEST(TpEngineCuda, MatchesTheSingleGpuEngine) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no usable GPU";
  auto model = random_model(tp_spec("llama", DType::kQ8_0));
  std::map<int, std::vector<SequenceRequest>> adds;
  for (int i = 0; i < 4; ++i) adds[i * 2].push_back(request(i, prompt_of(*model, i), 20, i % 2 ? 0.8f : 0.0f, 90 + i));
  std::string error;
  std::unique_ptr<Backend> gpu0 = make_cuda_backend(0, &error);
  ASSERT_TRUE(gpu0) << error;
  // F32 caches: with F16 ones a last-bit difference of the all-reduce can round a key to
  // another half, and a seeded draw may then differ (AnF16CacheMatchesTheSingleRankF16Engine).
  EngineOptions o = options(4, 16);
  o.kv_type = DType::kF32;
  auto one = Engine::Create(model, std::move(gpu0), o);
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  const auto want = run(**one, adds);
  for (std::vector<int> gpus : {std::vector<int>{0}, std::vector<int>{0, 1}}) {
    auto tp = Engine::CreateCudaTensorParallel(model, gpus, o);
    if (!tp.ok() && tp.status().code() == StatusCode::kNotSupported) GTEST_SKIP() << tp.status().ToString();
    if (!tp.ok() && gpus.size() > 1) {
      std::printf("no second GPU: %s\n", tp.status().ToString().c_str());
      continue;
    }
    ASSERT_TRUE(tp.ok()) << tp.status().ToString();
    SCOPED_TRACE(gpus.size());
    expect_same(run(**tp, adds), want);
  }
}

// ---- failures ----------------------------------------------------------------------------

// A Communicator whose fail_at-th collective fails without joining the others, as a rank
// whose link died would: the other ranks are left in the collective until the abort.
class FailingComm final : public Communicator {
 public:
  FailingComm(std::unique_ptr<Communicator> inner, int fail_at) : inner_(std::move(inner)), fail_at_(fail_at) {}
  const char* name() const override { return "failing"; }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  bool all_reduce_sum(float* buf, size_t n) override { return ok() && inner_->all_reduce_sum(buf, n); }
  bool all_gather(const float* send, size_t n, float* recv) override { return ok() && inner_->all_gather(send, n, recv); }
  bool broadcast(float* buf, size_t n, int root) override { return ok() && inner_->broadcast(buf, n, root); }
  void abort() override { inner_->abort(); }
  const std::string& last_error() const override { return error_.empty() ? inner_->last_error() : error_; }

 private:
  bool ok() {
    if (++calls_ != fail_at_) return true;
    error_ = "injected link failure";
    return false;
  }
  std::unique_ptr<Communicator> inner_;
  int fail_at_;
  int calls_ = 0;
  std::string error_;
};

// Steps until a step fails; returns its Status and every event seen.
Status step_until_failure(Engine& e, std::map<uint64_t, Outcome>* out) {
  for (int k = 0; k < 1000; ++k) {
    std::vector<TokenEvent> evs;
    Status s = e.step(&evs);
    collect(evs, out);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

void expect_group_failed(Engine& e, const Status& failure, const std::map<uint64_t, Outcome>& out, int n_seqs) {
  // Every sequence, running or waiting, ended with the failure.
  ASSERT_EQ(out.size(), static_cast<size_t>(n_seqs));
  for (const auto& [id, o] : out) {
    EXPECT_EQ(o.finish, FinishReason::kError) << "sequence " << id;
    EXPECT_NE(o.error.find("rank"), std::string::npos) << o.error;
  }
  EXPECT_TRUE(e.idle());
  // The engine refuses later work with the same failure.
  std::vector<TokenEvent> evs;
  EXPECT_EQ(e.step(&evs).message(), failure.message());
  EXPECT_TRUE(evs.empty());
  EXPECT_EQ(e.add(request(99, {1, 2, 3}, 4)).message(), failure.message());
}

TEST(TpEngineFailure, ALinkFailureFailsTheStepNamesTheRankAndDestructs) {
  for (int ranks : {2, 4}) {
    SCOPED_TRACE(ranks);
    auto model = random_model(tp_spec("llama", DType::kF32));
    const int bad = ranks - 1;
    std::vector<std::unique_ptr<Backend>> backends;
    for (int r = 0; r < ranks; ++r) backends.push_back(make_cpu_backend({1}));
    auto comms = make_cpu_comm_group(ranks);
    comms[bad] = std::make_unique<FailingComm>(std::move(comms[bad]), 12);  // 5 collectives a step: mid third step
    auto e = Engine::CreateTensorParallel(model, std::move(backends), std::move(comms), options(2));
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE((*e)->add(request(i, prompt_of(*model, i), 20)).ok());  // one waits
    std::map<uint64_t, Outcome> out;
    const Status s = step_until_failure(**e, &out);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kInternal);
    const std::string want = "tensor-parallel rank " + std::to_string(bad) + " of " + std::to_string(ranks) + " failed";
    EXPECT_NE(s.message().find(want), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("injected link failure"), std::string::npos) << s.message();
    EXPECT_EQ((*e)->stats().steps, 3u);
    expect_group_failed(**e, s, out, 3);
  }  // destruction joins the rank threads
}

TEST(TpEngineFailure, AFailedHealthCheckFailsTheGroup) {
  auto model = random_model(tp_spec("qwen2", DType::kF32));
  std::vector<std::unique_ptr<Backend>> backends;
  for (int r = 0; r < 2; ++r) backends.push_back(make_cpu_backend({1}));
  int steps = 0;
  std::vector<std::function<Status()>> health = {
      {}, [&steps] { return ++steps == 4 ? Status::Internal("GPU 1: an illegal memory access (injected)") : Status::Ok(); }};
  auto e = Engine::CreateTensorParallel(model, std::move(backends), make_cpu_comm_group(2), options(), std::move(health));
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  for (uint64_t i = 0; i < 2; ++i) ASSERT_TRUE((*e)->add(request(i, prompt_of(*model, i), 20)).ok());
  std::map<uint64_t, Outcome> out;
  const Status s = step_until_failure(**e, &out);
  EXPECT_EQ(s.ToString(),
            "Internal: tensor-parallel rank 1 of 2 failed (the group is aborted): GPU 1: an illegal memory access (injected)");
  EXPECT_EQ(out.at(0).tokens.size(), 3u);  // the failed step's tokens are not delivered
  expect_group_failed(**e, s, out, 2);
}

// A rank that hangs (here: its health check blocks until the test lets it go) fails the
// step once shard_step_timeout_ms passes, like a failed rank (shard_group_test.cc has the
// watchdog's own cases).
TEST(TpEngineFailure, AHungRankFailsTheStepAfterTheStepTimeout) {
  auto model = random_model(tp_spec("llama", DType::kF32));
  std::vector<std::unique_ptr<Backend>> backends;
  for (int r = 0; r < 2; ++r) backends.push_back(make_cpu_backend({1}));
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  int steps = 0;
  std::vector<std::function<Status()>> health = {{}, [&] {
                                                   if (++steps == 3) {
                                                     std::unique_lock<std::mutex> lock(mu);
                                                     cv.wait(lock, [&] { return release; });
                                                   }
                                                   return Status::Ok();
                                                 }};
  EngineOptions o = options();
  o.shard_step_timeout_ms = 300;
  auto e = Engine::CreateTensorParallel(model, std::move(backends), make_cpu_comm_group(2), o, std::move(health));
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  for (uint64_t i = 0; i < 2; ++i) ASSERT_TRUE((*e)->add(request(i, prompt_of(*model, i), 20)).ok());
  std::map<uint64_t, Outcome> out;
  const auto t0 = std::chrono::steady_clock::now();
  const Status s = step_until_failure(**e, &out);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_EQ(s.ToString(), "Internal: tensor-parallel rank 1 of 2 did not finish step 3 within 300 ms (hung); group aborted");
  expect_group_failed(**e, s, out, 2);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  e->reset();  // joins rank 1, now out of its health check
}

TEST(TpEngineCreate, RefusesANegativeStepTimeout) {
  EngineOptions o = options();
  o.shard_step_timeout_ms = -1;
  auto e = Engine::CreateCpuTensorParallel(random_model(tp_spec("llama", DType::kF32)), 2, 1, o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("step timeout"), std::string::npos) << e.status().message();
}

TEST(TpEngineFailure, DestructsWhileIdleAndWithSequencesRunning) {
  auto model = random_model(tp_spec("llama", DType::kF32));
  for (int ranks : {1, 2, 4}) {
    auto idle = tp_engine(model, ranks);
    ASSERT_TRUE(idle);
    idle.reset();
    auto busy = tp_engine(model, ranks);
    ASSERT_TRUE(busy->add(request(1, prompt_of(*model, 3), 50)).ok());
    std::vector<TokenEvent> evs;
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(busy->step(&evs).ok());
    busy.reset();
  }
}

// ---- timing (manual: --gtest_also_run_disabled_tests) -----------------------------------

TEST(TpEngineBench, DISABLED_DecodeStepTimeVersusSingleRank) {
  ModelSpec spec = tp_spec("llama", DType::kQ8_0);
  spec.dim = 512;
  spec.layers = 6;
  spec.heads = 8;
  spec.kv_heads = 4;
  spec.ffn = 1536;
  spec.vocab = 8000;
  auto model = random_model(spec);
  auto time_decode = [&](Engine& e, const char* what) {
    for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(e.add(request(i, prompt_of(*model, i), 64)).ok());
    std::vector<TokenEvent> evs;
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(e.step(&evs).ok());  // prefill
    const auto t0 = std::chrono::steady_clock::now();
    int steps = 0;
    for (; steps < 40; ++steps) ASSERT_TRUE(e.step(&evs).ok());
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
    std::printf("%-34s %7.2f ms per decode step (batch 4)\n", what, ms);
  };
  auto one1 = single_engine(model);
  time_decode(*one1, "single rank, 1 thread");
  auto e2 = Engine::Create(model, make_cpu_backend({2}), options());
  time_decode(**e2, "single rank, 2 threads");
  auto tp = tp_engine(model, 2);
  time_decode(*tp, "tensor-parallel 2 ranks x 1 thread");
}

}  // namespace
}  // namespace ds
