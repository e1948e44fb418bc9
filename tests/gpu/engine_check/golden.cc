// tests/gpu/engine_check/golden.cc: greedy generation against the golden tokens, sampling on the device against host
// sampling, running out of device memory, the split Q8_0 layout through the engine.
#include "tests/gpu/engine_check/check.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "model/forward.h"
#include "model/kv_cache.h"
#include "model/mkmodel.h"

namespace ds::engine_check {

bool golden(const std::string& dir) {
  bool ok = true;
  // tuned: with the CUDA performance options that are off by default (l2-prefetch,
  // stream-gemv, half-weights): the same tokens.
  auto check = [&](const char* file, ds::DType kv, bool tuned) {
    g_kv_type = kv;
    g_l2_prefetch = g_gemv_stream = g_half_cache = tuned;
    auto m = ds::Model::Load(dir + "/" + file);
    if (!m.ok()) {
      std::printf("ERROR: %s: %s\n", file, m.status().ToString().c_str());
      return false;
    }
    std::ifstream g(dir + "/stories260K-golden.jsonl");
    std::string line;
    int n = 0, pass = 0;
    while (std::getline(g, line)) {
      if (g_quick && n == 1) break;
      const auto want_prompt = json_ints(line, "prompt_ids");
      auto want = json_ints(line, "gen_ids");
      if (g_quick && want.size() > 16) want.resize(16);
      const auto prompt = (*m)->tokenizer().encode(json_string(line, "prompt"), true);
      auto e = engine(*m, 1, 512, 256);
      if (!e) return false;
      ds::SequenceRequest r;
      r.id = 0;
      r.prompt = prompt;
      r.params.max_tokens = static_cast<int>(want.size());
      if (!e->add(r).ok()) return false;
      const auto got = run(*e, 1)[0];
      const bool same = got == want && prompt == want_prompt;
      pass += same;
      ++n;
      if (!same) {
        size_t k = 0;
        while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
        std::printf("  MISMATCH %s (kv %s) prompt '%s': first difference at token %zu\n", file, ds::dtype_name(kv),
                    json_string(line, "prompt").c_str(), k);
      }
    }
    std::printf("golden %-22s kv %-3s %d/%d cases match%s\n", file, ds::dtype_name(kv), pass, n,
                tuned ? " (l2-prefetch, stream-gemv, half-weights)" : "");
    ok = ok && pass == n && n > 0;
    g_l2_prefetch = g_gemv_stream = g_half_cache = false;
    return true;
  };
  // Each model with the default KV cache (F16 on the GPU), then an F32 one; then tuned.
  for (const char* file : {"stories260K.gguf", "stories260K-f16.gguf"})
    for (const ds::DType kv : {ds::DType::kF16, ds::DType::kF32})
      if (!check(file, kv, false)) return false;
  for (const char* file : {"stories260K.gguf", "stories260K-f16.gguf"})
    if (!check(file, ds::DType::kF16, true)) return false;
  g_kv_type.reset();
  return ok;
}

// Requests of every sampling kind, n of them, for prompt ids from base.
std::vector<ds::SequenceRequest> sampled_requests(int n, int max_tokens, int32_t base) {
  std::vector<ds::SequenceRequest> rs;
  for (int i = 0; i < n; ++i) {
    ds::SequenceRequest r;
    r.id = i;
    r.prompt = {1, base + i, base + 2 * i + 1};
    ds::SamplingParams& p = r.params;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.seed = 100 + i;
    switch (i % 6) {
      case 0: break;  // greedy
      case 1: p.temperature = 0.8f; p.top_k = 40; p.top_p = 0.95f; break;
      case 2: p.temperature = 0.7f; p.top_p = 0.9f; break;
      case 3: p.temperature = 1.0f; break;
      case 4: p.temperature = 1.2f; p.min_p = 0.05f; p.repeat_penalty = 1.3f; p.frequency_penalty = 0.4f; break;
      default: p.repeat_penalty = 1.5f; p.presence_penalty = 0.5f; break;
    }
    rs.push_back(r);
  }
  return rs;
}

// Sampling on the GPU (Backend::sample_candidates) gives the tokens of host sampling from
// the downloaded logits, for every kind of request; with 8 candidates the softmax sums and
// the whole-row fallback run too.
bool sampling(const std::string& dir) {
  auto m = ds::Model::Load(dir + "/stories260K.gguf");
  if (!m.ok()) return false;
  bool ok = true;
  const int gen = g_quick ? 10 : 40;
  for (int candidates : {ds::kSampleMaxCandidates, 8}) {
    std::vector<std::vector<int32_t>> got[2];
    ds::EngineStats st{};
    for (int k = 0; k < 2; ++k) {
      auto e = engine(*m, 6, 256, 256, true, nullptr, k == 0 ? ds::BackendSampling::kOff : ds::BackendSampling::kAuto,
                      candidates);
      if (!e) return false;
      for (auto& r : sampled_requests(6, gen, 300))
        if (!check_ok(e->add(r), "add")) return false;
      got[k] = run(*e, 6);
      if (k == 1) st = e->stats();
    }
    const bool same = got[0] == got[1] && got[0][0].size() == static_cast<size_t>(gen);
    std::printf("sampling on the GPU, %4d candidates: %s (%llu tokens sampled there, %llu needed the whole row)\n",
                candidates, same ? "same tokens as host sampling" : "MISMATCH with host sampling",
                static_cast<unsigned long long>(st.backend_samples),
                static_cast<unsigned long long>(st.backend_sample_fallbacks));
    ok = ok && same && st.backend_samples == 6u * gen;
  }
  return ok;
}

// Out of device memory, at load and at run time: a clear error (ResourceExhausted or a backend
// failure naming the memory), never a crash, and every byte of an engine given back when it
// goes, failed or not. A ballast allocation leaves the engine only part of the free memory (on
// a GPU as under the emulation, which counts device memory against DS_EMU_DEVICE_MEMORY). The
// run-time case keeps exactly what loading took: the first prompt's scratch (cuBLAS operands,
// block tables) cannot be had. Under the emulation that failure is required; on a GPU, where
// allocations come in pages, the step may also succeed (then its tokens are checked).
bool memory_errors(const std::string& dir) {
  auto m = ds::Model::Load(dir + "/stories260K-f16.gguf");
  if (!m.ok()) {
    std::printf("ERROR: %s\n", m.status().ToString().c_str());
    return false;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const bool emulated = std::strstr(prop.name, "emulation") != nullptr;
  const size_t slack = emulated ? 0 : size_t{8} << 20;  // a GPU's driver may keep a few pages
  auto free_bytes = [] {
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    return f;
  };
  // fit: EngineOptions::memory_percent 90 (fit the KV cache into the memory) or 0 (no plan, so
  // the allocations themselves run out).
  auto make = [&](ds::Status* st, int max_batch = 2, int kv_tokens = 512, bool fit = false) -> std::unique_ptr<ds::Engine> {
    std::string err;
    std::unique_ptr<ds::CudaBackend> be = ds::CudaBackend::create(ds::CudaBackendOptions{}, &err);
    if (!be) {
      *st = ds::Status::ResourceExhausted("no CUDA backend: " + err);
      return nullptr;
    }
    ds::EngineOptions o;
    o.max_batch = max_batch;
    o.n_ctx = 256;
    o.max_step_tokens = 128;
    o.kv_cache_tokens = kv_tokens;
    o.memory_percent = fit ? 90 : 0;
    auto e = ds::Engine::Create(*m, std::move(be), o);
    *st = e.status();
    return e.ok() ? std::move(e).value() : nullptr;
  };
  // A 24-token prompt: one prefill chunk of more than 8 tokens (the cuBLAS path).
  std::vector<int32_t> prompt = (*m)->tokenizer().encode("Once upon a time, there was a little girl named Lily.", true);
  while (prompt.size() < 24) prompt.push_back(prompt[1 + prompt.size() % 10]);
  prompt.resize(24);
  ds::SequenceRequest r;
  r.id = 0;
  r.prompt = prompt;
  r.params.max_tokens = 4;
  // Steps until idle or the first failure; the tokens, and the failure in *st.
  auto generate = [&](ds::Engine& e, ds::Status* st) {
    std::vector<int32_t> toks;
    *st = e.add(r);
    while (st->ok() && !e.idle()) {
      std::vector<ds::TokenEvent> evs;
      *st = e.step(&evs);
      for (const auto& ev : evs)
        if (ev.token >= 0) toks.push_back(ev.token);
    }
    return toks;
  };
  auto memory_error = [](const ds::Status& st) {
    return st.code() == ds::StatusCode::kResourceExhausted || st.message().find("memory") != std::string::npos;
  };
  bool ok = true;
  auto expect = [&](bool cond, const std::string& what) {
    std::printf("memory %-58s %s\n", what.c_str(), cond ? "ok" : "FAIL");
    ok = ok && cond;
  };

  const auto t0 = Clock::now();
  ds::Status st;
  {  // warm-up: a GPU loads kernels (and cuBLAS its own) into device memory at first use, for good
    auto e = make(&st);
    if (e) generate(*e, &st);
  }
  const size_t f0 = free_bytes();
  size_t need = 0;
  std::vector<int32_t> want;
  {
    auto e = make(&st);
    if (!e) {
      std::printf("ERROR: engine: %s\n", st.ToString().c_str());
      return false;
    }
    need = f0 - free_bytes();
    want = generate(*e, &st);
    expect(st.ok() && want.size() == 4, "baseline: 4 tokens (" + std::to_string(need >> 10) + " KiB at load)");
  }
  expect(free_bytes() + slack >= f0, "baseline engine gave its memory back");

  auto with_ballast = [&](size_t leave, const std::function<void()>& body) {
    const size_t f = free_bytes();
    void* ballast = nullptr;
    if (f > leave && cudaMalloc(&ballast, f - leave) != cudaSuccess) {
      cudaGetLastError();
      ballast = nullptr;
    }
    if (ballast == nullptr && f > leave) {
      std::printf("memory: could not place a %zu-byte ballast; skipped\n", f - leave);
      return;
    }
    body();
    cudaFree(ballast);
  };

  // At load: half of what loading takes.
  with_ballast(need / 2, [&] {
    auto e = make(&st);
    expect(e == nullptr && memory_error(st), "load with half the memory: " + (e ? std::string("it loaded") : st.ToString()).substr(0, 48));
  });
  expect(free_bytes() + slack >= f0, "the failed load gave its memory back");

  // At run time: exactly what loading takes.
  with_ballast(need, [&] {
    auto e = make(&st);
    if (!e) {  // a GPU's page granularity can make even that too little
      expect(!emulated && memory_error(st), "run time: the load failed instead: " + st.ToString().substr(0, 28));
      return;
    }
    const auto got = generate(*e, &st);
    if (st.ok()) expect(!emulated && got == want, "run time: the step had room after all (GPU pages)");
    else expect(memory_error(st), "run time: the step failed: " + st.ToString().substr(0, 40));
  });
  expect(free_bytes() + slack >= f0, "the failed engine gave its memory back");

  // An automatic KV cache (max-batch 128 x ctx 256 = 32768 positions) where only ~20000 fit
  // beside the weights and buffers: it is cut to fit, and the engine runs. (A GPU's pages make
  // the free memory known to ~2 MiB: +-4096 positions there.)
  {
    ds::KvMemoryPlan big;
    {
      auto e = make(&st, 128, 0, true);
      if (e) big = e->memory_plan();
      expect(e && !big.reduced && big.kv_tokens == 128 * 256, "auto KV cache with room: 32768 positions: " +
                                                                    (e ? std::to_string(big.kv_tokens) : st.ToString().substr(0, 20)));
    }
    // What a bare backend takes before the engine plans (cuBLAS's workspace): the plan sees
    // the memory free after it.
    size_t backend_fixed = 0;
    {
      const size_t f = free_bytes();
      std::string why;
      auto be = ds::CudaBackend::create(ds::CudaBackendOptions{}, &why);
      if (be) backend_fixed = f > free_bytes() ? f - free_bytes() : 0;
    }
    if (big.per_position > 0) {
      const size_t target = 20000;
      with_ballast(backend_fixed + big.weights + big.working + target * big.per_position, [&] {
        auto e = make(&st, 128, 0, true);
        const ds::KvMemoryPlan p = e ? e->memory_plan() : ds::KvMemoryPlan{};
        const long got = p.kv_tokens, want_kv = static_cast<long>(target / 16 * 16), tol = emulated ? 0 : 4096;
        expect(e && p.reduced && std::labs(got - want_kv) <= tol,
               "auto KV cache cut to fit: " + (e ? std::to_string(got) + " positions (want " + std::to_string(want_kv) + ")"
                                                 : st.ToString().substr(0, 40)));
        if (e) {
          std::printf("  %s\n", p.note.c_str());
          const auto got_toks = generate(*e, &st);
          expect(st.ok() && got_toks == want, "the cut cache runs: the baseline tokens");
        }
      });
    }
  }

  // And a fresh engine runs as before.
  {
    auto e = make(&st);
    const auto got = e ? generate(*e, &st) : std::vector<int32_t>{};
    expect(e && st.ok() && got == want, "afterwards a new engine gives the baseline tokens");
  }
  std::printf("memory checks: %.1f s\n", secs(t0));
  return ok;
}

// A Q8_0 model (ds-mkmodel's tiny preset, dim 64, FFN 192, vocab 512) generates the same
// tokens with its matrices split (CudaBackendOptions::q8_0_split) as with the GGUF blocks:
// greedy, two prompts decoded alone and four together (the GEMV, tensor-core and cuBLAS paths).
bool q8_0_split_engine(const std::string& dir) {
  auto spec = ds::model_preset("tiny");
  spec->type = ds::DType::kQ8_0;
  spec->seed = 7;
  const std::string path = dir + "/ds-gpu-check-tiny-q8_0-" + std::to_string(getpid()) + ".gguf";
  if (!check_ok(ds::write_random_model(*spec, path), "write the tiny Q8_0 model")) return false;
  auto m = ds::Model::Load(path);
  std::remove(path.c_str());
  if (!check_ok(m.status(), "load the tiny Q8_0 model")) return false;
  // k: split rows, the GGUF blocks, split rows with the performance options that are off by
  // default (l2-prefetch, stream-gemv, half-weights: its prefill steps of up to 64 tokens take
  // the cuBLAS path, where the F16 copies are)
  std::vector<std::vector<int32_t>> got[3];
  for (int k = 0; k < 3; ++k) {
    g_q8_0_split = k != 1;
    g_l2_prefetch = g_gemv_stream = g_half_cache = k == 2;
    for (int batch : {1, 4}) {
      auto e = engine(*m, batch, 128, 64);
      if (!e) {
        g_q8_0_split = true;
        g_l2_prefetch = g_gemv_stream = g_half_cache = false;
        return false;
      }
      for (int i = 0; i < (batch == 1 ? 2 : 4); ++i) {
        ds::SequenceRequest r;
        r.id = i;
        for (int p = 0; p < 5 + 9 * i; ++p) r.prompt.push_back(260 + (p * 37 + i * 11) % 250);
        r.params.max_tokens = 10;
        r.params.ignore_eos = true;
        if (!check_ok(e->add(r), "add")) return false;
        if (batch == 1) {
          const auto out = run(*e, 1);
          got[k].push_back(out[0]);
        }
      }
      if (batch == 4) {
        const auto out = run(*e, 4);
        got[k].insert(got[k].end(), out.begin(), out.end());
      }
    }
  }
  g_q8_0_split = true;
  g_l2_prefetch = g_gemv_stream = g_half_cache = false;
  const bool same = got[0] == got[1] && got[0].size() == 6 && got[0][0].size() == 10;
  std::printf("q8_0 split rows: the tiny Q8_0 model's tokens (6 runs x 10) %s the GGUF layout's\n",
              same ? "equal" : "DIFFER FROM");
  const bool tuned = got[2] == got[0];
  std::printf("q8_0 with l2-prefetch, stream-gemv and half-weights: the tiny Q8_0 model's tokens %s the defaults'\n",
              tuned ? "equal" : "DIFFER FROM");
  return same && tuned;
}

}  // namespace ds::engine_check
