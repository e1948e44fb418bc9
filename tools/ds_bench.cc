// ds-bench: engine micro-benchmarks and a closed-loop load generator.
//
//   ds-bench engine --model FILE [--threads N] [--prompt 128] [--gen 64] [--batch 1,8]
//                   [--repeats 3] [--json]
// Prefill tok/s (one sequence, the whole prompt in one forward pass), decode tok/s at
// batch 1 and aggregated over each batch size (every sequence decodes --gen tokens),
// medians of --repeats runs, plus the memory read bandwidth measured in the same run
// (decode is bandwidth-bound: weight bytes per token x tok/s vs that ceiling).
//
//   ds-bench load --connect HOST:PORT [--concurrency 8] [--requests 32] [--prompt-tokens 32]
//                 [--max-tokens 64] [--vocab 256] [--compare-engine FILE [--threads N]] [--json]
// Closed loop through a ds-node with the ds::Client library: --concurrency streams each
// keep one greedy request in flight until --requests have finished. Reports requests/s,
// generated tok/s (all tokens received / wall time, prefill included), time to first
// token and inter-token gap p50/p99 as the client sees them, and the error count.
// --compare-engine first measures the in-process engine's batch-C decode tok/s on FILE
// (the node stays idle meanwhile) and reports the ratio load / engine. An idle ds-node on the
// same cores still slows the engine (CAF's scheduler threads poll): tools/bench-load.sh
// measures the engine before it starts the node.
// Exit codes: 0 ok, 1 failure, 2 usage error, 3 cannot connect, 4 some requests were
// rejected (and none failed otherwise), 5 some requests failed (the report is printed
// in every case once the load ran).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "actors/client.h"
#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/variants.h"
#include "model/engine.h"
#include "model/model.h"
#include "tools/bench_failover.h"
#include "tools/common/cli_util.h"
#include "tools/common/tls_flags.h"

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

// --fused-decode: the CUDA backend's persistent decode kernel for one-token steps.
ds::CudaBackendChoices g_cuda_choices;
bool g_cpu_interleave = true;  // --cpu-weights
std::string g_decode_note;  // the last engine's Engine::decode_note()
std::string g_backend_note;  // the last engine's Engine::backend_note()

// The backend a run measures: the CPU with `threads` threads, or CUDA GPU `gpu` (gpu >= 0).
ds::Result<std::unique_ptr<ds::Backend>> make_backend(int threads, int gpu) {
  if (gpu < 0) return ds::make_cpu_backend({threads, g_cpu_interleave});
  std::string err;
  std::unique_ptr<ds::Backend> b = ds::make_cuda_backend(gpu, &err, g_cuda_choices);
  if (!b) return ds::Status::NotSupported("no CUDA backend on GPU " + std::to_string(gpu) + ": " + err);
  return b;
}

// decode_ctx: the decode test's prompts have this many tokens, so its steps attend over
// decode_ctx .. decode_ctx + gen positions (1: short contexts, weights dominate).
ds::Status run_once(const std::shared_ptr<ds::Model>& model, int threads, int gpu, int prompt, int gen,
                    const std::vector<int>& batches, BenchResult* out, std::optional<ds::DType> kv_type = std::nullopt,
                    int decode_ctx = 1) {
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  ds::EngineOptions eo;
  eo.kv_type = kv_type;
  eo.max_batch = max_batch;
  eo.max_step_tokens = std::max(prompt, max_batch);
  const int longest = std::max(prompt, decode_ctx);
  eo.n_ctx = std::min(model->config().n_ctx_train, longest + gen + 8);
  eo.n_ctx = std::max(eo.n_ctx, longest + gen + 8);
  // Whole blocks per sequence: a cache of max_batch * n_ctx positions can be a block short per
  // sequence when n_ctx is not a multiple of the block size, and then a sequence of the batch
  // waits (this made 4-token-prompt runs ~18% slower).
  eo.kv_cache_tokens = max_batch * ((eo.n_ctx + eo.kv_block_size - 1) / eo.kv_block_size) * eo.kv_block_size;
  auto backend = make_backend(threads, gpu);
  if (!backend.ok()) return backend.status();
  auto engine = ds::Engine::Create(model, std::move(backend).value(), eo);
  if (!engine.ok()) return engine.status();
  ds::Engine& e = **engine;
  g_decode_note = e.decode_note();
  g_backend_note = e.backend_note();
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

  // Warm-up (as llama-bench's): a short request first, so that the timed steps are not the
  // engine's first touch of its weights and buffers (on this project's dev VM the first pass
  // over freshly mapped memory ran at a third of the speed of the next ones).
  {
    ds::SequenceRequest r;
    r.id = next_id++;
    r.prompt = tokens(std::min(prompt, 8), 2);
    r.params.max_tokens = 2;
    r.params.ignore_eos = true;
    DS_RETURN_IF_ERROR(e.add(r));
    while (!e.idle()) DS_RETURN_IF_ERROR(drain(&evs));
  }
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
      r.prompt = tokens(decode_ctx, i);
      r.params.max_tokens = gen + 1;
      r.params.ignore_eos = true;
      DS_RETURN_IF_ERROR(e.add(r));
    }
    for (int firsts = 0; firsts < b;) {  // the prompts (one or more steps) up to every first token
      DS_RETURN_IF_ERROR(drain(&evs));
      for (const auto& ev : evs) firsts += ev.token >= 0 && ev.index == 0 ? 1 : 0;
      if (e.idle()) break;
    }
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

int bench_engine(const std::string& path, int threads, int gpu, int prompt, int gen, std::vector<int> batches, int repeats,
                 bool json, bool quiet, const std::string& kv_type_name, int decode_ctx) {
  std::optional<ds::DType> kv_type;  // "auto": the engine's default (f16 on GPUs, f32 on the CPU)
  if (kv_type_name != "auto") kv_type = kv_type_name == "f16" ? ds::DType::kF16 : ds::DType::kF32;
  const char* kv_used = kv_type ? ds::dtype_name(*kv_type) : gpu < 0 ? "f32" : "f16";
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
    if (ds::Status s = run_once(*model, threads, gpu, prompt, gen, batches, &br, kv_type, decode_ctx); !s.ok()) {
      std::cerr << "ds-bench: " << s.ToString() << "\n";
      return ds::cli::kExitFailure;
    }
    prefill.push_back(br.prefill_tok_s);
    for (size_t i = 0; i < batches.size(); ++i) decode[i].push_back(br.decode[i].second);
    if (!quiet && !json) std::cerr << "repeat " << r + 1 << "/" << repeats << " done\n";
  }
  const double bw = gpu < 0 ? measure_read_bandwidth(threads) : 0;  // host memory: CPU runs only
  const double weight_bytes = static_cast<double>((*model)->weights().bytes);
  const double step_bytes = static_cast<double>((*model)->weights().decode_bytes());  // what a b1 step reads
  const double d1 = median(decode[0]);
  const ds::ModelConfig& c = (*model)->config();
  if (json) {
    nlohmann::json j;
    j["model"] = path;
    j["model_name"] = c.name;
    j["arch"] = c.arch_name;
    j["type"] = (*model)->weight_type_name();
    j["backend"] = gpu < 0 ? "cpu" : "cuda";
    j["kv_type"] = kv_used;
    j["decode_ctx"] = decode_ctx;
    if (gpu >= 0) j["gpu"] = gpu;
    j["threads"] = threads;
    j["isa"] = ds::cpu_kernel_isa();
    if (gpu < 0) j["cpu_kernels"] = ds::cpu::active_variant().name;
    if (gpu < 0) j["cpu_weights"] = g_cpu_interleave && ds::cpu_interleaves_quant() ? "interleaved" : "gguf";
    j["prompt"] = prompt;
    j["gen"] = gen;
    j["repeats"] = repeats;
    j["prefill_tok_s"] = median(prefill);
    j["decode_tok_s"] = d1;
    j["weight_bytes"] = weight_bytes;
    if (gpu < 0) j["mem_read_gb_s"] = bw;
    j["decode_bytes_per_token"] = step_bytes;
    j["decode_gb_s"] = step_bytes * d1 / 1e9;
    if (!g_decode_note.empty()) j["decode_note"] = g_decode_note;
    if (!g_backend_note.empty()) j["backend_note"] = g_backend_note;
    j["batches"] = nlohmann::json::array();
    for (size_t i = 0; i < batches.size(); ++i) j["batches"].push_back({{"batch", batches[i]}, {"decode_tok_s", median(decode[i])}});
    std::cout << j.dump() << "\n";
  } else {
    std::printf("model    %s (%s, %s, %d layers, dim %d)\n", path.c_str(), c.arch_name.c_str(), (*model)->weight_type_name().c_str(), c.n_layer, c.n_embd);
    if (gpu < 0) std::printf("threads  %d (%s kernels: variant %s; %s quantized weights), KV cache %s, median of %d\n\n", threads,
                             ds::cpu_kernel_isa(), ds::cpu::active_variant().name, g_cpu_interleave && ds::cpu_interleaves_quant() ? "interleaved" : "gguf-layout", kv_used,
                             repeats);
    else std::printf("backend  cuda, GPU %d, KV cache %s, median of %d\n\n", gpu, kv_used, repeats);
    std::printf("%-22s %12s\n", "test", "tok/s");
    std::printf("%-22s %12.1f\n", ("prefill pp" + std::to_string(prompt)).c_str(), median(prefill));
    for (size_t i = 0; i < batches.size(); ++i)
      std::printf("%-22s %12.1f\n",
                  ("decode tg" + std::to_string(gen) + (decode_ctx > 1 ? " @" + std::to_string(decode_ctx) : std::string()) +
                   " batch " + std::to_string(batches[i]))
                      .c_str(),
                  median(decode[i]));
    if (gpu < 0) {
      std::printf("\nweights %.0f MiB; batch-1 decode reads %.1f GB/s; memory read bandwidth %.1f GB/s (%.0f%%)\n",
                  weight_bytes / 1048576.0, step_bytes * d1 / 1e9, bw, 100.0 * step_bytes * d1 / 1e9 / bw);
    } else {  // the GPU's copy bandwidth and per-op breakdown: tools/gpu-check.sh
      std::printf("\nweights %.0f MiB; batch-1 decode reads %.1f GB/s\n", weight_bytes / 1048576.0, step_bytes * d1 / 1e9);
      if (!g_decode_note.empty()) std::printf("%s\n", g_decode_note.c_str());
      if (!g_backend_note.empty()) std::printf("%s\n", g_backend_note.c_str());
    }
  }
  return ds::cli::kExitOk;
}

// ---- load: closed loop through a ds-node ----

struct LoadArgs {
  std::string connect;
  int concurrency = 8;
  int requests = 32;
  int prompt_tokens = 32;
  int max_tokens = 64;
  int vocab = 256;
  std::string compare_engine;  // GGUF file: measure the engine's batch-C decode first
  int threads = 0;
  bool json = false;
  ds::TlsOptions tls;
};

// What one request measured, as the client saw it.
struct RequestSample {
  bool ok = false;
  bool rejected = false;  // refused by the node (invalid, draining, no worker)
  bool lost = false;      // the connection broke: the load stops
  std::string error;
  int tokens = 0;
  double ttft_ms = -1;
  std::vector<double> itl_ms;  // gap before each token after the first
};

// Prompt of request i: n ids in [3, vocab) (0-2 are unk/bos/eos in Llama vocabularies).
// The first ids spell i in base (vocab - 3), so prompts are distinct while n allows; the
// rest is a fixed hash of (i, position). Deterministic across runs.
std::vector<int32_t> load_prompt(uint64_t i, int n, int vocab) {
  const uint64_t base = static_cast<uint64_t>(vocab - 3);
  std::vector<int32_t> t;
  t.reserve(n);
  uint64_t rest = i;
  do {
    t.push_back(static_cast<int32_t>(3 + rest % base));
    rest /= base;
  } while (rest > 0 && static_cast<int>(t.size()) < n);
  for (uint64_t j = t.size(); static_cast<int>(t.size()) < n; ++j) {
    uint64_t z = i * 0x9E3779B97F4A7C15ull + j * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    t.push_back(static_cast<int32_t>(3 + z % base));
  }
  return t;
}

using ds::cli::percentile;

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

RequestSample run_one_request(ds::Client& client, const ds::GenerateRequest& req) {
  RequestSample r;
  const auto t0 = Clock::now();
  auto last = t0;
  auto on_chunk = [&](const ds::TokenChunk& c) {
    if (c.tokens.empty()) return;  // text only: no new token
    const auto now = Clock::now();
    const double gap_ms = std::chrono::duration<double, std::milli>(now - last).count();
    const int n = static_cast<int>(c.tokens.size());
    if (r.ttft_ms < 0) {
      r.ttft_ms = gap_ms;
      for (int k = 1; k < n; ++k) r.itl_ms.push_back(0);  // arrived together with the first
    } else {
      for (int k = 0; k < n; ++k) r.itl_ms.push_back(gap_ms / n);
    }
    r.tokens += n;
    last = now;
  };
  auto res = client.generate(req, on_chunk);
  if (!res.ok()) {
    r.error = res.status().message();
    r.rejected = res.status().code() == ds::StatusCode::kInvalidArgument;
    r.lost = res.status().code() == ds::StatusCode::kIOError;
    return r;
  }
  if (res->finish_reason == "error" || res->finish_reason == "cancelled") {
    r.error = "request " + res->id + " ended with " + res->finish_reason + (res->error.empty() ? "" : ": " + res->error);
    return r;
  }
  r.ok = true;
  return r;
}

// The engine's aggregate decode tok/s at batch `batch` on `path` (median of 3 runs).
int engine_decode_tok_s(const LoadArgs& a, double* out) {
  auto model = ds::Model::Load(a.compare_engine, ds::LoadOptions{});
  if (!model.ok()) {
    std::cerr << "ds-bench: cannot load model: " << model.status().ToString() << "\n";
    return ds::cli::kExitFailure;
  }
  std::vector<double> runs;
  for (int r = 0; r < 3; ++r) {
    BenchResult br;
    if (ds::Status s = run_once(*model, a.threads, -1, a.prompt_tokens, a.max_tokens, {a.concurrency}, &br); !s.ok()) {
      std::cerr << "ds-bench: " << s.ToString() << "\n";
      return ds::cli::kExitFailure;
    }
    runs.push_back(br.decode[0].second);
  }
  *out = median(runs);
  return ds::cli::kExitOk;
}

int bench_load(LoadArgs a) {
  ds::ClientOptions co;
  co.tls = a.tls;
  if (!ds::parse_node_list(a.connect, &co)) {
    std::cerr << "ds-bench: --connect wants HOST:PORT[,HOST:PORT...], got '" << a.connect << "'\n";
    return ds::cli::kExitUsage;
  }
  if (a.threads <= 0) a.threads = static_cast<int>(std::thread::hardware_concurrency());
  int connect_rc = 0;
  auto client = ds::cli::connect_or_report(co, "ds-bench", &connect_rc);
  if (!client) return connect_rc;
  // The engine first, alone: running it beside the node's work would distort both. The
  // client is closed meanwhile: an open connection's heartbeats keep CAF's scheduler
  // threads (here and in the node) polling, which costs the engine ~20% on 2 cores.
  double engine_tok_s = 0;
  if (!a.compare_engine.empty()) {
    client.reset();
    if (!a.json) std::cerr << "engine: batch-" << a.concurrency << " decode on " << a.compare_engine << " ...\n";
    if (int rc = engine_decode_tok_s(a, &engine_tok_s); rc != ds::cli::kExitOk) return rc;
    client = ds::cli::connect_or_report(co, "ds-bench", &connect_rc);
    if (!client) return connect_rc;
  }

  std::atomic<int> next{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<RequestSample> samples;
  samples.reserve(a.requests);
  const auto t0 = Clock::now();
  std::vector<std::thread> streams;
  for (int c = 0; c < a.concurrency; ++c) {
    streams.emplace_back([&] {
      for (int i = next.fetch_add(1); i < a.requests && !stop.load(); i = next.fetch_add(1)) {
        ds::GenerateRequest req;
        req.prompt_tokens = load_prompt(static_cast<uint64_t>(i), a.prompt_tokens, a.vocab);
        req.max_tokens = a.max_tokens;
        req.temperature = 0.0f;
        req.stream = true;
        RequestSample r = run_one_request(*client, req);
        if (r.lost) stop.store(true);  // no point in sending more into a broken connection
        std::lock_guard<std::mutex> lock(mu);
        samples.push_back(std::move(r));
      }
    });
  }
  for (auto& t : streams) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();

  int completed = 0, errors = 0, rejected = 0;
  int64_t gen_tokens = 0;
  std::string first_error;
  std::vector<double> ttft, itl;
  for (const RequestSample& r : samples) {
    gen_tokens += r.tokens;
    if (r.ttft_ms >= 0) ttft.push_back(r.ttft_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    if (r.ok) {
      ++completed;
    } else {
      ++errors;
      rejected += r.rejected ? 1 : 0;
      if (first_error.empty()) first_error = r.error;
    }
  }
  const double rps = completed / wall_s, tok_s = static_cast<double>(gen_tokens) / wall_s;
  const int not_sent = a.requests - static_cast<int>(samples.size());
  if (a.json) {
    nlohmann::json j;
    j["connect"] = a.connect;
    j["concurrency"] = a.concurrency;
    j["requests"] = a.requests;
    j["prompt_tokens"] = a.prompt_tokens;
    j["max_tokens"] = a.max_tokens;
    j["completed"] = completed;
    j["errors"] = errors;
    j["rejected"] = rejected;
    j["not_sent"] = not_sent;
    j["gen_tokens"] = gen_tokens;
    j["wall_s"] = wall_s;
    j["requests_per_s"] = rps;
    j["gen_tok_s"] = tok_s;
    j["ttft_ms_p50"] = percentile(ttft, 0.50);
    j["ttft_ms_p99"] = percentile(ttft, 0.99);
    j["ttft_ms_mean"] = mean(ttft);
    j["itl_ms_p50"] = percentile(itl, 0.50);
    j["itl_ms_p99"] = percentile(itl, 0.99);
    j["itl_ms_mean"] = mean(itl);
    if (!first_error.empty()) j["first_error"] = first_error;
    if (!a.compare_engine.empty()) {
      j["engine_model"] = a.compare_engine;
      j["engine_threads"] = a.threads;
      j["engine_batch"] = a.concurrency;
      j["engine_decode_tok_s"] = engine_tok_s;
      j["load_vs_engine"] = engine_tok_s > 0 ? tok_s / engine_tok_s : 0;
    }
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("load      %s: %d streams, %d requests of %d prompt ids + %d tokens max (greedy)\n", a.connect.c_str(),
                a.concurrency, a.requests, a.prompt_tokens, a.max_tokens);
    std::printf("done      %d completed, %d errors (%d rejected), %d not sent, in %.2f s\n\n", completed, errors, rejected,
                not_sent, wall_s);
    std::printf("%-22s %12s\n", "metric", "value");
    std::printf("%-22s %12.2f\n", "requests/s", rps);
    std::printf("%-22s %12.1f\n", "generated tok/s", tok_s);
    std::printf("%-22s %12.1f\n", "TTFT p50 ms", percentile(ttft, 0.50));
    std::printf("%-22s %12.1f\n", "TTFT p99 ms", percentile(ttft, 0.99));
    std::printf("%-22s %12.2f\n", "inter-token p50 ms", percentile(itl, 0.50));
    std::printf("%-22s %12.2f\n", "inter-token p99 ms", percentile(itl, 0.99));
    if (!a.compare_engine.empty()) {
      std::printf("\nengine batch-%d decode %.1f tok/s (in-process, %d threads, median of 3); load / engine = %.2f\n",
                  a.concurrency, engine_tok_s, a.threads, engine_tok_s > 0 ? tok_s / engine_tok_s : 0.0);
    }
    if (!first_error.empty()) std::printf("\nfirst error: %s\n", first_error.c_str());
  }
  if (errors == 0 && not_sent == 0) return ds::cli::kExitOk;
  return errors == rejected && not_sent == 0 ? ds::cli::kExitRejected : ds::cli::kExitRequestFailed;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds-bench: benchmarks for the ds engine and for a ds-node under load"};
  app.require_subcommand(1);
  std::string model;
  int threads = 0, prompt = 128, gen = 64, repeats = 3;
  std::vector<int> batches = {1, 8};
  bool json = false, quiet = false;
  std::string backend = "cpu", kv_type = "auto";
  int gpu = 0, decode_ctx = 1;
  CLI::App* eng = app.add_subcommand("engine", "Prefill and decode throughput of the engine (CPU or one GPU) on a GGUF model");
  eng->add_option("--model", model, "GGUF model file")->required()->check(CLI::ExistingFile);
  eng->add_option("--backend", backend, "cpu or cuda (exit 1 when there is no usable GPU)")->check(CLI::IsMember({"cpu", "cuda"}));
  eng->add_option("--gpu", gpu, "The GPU of --backend cuda (default 0)")->check(CLI::Range(0, 64));
  eng->add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 256));
  eng->add_option("--kv-type", kv_type, "KV-cache elements: auto (f16 on GPUs, f32 on the CPU), f32 or f16")
      ->check(CLI::IsMember({"auto", "f32", "f16"}));
  std::string fused_decode = "off";
  eng->add_option("--fused-decode", fused_decode,
                  "--backend cuda: one-token decode steps as one persistent kernel: off, on, or auto (only where a "
                  "probe at load times it faster; same tokens either way)")
      ->check(CLI::IsMember({"off", "on", "auto"}));
  std::string cuda_kernels = "all";
  eng->add_option("--cuda-kernels", cuda_kernels,
                  "--backend cuda: all kernel paths (those not yet run on a GPU checked at start) or only the proven ones")
      ->check(CLI::IsMember({"all", "proven"}));
  std::string cuda_tuning;
  eng->add_option("--cuda-tuning", cuda_tuning,
                  "--backend cuda: performance options not yet timed on a GPU, comma-separated: l2-prefetch, stream-gemv, "
                  "half-weights (ds-node --help: cuda-tuning; same tokens either way)")
      ->check([](const std::string& v) {
        ds::CudaBackendChoices c;
        std::string error;
        return ds::parse_cuda_tuning(v, &c, &error) ? std::string() : error;
      });
  std::string cpu_weights = "interleaved";
  eng->add_option("--cpu-weights", cpu_weights,
                  "--backend cpu: Q8_0 / Q4_0 / Q4_K / Q6_K matrices interleaved by 16 rows at load (the fast kernels, where the CPU has "
                  "AVX2 or AVX-512) or computed on the file's bytes (gguf)")
      ->check(CLI::IsMember({"interleaved", "gguf"}));
  std::string cpu_kernels = "auto";
  eng->add_option("--cpu-kernels", cpu_kernels,
                  "--backend cpu: the compile of the CPU kernels to run: auto (the best this CPU runs), or avx512vnni, avx512, "
                  "avxvnni, avx2, generic (x86-64 builds), to compare them in one binary (same as env DS_CPU_KERNELS)");
  eng->add_option("--prompt", prompt, "Prompt tokens for the prefill test")->check(CLI::Range(1, 65536));
  eng->add_option("--gen", gen, "Tokens to decode per sequence")->check(CLI::Range(1, 65536));
  eng->add_option("--decode-ctx", decode_ctx,
                  "Prompt tokens of each decode test sequence, so decode attends over this many positions (default 1)")
      ->check(CLI::Range(1, 1 << 20));
  eng->add_option("--batch", batches, "Batch sizes for decode, comma separated")->delimiter(',')->check(CLI::Range(1, 1024));
  eng->add_option("--repeats", repeats, "Runs; the median is reported")->check(CLI::Range(1, 100));
  eng->add_flag("--json", json, "One JSON object instead of a table");
  eng->add_flag("-q,--quiet", quiet, "No progress output");

  LoadArgs la;
  CLI::App* load = app.add_subcommand(
      "load",
      "Closed-loop load through a ds-node: C streams each keep one greedy request in flight until N are done; reports "
      "requests/s, generated tok/s, TTFT and inter-token p50/p99, errors (exit 3: cannot connect)");
  load->add_option("--connect", la.connect, "HOST:PORT[,HOST:PORT...]: the node (the first that answers; the others take new requests if it dies)")->required();
  load->add_option("--concurrency", la.concurrency, "Streams, each with one request in flight (default 8)")->check(CLI::Range(1, 1024));
  load->add_option("--requests", la.requests, "Requests in all (default 32)")->check(CLI::Range(1, 10000000));
  load->add_option("--prompt-tokens", la.prompt_tokens, "Prompt length in token ids, distinct per request (default 32)")->check(CLI::Range(1, 65536));
  load->add_option("--max-tokens", la.max_tokens, "Tokens to generate per request, fewer when the model stops (default 64)")->check(CLI::Range(1, 1 << 20));
  load->add_option("--vocab", la.vocab, "Prompt ids are drawn from [3, VOCAB) (default 256, valid for every Llama/Qwen2 vocabulary)")
      ->check(CLI::Range(4, 1 << 24));
  load->add_option("--compare-engine", la.compare_engine,
                   "GGUF file (the one the node serves): first measure the in-process engine's batch-C decode tok/s on it")
      ->check(CLI::ExistingFile);
  load->add_option("--threads", la.threads, "CPU threads of the --compare-engine run (default: all cores)")->check(CLI::Range(0, 256));
  load->add_flag("--json", la.json, "One JSON object instead of a table");
  ds::cli::add_tls_flags(*load, &la.tls);
  ds::bench::FailoverArgs fa;
  CLI::App* failover = ds::bench::add_failover_command(app, &fa);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : ds::cli::kExitUsage;
  }
  g_cuda_choices.fused_decode = fused_decode != "off";
  g_cuda_choices.fused_decode_auto = fused_decode == "auto";
  g_cuda_choices.proven_only = cuda_kernels == "proven";
  ds::parse_cuda_tuning(cuda_tuning, &g_cuda_choices, nullptr);  // checked by the option
  g_cpu_interleave = cpu_weights == "interleaved";
  if (cpu_kernels != "auto") setenv("DS_CPU_KERNELS", cpu_kernels.c_str(), 1);
  if (std::string error; ds::cpu::select_variant(&error) == nullptr) {
    std::fprintf(stderr, "ds-bench: %s\n", error.c_str());
    return ds::cli::kExitUsage;
  }
  if (load->parsed()) return bench_load(la);
  if (failover->parsed()) return ds::bench::bench_failover(fa);
  return bench_engine(model, threads, backend == "cuda" ? gpu : -1, prompt, gen, batches, repeats, json, quiet, kv_type,
                      decode_ctx);
}
