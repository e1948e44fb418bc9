// tests/gpu/engine_check/fused.cc: the persistent decode kernel: bit for bit against the per-op path, its load
// probe, and its bench-1b batch-1 timing.
#include "tests/gpu/engine_check/check.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "model/forward.h"
#include "model/kv_cache.h"
#include "model/mkmodel.h"

namespace ds::engine_check {

namespace {

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

}  // namespace

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

// Batch-1 decode of bench-1b through the persistent decode kernel (CudaBackendOptions::
// fused_decode) against the per-op path in the same run: with its L2 prefetch and up to 4
// blocks an SM (as many as fit), without the prefetch, with 1 and 2 blocks an SM, and the
// register-capped build with 6 and 8 blocks an SM (with and without the prefetch). The
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
    // k = -1: the per-op path; then the persistent kernel's variants (above 4 blocks an SM:
    // the build capped at 64 registers, decode_fused.cu)
    const Variant variants[] = {{true, 4}, {false, 4}, {true, 1}, {true, 2}, {true, 6}, {true, 8}, {false, 8}};
    for (int k = -1; k < static_cast<int>(std::size(variants)); ++k) {
      const Variant v = k < 0 ? Variant{true, 4} : variants[k];
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

}  // namespace ds::engine_check
