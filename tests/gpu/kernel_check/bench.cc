// tests/gpu/kernel_check/bench.cc: gpu_kernel_check's benchmarks (BENCH lines): GEMV against memcpy, the
// tensor-core and cuBLAS GEMMs, attention, sampling, PDL chains, the grid barrier.
#include "tests/gpu/kernel_check/check.h"
#include "tests/gpu/kernel_trace.h"

namespace ds::kernel_check {

// ---- benchmarks ---------------------------------------------------------------------

constexpr size_t kRotateBytes = size_t{256} << 20;  // > 4x L2 (50 MiB on H100): every read comes from HBM

// Average milliseconds per call of f(i) over iters calls, timed with events on stream s.
// gpu_ms (when given): the average GPU time of the kernels and copies a call ran, from their
// CUPTI records (0 when it cannot trace). Events around eager launches time the host's launch
// rate too: a kernel shorter than a launch (~2-4 us) reads as the launch.
template <class F>
double time_ms(cudaStream_t s, int iters, F&& f, double* gpu_ms = nullptr) {
  std::string why;
  const bool traced = gpu_ms != nullptr && ds::gpu_trace::start(&why);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0, s);
  for (int i = 0; i < iters; ++i) f(i);
  cudaEventRecord(e1, s);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  if (gpu_ms) {
    *gpu_ms = 0;
    if (traced) {
      double ns = 0;
      for (const auto& r : ds::gpu_trace::stop()) ns += static_cast<double>(r.end_ns - r.start_ns);
      *gpu_ms = ns / 1e6 / iters;
    }
  }
  return ms / iters;
}

// " GPU 1.23 us = 456.7 GB/s (CUPTI)" for `bytes` in gpu_ms, or "" when not traced.
std::string gpu_rate(size_t bytes, double gpu_ms) {
  if (gpu_ms <= 0) return "";
  char buf[96];
  std::snprintf(buf, sizeof buf, "; GPU %.2f us = %.1f GB/s (CUPTI)", gpu_ms * 1e3, bytes / (gpu_ms * 1e-3) / 1e9);
  return buf;
}

// Decode GEMV (n = 1) reading weights from HBM: bytes of weights / time.
// split: Q8_0 uploaded as the engine uploads it (upload_weight: split rows), "q8_0s" below.
// int8: Q8_0 through the int8 GEMV (CudaBackendOptions::int8_gemv), labelled "gemv-i8".
double bench_gemv(CudaBackend& b, Rng& rng, DType t, int64_t rows, int64_t cols, int version, int n, bool split = false,
                  bool int8 = false) {
  const size_t bytes = ds::row_bytes(t, cols) * rows;
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes));
  const auto w = make_weights(rng, t, rows, cols);
  std::vector<Buf> ws;
  std::vector<WeightRef> refs;
  for (int i = 0; i < copies; ++i) {
    ws.emplace_back(b, w.size());
    refs.push_back(split ? b.upload_weight(WeightRef{t, w.data(), rows, cols}, ws.back().as<void>())
                         : WeightRef{t, ws.back().as<void>(), rows, cols});
    if (!split) b.upload(ws.back().as<void>(), w.data(), w.size());
  }
  Buf x(b, rng.floats(n * cols)), y(b, n * rows * 4);
  b.set_gemv_version(version);
  b.set_int8_gemv(int8);
  const int gemv_max = b.options().gemv_max_batch;
  b.set_gemv_max_batch(std::max(n, 8));  // the GEMV whatever the type's range (gemv_limit)
  auto run = [&](int i) { b.matmul(refs[i % copies], x.as(), n, y.as()); };
  auto s = static_cast<cudaStream_t>(b.stream());
  time_ms(s, copies, run);  // warm-up
  const int iters = version == 1 ? copies : std::max(4 * copies, 200);
  double gpu_ms = 0;
  const double ms = time_ms(s, iters, run, &gpu_ms);
  b.set_gemv_version(kLiveGemv);
  b.set_int8_gemv(false);
  b.set_gemv_max_batch(gemv_max);
  require_ok(b, "gemv benchmark");
  const double gbps = bytes / (ms * 1e-3) / 1e9;
  char what[96];
  const std::string label = int8 ? "gemv-i8" : "gemv" + std::to_string(version);
  std::snprintf(what, sizeof what, "%s %s%s %s n=%d", label.c_str(), ds::dtype_name(t), split ? "s" : "",
                shape(rows, cols).c_str(), n);
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (weight bytes / time)%s\n", what, ms * 1e3, gbps,
              gpu_rate(bytes, gpu_ms).c_str());
  std::fflush(stdout);
  return gpu_ms > 0 ? bytes / (gpu_ms * 1e-3) / 1e9 : gbps;  // the kernel's own rate where CUPTI gives it
}

// One bench-1b layer's Q/K/V and gate/up projections (+ SwiGLU) at batch n: the separate
// ops (5 GEMV launches + swiglu) against the fused ones (2 launches), weights rotated as above.
void bench_fused(CudaBackend& b, Rng& rng, DType t, int n) {
  const int64_t dim = 2048, kv = 512, ff = 5632;
  const size_t bytes = ds::row_bytes(t, dim) * (dim + 2 * kv + 2 * ff);
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes));
  struct Layer { Buf q, k, v, g, u; };
  std::vector<Layer> ls;
  {
    const auto wq = make_weights(rng, t, dim, dim), wk = make_weights(rng, t, kv, dim), wg = make_weights(rng, t, ff, dim);
    for (int i = 0; i < copies; ++i) ls.push_back(Layer{Buf(b, wq), Buf(b, wk), Buf(b, wk), Buf(b, wg), Buf(b, wg)});
  }
  Buf x(b, rng.floats(n * dim)), q(b, n * dim * 4), k(b, n * kv * 4), v(b, n * kv * 4), g(b, n * ff * 4), u(b, n * ff * 4);
  auto run = [&](int i) {
    const Layer& l = ls[i % copies];
    b.matmul_qkv(WeightRef{t, l.q.as<void>(), dim, dim}, WeightRef{t, l.k.as<void>(), kv, dim},
                 WeightRef{t, l.v.as<void>(), kv, dim}, nullptr, nullptr, nullptr, x.as(), n, q.as(), k.as(), v.as());
    b.matmul_swiglu(WeightRef{t, l.g.as<void>(), ff, dim}, WeightRef{t, l.u.as<void>(), ff, dim}, x.as(), n, g.as(),
                    u.as());
  };
  auto s = static_cast<cudaStream_t>(b.stream());
  const int iters = std::max(4 * copies, 200);
  double ms[2];
  for (int fused = 0; fused < 2; ++fused) {
    b.set_fuse_decode(fused == 1);
    time_ms(s, copies, run);  // warm-up
    ms[fused] = time_ms(s, iters, run);
  }
  b.set_fuse_decode(true);
  require_ok(b, "fused benchmark");
  char what[96];
  std::snprintf(what, sizeof what, "fused qkv+gate/up %s bench-1b n=%d", ds::dtype_name(t), n);
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (separate ops: %.2f us, %.1f GB/s)\n", what, ms[1] * 1e3,
              bytes / (ms[1] * 1e-3) / 1e9, ms[0] * 1e3, bytes / (ms[0] * 1e-3) / 1e9);
  std::fflush(stdout);
}

// Device-to-device cudaMemcpyAsync of `bytes`, rotated the same way: DRAM traffic (read +
// write) / time, the figure a read-only kernel is compared with.
double bench_memcpy(CudaBackend& b, size_t bytes) {
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes));
  std::vector<Buf> src, dst;
  for (int i = 0; i < copies; ++i) {
    src.emplace_back(b, bytes);
    dst.emplace_back(b, bytes);
  }
  auto s = static_cast<cudaStream_t>(b.stream());
  cudaError_t err = cudaSuccess;
  auto run = [&](int i) {
    const cudaError_t e =
        cudaMemcpyAsync(dst[i % copies].as(), src[i % copies].as(), bytes, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) err = e;
  };
  time_ms(s, copies, run);
  double gpu_ms = 0;
  const double ms = time_ms(s, std::max(4 * copies, 200), run, &gpu_ms);
  if (err != cudaSuccess) {
    std::printf("ERROR: cudaMemcpyAsync: %s\n", cudaGetErrorString(err));
    std::exit(2);
  }
  const double gbps = 2.0 * bytes / (ms * 1e-3) / 1e9;
  char what[96];
  std::snprintf(what, sizeof what, "memcpy-d2d %.1f MiB", bytes / 1048576.0);
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (read+write bytes / time; copy rate %.1f GB/s)%s\n", what, ms * 1e3,
              gbps, gbps / 2, gpu_rate(2 * bytes, gpu_ms).c_str());
  std::fflush(stdout);
  return gpu_ms > 0 ? 2.0 * bytes / (gpu_ms * 1e-3) / 1e9 : gbps;  // as bench_gemv's: the GPU's own rate where traced
}

// Decode at batch n: the tensor-core kernel against cuBLAS (F16 operands; a quantized matrix
// dequantized to F16 first) and the GEMV in launches of 8, weights rotated, each forced
// (gemv_max_batch 1, tc_gemm_every_type; batch_invariant for the GEMV): are the per-type
// GEMV ranges and the kernel's types right?
// split: Q8_0 uploaded in the split layout (CudaBackend::upload_weight, as the engine does).
void bench_tc(CudaBackend& b, Rng& rng, DType t, int64_t rows, int64_t cols, int n, bool split = false) {
  const size_t bytes = ds::row_bytes(t, cols) * rows;
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes));
  const auto w = make_weights(rng, t, rows, cols);
  std::vector<Buf> ws;
  std::vector<WeightRef> refs;
  for (int i = 0; i < copies; ++i) {
    if (split) {
      ws.emplace_back(b, w.size());
      refs.push_back(b.upload_weight(WeightRef{t, w.data(), rows, cols}, ws.back().as<void>()));
    } else {
      ws.emplace_back(b, w);
      refs.push_back(WeightRef{t, ws.back().as<void>(), rows, cols});
    }
  }
  Buf x(b, rng.floats(n * cols)), y(b, n * rows * 4);
  auto s = static_cast<cudaStream_t>(b.stream());
  const int gemv_max = b.options().gemv_max_batch;
  double us[3] = {0, 0, 0};
  b.set_tc_gemm_every_type(true);
  for (int path = 0; path < 3; ++path) {  // 0: tensor-core kernel, 1: cuBLAS, 2: GEMV
    b.set_tc_gemm(path == 0);
    b.set_batch_invariant(path == 2);
    b.set_gemv_max_batch(path == 2 ? gemv_max : 1);
    auto run = [&](int i) { b.matmul(refs[i % copies], x.as(), n, y.as()); };
    time_ms(s, copies, run);
    us[path] = 1e3 * time_ms(s, std::max(4 * copies, 100), run);
  }
  b.set_tc_gemm(true);
  b.set_tc_gemm_every_type(false);
  b.set_batch_invariant(false);
  b.set_gemv_max_batch(gemv_max);
  require_ok(b, "tensor-core benchmark");
  char what[96];
  std::snprintf(what, sizeof what, "matmul-tc %s%s %s n=%d", ds::dtype_name(t), split ? "s" : "", shape(rows, cols).c_str(), n);
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s; cuBLAS %.2f us (%.2fx), GEMV x%d %.2f us (%.2fx)\n", what, us[0],
              bytes / (us[0] * 1e-6) / 1e9, us[1], us[1] / us[0], (n + 7) / 8, us[2], us[2] / us[0]);
  std::fflush(stdout);
}

void bench_prefill(CudaBackend& b, Rng& rng, DType t, int64_t rows, int64_t cols, int n, bool half) {
  b.set_gemm_half(half);
  const auto w = make_weights(rng, t, rows, cols);
  Buf dw(b, w), x(b, rng.floats(n * cols)), y(b, n * rows * 4);
  auto run = [&](int) { b.matmul(WeightRef{t, dw.as<void>(), rows, cols}, x.as(), n, y.as()); };
  auto s = static_cast<cudaStream_t>(b.stream());
  time_ms(s, 3, run);
  const double ms = time_ms(s, 20, run);
  require_ok(b, "prefill benchmark");
  const std::string what =
      "matmul " + std::string(ds::dtype_name(t)) + " " + shape(rows, cols) + " n=" + std::to_string(n);
  std::printf("BENCH %-36s %9.2f us  %8.2f TFLOP/s (cuBLAS %s)\n", what.c_str(), ms * 1e3,
              2.0 * rows * cols * n / (ms * 1e-3) / 1e12,
              half ? "F16 tensor cores, F32 accumulation" : "F32 SGEMM after dequantize");
  b.set_gemm_half(true);
}

// max_kv 0: version 1; else version 2 with that bound. Returns the time in ms.
double bench_attention(CudaBackend& b, Rng& rng, int n_tokens, int n_kv, int max_kv, DType kv_type = DType::kF32) {
  const int n_heads = 32, n_kv_heads = 8, head_dim = 128, bs = 16;
  const int64_t kv_dim = n_kv_heads * head_dim;
  const int blocks_per_seq = (n_kv + bs - 1) / bs;
  std::vector<int32_t> table(static_cast<size_t>(blocks_per_seq) * n_tokens);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  Buf dtable(b, table), kc(b, table.size() * bs * kv_dim * 4), vc(b, table.size() * bs * kv_dim * 4);
  Buf q(b, rng.floats(static_cast<size_t>(n_tokens) * n_heads * head_dim)), out(b, n_tokens * n_heads * head_dim * 4);
  std::vector<AttentionToken> toks(n_tokens);
  for (int t = 0; t < n_tokens; ++t) toks[t] = {dtable.as<int32_t>() + t * blocks_per_seq, n_kv};
  Buf dtoks(b, toks);
  const size_t ws_floats = b.attention_workspace_floats(n_tokens, n_heads, head_dim, max_kv);
  Buf ws(b, std::max<size_t>(ws_floats, 1) * 4);
  AttentionArgs a = attention_args(q, out, kc, vc, dtoks, n_tokens, n_heads, n_kv_heads, head_dim, bs);
  a.max_kv = max_kv;
  a.workspace = ws.as();
  a.workspace_floats = ws_floats;
  a.kv_type = kv_type;  // an F16 cache reads the first half of the buffers (zeros either way)
  auto s = static_cast<cudaStream_t>(b.stream());
  time_ms(s, 3, [&](int) { b.attention(a); });
  const double ms = time_ms(s, 20, [&](int) { b.attention(a); });
  require_ok(b, "attention benchmark");
  const double bytes = 2.0 * n_tokens * n_kv * kv_dim * static_cast<double>(ds::kv_elem_bytes(kv_type));
  const char* tag = kv_type == DType::kF16 ? " f16" : "";
  char what[96];
  if (max_kv > 0) std::snprintf(what, sizeof what, "attention v2%s seqs=%d n_kv=%d max_kv=%d", tag, n_tokens, n_kv, max_kv);
  else std::snprintf(what, sizeof what, "attention v1%s seqs=%d n_kv=%d", tag, n_tokens, n_kv);
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (K+V bytes / time; 32/8 heads, hd 128)\n", what, ms * 1e3,
              bytes / (ms * 1e-3) / 1e9);
  return ms;
}

// Attention of one prompt of n tokens (causal: token t sees t + 1 positions), bench-1b's
// heads (32 / 4, hd 64): per token (version 1) vs in tiles of kAttentionTileTokens.
void bench_prefill_attention(CudaBackend& b, Rng& rng, int n) {
  const int n_heads = 32, n_kv_heads = 4, head_dim = 64, bs = 16;
  const int64_t kv_dim = n_kv_heads * head_dim;
  std::vector<int32_t> table((n + bs - 1) / bs);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  Buf dtable(b, table), kc(b, rng.floats(table.size() * bs * kv_dim)), vc(b, rng.floats(table.size() * bs * kv_dim));
  Buf q(b, rng.floats(static_cast<size_t>(n) * n_heads * head_dim)), out(b, n * n_heads * head_dim * 4);
  std::vector<AttentionToken> toks(n);
  for (int t = 0; t < n; ++t) toks[t] = {dtable.as<int32_t>(), t + 1};
  std::vector<int32_t> tiles;
  for (int t = 0; t < n; t += ds::kAttentionTileTokens) tiles.push_back(t);
  tiles.push_back(n);
  Buf dtoks(b, toks), dtiles(b, tiles);
  AttentionArgs a = attention_args(q, out, kc, vc, dtoks, n, n_heads, n_kv_heads, head_dim, bs);
  auto s = static_cast<cudaStream_t>(b.stream());
  double ms[6];
  // untiled, tiled (CUDA cores), WMMA (unpadded rows, padded rows), padded WMMA over an F16
  // cache, mma.sync flash attention 2 over the F16 cache (the engine's default on a GPU)
  for (int v = 0; v < 6; ++v) {
    a.tiles = v > 0 ? dtiles.as<int32_t>() : nullptr;
    a.n_tiles = v > 0 ? static_cast<int64_t>(tiles.size()) - 1 : 0;
    a.kv_type = v >= 4 ? DType::kF16 : DType::kF32;  // an F16 cache reads the first half of the buffers
    b.set_tc_attention(v >= 2);
    b.set_tc_attention_padded(v >= 3);
    b.set_tc_attention_mma(v == 5);
    time_ms(s, 3, [&](int) { b.attention(a); });
    ms[v] = time_ms(s, 20, [&](int) { b.attention(a); });
  }
  b.set_tc_attention(true);
  b.set_tc_attention_padded(true);
  b.set_tc_attention_mma(true);
  require_ok(b, "prefill attention benchmark");
  std::printf("BENCH attention prefill n=%-5d untiled %9.2f us, tiled %9.2f us, tensor cores %8.2f us, padded %8.2f us "
              "(F16 cache: padded %8.2f us, mma.sync FA2 %8.2f us; padded/FA2 %.2fx; 32/4 heads, hd 64)\n",
              n, ms[0] * 1e3, ms[1] * 1e3, ms[2] * 1e3, ms[3] * 1e3, ms[4] * 1e3, ms[5] * 1e3, ms[4] / ms[5]);
}

// sample_candidates at decode: n_rows rows of a 32000 vocabulary, m candidates each.
void bench_sample(CudaBackend& b, Rng& rng, int n_rows, int m, bool sums) {
  const int64_t V = 32000;
  std::vector<ds::SampleRow> rows(n_rows);
  for (int r = 0; r < n_rows; ++r) {
    rows[r].m = m;
    rows[r].out = static_cast<int64_t>(r) * (2 + m);
    rows[r].want_sums = sums;
    rows[r].temperature = 0.8f;
  }
  Buf dl(b, rng.floats(static_cast<size_t>(n_rows) * V, -10, 10)), drows(b, rows), dout(b, n_rows * (2 + m) * 8);
  ds::SampleArgs a;
  a.logits = dl.as();
  a.n_rows = n_rows;
  a.n_vocab = V;
  a.rows = drows.as<ds::SampleRow>();
  a.out = dout.as<uint64_t>();
  auto s = static_cast<cudaStream_t>(b.stream());
  time_ms(s, 3, [&](int) { b.sample_candidates(a); });
  const double ms = time_ms(s, 20, [&](int) { b.sample_candidates(a); });
  require_ok(b, "sample benchmark");
  char what[96];
  std::snprintf(what, sizeof what, "sample_candidates rows=%d m=%d%s", n_rows, m, sums ? " +sums" : "");
  std::printf("BENCH %-36s %9.2f us  (vocab 32000; the download is %d bytes a row instead of 128000)\n", what, ms * 1e3,
              (2 + m) * 8);
}

// bench-1b's decode layers without attention, 22 of them back to back (weights from HBM:
// five distinct layers cycled), eager with and without programmatic dependent launch, then as
// one CUDA graph (as a decode step runs) with PDL, without and with the L2 prefetch of the next
// op's weights (CudaBackendOptions::l2_prefetch; its order learned by the eager runs).
// split: Q8_0 in split rows; fused_norm: the residual adds and norms in one op each (the
// engine's sequence since matmul_add_rmsnorm).
void bench_pdl(CudaBackend& b, Rng& rng, DType t, bool split = false, bool fused_norm = false) {
  DecodeChain c(b, rng, t, 2048, 256, 5632, 5, 1, split);  // 5 distinct layers (> 4x L2) cycled over 22
  auto s = static_cast<cudaStream_t>(b.stream());
  double ms[2];
  for (int pdl = 0; pdl < 2; ++pdl) {
    b.set_pdl(pdl == 1);
    time_ms(s, 2, [&](int) { c.run(b, 1, 22, fused_norm); });
    ms[pdl] = time_ms(s, 10, [&](int) { c.run(b, 1, 22, fused_norm); });
  }
  double graph_ms[2] = {0, 0};  // without, with the L2 prefetch
  for (int l2 = 0; l2 < 2; ++l2) {
    b.set_l2_prefetch(l2 == 1);
    const uint64_t key = 0x9d0000 + 2 * static_cast<uint64_t>(t) + l2 + (split ? 64 : 0) + (fused_norm ? 128 : 0);
    if (!b.record_begin(key)) continue;
    c.run(b, 1, 22, fused_norm);
    if (!b.record_end()) continue;
    time_ms(s, 2, [&](int) { b.replay(key); });
    graph_ms[l2] = time_ms(s, 10, [&](int) { b.replay(key); });
  }
  b.set_l2_prefetch(false);
  b.set_pdl(true);
  require_ok(b, "pdl benchmark");
  size_t bytes = 0;
  for (int64_t rows_cols : {2048 * 2048, 256 * 2048, 256 * 2048, 2048 * 2048, 5632 * 2048, 5632 * 2048, 2048 * 5632})
    bytes += ds::row_bytes(t, 2048) * (rows_cols / 2048);
  bytes *= 22;
  auto gbs = [&](double m) { return m > 0 ? bytes / (m * 1e-3) / 1e9 : 0.0; };
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (without PDL: %.2f us, %.1f GB/s; 22 layers, no attention, eager)\n",
              (std::string("decode layers n=1 pdl ") + ds::dtype_name(t) + (split ? "s" : "") + (fused_norm ? " +norm" : ""))
                  .c_str(),
              ms[1] * 1e3, gbs(ms[1]), ms[0] * 1e3, gbs(ms[0]));
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (with the L2 prefetch of the next op's weights: %.2f us, %.1f GB/s = "
              "%.2fx; one CUDA graph, PDL)\n",
              (std::string("decode layers n=1 graph ") + ds::dtype_name(t) + (split ? "s" : "") + (fused_norm ? " +norm" : ""))
                  .c_str(),
              graph_ms[0] * 1e3, gbs(graph_ms[0]), graph_ms[1] * 1e3, gbs(graph_ms[1]),
              graph_ms[1] > 0 ? graph_ms[0] / graph_ms[1] : 0.0);
}

// grid_sync's cost: a cooperative launch of 2000 barriers and nothing else, at 1, 2 and 3
// blocks an SM (the persistent decode kernel runs 5 a layer: 110 a bench-1b token).
void bench_grid_sync(CudaBackend& b) {
  auto s = static_cast<cudaStream_t>(b.stream());
  auto* bar = static_cast<unsigned*>(b.alloc(256));
  for (int bps : {1, 2, 3}) {
    const int blocks = ds::cuda::grid_sync_blocks(bps);
    if (blocks <= 0) break;
    const int rounds = 1000;
    auto run = [&](int) { ds::cuda::grid_sync_check(blocks, rounds, bar, bar + 1, nullptr, s); };
    time_ms(s, 1, run);  // warm-up
    const double ms = time_ms(s, 3, run);
    std::printf("BENCH grid_sync %d blocks (%d an SM): %.2f us a barrier\n", blocks, bps, 1e3 * ms / (3.0 * 2 * rounds));
  }
  b.free(bar);
}

void run_benchmarks(CudaBackend& b, Rng& rng) {
  std::printf("\n== benchmarks (weights rotated over %zu MiB so reads come from HBM) ==\n", kRotateBytes >> 20);
  struct Shape { int64_t rows, cols; };
  std::vector<std::pair<std::string, double>> gemv_bw;
  for (Shape s : {Shape{2048, 2048}, Shape{5632, 2048}, Shape{2048, 5632}})
    for (DType t : {DType::kF16, DType::kQ8_0}) {
      bench_gemv(b, rng, t, s.rows, s.cols, 2, 1);  // the previous version, for comparison
      gemv_bw.emplace_back("gemv" + std::to_string(kLiveGemv) + " " + ds::dtype_name(t) + " " + shape(s.rows, s.cols),
                           bench_gemv(b, rng, t, s.rows, s.cols, kLiveGemv, 1));
      if (t == DType::kF16)  // v3's dots streamed (CudaBackendOptions::gemv_stream)
        gemv_bw.emplace_back("gemv5 f16 " + shape(s.rows, s.cols), bench_gemv(b, rng, t, s.rows, s.cols, 5, 1));
      if (t == DType::kQ8_0) {  // split rows, as the engine uploads Q8_0; then streamed; then the int8 GEMV on them
        gemv_bw.emplace_back("gemv" + std::to_string(kLiveGemv) + " q8_0s " + shape(s.rows, s.cols),
                             bench_gemv(b, rng, t, s.rows, s.cols, kLiveGemv, 1, true));
        gemv_bw.emplace_back("gemv5 q8_0s " + shape(s.rows, s.cols), bench_gemv(b, rng, t, s.rows, s.cols, 5, 1, true));
        gemv_bw.emplace_back("gemv-i8 q8_0s " + shape(s.rows, s.cols),
                             bench_gemv(b, rng, t, s.rows, s.cols, kLiveGemv, 1, true, true));
      }
    }
  for (int n : {4, 8}) bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, kLiveGemv, n, true, true);  // beside gemv3 n=4, 8
  for (int v : {kLiveGemv, 5}) bench_gemv(b, rng, DType::kQ8_0, 32000, 2048, v, 1, true);  // bench-1b's output projection
  for (int v : {kLiveGemv, 5}) bench_gemv(b, rng, DType::kQ4_K, 5632, 2048, v, 1);
  bench_gemv(b, rng, DType::kQ4_0, 5632, 2048, kLiveGemv, 1);
  bench_gemv(b, rng, DType::kQ4_K, 5632, 2048, kLiveGemv, 1);
  bench_gemv(b, rng, DType::kQ6_K, 5632, 2048, kLiveGemv, 1);
  bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, 2, 8);
  // n > 1: two rows per warp (v3) against one (v4, v3 as it was: 297 GB/s at n = 8 on the H200).
  for (int n : {4, 8}) {
    bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, 4, n);
    bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, kLiveGemv, n);
    bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, kLiveGemv, n, true);
  }
  bench_gemv(b, rng, DType::kF16, 5632, 2048, 4, 8);
  bench_gemv(b, rng, DType::kF16, 5632, 2048, kLiveGemv, 8);
  bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, kLiveGemv, 32);  // 4 launches of 8 (decode at batch 32)
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kF16, DType::kQ4_K})
    for (int n : {16, 32}) bench_tc(b, rng, t, 5632, 2048, n);
  // Around the per-type GEMV ranges (CudaBackend::gemv_limit: F16 2, Q8_0/Q4_0 4, Q4_K 8).
  for (DType t : {DType::kQ8_0, DType::kQ4_0})
    for (int n : {4, 5, 8}) bench_tc(b, rng, t, 5632, 2048, n);
  for (int n : {2, 3, 4}) bench_tc(b, rng, DType::kF16, 5632, 2048, n);
  for (int n : {4, 8}) bench_tc(b, rng, DType::kQ4_K, 5632, 2048, n);
  bench_tc(b, rng, DType::kQ8_0, 2048, 5632, 32);
  // Q8_0 split rows (the engine's layout): "q8_0s" beside "q8_0" above.
  for (int n : {8, 32}) bench_tc(b, rng, DType::kQ8_0, 5632, 2048, n, true);
  bench_tc(b, rng, DType::kQ8_0, 2048, 5632, 32, true);
  bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, 1, 1);  // v1, for comparison
  for (DType t : {DType::kQ8_0, DType::kF16})
    for (int n : {1, 8}) bench_fused(b, rng, t, n);
  const double copy_bw = bench_memcpy(b, ds::row_bytes(DType::kF16, 2048) * 5632);
  bench_memcpy(b, ds::row_bytes(DType::kF16, 2048) * 2048);
  std::string why;
  const bool traced = ds::gpu_trace::start(&why);
  if (traced) ds::gpu_trace::stop();
  std::printf("\nGEMV (n=1) bandwidth vs device-to-device memcpy (%.1f GB/s read+write; %s):\n", copy_bw,
              traced ? "both the GPU time of the kernels and copies, from CUPTI"
                     : ("events around eager launches: " + why).c_str());
  for (const auto& [name, bw] : gemv_bw)
    std::printf("BENCH-RATIO %-30s %8.1f GB/s = %5.1f%% of memcpy\n", name.c_str(), bw, 100.0 * bw / copy_bw);
  for (bool half : {false, true}) {
    bench_prefill(b, rng, DType::kF16, 5632, 2048, 128, half);
    bench_prefill(b, rng, DType::kQ8_0, 5632, 2048, 512, half);
  }
  for (int n : {128, 512, 2048}) bench_prefill_attention(b, rng, n);
  // Attention decode: version 1, then version 2 with max_kv = n_kv (tight: chunks of 256)
  // and max_kv = 32768 (a loose bound, as from a KV cache of 8 x 4096 positions: chunks of 1024).
  struct AttShape { int seqs, n_kv; };
  for (AttShape as : {AttShape{1, 4096}, AttShape{16, 1024}}) {
    const double v1 = bench_attention(b, rng, as.seqs, as.n_kv, 0);
    for (int max_kv : {as.n_kv, 32768}) {
      const double v2 = bench_attention(b, rng, as.seqs, as.n_kv, max_kv);
      std::printf("BENCH-RATIO attention seqs=%d n_kv=%d max_kv=%d: v1/v2 = %.2fx\n", as.seqs, as.n_kv, max_kv,
                  v1 / v2);
    }
    // The same split-K decode over an F16 cache (half the bytes).
    const double v2_32 = bench_attention(b, rng, as.seqs, as.n_kv, as.n_kv);
    const double v2_16 = bench_attention(b, rng, as.seqs, as.n_kv, as.n_kv, DType::kF16);
    std::printf("BENCH-RATIO attention seqs=%d n_kv=%d: F32 cache / F16 cache time = %.2fx\n", as.seqs, as.n_kv,
                v2_32 / v2_16);
  }
  bench_pdl(b, rng, DType::kQ8_0);
  bench_pdl(b, rng, DType::kQ8_0, true);        // split rows (the engine's Q8_0)
  bench_pdl(b, rng, DType::kQ8_0, true, true);  // and the norms in the residual adds (the engine's sequence)
  bench_pdl(b, rng, DType::kF16);
  bench_pdl(b, rng, DType::kF16, false, true);
  bench_sample(b, rng, 1, 1, false);
  bench_sample(b, rng, 32, 1, false);
  bench_sample(b, rng, 8, 40, false);
  bench_sample(b, rng, 8, ds::kSampleMaxCandidates, true);
  bench_grid_sync(b);  // last: a barrier that never opens would hang here, after every other figure
}

}  // namespace ds::kernel_check
