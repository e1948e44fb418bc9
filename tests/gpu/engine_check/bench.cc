// tests/gpu/engine_check/bench.cc: bench-1b prefill and decode throughput, GB/s against the copy bandwidth, prefill
// against its GEMMs (backend matmuls and cuBLAS alone), per-op profiles.
#include "tests/gpu/engine_check/check.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "model/mkmodel.h"
#include "tests/gpu/kernel_trace.h"

namespace ds::engine_check {

namespace {

// Request 0: a prompt of n tokens (ids spread over the vocabulary), one token to generate.
ds::SequenceRequest prefill_request(int n) {
  ds::SequenceRequest r;
  r.id = 0;
  for (int i = 0; i < n; ++i) r.prompt.push_back(300 + (i * 7919) % 30000);
  r.params.max_tokens = 1;
  r.params.ignore_eos = true;
  return r;
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

// Where a decode step's GPU time goes: every op timed with CUDA events (eager: each op
// waits for its kernels, so the sum exceeds a graph replay's step; the shares are the point).
// ctx, step_tokens: the engine's context and step size (the main decode benchmarks' 256 and
// 256, or the long-context one's 1096 and 1024).
bool profile_decode(const std::shared_ptr<ds::Model>& m, const char* tn, int batch, std::string* out, int ctx = 256,
                    int step_tokens = 256) {
  char line[256];
  const ds::CudaBackend* cuda = nullptr;
  auto e = engine(m, batch, ctx, step_tokens, false, &cuda, ds::BackendSampling::kAuto, ds::kSampleMaxCandidates, true);
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
  std::snprintf(line, sizeof line,
                "\ndecode step profile, bench-1b %s, batch %d, context %d, steps of %d tokens (%d steps; ops timed one by one):\n",
                tn, batch, ctx, step_tokens, steps);
  *out += line;
  print_profile(*cuda, steps, out);
  return true;
}

// Where a decode step's GPU time goes, as it runs (graph replays, PDL): each kernel's GPU time
// from CUPTI's records over `steps` decode steps, and the idle time between the kernels of a
// replay. prompt: tokens a request's prompt (the main benchmarks' 2, the long-context one's
// 1024). Tracing starts before the engine exists (CUPTI sees the graphs made after it) and the
// table keeps the records from the third decode step on.
bool trace_decode(const std::shared_ptr<ds::Model>& m, const char* tn, int batch, std::string* out, int ctx = 256,
                  int step_tokens = 256, int prompt = 2, const char* what = "") {
  std::string why;
  if (!ds::gpu_trace::start(&why)) {
    *out += "\nkernel trace, bench-1b " + std::string(tn) + ": not available: " + why + "\n";
    return true;
  }
  auto e = engine(m, batch, ctx, step_tokens);
  if (!e) {
    ds::gpu_trace::stop();
    return false;
  }
  for (int i = 0; i < batch; ++i) {
    ds::SequenceRequest r;
    r.id = i;
    r.prompt.push_back(1);
    for (int p = 1; p < prompt; ++p) r.prompt.push_back(300 + (p * 7919 + i * 104729) % 30000);
    r.params.max_tokens = 24;
    r.params.ignore_eos = true;
    if (!check_ok(e->add(r), "add")) {
      ds::gpu_trace::stop();
      return false;
    }
  }
  std::vector<ds::TokenEvent> evs;
  int first_tokens = 0;  // prefill every prompt, up to its first token, then 2 decode steps
  for (int guard = 0; first_tokens < batch && guard < 1000; ++guard) {
    evs.clear();
    if (!check_ok(e->step(&evs), "step (prefill)")) break;
    for (const auto& ev : evs) first_tokens += ev.token >= 0 && ev.index == 0 ? 1 : 0;
  }
  for (int k = 0; k < 2 && first_tokens == batch; ++k)
    if (!check_ok(e->step(&evs), "step (first decode steps)")) first_tokens = -1;
  cudaDeviceSynchronize();
  const uint64_t from = ds::gpu_trace::now_ns();
  int steps = 0;
  if (first_tokens == batch) run(*e, batch, &steps);
  cudaDeviceSynchronize();
  const auto recs = ds::gpu_trace::stop(from);
  if (first_tokens != batch) return false;
  char title[384];
  std::snprintf(title, sizeof title,
                "\nkernel trace, bench-1b %s, decode batch %d, context %d, steps of %d tokens, prompts of %d%s (%d steps "
                "as they run: graph replays):",
                tn, batch, ctx, step_tokens, prompt, what, steps);
  *out += ds::gpu_trace::table(recs, steps, title);
  return true;
}

// The same for one prefill of n tokens (the second of two: the first allocates).
bool trace_prefill(const std::shared_ptr<ds::Model>& m, const char* tn, int n, std::string* out) {
  std::string why;
  auto e = engine(m, 1, 2048, n);
  if (!e) return false;
  if (!check_ok(e->add(prefill_request(n)), "add")) return false;
  run(*e, 1);
  if (!check_ok(e->add(prefill_request(n)), "add")) return false;
  cudaDeviceSynchronize();
  if (!ds::gpu_trace::start(&why)) {
    *out += "\nkernel trace, bench-1b " + std::string(tn) + " prefill: not available: " + why + "\n";
    return true;
  }
  run(*e, 1);
  cudaDeviceSynchronize();
  const auto recs = ds::gpu_trace::stop();
  char title[160];
  std::snprintf(title, sizeof title, "\nkernel trace, bench-1b %s, prefill of %d tokens in one step (as it runs):", tn, n);
  *out += ds::gpu_trace::table(recs, 1, title);
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

// The floor of a decode step that reads each weight matrix in its own launch: the bytes a
// batch-1 step reads, in the pieces its launches read (a layer's Q/K/V, O, gate/up and down,
// then the output projection), each copied device to device by its own cudaMemcpyAsync, the
// chain recorded as one CUDA graph (as a decode step is). The copy reads and writes every
// byte: the figure to set beside d2d_bandwidth_gbs(), which the target is relative to.
// Seconds a chain, 0 on any error (or under the CPU emulation); *pieces: how many copies.
double copy_chain_s(const ds::ModelWeights& w, int* pieces_out) {
#ifdef DS_CUDA_EMULATION
  (void)w, (void)pieces_out;
  return 0;
#else
  std::vector<size_t> pieces;
  auto bytes = [](const ds::WeightRef& r) { return r.row_stride() * static_cast<size_t>(r.rows); };
  for (const auto& L : w.layers) {
    pieces.push_back(bytes(L.wq) + bytes(L.wk) + bytes(L.wv));
    pieces.push_back(bytes(L.wo));
    pieces.push_back(bytes(L.w_gate) + bytes(L.w_up));
    pieces.push_back(bytes(L.w_down));
  }
  pieces.push_back(bytes(w.output));
  *pieces_out = static_cast<int>(pieces.size());
  size_t total = 0;
  for (size_t p : pieces) total += p;
  void *src = nullptr, *dst = nullptr;
  cudaStream_t s = nullptr;
  cudaGraph_t g = nullptr;
  cudaGraphExec_t ge = nullptr;
  double t = 0;
  if (cudaMalloc(&src, total) == cudaSuccess && cudaMalloc(&dst, total) == cudaSuccess &&
      cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess &&
      cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    size_t off = 0;
    bool ok = true;
    for (size_t p : pieces) {
      ok = cudaMemcpyAsync(static_cast<char*>(dst) + off, static_cast<char*>(src) + off, p, cudaMemcpyDeviceToDevice, s) ==
               cudaSuccess && ok;
      off += p;
    }
    if (cudaStreamEndCapture(s, &g) == cudaSuccess && ok && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess &&
        cudaGraphLaunch(ge, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess) {
      const int reps = 20;
      const auto t0 = Clock::now();
      for (int r = 0; r < reps; ++r) cudaGraphLaunch(ge, s);
      if (cudaStreamSynchronize(s) == cudaSuccess) t = secs(t0) / reps;
    }
  }
  if (ge) cudaGraphExecDestroy(ge);
  if (g) cudaGraphDestroy(g);
  if (s) cudaStreamDestroy(s);
  cudaFree(src), cudaFree(dst);
  cudaGetLastError();
  return t;
#endif
}

}  // namespace

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
  std::printf("\n%-6s %10s %10s %10s %10s %9s %9s %11s %14s %12s %10s %10s %12s %10s %10s %10s %10s\n", "type", "prefill",
              "dec b1", "dec b8", "dec b32", "GB/s b1", "% copy", "prefill/gemm", "prefill/cublas", "b1 no graph",
              "b1 no PDL", "b32 no tc", "b1 q8 blocks", "b1 L2 pf", "b8 L2 pf", "b1 stream", "b1 str+pf");
  std::printf("(tok/s; GB/s b1 = weight bytes a token reads (all but the embedding table's other rows) x decode tok/s; %% copy = of the device-to-device copy bandwidth %.0f GB/s;\n"
              " prefill/gemm = prefill time over the time of its layer GEMMs alone (the backend's matmuls: x rounded\n"
              " to F16, quantized weights dequantized, cuBLAS): target <= 1.5; prefill/cublas = over cuBLAS alone on\n"
              " F16 operands already in place (the stricter reading of the target);\n"
              " b1 q8 blocks = batch 1 with Q8_0 in the GGUF blocks instead of split rows;\n"
              " b1 / b8 L2 pf = batch 1 / 8 with the L2 prefetch of the next op's weights (CudaBackendOptions::l2_prefetch);\n"
              " b1 stream = batch 1 with the streamed GEMV (gemv_stream); b1 str+pf = with both;\n"
              " decode rates: 63 steps after the first decode step, timed apart below; each type's row is\n followed by its details: measurements, per-op profiles, CUPTI kernel traces)\n", copy_gbs);
  std::vector<std::string> sampled_lines;
  std::string profiles;
  for (const char* tn : {"q8_0", "f16", "q4_k"}) {  // q4_k last: the newest kernels, least of the time budget
    std::string list(","), item(",");  // (appends: GCC 12 warns wrongly about "," + a string)
    list.append(g_bench_types).push_back(',');
    item.append(tn).push_back(',');
    if (!g_bench_types.empty() && list.find(item) == std::string::npos) continue;
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
    // hc: with the F16 copies of the quantized matrices kept (CudaBackendOptions::half_weight_cache)
    double prefill = 0, prefill_cc = 0, prefill_wmma = 0, prefill_hc = 0;
    std::vector<double> dec;
    double first_ms[3] = {0, 0, 0};
    double step_us[3][3] = {};  // batch 1, 8, 32: a decode step's wall time, its graph replay's GPU time, replays a step
    int32_t first[3] = {-1, -1, -1};
    for (int k = 0; k < 4; ++k) {
      g_tc_att = k != 1;
      g_tc_att_mma = k != 2;
      g_half_cache = k == 3;
      auto e = engine(*m, 1, 2048, prompt);
      g_tc_att = true;
      g_tc_att_mma = true;
      g_half_cache = false;
      if (!e) return false;
      ds::SequenceRequest r = prefill_request(prompt);
      if (!check_ok(e->add(r), "add (warm-up)")) return false;
      run(*e, 1);
      r.id = 0;
      if (!check_ok(e->add(r), "add")) return false;
      const auto t0 = Clock::now();
      const auto out = run(*e, 1);
      (k == 0 ? prefill : k == 1 ? prefill_cc : k == 2 ? prefill_wmma : prefill_hc) = prompt / secs(t0);
      if (!out[0].empty() && k < 3) first[k] = out[0][0];
    }
    sampled_lines.push_back(std::string(tn) + ": prefill 512 tokens with the F16 copies of the matrices kept " +
                            std::to_string(prefill_hc) + " tok/s (ratio " + std::to_string(prefill_hc / prefill) +
                            "; prefill/cublas with them " + std::to_string((prompt / prefill_hc) / cublas_only_layers_s((*m)->config(), prompt)) +
                            ")");
    sampled_lines.push_back(std::string(tn) + ": prefill 512 tokens " + std::to_string(prefill) +
                            " tok/s with mma.sync flash attention, " + std::to_string(prefill_wmma) +
                            " with the WMMA kernel, " + std::to_string(prefill_cc) +
                            " with the CUDA-core kernel (ratios " + std::to_string(prefill / prefill_wmma) + ", " +
                            std::to_string(prefill / prefill_cc) + "); first token " + std::to_string(first[0]) +
                            " / " + std::to_string(first[2]) + " / " + std::to_string(first[1]));
    int64_t replays = 0;
    // -1: batch 1 with graph recording off; -2: batch 1 without PDL; -3: batch 32 without the
    // tensor-core GEMM (cuBLAS instead); -4: batch 1 with Q8_0 in its GGUF blocks (q8_0 only);
    // -5, -8: batch 1, 8 with the L2 prefetch of the next op's weights (CudaBackendOptions::l2_prefetch);
    // -6: batch 1 with the streamed GEMV (gemv_stream); -7: batch 1 with both
    const bool q8 = !std::strcmp(tn, "q8_0");
    for (int b : {1, 8, 32, -1, -2, -3, -4, -5, -8, -6, -7}) {
      if (b == -4 && !q8) {
        dec.push_back(0);
        continue;
      }
      const ds::CudaBackend* cuda = nullptr;
      g_pdl = b != -2;
      g_tc = b != -3;
      g_q8_0_split = b != -4;
      g_time_replays = b > 0;
      g_l2_prefetch = b == -5 || b == -8 || b == -7;
      g_gemv_stream = b == -6 || b == -7;
      b = b == -3 ? 32 : b == -8 ? 8 : b;
      auto e = engine(*m, b < 0 ? 1 : b, 256, 256, b != -1, &cuda);
      g_time_replays = false;
      g_l2_prefetch = false;
      g_gemv_stream = false;
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
      // The first decode step records the step's CUDA graph and is the first use of its
      // kernels: timed apart (a one-off cost), the rate is of the steps after it.
      const auto t1 = Clock::now();
      if (!check_ok(e->step(&evs), "step (first decode step)")) return false;
      const double first_s = secs(t1);
      if (dec.size() < 3) first_ms[dec.size()] = 1e3 * first_s;
      int steps = 0;
      const double replay_ms0 = cuda->replay_ms();
      const int64_t replays0 = cuda->replays();
      const auto t0 = Clock::now();
      run(*e, b, &steps);
      const double wall_s = secs(t0);
      dec.push_back(static_cast<double>(b) * (gen - 1) / wall_s);
      replays += cuda->replays();
      if (dec.size() <= 3 && steps > 0)
        step_us[dec.size() - 1][0] = 1e6 * wall_s / steps,
        step_us[dec.size() - 1][1] = 1e3 * (cuda->replay_ms() - replay_ms0) / steps,
        step_us[dec.size() - 1][2] = static_cast<double>(cuda->replays() - replays0) / steps;
    }
    {
      char buf[400];
      std::snprintf(buf, sizeof buf,
                    "%s: a decode step's wall time / its graph replay's GPU time (us): batch 1 %.1f / %.1f, batch 8 "
                    "%.1f / %.1f, batch 32 %.1f / %.1f (the difference: host work, uploads, sampling, the download; "
                    "replays a step %.2f / %.2f / %.2f)",
                    tn, step_us[0][0], step_us[0][1], step_us[1][0], step_us[1][1], step_us[2][0], step_us[2][1],
                    step_us[0][2], step_us[1][2], step_us[2][2]);
      sampled_lines.push_back(buf);
    }
    sampled_lines.push_back(std::string(tn) + ": first decode step (records its CUDA graph, first use of its kernels) " +
                            std::to_string(first_ms[0]) + " ms at batch 1, " + std::to_string(first_ms[1]) +
                            " ms at batch 8, " + std::to_string(first_ms[2]) + " ms at batch 32 (the table's rates leave it out)");
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
      double kv_tok_s[2] = {0, 0}, kv_step_us[2][2] = {};  // a step's wall time, its replay's GPU time
      for (int k = 0; k < 2; ++k) {
        g_kv_type = k == 0 ? ds::DType::kF32 : ds::DType::kF16;
        g_time_replays = true;
        const ds::CudaBackend* cuda = nullptr;
        auto e = engine(*m, 8, 1024 + gen + 8, 1024, true, &cuda);
        g_time_replays = false;
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
        const double replay_ms0 = cuda->replay_ms();
        int steps = 0;
        const auto t0 = Clock::now();
        run(*e, 8, &steps);
        const double wall_s = secs(t0);
        kv_tok_s[k] = 8.0 * gen / wall_s;
        if (steps > 0) kv_step_us[k][0] = 1e6 * wall_s / steps, kv_step_us[k][1] = 1e3 * (cuda->replay_ms() - replay_ms0) / steps;
      }
      char buf[200];
      std::snprintf(buf, sizeof buf, " (a step: %.1f us wall / %.1f us graph replay on the GPU; F16: %.1f / %.1f)",
                    kv_step_us[0][0], kv_step_us[0][1], kv_step_us[1][0], kv_step_us[1][1]);
      sampled_lines.push_back(std::string(tn) + ": decode b8 at 1024 positions " + std::to_string(kv_tok_s[0]) +
                              " tok/s with an F32 KV cache, " + std::to_string(kv_tok_s[1]) + " with F16 (ratio " +
                              std::to_string(kv_tok_s[1] / kv_tok_s[0]) + ")" + buf);
    }
    if (!profile_decode(*m, tn, 1, &profiles)) return false;
    if (!profile_decode(*m, tn, 8, &profiles)) return false;
    // The long-context engine's settings: its batch-8 decode was 2.3x faster (16th session).
    if (!std::strcmp(tn, "q8_0") && !profile_decode(*m, tn, 8, &profiles, 1024 + 64 + 8, 1024)) return false;
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
    int pieces = 0;
    const double chain_s = copy_chain_s((*m)->weights(), &pieces);
    if (chain_s > 0) {
      const double chain_gbs = 2.0 * (*m)->weights().decode_bytes() / chain_s / 1e9;
      sampled_lines.push_back(std::string(tn) + ": copy chain (the bytes of a batch-1 step in " + std::to_string(pieces) +
                              " cudaMemcpyAsync, one a launch of the step, in one CUDA graph) " +
                              std::to_string(1e6 * chain_s) + " us = " + std::to_string(chain_gbs) + " GB/s read+write = " +
                              std::to_string(100.0 * chain_gbs / copy_gbs) + "% of copy, " + std::to_string(1.0 / chain_s) +
                              " steps/s; batch-1 decode " + std::to_string(1e6 / dec[0]) + " us a step = " +
                              std::to_string(100.0 * chain_s * dec[0]) + "% of the chain's rate");
    }
    const double gbs = (*m)->weights().decode_bytes() * dec[0] / 1e9;
    const double cublas_s = cublas_only_layers_s((*m)->config(), prompt);
    std::printf("%-6s %10.1f %10.1f %10.1f %10.1f %9.1f %8.0f%% %11.2f %14.2f %12.1f %10.1f %10.1f %12.1f %10.1f %10.1f %10.1f %10.1f   (%lld graph replays)\n",
                tn, prefill, dec[0], dec[1], dec[2], gbs, 100.0 * gbs / copy_gbs, (prompt / prefill) / gemm_s,
                (prompt / prefill) / cublas_s, dec[3], dec[4], dec[5], dec[6], dec[7], dec[8], dec[9], dec[10],
                static_cast<long long>(replays));
    // This type's details now (a deadline cutting the run short keeps what was printed).
    for (const auto& l : sampled_lines) std::printf("%s\n", l.c_str());
    std::printf("%s", profiles.c_str());
    sampled_lines.clear();
    profiles.clear();
    std::fflush(stdout);
    std::string traced;
    auto flush_traced = [&]() {
      std::printf("%s", traced.c_str());
      std::fflush(stdout);
      traced.clear();
    };
    // The same as they run, each kernel timed on the GPU (CUPTI)
    if (!trace_decode(*m, tn, 1, &traced)) return false;
    flush_traced();
    g_l2_prefetch = true;
    const bool traced_pf = trace_decode(*m, tn, 1, &traced, 256, 256, 2, " with the L2 prefetch of the next op's weights");
    g_l2_prefetch = false;
    if (!traced_pf) return false;
    flush_traced();
    g_gemv_stream = true;
    const bool traced_stream = trace_decode(*m, tn, 1, &traced, 256, 256, 2, " with the streamed GEMV");
    g_gemv_stream = false;
    if (!traced_stream) return false;
    flush_traced();
    if (!trace_decode(*m, tn, 8, &traced)) return false;
    flush_traced();
    if (!std::strcmp(tn, "q8_0")) {
      if (!trace_decode(*m, tn, 8, &traced, 1024 + 64 + 8, 1024, 1024)) return false;
      flush_traced();
      if (!trace_decode(*m, tn, 8, &traced, 256, 256, 200)) return false;  // which of the two settings matters
      flush_traced();
      if (!trace_decode(*m, tn, 32, &traced)) return false;
      flush_traced();
    }
    if (!trace_prefill(*m, tn, prompt, &traced)) return false;
    flush_traced();
  }
  return true;
}

}  // namespace ds::engine_check
