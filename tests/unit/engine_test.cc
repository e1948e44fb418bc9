// The engine end to end: golden greedy outputs, batching invariance, resume, stop
// strings, cancellation, admission and request validation.
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <optional>

#include "model/engine.h"
#include "model/mkmodel.h"
#include "test_util.h"

namespace ds {
namespace {

std::shared_ptr<Model> load(const std::string& path) {
  auto m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : nullptr;
}

std::unique_ptr<Engine> make_engine(std::shared_ptr<Model> m, int max_batch = 8, int kv_tokens = 0, int step_tokens = 256,
                                    std::optional<DType> kv_type = std::nullopt) {
  EngineOptions o;
  o.kv_type = kv_type;
  o.max_batch = max_batch;
  o.kv_cache_tokens = kv_tokens;
  o.max_step_tokens = step_tokens;
  o.n_ctx = 512;
  auto e = Engine::Create(std::move(m), make_cpu_backend({2}), o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(e).value() : nullptr;
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<int32_t> indices;
  std::string text;
  FinishReason finish = FinishReason::kNone;
};

// Steps until every sequence has finished; collects events per id.
std::map<uint64_t, Outcome> run_all(Engine& e) {
  std::map<uint64_t, Outcome> out;
  for (int guard = 0; !e.idle() && guard < 100000; ++guard) {
    std::vector<TokenEvent> evs;
    Status s = e.step(&evs);
    EXPECT_TRUE(s.ok()) << s.ToString();
    for (const auto& ev : evs) {
      Outcome& o = out[ev.id];
      if (ev.token >= 0) {
        o.tokens.push_back(ev.token);
        o.indices.push_back(ev.index);
      }
      o.text += ev.text;
      if (ev.finish != FinishReason::kNone) o.finish = ev.finish;
    }
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
  return r;
}

class EngineGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(EngineGolden, GreedyMatchesLlamaCppTokenForToken) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/" + GetParam());
  ASSERT_TRUE(model);
  std::ifstream golden(test::shared_models() + "/stories260K-golden.jsonl");
  std::string line;
  int cases = 0;
  while (std::getline(golden, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::vector<int32_t> want_prompt = j["prompt_ids"], want_gen = j["gen_ids"];
    const std::vector<int32_t> prompt = model->tokenizer().encode(j["prompt"].get<std::string>(), true);
    EXPECT_EQ(prompt, want_prompt) << j["prompt"];
    // The default cache (F32 on the CPU), then an F16 one (as GPUs use by default): llama.cpp's
    // default cache is F16 too.
    for (DType kv : {DType::kF32, DType::kF16}) {
      auto e = make_engine(model, 8, 0, 256, kv);
      ASSERT_TRUE(e->add(request(1, prompt, j["n_predict"])).ok());
      auto out = run_all(*e);
      EXPECT_EQ(out[1].tokens, want_gen) << j["prompt"] << " (KV cache " << dtype_name(kv) << ")";
      EXPECT_EQ(out[1].text, j["text"].get<std::string>());
      EXPECT_EQ(out[1].finish, FinishReason::kLength);
    }
    ++cases;
  }
  EXPECT_EQ(cases, 3);
}

INSTANTIATE_TEST_SUITE_P(Stories260K, EngineGolden, ::testing::Values("stories260K.gguf", "stories260K-f16.gguf"),
                         [](const auto& info) { return std::string(info.param).find("f16") != std::string::npos ? "f16" : "f32"; });

// A random model written once per test binary run.
std::shared_ptr<Model> random_model(const std::string& preset, DType type) {
  static test::TempDir dir;
  static std::map<std::string, std::shared_ptr<Model>> cache;
  const std::string key = preset + dtype_name(type);
  if (cache.count(key)) return cache[key];
  auto spec = model_preset(preset);
  EXPECT_TRUE(spec.ok());
  spec->type = type;
  spec->seed = 5;
  const std::string path = dir.file(key + ".gguf");
  EXPECT_TRUE(write_random_model(*spec, path).ok());
  return cache[key] = load(path);
}

void expect_batch_equals_alone(const std::shared_ptr<Model>& model, float temp) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> p = {model->tokenizer().bos()};
    for (int k = 0; k <= i * 3; ++k) p.push_back(300 + (i * 31 + k * 7) % 200);
    prompts.push_back(p);
  }
  std::map<uint64_t, Outcome> alone;
  for (int i = 0; i < 8; ++i) {
    auto e = make_engine(model, 1);
    ASSERT_TRUE(e->add(request(i, prompts[i], 24 + i, temp, 1000 + i)).ok());
    alone[i] = run_all(*e)[i];
  }
  // All at once, with a small step budget so prefill chunks and decodes mix.
  auto e = make_engine(model, 8, 0, 16);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(e->add(request(i, prompts[i], 24 + i, temp, 1000 + i)).ok());
  auto batch = run_all(*e);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(batch[i].tokens, alone[i].tokens) << "sequence " << i;
    ASSERT_EQ(batch[i].tokens.size(), static_cast<size_t>(24 + i));
    for (int k = 0; k < 24 + i; ++k) EXPECT_EQ(batch[i].indices[k], k);
  }
}

TEST(Engine, BatchedDecodeEqualsAloneGreedyStories) {
  DS_REQUIRE_SHARED_MODELS();
  expect_batch_equals_alone(load(test::shared_models() + "/stories260K.gguf"), 0);
}

TEST(Engine, AnF16KvCacheTakesHalfTheMemoryAndKeepsBatchInvariance) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  ASSERT_TRUE(model);
  auto f32 = make_engine(model, 8, 1024, 256, DType::kF32), f16 = make_engine(model, 8, 1024, 256, DType::kF16);
  ASSERT_TRUE(f32 && f16);
  const EngineStats s32 = f32->stats(), s16 = f16->stats();
  EXPECT_EQ(s32.kv_type, DType::kF32);
  EXPECT_EQ(s16.kv_type, DType::kF16);
  EXPECT_GT(s16.kv_bytes, 0u);
  EXPECT_EQ(s16.kv_bytes * 2, s32.kv_bytes);
  EXPECT_EQ(s16.kv_blocks_total, s32.kv_blocks_total);
  // The CPU default is F32; an unsupported type is a clear error.
  EXPECT_EQ(make_engine(model)->stats().kv_type, DType::kF32);
  EngineOptions bad;
  bad.kv_type = DType::kQ8_0;
  auto e = Engine::Create(model, make_cpu_backend({1}), bad);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("q8_0"), std::string::npos) << e.status().message();
  // Sequences decoded together get the tokens they get alone, on the F16 cache too.
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p = {model->tokenizer().bos()};
    for (int k = 0; k <= i * 5; ++k) p.push_back(300 + (i * 31 + k * 7) % 200);
    prompts.push_back(p);
  }
  std::map<uint64_t, Outcome> alone;
  for (int i = 0; i < 4; ++i) {
    auto one = make_engine(model, 1, 0, 256, DType::kF16);
    ASSERT_TRUE(one->add(request(i, prompts[i], 20, 0.8f, 7 + i)).ok());
    alone[i] = run_all(*one)[i];
  }
  auto batch = make_engine(model, 4, 0, 8, DType::kF16);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(batch->add(request(i, prompts[i], 20, 0.8f, 7 + i)).ok());
  auto together = run_all(*batch);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(together[i].tokens, alone[i].tokens) << "sequence " << i;
}

// GPUs: the KV cache is fitted into the device's memory (model/engine.h plan_kv_memory).
TEST(EngineMemory, PlanKeepsWhatFitsCutsAnAutomaticCacheAndExplainsWhatDoesNot) {
  constexpr size_t kMB = 1000 * 1000;
  EngineOptions o;
  o.kv_block_size = 16;
  o.n_ctx = 256;
  o.kv_cache_tokens = 2048;  // normalized: max_batch 8 x n_ctx
  o.memory_percent = 90;
  // Room for 60,000 positions of 1000 bytes: the 2048 asked for fit.
  auto p = plan_kv_memory(o, 0, 10 * kMB, 20 * kMB, 1000, 100 * kMB, 100 * kMB);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->kv_tokens, 2048);
  EXPECT_FALSE(p->reduced);
  EXPECT_EQ(p->budget, 90 * kMB);
  EXPECT_NE(p->note.find("fits"), std::string::npos) << p->note;
  // Only 12 MB free: 1 MB left after weights and buffers, 1000 positions, 992 in whole blocks.
  p = plan_kv_memory(o, 0, 10 * kMB, 1 * kMB, 1000, 12 * kMB, 100 * kMB);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->kv_tokens, 992);
  EXPECT_TRUE(p->reduced);
  EXPECT_NE(p->note.find("cut from 2048 positions"), std::string::npos) << p->note;
  // The same capacity asked for explicitly cannot be honoured: an error that says what fits.
  p = plan_kv_memory(o, 2048, 10 * kMB, 1 * kMB, 1000, 12 * kMB, 100 * kMB);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(p.status().message().find("--kv-cache-tokens 2048"), std::string::npos) << p.status().message();
  EXPECT_NE(p.status().message().find("at most 992 positions"), std::string::npos) << p.status().message();
  // Not even one 256-position sequence: the error names the figures and what to change.
  p = plan_kv_memory(o, 0, 10 * kMB, 1 * kMB, 10000, 12 * kMB, 100 * kMB);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kResourceExhausted);
  for (const char* part : {"one 256-position sequence", "weights 10 MiB", "--ctx", "--gpu-memory-percent"})
    EXPECT_NE(p.status().message().find(part), std::string::npos) << part << ": " << p.status().message();
  // The percentage bounds the budget even when more is free.
  o.memory_percent = 10;
  p = plan_kv_memory(o, 0, 10 * kMB, 1 * kMB, 1000, 100 * kMB, 100 * kMB);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("(10% of"), std::string::npos) << p.status().message();
}

TEST(Engine, BatchedDecodeEqualsAloneSampledEveryType) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    SCOPED_TRACE(dtype_name(t));
    expect_batch_equals_alone(random_model("tiny", t), 0.9f);
    expect_batch_equals_alone(random_model("tiny-qwen2", t), 0);
  }
}

// The CPU backend that reports a failure (as the CUDA backend does after a CUDA error) once
// it has run fail_after matmuls.
class FailingBackend final : public test::ForwardingBackend {
 public:
  explicit FailingBackend(int fail_after) : fail_after_(fail_after) {}
  const char* name() const override { return "failing"; }
  std::string failure() const override { return matmuls_ >= fail_after_ ? "injected device fault" : ""; }
  void matmul(const WeightRef& w, const float* x, int64_t n, float* y) override {
    ++matmuls_;
    ForwardingBackend::matmul(w, x, n, y);
  }

 private:
  int fail_after_;
  int matmuls_ = 0;
};

TEST(Engine, ABackendFailureFailsTheStepInsteadOfEmittingGarbage) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  for (BackendSampling where : {BackendSampling::kOff, BackendSampling::kOn}) {
    EngineOptions o;
    o.n_ctx = 256;
    o.backend_sampling = where;
    auto e = Engine::Create(model, std::make_unique<FailingBackend>(200), o);  // stories260K: 5 layers x 7 + 1 a step
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    ASSERT_TRUE((*e)->add(request(1, {1, 403, 407}, 50)).ok());
    std::vector<TokenEvent> events;
    Status st;
    int steps = 0;
    while (st.ok() && !(*e)->idle() && steps < 100) {
      st = (*e)->step(&events);
      ++steps;
    }
    ASSERT_FALSE(st.ok()) << "the failure was never noticed";
    EXPECT_NE(st.message().find("failing backend failed: injected device fault"), std::string::npos) << st.ToString();
    EXPECT_LT(steps, 10);
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().finish, FinishReason::kError);
    EXPECT_TRUE((*e)->idle());
  }
}

// Sampling on the backend (Backend::sample_candidates; on the CPU backend its host
// reference) gives the tokens of host sampling, for every kind of request in one batch.
TEST(Engine, BackendSamplingGivesHostSamplingsTokens) {
  auto spec = model_preset("tiny");
  ASSERT_TRUE(spec.ok());
  spec->vocab = 2000;  // more than the candidates, so the sums and the fallback both run
  spec->seed = 11;
  test::TempDir dir;
  ASSERT_TRUE(write_random_model(*spec, dir.file("v2000.gguf")).ok());
  auto model = load(dir.file("v2000.gguf"));
  ASSERT_TRUE(model);
  auto requests = [&] {
    std::vector<SequenceRequest> rs;
    for (int i = 0; i < 6; ++i) {
      SequenceRequest r = request(i, {model->tokenizer().bos(), 300 + i, 400 + 2 * i}, 20, 0, 500 + i);
      SamplingParams& p = r.params;
      if (i == 1) { p.temperature = 0.8f; p.top_k = 40; p.top_p = 0.95f; }
      if (i == 2) { p.temperature = 0.7f; p.top_p = 0.9f; }
      if (i == 3) { p.temperature = 1.0f; }
      if (i == 4) { p.temperature = 1.2f; p.min_p = 0.05f; p.repeat_penalty = 1.3f; p.frequency_penalty = 0.4f; }
      if (i == 5) { p.repeat_penalty = 1.5f; p.presence_penalty = 0.5f; p.penalty_last_n = 8; }
      rs.push_back(r);
    }
    return rs;
  };
  auto run = [&](BackendSampling where, int candidates, EngineStats* stats) {
    EngineOptions o;
    o.n_ctx = 256;
    o.backend_sampling = where;
    o.backend_sample_candidates = candidates;
    auto e = Engine::Create(model, make_cpu_backend({2}), o);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    for (auto& r : requests()) EXPECT_TRUE((*e)->add(r).ok());
    auto out = run_all(**e);
    *stats = (*e)->stats();
    return out;
  };
  EngineStats host_stats, dev_stats, small_stats;
  auto host = run(BackendSampling::kOff, kSampleMaxCandidates, &host_stats);
  auto dev = run(BackendSampling::kOn, kSampleMaxCandidates, &dev_stats);
  auto small = run(BackendSampling::kOn, 8, &small_stats);
  for (uint64_t i = 0; i < 6; ++i) {
    ASSERT_EQ(host[i].tokens.size(), 20u) << i;
    EXPECT_EQ(dev[i].tokens, host[i].tokens) << "request " << i;
    EXPECT_EQ(small[i].tokens, host[i].tokens) << "request " << i << " (8 candidates)";
  }
  EXPECT_EQ(host_stats.backend_samples, 0u);
  EXPECT_EQ(dev_stats.backend_samples, 120u);
  EXPECT_GT(small_stats.backend_sample_fallbacks, 0u);  // 8 candidates cannot hold a flat nucleus
  EXPECT_LT(small_stats.backend_sample_fallbacks, small_stats.backend_samples);
  // Bad option.
  EngineOptions bad;
  bad.backend_sample_candidates = kSampleMaxCandidates + 1;
  auto e = Engine::Create(model, make_cpu_backend({1}), bad);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("candidates"), std::string::npos);
}

void expect_resume_exact(const std::shared_ptr<Model>& model, float temp) {
  const std::vector<int32_t> prompt = model->tokenizer().encode("Once upon a time", true);
  auto e = make_engine(model);
  ASSERT_TRUE(e->add(request(1, prompt, 48, temp, 77)).ok());
  const Outcome full = run_all(*e)[1];
  ASSERT_EQ(full.tokens.size(), 48u);
  for (int cut : {1, 17, 47}) {
    SequenceRequest r = request(2, prompt, 48, temp, 77);
    r.generated.assign(full.tokens.begin(), full.tokens.begin() + cut);
    auto e2 = make_engine(model);
    ASSERT_TRUE(e2->add(r).ok());
    const Outcome rest = run_all(*e2)[2];
    std::vector<int32_t> joined(full.tokens.begin(), full.tokens.begin() + cut);
    joined.insert(joined.end(), rest.tokens.begin(), rest.tokens.end());
    EXPECT_EQ(joined, full.tokens) << "resumed after " << cut;
    ASSERT_FALSE(rest.indices.empty());
    EXPECT_EQ(rest.indices.front(), cut);
  }
}

TEST(Engine, ResumeContinuesExactlyGreedyAndSeeded) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  expect_resume_exact(model, 0);
  expect_resume_exact(model, 0.8f);
}

TEST(Engine, SameSeedSameTokensDifferentSeedDiffers) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  const std::vector<int32_t> prompt = model->tokenizer().encode("The little dog", true);
  auto gen = [&](uint64_t seed) {
    auto e = make_engine(model);
    EXPECT_TRUE(e->add(request(1, prompt, 40, 1.0f, seed)).ok());
    return run_all(*e)[1].tokens;
  };
  EXPECT_EQ(gen(3), gen(3));
  EXPECT_NE(gen(3), gen(4));
}

TEST(Engine, StopStringEndsTheStreamBeforeIt) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  auto e = make_engine(model);
  SequenceRequest r = request(1, model->tokenizer().encode("Once upon a time", true), 64);
  r.params.stop = {"Lily"};
  ASSERT_TRUE(e->add(r).ok());
  const Outcome o = run_all(*e)[1];
  EXPECT_EQ(o.finish, FinishReason::kStop);
  EXPECT_EQ(o.text, ", there was a little girl named ");
}

TEST(Engine, CancelFreesTheSequenceAtOnce) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  auto e = make_engine(model);
  ASSERT_TRUE(e->add(request(1, {1, 403}, 200)).ok());
  ASSERT_TRUE(e->add(request(2, {1, 291}, 10)).ok());
  std::vector<TokenEvent> evs;
  ASSERT_TRUE(e->step(&evs).ok());
  EXPECT_GT(e->stats().kv_blocks_used, 0);
  e->cancel(1);
  evs.clear();
  ASSERT_TRUE(e->step(&evs).ok());
  bool cancelled = false;
  for (const auto& ev : evs) cancelled |= ev.id == 1 && ev.finish == FinishReason::kCancelled;
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(e->stats().running, 1);
  auto rest = run_all(*e);
  EXPECT_EQ(rest[2].finish, FinishReason::kLength);
  EXPECT_EQ(e->stats().kv_blocks_used, 0);
}

TEST(Engine, WaitsForKvBlocksThenRuns) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  auto e = make_engine(model, 8, 64);  // room for one 5 + 40 token sequence at a time
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(e->add(request(i, {1, 403, 407, 261, 378}, 40)).ok());
  std::vector<TokenEvent> evs;
  ASSERT_TRUE(e->step(&evs).ok());
  EXPECT_EQ(e->stats().running, 1);
  EXPECT_EQ(e->stats().waiting, 2);
  auto out = run_all(*e);
  for (const auto& ev : evs) out[ev.id].tokens.insert(out[ev.id].tokens.begin(), ev.token);  // the first step's token
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(out[i].tokens.size(), 40u);
  EXPECT_EQ(out[0].tokens, out[2].tokens);
  EXPECT_EQ(e->stats().kv_blocks_used, 0);
}

TEST(Engine, RejectsBadRequestsWithClearErrors) {
  DS_REQUIRE_SHARED_MODELS();
  auto model = load(test::shared_models() + "/stories260K.gguf");
  auto e = make_engine(model);
  auto expect_bad = [&](SequenceRequest r, const std::string& needle) {
    Status s = e->add(std::move(r));
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  };
  expect_bad(request(1, {}, 10), "empty");
  expect_bad(request(1, std::vector<int32_t>(600, 5), 10), "context");
  expect_bad(request(1, {1, 99999}, 10), "outside the vocabulary");
  expect_bad(request(1, {1, 2}, 0), "max_tokens");
  SequenceRequest r = request(1, {1, 2}, 10);
  r.params.temperature = -1;
  expect_bad(r, "temperature");
  r = request(1, {1, 2}, 10);
  r.params.top_p = 0;
  expect_bad(r, "top_p");
  ASSERT_TRUE(e->add(request(7, {1, 2}, 10)).ok());
  expect_bad(request(7, {1, 2}, 10), "already in use");
}

}  // namespace
}  // namespace ds
