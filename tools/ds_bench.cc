// ds-bench: engine micro-benchmarks.
//
//   ds-bench engine --model FILE [--threads N] [--prompt 128] [--gen 64] [--batch 1,8]
//                   [--repeats 3] [--json]
// Prefill tok/s (one sequence, the whole prompt in one forward pass), decode tok/s at
// batch 1 and aggregated over each batch size (every sequence decodes --gen tokens),
// medians of --repeats runs, plus the memory read bandwidth measured in the same run
// (decode is bandwidth-bound: weight bytes per token x tok/s vs that ceiling).
// Exit codes: 0 ok, 1 failure, 2 usage error.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <thread>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "model/engine.h"
#include "model/model.h"
#include "tools/common/cli_util.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Read bandwidth (GB/s) over a 1 GiB buffer with n threads: median of 5 passes.
double measure_read_bandwidth(int threads) {
  const size_t n = (size_t{1} << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buf(n, 1);
  ds::ThreadPool pool(threads);
  std::vector<double> gbs;
  std::vector<uint64_t> sums(threads);
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    pool.run([&](int ith, int nth) {
      int64_t b, e;
      ds::ThreadPool::split(static_cast<int64_t>(n), ith, nth, &b, &e);
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = b; i + 4 <= e; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      sums[ith] = s0 + s1 + s2 + s3;
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    gbs.push_back(n * sizeof(uint64_t) / s / 1e9);
  }
  return median(gbs);
}

struct BenchResult {
  double prefill_tok_s = 0;
  std::vector<std::pair<int, double>> decode;  // batch, tok/s
};

ds::Status run_once(const std::shared_ptr<ds::Model>& model, int threads, int prompt, int gen,
                    const std::vector<int>& batches, BenchResult* out) {
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  ds::EngineOptions eo;
  eo.max_batch = max_batch;
  eo.max_step_tokens = std::max(prompt, max_batch);
  eo.n_ctx = std::min(model->config().n_ctx_train, prompt + gen + 8);
  eo.n_ctx = std::max(eo.n_ctx, prompt + gen + 8);
  eo.kv_cache_tokens = max_batch * eo.n_ctx;
  auto engine = ds::Engine::Create(model, ds::make_cpu_backend({threads}), eo);
  if (!engine.ok()) return engine.status();
  ds::Engine& e = **engine;
  const int32_t n_vocab = model->config().n_vocab;
  uint64_t next_id = 1;
  auto tokens = [&](int n, int salt) {
    std::vector<int32_t> t;
    const int32_t bos = model->tokenizer().bos();
    if (bos >= 0) t.push_back(bos);
    for (int i = static_cast<int>(t.size()); i < n; ++i) t.push_back(static_cast<int32_t>((i * 7919 + salt * 104729) % (n_vocab - 300) + 300));
    return t;
  };
  auto drain = [&](std::vector<ds::TokenEvent>* evs) -> ds::Status {
    evs->clear();
    return e.step(evs);
  };
  std::vector<ds::TokenEvent> evs;

  // Prefill: one sequence, one forward pass over the whole prompt.
  {
    ds::SequenceRequest r;
    r.id = next_id++;
    r.prompt = tokens(prompt, 1);
    r.params.max_tokens = 1;
    r.params.ignore_eos = true;
    DS_RETURN_IF_ERROR(e.add(r));
    const auto t0 = Clock::now();
    while (!e.idle()) DS_RETURN_IF_ERROR(drain(&evs));
    out->prefill_tok_s = prompt / std::chrono::duration<double>(Clock::now() - t0).count();
  }
  // Decode: batch sequences with a short prompt, time the steps after the first token.
  for (int b : batches) {
    for (int i = 0; i < b; ++i) {
      ds::SequenceRequest r;
      r.id = next_id++;
      r.prompt = tokens(1, i);
      r.params.max_tokens = gen + 1;
      r.params.ignore_eos = true;
      DS_RETURN_IF_ERROR(e.add(r));
    }
    DS_RETURN_IF_ERROR(drain(&evs));  // first step: prompts + first tokens
    const auto t0 = Clock::now();
    int produced = 0;
    while (!e.idle()) {
      DS_RETURN_IF_ERROR(drain(&evs));
      for (const auto& ev : evs) produced += ev.token >= 0 ? 1 : 0;
    }
    out->decode.emplace_back(b, produced / std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return ds::Status::Ok();
}

int bench_engine(const std::string& path, int threads, int prompt, int gen, std::vector<int> batches, int repeats, bool json, bool quiet) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  if (std::find(batches.begin(), batches.end(), 1) == batches.end()) batches.insert(batches.begin(), 1);
  ds::LoadOptions lo;
  ds::cli::Progress progress("loading " + path, !quiet && !json);
  lo.progress = [&](size_t d, size_t t) { progress.update(d, t); };
  auto model = ds::Model::Load(path, lo);
  if (!model.ok()) {
    std::cerr << "ds-bench: cannot load model: " << model.status().ToString() << "\n";
    return ds::cli::kExitFailure;
  }
  std::vector<double> prefill;
  std::vector<std::vector<double>> decode(batches.size());
  for (int r = 0; r < repeats; ++r) {
    BenchResult br;
    if (ds::Status s = run_once(*model, threads, prompt, gen, batches, &br); !s.ok()) {
      std::cerr << "ds-bench: " << s.ToString() << "\n";
      return ds::cli::kExitFailure;
    }
    prefill.push_back(br.prefill_tok_s);
    for (size_t i = 0; i < batches.size(); ++i) decode[i].push_back(br.decode[i].second);
    if (!quiet && !json) std::cerr << "repeat " << r + 1 << "/" << repeats << " done\n";
  }
  const double bw = measure_read_bandwidth(threads);
  const double weight_bytes = static_cast<double>((*model)->weights().bytes) -
                              ((*model)->config().tied_output ? 0.0 : 0.0);
  const double d1 = median(decode[0]);
  const ds::ModelConfig& c = (*model)->config();
  if (json) {
    nlohmann::json j;
    j["model"] = path;
    j["model_name"] = c.name;
    j["arch"] = c.arch_name;
    j["type"] = (*model)->weight_type_name();
    j["threads"] = threads;
    j["isa"] = ds::cpu_kernel_isa();
    j["prompt"] = prompt;
    j["gen"] = gen;
    j["repeats"] = repeats;
    j["prefill_tok_s"] = median(prefill);
    j["decode_tok_s"] = d1;
    j["weight_bytes"] = weight_bytes;
    j["mem_read_gb_s"] = bw;
    j["decode_gb_s"] = weight_bytes * d1 / 1e9;
    j["batches"] = nlohmann::json::array();
    for (size_t i = 0; i < batches.size(); ++i) j["batches"].push_back({{"batch", batches[i]}, {"decode_tok_s", median(decode[i])}});
    std::cout << j.dump() << "\n";
  } else {
    std::printf("model    %s (%s, %s, %d layers, dim %d)\n", path.c_str(), c.arch_name.c_str(), (*model)->weight_type_name().c_str(), c.n_layer, c.n_embd);
    std::printf("threads  %d (%s kernels), median of %d\n\n", threads, ds::cpu_kernel_isa(), repeats);
    std::printf("%-22s %12s\n", "test", "tok/s");
    std::printf("%-22s %12.1f\n", ("prefill pp" + std::to_string(prompt)).c_str(), median(prefill));
    for (size_t i = 0; i < batches.size(); ++i)
      std::printf("%-22s %12.1f\n", ("decode tg" + std::to_string(gen) + " batch " + std::to_string(batches[i])).c_str(), median(decode[i]));
    std::printf("\nweights %.0f MiB; batch-1 decode reads %.1f GB/s; memory read bandwidth %.1f GB/s (%.0f%%)\n",
                weight_bytes / 1048576.0, weight_bytes * d1 / 1e9, bw, 100.0 * weight_bytes * d1 / 1e9 / bw);
  }
  return ds::cli::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds-bench: benchmarks for the ds engine"};
  app.require_subcommand(1);
  std::string model;
  int threads = 0, prompt = 128, gen = 64, repeats = 3;
  std::vector<int> batches = {1, 8};
  bool json = false, quiet = false;
  CLI::App* eng = app.add_subcommand("engine", "Prefill and decode throughput of the CPU engine on a GGUF model");
  eng->add_option("--model", model, "GGUF model file")->required()->check(CLI::ExistingFile);
  eng->add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 256));
  eng->add_option("--prompt", prompt, "Prompt tokens for the prefill test")->check(CLI::Range(1, 65536));
  eng->add_option("--gen", gen, "Tokens to decode per sequence")->check(CLI::Range(1, 65536));
  eng->add_option("--batch", batches, "Batch sizes for decode, comma separated")->delimiter(',')->check(CLI::Range(1, 1024));
  eng->add_option("--repeats", repeats, "Runs; the median is reported")->check(CLI::Range(1, 100));
  eng->add_flag("--json", json, "One JSON object instead of a table");
  eng->add_flag("-q,--quiet", quiet, "No progress output");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : ds::cli::kExitUsage;
  }
  return bench_engine(model, threads, prompt, gen, batches, repeats, json, quiet);
}
