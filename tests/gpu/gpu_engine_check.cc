// tests/gpu/gpu_engine_check.cc: the engine on a real GPU (steps 3 and 4 of
// tools/gpu-check.sh). Plain program, no test framework: the GPU machine has no GTest.
//
//   ds-gpu-engine-check --golden DIR [--bench-dir DIR] [--no-bench] [--quick] [--only CHECK]
//
// Step 3: greedy generation of DIR/stories260K.gguf (and -f16) on the CUDA backend must
//         reproduce DIR/stories260K-golden.jsonl token for token (sampling on the GPU);
//         six requests of every sampling kind must give the tokens of host sampling; running
//         out of device memory at load and at run time must give a clear error and give every
//         byte back (memory_errors); the tensor-parallel engine over NCCL on the visible GPUs
//         (1 or 2) must reproduce the golden too.
// Step 4: for ds-mkmodel's bench-1b preset in Q8_0 and F16 (written to --bench-dir):
//         prefill tok/s (512 tokens), decode tok/s at batch 1, 8 and 32, the weight bytes
//         read per second at batch 1 against the device-to-device copy bandwidth measured
//         here, prefill time against the time of its GEMMs alone (backend matmuls), and
//         sampled decode at batch 8 with sampling on the GPU vs on the host, and the
//         per-op GPU time of a batch-1 decode step (CudaBackendOptions::profile_ops).
// Last (fused_decode): the persistent decode kernel (CudaBackendOptions::fused_decode) must
//         give one-token steps the per-op path's logits bit for bit (several models, caches
//         and grids), and its bench-1b batch-1 decode is timed beside the per-op path's.
// Exit status: 0 pass, 1 a check failed, 2 no usable GPU / setup failure.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/comm.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/engine.h"
#include "model/forward.h"
#include "model/kv_cache.h"
#include "model/mkmodel.h"

namespace {

using Clock = std::chrono::steady_clock;
double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Minimal readers for the golden JSONL fields (strings with escapes, int arrays).
std::string json_string(const std::string& line, const std::string& key) {
  size_t p = line.find("\"" + key + "\":");
  if (p == std::string::npos) return "";
  p = line.find('"', p + key.size() + 3);
  std::string out;
  for (size_t i = p + 1; i < line.size() && line[i] != '"'; ++i) {
    if (line[i] != '\\') {
      out += line[i];
      continue;
    }
    const char e = line[++i];
    if (e == 'n') out += '\n';
    else if (e == 't') out += '\t';
    else if (e == 'u') {
      const unsigned cp = std::stoul(line.substr(i + 1, 4), nullptr, 16);
      i += 4;
      if (cp < 0x80) out += static_cast<char>(cp);
      else if (cp < 0x800) out += static_cast<char>(0xC0 | (cp >> 6)), out += static_cast<char>(0x80 | (cp & 0x3F));
      else out += static_cast<char>(0xE0 | (cp >> 12)), out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), out += static_cast<char>(0x80 | (cp & 0x3F));
    } else out += e;
  }
  return out;
}
std::vector<int32_t> json_ints(const std::string& line, const std::string& key) {
  std::vector<int32_t> v;
  size_t p = line.find("\"" + key + "\":");
  if (p == std::string::npos) return v;
  p = line.find('[', p);
  const size_t e = line.find(']', p);
  for (size_t i = p + 1; i < e;) {
    while (i < e && (line[i] == ' ' || line[i] == ',')) ++i;
    if (i >= e) break;
    size_t used = 0;
    v.push_back(std::stoi(line.substr(i), &used));
    i += used;
  }
  return v;
}

std::unique_ptr<ds::Backend> gpu() {
  std::string err;
  auto be = ds::make_cuda_backend(0, &err);
  if (!be) std::printf("ERROR: no CUDA backend: %s\n", err.c_str());
  return be;
}

bool g_pdl = true;  // CudaBackendOptions::pdl of the engines made below
bool g_tc = true;   // CudaBackendOptions::tc_gemm of the engines made below
bool g_tc_att = true;  // CudaBackendOptions::tc_attention of the engines made below
bool g_q8_0_split = true;  // CudaBackendOptions::q8_0_split of the engines made below
bool g_tc_att_mma = true;  // CudaBackendOptions::tc_attention_mma of the engines made below
bool g_fused = false;       // CudaBackendOptions::fused_decode of the engines made below
bool g_fused_auto = false;  // CudaBackendOptions::fused_decode_auto of the engines made below
bool g_fused_prefetch = true;  // CudaBackendOptions::fused_decode_prefetch of the engines made below
int g_fused_blocks = 4;        // CudaBackendOptions::fused_decode_blocks_per_sm of the engines made below
std::optional<ds::DType> g_kv_type;  // EngineOptions::kv_type of the engines made below (unset: F16 on the GPU)
// --quick (the CPU emulation of CUDA, tests/gpu/emu, where a step takes ~1 s): the golden's
// first case and first 16 tokens, sampling for 10 tokens a request.
bool g_quick = false;

// graphs: whether the backend records decode steps as CUDA graphs; *replays (when given)
// points at the backend's replay counter afterwards.
std::unique_ptr<ds::Engine> engine(std::shared_ptr<ds::Model> m, int max_batch, int ctx, int step_tokens,
                                   bool graphs = true, const ds::CudaBackend** cuda = nullptr,
                                   ds::BackendSampling sampling = ds::BackendSampling::kAuto,
                                   int candidates = ds::kSampleMaxCandidates, bool profile = false) {
  std::string err;
  ds::CudaBackendOptions co;
  co.record_graphs = graphs;
  co.profile_ops = profile;
  co.pdl = g_pdl;
  co.tc_gemm = g_tc;
  co.tc_attention = g_tc_att;
  co.q8_0_split = g_q8_0_split;
  co.tc_attention_mma = g_tc_att_mma;
  co.fused_decode = g_fused;
  co.fused_decode_auto = g_fused_auto;
  co.fused_decode_prefetch = g_fused_prefetch;
  co.fused_decode_blocks_per_sm = g_fused_blocks;
  std::unique_ptr<ds::CudaBackend> be = ds::CudaBackend::create(co, &err);
  if (!be) {
    std::printf("ERROR: no CUDA backend: %s\n", err.c_str());
    return nullptr;
  }
  if (cuda) *cuda = be.get();
  ds::EngineOptions o;
  o.max_batch = max_batch;
  o.n_ctx = ctx;
  o.max_step_tokens = step_tokens;
  o.kv_cache_tokens = max_batch * ctx;
  o.kv_type = g_kv_type;
  o.backend_sampling = sampling;
  o.backend_sample_candidates = candidates;
  auto e = ds::Engine::Create(std::move(m), std::move(be), o);
  if (!e.ok()) {
    std::printf("ERROR: engine: %s\n", e.status().ToString().c_str());
    return nullptr;
  }
  return std::move(e).value();
}

// Runs until idle; returns generated tokens per id.
std::vector<std::vector<int32_t>> run(ds::Engine& e, size_t n, int* steps = nullptr) {
  std::vector<std::vector<int32_t>> out(n);
  while (!e.idle()) {
    std::vector<ds::TokenEvent> evs;
    ds::Status s = e.step(&evs);
    if (!s.ok()) {
      std::printf("ERROR: step: %s\n", s.ToString().c_str());
      break;
    }
    if (steps) ++*steps;
    for (const auto& ev : evs)
      if (ev.token >= 0 && ev.id < n) out[ev.id].push_back(ev.token);
  }
  return out;
}

// Prints a failed call's status; false when it failed (a benchmark must not time errors).
bool check_ok(const ds::Status& st, const char* what) {
  if (!st.ok()) std::printf("ERROR: %s: %s\n", what, st.ToString().c_str());
  return st.ok();
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
  std::vector<std::vector<int32_t>> got[2];
  for (int k = 0; k < 2; ++k) {
    g_q8_0_split = k == 0;
    for (int batch : {1, 4}) {
      auto e = engine(*m, batch, 128, 64);
      if (!e) {
        g_q8_0_split = true;
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
  const bool same = got[0] == got[1] && got[0].size() == 6 && got[0][0].size() == 10;
  std::printf("q8_0 split rows: the tiny Q8_0 model's tokens (6 runs x 10) %s the GGUF layout's\n",
              same ? "equal" : "DIFFER FROM");
  return same;
}

// The persistent decode kernel (CudaBackendOptions::fused_decode) gives every one-token step
// the logits of the per-op path bit for bit: two Forwards over one model, one per backend,
// the same tokens; one-token steps at the start of a sequence (one split-K chunk), then a
// prompt in 64-token steps (the per-op path in both) past the 256-position chunk, then
// one-token steps again whose attention merges two chunks (long: only where asked). Models:
// stories260K F32 and F16 (head_dim 8), the tiny preset in Q8_0 split and in blocks (16), a
// qwen2-shaped F16 model (biases, neox RoPE, head_dim 128); F32 and F16 caches; a grid of 1,
// 3 and (on a GPU) as many blocks as fit.
bool fused_decode_same(const std::shared_ptr<ds::Model>& m, const char* name, ds::DType kv_type, int blocks_per_sm,
                       bool long_context) {
  const ds::ModelConfig& c = m->config();
  constexpr int kBlock = 16, kPositions = 320, kMaxTokens = 64;
  std::unique_ptr<ds::CudaBackend> be[2];
  std::unique_ptr<ds::KvCache> kv[2];
  std::unique_ptr<ds::Forward> f[2];
  std::vector<int32_t> table[2];
  for (int k = 0; k < 2; ++k) {
    std::string err;
    ds::CudaBackendOptions co;
    co.fused_decode = k == 1;
    co.fused_decode_blocks_per_sm = blocks_per_sm;
    co.q8_0_split = g_q8_0_split;
    be[k] = ds::CudaBackend::create(co, &err);
    if (!be[k]) {
      std::printf("ERROR: no CUDA backend: %s\n", err.c_str());
      return false;
    }
    auto cache = ds::KvCache::Create(*be[k], c.n_layer, c.kv_dim(), kBlock, kPositions / kBlock, kv_type);
    if (!check_ok(cache.status(), "KV cache")) return false;
    kv[k] = std::move(cache).value();
    auto fw = ds::Forward::Create(m, *be[k], *kv[k], kMaxTokens, {}, kPositions);
    if (!check_ok(fw.status(), "Forward")) return false;
    f[k] = std::move(fw).value();
    if (!kv[k]->blocks().allocate(kPositions / kBlock, &table[k])) return false;
  }
  if (!f[1]->fused_decode()) {
    std::printf("fused decode: %s: NOT TAKEN (fused_decode_prepare refused the model)\n", name);
    return false;
  }
  int steps = 0, fused_steps = 0;
  bool same = true;
  auto step = [&](int pos0, int n) {
    std::vector<float> logits[2];
    for (int k = 0; k < 2; ++k) {
      std::vector<ds::ForwardToken> toks;
      for (int i = 0; i < n; ++i)
        toks.push_back(ds::ForwardToken{static_cast<int32_t>((pos0 + i) * 37 % c.n_vocab), pos0 + i, &table[k], i == n - 1});
      if (!check_ok(f[k]->run(toks, &logits[k]), "forward")) return false;
    }
    ++steps;
    fused_steps += n == 1;
    const bool eq = logits[0].size() == static_cast<size_t>(c.n_vocab) && logits[0].size() == logits[1].size() &&
                    std::memcmp(logits[0].data(), logits[1].data(), logits[0].size() * sizeof(float)) == 0;
    if (!eq && same) {
      size_t at = 0;
      while (at < logits[0].size() && at < logits[1].size() && logits[0][at] == logits[1][at]) ++at;
      std::printf("fused decode: %s: position %d: logits differ first at %zu (%.9g vs %.9g)\n", name, pos0 + n - 1, at,
                  at < logits[0].size() ? logits[0][at] : 0.0, at < logits[1].size() ? logits[1][at] : 0.0);
    }
    same = same && eq;
    return true;
  };
  int pos = 0;
  for (; pos < 4; ++pos)
    if (!step(pos, 1)) return false;
  if (long_context) {
    // Positions 4..261 as if a prompt had been there (the same pseudo-random K and V in both
    // caches, fast where a 262-token prefill under the emulation is not), then one-token steps
    // whose attention spans two 256-position chunks.
    if (table[0] != table[1]) return false;
    const size_t eb = ds::kv_elem_bytes(kv_type), row = static_cast<size_t>(c.kv_dim()) * eb;
    std::vector<uint8_t> bytes(row);
    uint32_t seed = 12345;
    for (int l = 0; l < c.n_layer; ++l) {
      for (int kvk = 0; kvk < 2; ++kvk) {
        for (int p = 4; p < 262; ++p) {
          for (int e = 0; e < c.kv_dim(); ++e) {
            seed = seed * 1664525u + 1013904223u;
            const float x = static_cast<float>(static_cast<int>(seed >> 9) % 2001 - 1000) / 500.0f;  // [-2, 2]
            if (eb == 4) std::memcpy(&bytes[e * 4], &x, 4);
            else {
              const uint16_t h = ds::fp32_to_fp16_ref(x);
              std::memcpy(&bytes[e * 2], &h, 2);
            }
          }
          const size_t at = (static_cast<size_t>(table[0][p / kBlock]) * kBlock + p % kBlock) * row;
          for (int k = 0; k < 2; ++k) {
            const ds::KvLayer L = kv[k]->layer(l);
            be[k]->upload(static_cast<uint8_t*>(kvk ? L.v : L.k) + at, bytes.data(), row);
          }
        }
      }
    }
    for (pos = 262; pos < 266; ++pos)
      if (!step(pos, 1)) return false;
  }
  for (int k = 0; k < 2; ++k) be[k]->synchronize();
  const bool ok = same && be[0]->ok() && be[1]->ok();
  std::printf("fused decode: %s, %s cache, %d block(s) (grid %d): %d steps (%d of one token, the persistent kernel) %s\n",
              name, ds::dtype_name(kv_type), blocks_per_sm, be[1]->fused_decode_blocks(0), steps, fused_steps,
              ok ? "give the per-op path's logits bit for bit" : "FAIL");
  if (!be[1]->ok()) std::printf("ERROR: %s\n", be[1]->last_error().c_str());
  return ok;
}

// fused_decode_auto (ds-node --fused-decode auto): Forward's probe at Init runs one-token
// steps both ways on the real kernel, finds the same logits, gives its cache blocks back and
// keeps the faster way (either, here: the check is that the probe runs and agrees).
bool fused_decode_probe(const std::string& gold) {
  auto m = ds::Model::Load(gold + "/stories260K-f16.gguf");
  if (!check_ok(m.status(), "stories260K-f16.gguf")) return false;
  const ds::ModelConfig& c = (*m)->config();
  ds::CudaBackendOptions co;
  co.fused_decode = true;
  co.fused_decode_auto = true;
  std::string err;
  std::unique_ptr<ds::CudaBackend> be = ds::CudaBackend::create(co, &err);
  if (!be) {
    std::printf("ERROR: no CUDA backend: %s\n", err.c_str());
    return false;
  }
  auto kv = ds::KvCache::Create(*be, c.n_layer, c.kv_dim(), 16, 4, ds::DType::kF16);
  if (!check_ok(kv.status(), "KV cache")) return false;
  auto f = ds::Forward::Create(*m, *be, **kv, 8, {}, 64);
  if (!check_ok(f.status(), "Forward")) return false;
  const ds::Forward::FusedDecodeProbe& p = (*f)->fused_decode_probe();
  const bool ok = p.ran && p.same && (*kv)->blocks().n_free() == (*kv)->blocks().n_blocks() && be->ok();
  std::printf("fused decode: load probe, stories260K f16: %s; %.1f us a step persistent, %.1f us per op: %s%s%s\n",
              !p.ran ? "DID NOT RUN" : p.same ? "same logits" : "LOGITS DIFFER",
              p.fused_us, p.per_op_us, (*f)->fused_decode() ? "persistent kernel kept" : "kernel per op kept",
              p.why.empty() ? "" : " - ", p.why.c_str());
  if (!be->ok()) std::printf("ERROR: %s\n", be->last_error().c_str());
  return ok;
}

bool fused_decode(const std::string& gold, const std::string& dir) {
  bool ok = true;
#ifdef DS_CUDA_EMULATION
  const int many = 8;  // the emulation's most
#else
  const int many = 64;  // as many as fit
#endif
  for (const char* file : {"stories260K.gguf", "stories260K-f16.gguf"}) {
    auto m = ds::Model::Load(gold + "/" + file);
    if (!check_ok(m.status(), file)) return false;
    const bool f32 = !std::strcmp(file, "stories260K.gguf");
    ok = fused_decode_same(*m, file, f32 ? ds::DType::kF32 : ds::DType::kF16, f32 ? 1 : 3, !f32) && ok;
    if (!g_quick) ok = fused_decode_same(*m, file, f32 ? ds::DType::kF16 : ds::DType::kF32, many, true) && ok;
  }
  struct Made {
    const char* name;
    ds::ModelSpec spec;
  };
  ds::ModelSpec tiny = ds::model_preset("tiny").value();
  tiny.type = ds::DType::kQ8_0;
  tiny.seed = 11;
  ds::ModelSpec qwen = ds::model_preset("tiny-qwen2").value();
  qwen.type = ds::DType::kF16;
  qwen.dim = 256, qwen.heads = 2, qwen.kv_heads = 1, qwen.ffn = 256, qwen.seed = 12;
  for (const Made& mk : {Made{"tiny q8_0", tiny}, Made{"qwen2 f16 head_dim 128", qwen}}) {
    const std::string path = dir + "/ds-gpu-check-fused-" + std::to_string(getpid()) + ".gguf";
    if (!check_ok(ds::write_random_model(mk.spec, path), "write a model")) return false;
    auto m = ds::Model::Load(path);
    std::remove(path.c_str());
    if (!check_ok(m.status(), "load a model")) return false;
    const bool q8 = mk.spec.type == ds::DType::kQ8_0;
    for (int split = q8 ? 0 : 1; split < 2; ++split) {  // q8_0: GGUF blocks, then split rows
      g_q8_0_split = split == 1;
      const std::string name = std::string(mk.name) + (q8 ? (split ? " split" : " blocks") : "");
      ok = fused_decode_same(*m, name.c_str(), split ? ds::DType::kF16 : ds::DType::kF32, 3, false) && ok;
    }
    g_q8_0_split = true;
  }
  ok = fused_decode_probe(gold) && ok;
  // A model it does not take (BF16 matrices): the per-op path, and the reason for the log.
  {
    ds::ModelSpec bf = ds::model_preset("tiny").value();
    bf.type = ds::DType::kBF16;
    const std::string path = dir + "/ds-gpu-check-fused-bf16-" + std::to_string(getpid()) + ".gguf";
    if (!check_ok(ds::write_random_model(bf, path), "write a model")) return false;
    auto m = ds::Model::Load(path);
    std::remove(path.c_str());
    if (!check_ok(m.status(), "load a model")) return false;
    g_fused = true;
    auto e = engine(*m, 1, 64, 64, true);
    g_fused = false;
    if (!e) return false;
    const std::string note = e->decode_note();
    const bool refused = note.find("does not take this model: it takes f32, f16 and q8_0 matrices, not bf16") != std::string::npos;
    std::printf("fused decode: bf16 model: %s%s\n", refused ? "refused: " : "NOT REFUSED AS EXPECTED: ", note.c_str());
    ok = refused && ok;
  }
  return ok;
}

bool golden(const std::string& dir) {
  bool ok = true;
  // Each model with the default KV cache (F16 on the GPU), then an F32 one.
  for (const char* file : {"stories260K.gguf", "stories260K-f16.gguf"})
  for (const ds::DType kv : {ds::DType::kF16, ds::DType::kF32}) {
    g_kv_type = kv;
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
    std::printf("golden %-22s kv %-3s %d/%d cases match\n", file, ds::dtype_name(kv), pass, n);
    ok = ok && pass == n && n > 0;
  }
  g_kv_type.reset();
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

// The tensor-parallel engine over NCCL (CreateCudaTensorParallel) on GPUs 0..n-1 reproduces
// the golden greedy tokens: with one GPU a group of one rank (NCCL initialised, every
// collective run, the sharded Forward and the ShardGroup on the device), with more GPUs a
// real split. Skipped when the build has no NCCL.
bool tensor_parallel_golden(const std::string& dir) {
  int gpus = 0;
  cudaGetDeviceCount(&gpus);
  auto m = ds::Model::Load(dir + "/stories260K.gguf");
  if (!m.ok()) return false;
  bool ok = true;
  for (int n = 1; n <= std::min(gpus, 2); ++n) {
    std::vector<int> ids;
    for (int g = 0; g < n; ++g) ids.push_back(g);
    std::ifstream g(dir + "/stories260K-golden.jsonl");
    std::string line;
    int cases = 0, pass = 0;
    while (std::getline(g, line)) {
      const auto want = json_ints(line, "gen_ids");
      ds::EngineOptions o;
      o.max_batch = 1;
      o.n_ctx = 512;
      o.shard_step_timeout_ms = 60000;
      auto e = ds::Engine::CreateCudaTensorParallel(*m, ids, o);
      if (!e.ok() && e.status().code() == ds::StatusCode::kNotSupported) {
        std::printf("tensor-parallel golden: skipped (%s)\n", e.status().ToString().c_str());
        return true;
      }
      if (!e.ok()) {
        std::printf("ERROR: tensor-parallel engine on %d GPU(s): %s\n", n, e.status().ToString().c_str());
        return false;
      }
      ds::SequenceRequest r;
      r.prompt = (*m)->tokenizer().encode(json_string(line, "prompt"), true);
      r.params.max_tokens = static_cast<int>(want.size());
      if (!check_ok((*e)->add(r), "add")) return false;
      const bool same = run(**e, 1)[0] == want;
      pass += same;
      ++cases;
    }
    std::printf("golden tensor-parallel over NCCL, %d GPU(s): %d/%d cases match\n", n, pass, cases);
    ok = ok && cases > 0 && pass == cases;
  }
  return ok;
}

std::vector<ds::SequenceRequest> sampled_requests(int n, int max_tokens, int32_t base);

// The tensor-parallel engine on CUDA backends under the CPU emulation, where device memory is
// host memory, so a CPU communicator group (threads) stands in for NCCL: the sharded Forward,
// the ShardGroup and each rank's sampling of its vocabulary slice run the CUDA code. Greedy
// golden tokens of stories260K over 2 ranks; sampled requests of every kind give the tokens of
// host sampling from the gathered logits (BackendSampling::kOff), from 8 candidates a slice
// (some rows then need the whole gathered row).
// (Short: the emulated ranks' launches are serialized, ~2 min for this.)
bool emulated_tensor_parallel(const std::string& dir) {
#ifndef DS_CUDA_EMULATION
  (void)dir;
  return true;
#else
  const auto t0 = Clock::now();
  auto m = ds::Model::Load(dir + "/stories260K.gguf");
  if (!m.ok()) return false;
  auto make = [&](ds::BackendSampling sampling, int candidates, int ranks) -> std::unique_ptr<ds::Engine> {
    std::vector<std::unique_ptr<ds::Backend>> backends;
    for (int r = 0; r < ranks; ++r) {
      std::string why;
      backends.push_back(ds::make_cuda_backend(0, &why));
      if (!backends.back()) {
        std::printf("ERROR: emulated CUDA backend: %s\n", why.c_str());
        return nullptr;
      }
    }
    ds::EngineOptions o;
    o.max_batch = 8;
    o.n_ctx = 256;
    o.backend_sampling = sampling;
    o.backend_sample_candidates = candidates;
    auto e = ds::Engine::CreateTensorParallel(*m, std::move(backends), ds::make_cpu_comm_group(ranks), o);
    if (!e.ok()) {
      std::printf("ERROR: emulated tensor-parallel engine: %s\n", e.status().ToString().c_str());
      return nullptr;
    }
    return std::move(e).value();
  };
  bool ok = true;
  {
    std::ifstream g(dir + "/stories260K-golden.jsonl");
    std::string line;
    int cases = 0, pass = 0;
    while (std::getline(g, line) && cases < 1) {  // one case, its first 48 tokens: the emulation is slow
      auto want = json_ints(line, "gen_ids");
      if (want.size() > 48) want.resize(48);
      auto e = make(ds::BackendSampling::kAuto, ds::kSampleMaxCandidates, 2);
      if (!e) return false;
      ds::SequenceRequest r;
      r.prompt = (*m)->tokenizer().encode(json_string(line, "prompt"), true);
      r.params.max_tokens = static_cast<int>(want.size());
      if (!check_ok(e->add(r), "add")) return false;
      pass += run(*e, 1)[0] == want;
      ++cases;
    }
    std::printf("golden tensor-parallel, 2 emulated GPUs (CPU communicator): %d/%d cases match\n", pass, cases);
    ok = cases > 0 && pass == cases;
  }
  const int gen = 5;
  std::vector<std::vector<int32_t>> host;
  for (int candidates : {0, 8}) {  // 0: host sampling of the gathered logits; 8: rows told by the candidates and not
    auto e = make(candidates == 0 ? ds::BackendSampling::kOff : ds::BackendSampling::kAuto,
                  candidates == 0 ? ds::kSampleMaxCandidates : candidates, 2);
    if (!e) return false;
    for (auto& r : sampled_requests(6, gen, 300))
      if (!check_ok(e->add(r), "add")) return false;
    const auto got = run(*e, 6);
    if (candidates == 0) {
      host = got;
      continue;
    }
    const ds::EngineStats st = e->stats();
    const bool same = got == host && got[0].size() == static_cast<size_t>(gen) && st.backend_samples == 6u * gen;
    std::printf("tensor-parallel sampling on 2 emulated GPUs' vocabulary slices, %4d candidates: %s (%llu fell back "
                "to the whole row)\n",
                candidates, same ? "same tokens as host sampling" : "MISMATCH with host sampling",
                static_cast<unsigned long long>(st.backend_sample_fallbacks));
    ok = ok && same;
  }
  std::printf("emulated tensor parallelism: %.1f s\n", secs(t0));
  return ok;
#endif
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

void print_profile(const ds::CudaBackend& cuda, int steps, std::string* out);

// Request 0: a prompt of n tokens (ids spread over the vocabulary), one token to generate.
ds::SequenceRequest prefill_request(int n) {
  ds::SequenceRequest r;
  r.id = 0;
  for (int i = 0; i < n; ++i) r.prompt.push_back(300 + (i * 7919) % 30000);
  r.params.max_tokens = 1;
  r.params.ignore_eos = true;
  return r;
}

// Where a decode step's GPU time goes: every op timed with CUDA events (eager: each op
// waits for its kernels, so the sum exceeds a graph replay's step; the shares are the point).
bool profile_decode(const std::shared_ptr<ds::Model>& m, const char* tn, int batch, std::string* out) {
  char line[256];
  const ds::CudaBackend* cuda = nullptr;
  auto e = engine(m, batch, 256, 256, false, &cuda, ds::BackendSampling::kAuto, ds::kSampleMaxCandidates, true);
  if (!e) return false;
  for (int i = 0; i < batch; ++i) {
    ds::SequenceRequest r;
    r.id = i;
    r.prompt = {1, 300 + i, 400 + i};
    r.params.max_tokens = 17;
    r.params.ignore_eos = true;
    if (!check_ok(e->add(r), "add")) return false;
  }
  std::vector<ds::TokenEvent> evs;
  if (!check_ok(e->step(&evs), "step (prompts + first token)")) return false;
  const_cast<ds::CudaBackend*>(cuda)->reset_op_profile();
  int steps = 0;
  run(*e, batch, &steps);
  std::snprintf(line, sizeof line, "\ndecode step profile, bench-1b %s, batch %d (%d steps; ops timed one by one):\n", tn,
                batch, steps);
  *out += line;
  print_profile(*cuda, steps, out);
  return true;
}

// Where a prefill's GPU time goes: one prompt of n tokens in one step, every op timed (the
// second of two identical prefills: the first allocates).
bool profile_prefill(const std::shared_ptr<ds::Model>& m, const char* tn, int n, std::string* out) {
  char line[256];
  const ds::CudaBackend* cuda = nullptr;
  auto e = engine(m, 1, 2048, n, false, &cuda, ds::BackendSampling::kAuto, ds::kSampleMaxCandidates, true);
  if (!e) return false;
  for (int k = 0; k < 2; ++k) {
    if (!check_ok(e->add(prefill_request(n)), "add")) return false;
    const_cast<ds::CudaBackend*>(cuda)->reset_op_profile();
    run(*e, 1);
  }
  std::snprintf(line, sizeof line, "\nprefill profile, bench-1b %s, %d tokens in one step (ops timed one by one):\n", tn, n);
  *out += line;
  print_profile(*cuda, 1, out);
  return true;
}

// The op table of cuda's profile, per step.
void print_profile(const ds::CudaBackend& cuda, int steps, std::string* out) {
  char line[256];
  std::vector<std::pair<std::string, ds::CudaBackend::OpTime>> ops(cuda.op_profile().begin(), cuda.op_profile().end());
  std::sort(ops.begin(), ops.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  double total = 0;
  for (const auto& [name, t] : ops) total += t.ms;
  std::snprintf(line, sizeof line, "  %-20s %12s %12s %7s\n", "op", "calls/step", "us/step", "share");
  *out += line;
  for (const auto& [name, t] : ops) {
    std::snprintf(line, sizeof line, "  %-20s %12.1f %12.1f %6.1f%%\n", name.c_str(),
                  static_cast<double>(t.calls) / std::max(steps, 1), 1e3 * t.ms / std::max(steps, 1),
                  100.0 * t.ms / std::max(total, 1e-9));
    *out += line;
  }
  std::snprintf(line, sizeof line, "  %-20s %12s %12.1f\n", "total", "", 1e3 * total / std::max(steps, 1));
  *out += line;
}

// The reference for prefill: cuBLAS alone on a layer's GEMMs at n tokens with F16
// operands already in place (what the backend's matmuls call after rounding x to F16 and,
// for quantized weights, dequantizing them), F32 output and accumulation, times the layers.
// Stricter than the backend matmuls' time (gemm_s below), which includes both conversions.
double cublas_only_layers_s(const ds::ModelConfig& c, int n) {
#ifdef DS_CUDA_EMULATION
  (void)c, (void)n;
  return 0;
#else
  const int D = c.n_embd, F = c.n_ff, qd = c.n_head * c.head_dim, kvd = c.kv_dim();
  const int shapes[7][2] = {{qd, D}, {kvd, D}, {kvd, D}, {D, qd}, {F, D}, {F, D}, {D, F}};  // rows, cols
  const size_t widest = std::max({D, F, qd});
  void *w = nullptr, *x = nullptr, *y = nullptr;
  cublasHandle_t h = nullptr;
  double s = 0;
  if (cudaMalloc(&w, widest * widest * 2) == cudaSuccess && cudaMalloc(&x, n * widest * 2) == cudaSuccess &&
      cudaMalloc(&y, n * widest * 4) == cudaSuccess && cublasCreate(&h) == CUBLAS_STATUS_SUCCESS) {
    cudaMemset(w, 0x11, widest * widest * 2);  // F16 0x1111: small, nonzero
    cudaMemset(x, 0x11, n * widest * 2);
    const float alpha = 1, beta = 0;
    auto layer = [&]() {
      for (const auto& sh : shapes)
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, sh[0], n, sh[1], &alpha, w, CUDA_R_16F, sh[1], x, CUDA_R_16F, sh[1], &beta,
                     y, CUDA_R_32F, sh[0], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    layer();
    cudaDeviceSynchronize();
    const int reps = 10;
    const auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) layer();
    cudaDeviceSynchronize();
    s = secs(t0) / reps * c.n_layer;
  }
  if (h) cublasDestroy(h);
  cudaFree(w), cudaFree(x), cudaFree(y);
  return s;
#endif
}

double d2d_bandwidth_gbs() {
#ifdef DS_CUDA_EMULATION
  return 0;  // the CPU emulation (tests/gpu/emu) runs no benchmarks
#else
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  const auto t0 = Clock::now();
  const int reps = 10;
  for (int i = 0; i < reps; ++i) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaDeviceSynchronize();
  const double s = secs(t0);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes * reps / s / 1e9;  // read + write
#endif
}

bool bench(const std::string& dir, double copy_gbs) {
  std::printf("\n%-6s %10s %10s %10s %10s %9s %9s %11s %14s %12s %10s %10s %12s\n", "type", "prefill", "dec b1", "dec b8",
              "dec b32", "GB/s b1", "% copy", "prefill/gemm", "prefill/cublas", "b1 no graph", "b1 no PDL", "b32 no tc",
              "b1 q8 blocks");
  std::vector<std::string> sampled_lines;
  std::string profiles;
  for (const char* tn : {"q8_0", "f16", "q4_k"}) {  // q4_k last: the newest kernels, least of the time budget
    auto spec = ds::model_preset("bench-1b");
    ds::parse_dtype(tn, &spec->type);
    const std::string path = dir + "/bench-1b-" + tn + ".gguf";
    if (!std::ifstream(path).good()) {
      std::printf("writing %s ...\n", path.c_str());
      if (!ds::write_random_model(*spec, path).ok()) return false;
    }
    auto m = ds::Model::Load(path);
    if (!m.ok()) return false;
    const int prompt = 512, gen = 64;
    // cc: the CUDA-core attention kernel instead of the tensor cores'; wmma: the WMMA kernel
    // instead of the mma.sync flash attention 2
    double prefill = 0, prefill_cc = 0, prefill_wmma = 0;
    std::vector<double> dec;
    int32_t first[3] = {-1, -1, -1};
    for (int k = 0; k < 3; ++k) {
      g_tc_att = k != 1;
      g_tc_att_mma = k != 2;
      auto e = engine(*m, 1, 2048, prompt);
      g_tc_att = true;
      g_tc_att_mma = true;
      if (!e) return false;
      ds::SequenceRequest r = prefill_request(prompt);
      if (!check_ok(e->add(r), "add (warm-up)")) return false;
      run(*e, 1);
      r.id = 0;
      if (!check_ok(e->add(r), "add")) return false;
      const auto t0 = Clock::now();
      const auto out = run(*e, 1);
      (k == 0 ? prefill : k == 1 ? prefill_cc : prefill_wmma) = prompt / secs(t0);
      if (!out[0].empty()) first[k] = out[0][0];
    }
    sampled_lines.push_back(std::string(tn) + ": prefill 512 tokens " + std::to_string(prefill) +
                            " tok/s with mma.sync flash attention, " + std::to_string(prefill_wmma) +
                            " with the WMMA kernel, " + std::to_string(prefill_cc) +
                            " with the CUDA-core kernel (ratios " + std::to_string(prefill / prefill_wmma) + ", " +
                            std::to_string(prefill / prefill_cc) + "); first token " + std::to_string(first[0]) +
                            " / " + std::to_string(first[2]) + " / " + std::to_string(first[1]));
    int64_t replays = 0;
    // -1: batch 1 with graph recording off; -2: batch 1 without PDL; -3: batch 32 without the
    // tensor-core GEMM (cuBLAS instead); -4: batch 1 with Q8_0 in its GGUF blocks (q8_0 only)
    const bool q8 = !std::strcmp(tn, "q8_0");
    for (int b : {1, 8, 32, -1, -2, -3, -4}) {
      if (b == -4 && !q8) {
        dec.push_back(0);
        continue;
      }
      const ds::CudaBackend* cuda = nullptr;
      g_pdl = b != -2;
      g_tc = b != -3;
      g_q8_0_split = b != -4;
      b = b == -3 ? 32 : b;
      auto e = engine(*m, b < 0 ? 1 : b, 256, 256, b != -1, &cuda);
      g_pdl = true;
      g_tc = true;
      g_q8_0_split = true;
      b = b < 0 ? 1 : b;
      if (!e) return false;
      for (int i = 0; i < b; ++i) {
        ds::SequenceRequest r;
        r.id = i;
        r.prompt = {1, 300 + i};
        r.params.max_tokens = gen + 1;
        r.params.ignore_eos = true;
        if (!check_ok(e->add(r), "add")) return false;
      }
      std::vector<ds::TokenEvent> evs;
      if (!check_ok(e->step(&evs), "step (prompts + first token)")) return false;
      int steps = 0;
      const auto t0 = Clock::now();
      run(*e, b, &steps);
      dec.push_back(static_cast<double>(b) * gen / secs(t0));
      replays += cuda->replays();
    }
    // Sampled decode at batch 8 (every kind of request): sampling on the GPU vs on the host.
    double sampled[2] = {0, 0};
    for (int k = 0; k < 2; ++k) {
      auto e = engine(*m, 8, 256, 256, true, nullptr, k == 0 ? ds::BackendSampling::kAuto : ds::BackendSampling::kOff);
      if (!e) return false;
      for (auto& r : sampled_requests(8, gen + 1, 300))
        if (!check_ok(e->add(r), "add")) return false;
      std::vector<ds::TokenEvent> evs;
      if (!check_ok(e->step(&evs), "step (prompts + first token)")) return false;
      const auto t0 = Clock::now();
      run(*e, 8);
      sampled[k] = 8.0 * gen / secs(t0);
    }
    sampled_lines.push_back(std::string(tn) + ": sampled decode b8 " + std::to_string(sampled[0]) + " tok/s sampling on the GPU, " +
                            std::to_string(sampled[1]) + " on the host (ratio " + std::to_string(sampled[0] / sampled[1]) + ")");
    // Long-context decode (attention reads the cache): batch 8 at ~1024 positions, F32 vs F16 cache.
    if (!std::strcmp(tn, "q8_0")) {
      double kv_tok_s[2] = {0, 0};
      for (int k = 0; k < 2; ++k) {
        g_kv_type = k == 0 ? ds::DType::kF32 : ds::DType::kF16;
        auto e = engine(*m, 8, 1024 + gen + 8, 1024);
        g_kv_type.reset();
        if (!e) return false;
        for (int i = 0; i < 8; ++i) {
          ds::SequenceRequest r;
          r.id = i;
          for (int p = 0; p < 1024; ++p) r.prompt.push_back(300 + (p * 7919 + i * 104729) % 30000);
          r.params.max_tokens = gen + 1;
          r.params.ignore_eos = true;
          if (!check_ok(e->add(r), "add")) return false;
        }
        int first_tokens = 0;  // prefill every prompt, up to its first token
        for (int guard = 0; first_tokens < 8 && guard < 1000; ++guard) {
          std::vector<ds::TokenEvent> evs;
          if (!check_ok(e->step(&evs), "step (prefill)")) return false;
          for (const auto& ev : evs) first_tokens += ev.token >= 0 && ev.index == 0 ? 1 : 0;
        }
        const auto t0 = Clock::now();
        run(*e, 8);
        kv_tok_s[k] = 8.0 * gen / secs(t0);
      }
      sampled_lines.push_back(std::string(tn) + ": decode b8 at 1024 positions " + std::to_string(kv_tok_s[0]) +
                              " tok/s with an F32 KV cache, " + std::to_string(kv_tok_s[1]) + " with F16 (ratio " +
                              std::to_string(kv_tok_s[1] / kv_tok_s[0]) + ")");
    }
    if (!profile_decode(*m, tn, 1, &profiles)) return false;
    if (!profile_prefill(*m, tn, prompt, &profiles)) return false;
    // GEMM-only time of a prefill: every layer's matmuls at n = prompt.
    double gemm_s = 0;
    {
      auto be = gpu();
      const ds::ModelConfig& c = (*m)->config();
      const size_t maxw = std::max<size_t>(c.n_ff, c.n_vocab);
      float* x = static_cast<float*>(be->alloc(sizeof(float) * prompt * maxw));
      float* y = static_cast<float*>(be->alloc(sizeof(float) * prompt * maxw));
      std::vector<void*> up;
      auto dev = [&](const ds::WeightRef& w) {
        void* p = be->alloc(w.row_stride() * w.rows);
        up.push_back(p);
        return be->upload_weight(w, p);  // the engine's layout
      };
      const auto& L = (*m)->weights().layers[0];
      std::vector<ds::WeightRef> ws = {dev(L.wq), dev(L.wk), dev(L.wv), dev(L.wo), dev(L.w_gate), dev(L.w_up), dev(L.w_down)};
      float sink;
      for (const auto& w : ws) be->matmul(w, x, prompt, y);  // warm-up
      be->download(&sink, y, sizeof(float));
      const auto t0 = Clock::now();
      for (const auto& w : ws) be->matmul(w, x, prompt, y);
      be->download(&sink, y, sizeof(float));
      gemm_s = secs(t0) * c.n_layer;
      for (void* p : up) be->free(p);
      be->free(x);
      be->free(y);
    }
    const double gbs = (*m)->weights().decode_bytes() * dec[0] / 1e9;
    const double cublas_s = cublas_only_layers_s((*m)->config(), prompt);
    std::printf("%-6s %10.1f %10.1f %10.1f %10.1f %9.1f %8.0f%% %11.2f %14.2f %12.1f %10.1f %10.1f %12.1f   (%lld graph replays)\n",
                tn, prefill, dec[0], dec[1], dec[2], gbs, 100.0 * gbs / copy_gbs, (prompt / prefill) / gemm_s,
                (prompt / prefill) / cublas_s, dec[3], dec[4], dec[5], dec[6], static_cast<long long>(replays));
  }
  std::printf("(tok/s; GB/s b1 = weight bytes a token reads (all but the embedding table's other rows) x decode tok/s; %% copy = of the device-to-device copy bandwidth %.0f GB/s;\n"
              " prefill/gemm = prefill time over the time of its layer GEMMs alone (the backend's matmuls: x rounded\n"
              " to F16, quantized weights dequantized, cuBLAS): target <= 1.5; prefill/cublas = over cuBLAS alone on\n"
              " F16 operands already in place (the stricter reading of the target);\n"
              " b1 q8 blocks = batch 1 with Q8_0 in the GGUF blocks instead of split rows)\n", copy_gbs);
  for (const auto& l : sampled_lines) std::printf("%s\n", l.c_str());
  std::printf("%s", profiles.c_str());
  return true;
}

// Batch-1 decode of bench-1b through the persistent decode kernel (CudaBackendOptions::
// fused_decode) against the per-op path in the same run: with its L2 prefetch and up to 4
// blocks an SM (as many as fit), without the prefetch, with 1 and 2 blocks an SM. The
// per-op path's greedy tokens are required (the same logits give the same tokens). Last in
// the run: a kernel that never ran on a GPU before must not cost the other results if it hangs.
bool bench_fused(const std::string& dir, double copy_gbs) {
  std::printf("\npersistent decode kernel, bench-1b batch 1 (tok/s; %% of the %.0f GB/s copy bandwidth):\n", copy_gbs);
  bool all_same = true;
  for (const char* tn : {"q8_0", "f16"}) {
    auto spec = ds::model_preset("bench-1b");
    ds::parse_dtype(tn, &spec->type);
    const std::string path = dir + "/bench-1b-" + tn + ".gguf";
    if (!std::ifstream(path).good() && !ds::write_random_model(*spec, path).ok()) return false;
    auto m = ds::Model::Load(path);
    if (!m.ok()) return false;
    const int gen = 64;
    struct Variant {
      bool prefetch;
      int blocks;
    };
    std::string line = std::string(tn) + ":";
    std::vector<int32_t> per_op;
    bool same = true;
    for (int k = -1; k < 4; ++k) {
      const Variant v = k == 1 ? Variant{false, 4} : k == 2 ? Variant{true, 1} : k == 3 ? Variant{true, 2} : Variant{true, 4};
      const ds::CudaBackend* cuda = nullptr;
      g_fused = k >= 0;
      g_fused_prefetch = v.prefetch;
      g_fused_blocks = v.blocks;
      auto e = engine(*m, 1, 256, 256, true, &cuda);
      g_fused = false;
      g_fused_prefetch = true;
      g_fused_blocks = 4;
      if (!e) return false;
      ds::SequenceRequest r;
      r.id = 0;
      r.prompt = {1, 300};
      r.params.max_tokens = gen + 1;
      r.params.ignore_eos = true;
      if (!check_ok(e->add(r), "add")) return false;
      std::vector<ds::TokenEvent> evs;
      if (!check_ok(e->step(&evs), "step (prompt + first token)")) return false;
      const auto t0 = Clock::now();
      const auto out = run(*e, 1);
      const double tok_s = gen / secs(t0);
      if (!cuda->ok()) {
        std::printf("ERROR: %s\n", cuda->last_error().c_str());
        return false;
      }
      char buf[200];
      const double pct = 100.0 * (*m)->weights().decode_bytes() * tok_s / 1e9 / copy_gbs;
      if (k < 0) {
        per_op = out[0];
        std::snprintf(buf, sizeof buf, " per-op path %.1f (%.0f%%);", tok_s, pct);
      } else {
        same = same && out[0] == per_op;
        std::snprintf(buf, sizeof buf, "%s persistent %.1f (%.0f%%; %s, %d blocks an SM, grid %d)", k ? "," : "", tok_s,
                      pct, v.prefetch ? "prefetch" : "no prefetch", v.blocks, cuda->fused_decode_blocks(0));
      }
      line += buf;
    }
    std::printf("%s; tokens %s\n", line.c_str(), same ? "equal the per-op path's" : "DIFFER from the per-op path's");
    {  // what --fused-decode auto picks for this model on this GPU
      g_fused = g_fused_auto = true;
      auto e = engine(*m, 1, 256, 256, true);
      g_fused = g_fused_auto = false;
      if (!e) return false;
      std::printf("%s auto: %s\n", tn, e->decode_note().c_str());
    }
    all_same = all_same && same;
  }
  return all_same;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line: a run cut short by its timeout keeps what it printed
  std::string gold, bench_dir = "/tmp";
  bool do_bench = true;
  std::string only;  // one check only (development)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--golden") && i + 1 < argc) gold = argv[++i];
    else if (!std::strcmp(argv[i], "--bench-dir") && i + 1 < argc) bench_dir = argv[++i];
    else if (!std::strcmp(argv[i], "--no-bench")) do_bench = false;
    else if (!std::strcmp(argv[i], "--quick")) g_quick = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else {
      std::printf("usage: %s --golden DIR [--bench-dir DIR] [--no-bench] [--quick] [--only CHECK]\n"
                  "  CHECK: golden, q8_0_split, fused_decode, sampling, memory_errors, tensor_parallel, bench\n",
                  argv[0]);
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  if (!ds::cuda_backend_available()) {
    std::printf("RESULT: FAIL (no usable GPU)\n");
    return 2;
  }
  bool ok = true;
  auto on = [&](const char* check) { return only.empty() || only == check; };
  if (!gold.empty() && on("golden")) ok = golden(gold) && ok;
  if (on("q8_0_split")) ok = q8_0_split_engine(bench_dir) && ok;
  if (!gold.empty() && on("sampling")) ok = sampling(gold) && ok;
  if (!gold.empty() && on("memory_errors")) ok = memory_errors(gold) && ok;
  if (!gold.empty() && on("tensor_parallel")) ok = tensor_parallel_golden(gold) && ok;
  if (!gold.empty() && on("tensor_parallel")) ok = emulated_tensor_parallel(gold) && ok;
  const double copy_gbs = do_bench && (on("bench") || on("fused_decode")) ? d2d_bandwidth_gbs() : 0;
  if (do_bench && on("bench")) ok = bench(bench_dir, copy_gbs) && ok;
  // The persistent decode kernel last (never run on a GPU yet: a hang must cost nothing else).
  if (!gold.empty() && on("fused_decode")) ok = fused_decode(gold, bench_dir) && ok;
  if (do_bench && on("fused_decode")) ok = bench_fused(bench_dir, copy_gbs) && ok;
  std::printf("RESULT: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
