// tests/gpu/engine_check/parallel.cc: the tensor-parallel engine (NCCL on the visible GPUs, and emulated ranks) against
// the golden tokens.
#include "tests/gpu/engine_check/check.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/comm.h"
#include "model/forward.h"
#include "model/kv_cache.h"

namespace ds::engine_check {

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

}  // namespace ds::engine_check
