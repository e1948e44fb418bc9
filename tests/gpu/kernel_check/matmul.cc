// tests/gpu/kernel_check/matmul.cc: gpu_kernel_check's matmul groups: get_rows, matmul (every GEMV version,
// cuBLAS F16 / F32 / TF32), the tensor-core kernel, the fused decode launches, split Q8_0 rows.
#include "tests/gpu/kernel_check/check.h"

namespace ds::kernel_check {

// ---- checks -------------------------------------------------------------------------

void check_get_rows(CudaBackend& b, Rng& rng) {
  struct Shape { int64_t rows, cols; };
  for (DType t : kAllTypes) {
    for (Shape s : {Shape{50, 64}, Shape{1000, 4096}, Shape{37, 100}, Shape{29, 768}}) {
      if (!fits(t, s.cols)) continue;
      const auto w = make_weights(rng, t, s.rows, s.cols);
      Buf dw(b, w);
      for (int64_t n : {1, 5, 64}) {
        std::vector<int32_t> ids(n);
        for (auto& id : ids) id = rng.below(static_cast<int>(s.rows));
        ids[0] = static_cast<int32_t>(s.rows - 1);  // the last row too
        std::vector<float> want(n * s.cols);
        ds::ref::get_rows(WeightRef{t, w.data(), s.rows, s.cols}, ids.data(), n, want.data());
        Buf dids(b, ids), dout(b, want.size() * 4);
        b.get_rows(WeightRef{t, dw.as<void>(), s.rows, s.cols}, dids.as<int32_t>(), n, dout.as());
        compare("get_rows/" + std::string(ds::dtype_name(t)) + " " + shape(s.rows, s.cols) + " n=" + std::to_string(n),
                dout.read(want.size()), want, 0, 0);
      }
    }
  }
  require_ok(b, "get_rows");
}

void check_matmul(CudaBackend& b, CudaBackend& tf32, Rng& rng, bool quick) {
  b.set_tc_gemm(false);  // the GEMV and cuBLAS paths; check_matmul_tc has the tensor-core kernel
  struct Case { int64_t rows, cols; std::vector<int64_t> ns; bool float_only, big; };
  const std::vector<Case> cases = {
      {1, 32, {1, 8, 9}, false, false},
      {64, 64, {1, 2, 3, 8, 9, 17}, false, false},
      {257, 512, {1, 3, 8, 9, 64}, false, false},
      {300, 4096, {1, 8, 9, 64}, false, false},
      {96, 768, {1, 2, 8, 9}, false, false},          // 3 k-quant super-blocks: odd Q6_K blocks are 2-byte aligned
      {33, 100, {1, 3, 8, 9, 20}, true, false},        // cols % 8 != 0: GEMV scalar path
      {4500, 4096, {1, 9, 40}, false, true},           // > 16M elements: cuBLAS in slices (n > 32)
  };
  for (DType t : kAllTypes) {
    const std::string tn = ds::dtype_name(t);
    for (const Case& c : cases) {
      if ((c.float_only && t != DType::kF32 && t != DType::kF16 && t != DType::kBF16) || !fits(t, c.cols)) continue;
      if (c.big && (quick || (t != DType::kF16 && t != DType::kQ8_0))) continue;
      const int64_t max_n = *std::max_element(c.ns.begin(), c.ns.end());
      const auto w = make_weights(rng, t, c.rows, c.cols);
      const auto x = rng.floats(max_n * c.cols);
      const WeightRef hw{t, w.data(), c.rows, c.cols};
      std::vector<float> want(max_n * c.rows);
      ds::ref::matmul(hw, x.data(), max_n, want.data());
      std::vector<double> scale(want.size());  // sum_k |w_k x_k|
      {
        std::vector<float> row(c.cols);
        for (int64_t r = 0; r < c.rows; ++r) {
          ds::dequantize_row(t, w.data() + r * hw.row_stride(), row.data(), c.cols);
          for (int64_t j = 0; j < max_n; ++j) {
            double s = 0;
            for (int64_t k = 0; k < c.cols; ++k) s += std::fabs(static_cast<double>(row[k]) * x[j * c.cols + k]);
            scale[j * c.rows + r] = s;
          }
        }
      }
      Buf dw(b, w), dx(b, x), dy(b, want.size() * 4);
      const WeightRef gw{t, dw.as<void>(), c.rows, c.cols};
      const std::string sh = shape(c.rows, c.cols);
      for (int64_t n : c.ns) {
        const std::vector<float> wn(want.begin(), want.begin() + n * c.rows);
        const std::vector<double> sn(scale.begin(), scale.begin() + n * c.rows);
        const std::string suffix = " " + sh + " n=" + std::to_string(n);
        if (n <= 8) {
          std::vector<float> v3;
          for (int v = 1; v <= kGemvVersions; ++v) {
            if (v == 1 && c.big) continue;
            b.set_gemv_version(v);
            b.matmul(gw, dx.as(), n, dy.as());
            const std::vector<float> got = dy.read(n * c.rows);
            compare("matmul/" + tn + "/gemv" + std::to_string(v) + suffix, got, wn, 1e-6, 2e-5, &sn);
            if (v == 3) v3 = got;
            // v4 is v3 with one row per warp: the same instructions per output element.
            if (v == 4) expect("determinism/gemv4==gemv3 " + tn + suffix, got.size() == v3.size() && same_bits(got.data(), v3.data(), got.size()));
            // v5 streams v3's dots (n = 1; n > 1 is v3): the same bits.
            if (v == 5) expect("determinism/gemv5==gemv3 " + tn + suffix, got.size() == v3.size() && same_bits(got.data(), v3.data(), got.size()));
          }
          b.set_gemv_version(kLiveGemv);
        } else {
          b.matmul(gw, dx.as(), n, dy.as());
          const bool cublas = n > b.options().gemv_max_batch;
          if (cublas && b.options().gemm_half && t != DType::kF32) {
            // Tensor cores: X rounded to F16 (2^-11 relative; BF16 2^-8), quantized weights too.
            const bool bf = t == DType::kBF16;
            compare("matmul/" + tn + (bf ? "/cublas-bf16" : "/cublas-f16") + suffix, dy.read(n * c.rows), wn, 1e-5,
                    bf ? 8e-3 : 1.5e-3, &sn);
            b.set_gemm_half(false);
            b.matmul(gw, dx.as(), n, dy.as());
            b.set_gemm_half(true);
          }
          compare("matmul/" + tn + (cublas ? "/cublas" : "/gemv-auto") + suffix, dy.read(n * c.rows), wn, 1e-6, 2e-5, &sn);
          b.set_batch_invariant(true);
          b.matmul(gw, dx.as(), n, dy.as());
          const auto inv = dy.read(n * c.rows);
          b.set_batch_invariant(false);
          compare("matmul/" + tn + "/gemv-batched" + suffix, inv, wn, 1e-6, 2e-5, &sn);
          // Batch invariance: each row of the batched GEMV equals that row computed alone.
          Buf d1(b, c.rows * 4);
          bool same = true;
          for (int64_t j : {int64_t{0}, n / 2, n - 1}) {
            b.matmul(gw, dx.as() + j * c.cols, 1, d1.as());
            same = same && same_bits(d1.read(c.rows).data(), inv.data() + j * c.rows, c.rows);
          }
          expect("determinism/gemv-batch-invariant " + tn + suffix, same, "a row differs from the same row alone");
          if (c.rows * c.cols <= 4096 * 4096) {  // TF32 tensor cores, tolerance for 10-bit mantissas
            Buf tw(tf32, w), tx(tf32, x), ty(tf32, want.size() * 4);
            tf32.matmul(WeightRef{t, tw.as<void>(), c.rows, c.cols}, tx.as(), n, ty.as());
            compare("matmul/" + tn + "/cublas-tf32" + suffix, ty.read(n * c.rows), wn, 1e-5, 3e-3, &sn);
          }
        }
      }
      // GEMV rows are the same bits whatever n <= 8, and whatever x's alignment.
      if (c.ns.back() >= 8 && !c.big) {
        b.matmul(gw, dx.as(), 8, dy.as());
        const auto y8 = dy.read(8 * c.rows);
        b.matmul(gw, dx.as(), 1, dy.as());
        const auto y1 = dy.read(c.rows);
        Buf shifted(b, (c.cols + 1) * 4);  // x row 0 at a 4-byte (not 16-byte) aligned address
        b.upload(shifted.as() + 1, x.data(), c.cols * 4);
        b.matmul(gw, shifted.as() + 1, 1, dy.as());
        const auto ys = dy.read(c.rows);
        expect("determinism/gemv-n " + tn + " " + sh, same_bits(y1.data(), y8.data(), c.rows),
               "n=1 differs from row 0 of n=8");
        expect("determinism/gemv-align " + tn + " " + sh, same_bits(y1.data(), ys.data(), c.rows),
               "unaligned x gives other bits");
        // Weights at a 4-byte (F32) or 2-byte aligned address: the narrow-load path, same bits.
        const size_t off = t == DType::kF32 ? 4 : 2;
        Buf wshift(b, w.size() + 16);
        b.upload(wshift.as<uint8_t>() + off, w.data(), w.size());
        b.matmul(WeightRef{t, wshift.as<uint8_t>() + off, c.rows, c.cols}, dx.as(), 1, dy.as());
        expect("determinism/gemv-walign " + tn + " " + sh, same_bits(y1.data(), dy.read(c.rows).data(), c.rows),
               "weights at an unaligned address give other bits");
      }
    }
  }
  b.set_tc_gemm(true);
  require_ok(b, "matmul");
  require_ok(tf32, "matmul (tf32)");
}


// A projection with the residual added (got: the first count elements) against res + want
// (error scale: the projection's plus |res|), and bit for bit against sep, the separate ops.
void check_residual_add(const std::string& name, const std::string& bits_name, const std::vector<float>& got,
                        const std::vector<float>& sep, const std::vector<float>& res, const std::vector<float>& want,
                        const std::vector<double>& scale, int64_t count, double atol, double rtol) {
  std::vector<float> wn(count);
  std::vector<double> sn(count);
  for (int64_t i = 0; i < count; ++i) {
    wn[i] = res[i] + want[i];
    sn[i] = scale[i] + std::fabs(res[i]);
  }
  compare(name, got, wn, atol, rtol, &sn);
  expect(bits_name, same_bits(got.data(), sep.data(), got.size()), "the fused add differs from matmul + add");
}

// The tensor-core small-batch kernel (gemm_tc.cu: matmul and matmul_add at 8 < n <= 32):
// against the reference with the F16-operand tolerance of the cuBLAS F16 path, rows the same
// bits whatever n in 9..32, matmul_add the bits of matmul + add, and where it does not apply.
void check_matmul_tc(CudaBackend& b, Rng& rng, bool quick) {
  const int gemv_max = b.options().gemv_max_batch;
  b.set_gemv_max_batch(0);  // the per-type GEMV range (gemv_limit) the engines get
  // The default dispatch: the kernel for Q8_0 and Q4_0 only (slower than cuBLAS for F16 and
  // Q4_K on an H200), past the type's GEMV range.
  {
    Buf d(b, 64 * 256);
    for (DType t : {DType::kF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K}) {
      const WeightRef gw{t, d.as<void>(), 16, 256};
      const bool on = t == DType::kQ8_0 || t == DType::kQ4_0;
      const int lim = b.gemv_limit(t);
      expect(std::string("matmul-tc/default ") + ds::dtype_name(t),
             b.tc_gemm_applies(gw, lim + 1) == on && !b.tc_gemm_applies(gw, lim) && lim == (on ? 4 : t == DType::kF16 ? 2 : 8),
             "the default dispatch changed");
    }
  }
  b.set_tc_gemm_every_type(true);  // every type the kernel has, below
  struct Case { int64_t rows, cols; bool big; };  // big: not under --quick (the CPU emulation)
  const std::vector<Case> cases = {
      {64, 256, false},  {40, 176, false},  // F16 only: a partial last segment
      {50, 2112, false}, {96, 768, false},  {33, 96, false},  // Q8_0, Q4_0: rows not 4-byte aligned
      {257, 512, true},  {300, 4096, true}, {4500, 4096, true},
  };
  const int64_t max_n = 32;
  for (DType t : {DType::kF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K}) {
    const std::string tn = ds::dtype_name(t);
    for (const Case& c : cases) {
      if (!fits(t, c.cols) || (t != DType::kF16 && c.cols % 32 != 0) || (c.big && quick)) continue;
      const auto w = make_weights(rng, t, c.rows, c.cols);
      const auto x = rng.floats(max_n * c.cols);
      const auto res = rng.floats(max_n * c.rows, -4, 4);
      std::vector<float> want;
      std::vector<double> scale;
      ref_matmul_scaled(t, w, c.rows, c.cols, x, max_n, &want, &scale);
      Buf dw(b, w), dx(b, x), dy(b, want.size() * 4), dr(b, res), dr2(b, res), tmp(b, want.size() * 4);
      const WeightRef gw{t, dw.as<void>(), c.rows, c.cols};
      const std::string sh = shape(c.rows, c.cols);
      const bool aligned = ds::row_bytes(t, c.cols) % 4 == 0;
      std::vector<float> y9;
      int64_t n_first = 0;
      for (int64_t n : quick ? std::vector<int64_t>{5, 9, 17, 32} : std::vector<int64_t>{3, 5, 8, 9, 16, 17, 24, 32}) {
        if (n <= b.gemv_limit(t)) continue;  // the GEMV's
        const std::string suffix = " " + sh + " n=" + std::to_string(n);
        expect("matmul-tc/applies " + tn + suffix, b.tc_gemm_applies(gw, n) == aligned,
               aligned ? "4-byte aligned rows: the kernel should take them" : "unaligned rows: cuBLAS should");
        if (!aligned) continue;
        b.matmul(gw, dx.as(), n, dy.as());
        const auto got = dy.read(n * c.rows);
        compare("matmul-tc/" + tn + suffix, got, std::vector<float>(want.begin(), want.begin() + n * c.rows), 1e-5,
                1.5e-3, &scale);
        if (y9.empty()) {
          y9 = got;
          n_first = n;
        } else {
          expect("determinism/tc-batch " + tn + suffix, same_bits(got.data(), y9.data(), y9.size()),
                 "rows differ from the same rows at n=" + std::to_string(n_first));
        }
        // matmul_add: y = res + x W^T, the bits of matmul then add.
        b.upload(dr.as(), res.data(), res.size() * 4);
        b.upload(dr2.as(), res.data(), res.size() * 4);
        b.matmul_add(gw, dx.as(), n, dr.as(), tmp.as());
        b.matmul(gw, dx.as(), n, tmp.as());
        b.add(dr2.as(), tmp.as(), n * c.rows);
        check_residual_add("matmul-tc/add " + tn + suffix, "determinism/tc-add-bits " + tn + suffix,
                           dr.read(n * c.rows), dr2.read(n * c.rows), res, want, scale, n * c.rows, 1e-5, 1.5e-3);
      }
    }
  }
  // Q/K/V (with and without biases) and gate/up (+ SwiGLU) in one launch each: the bits of the
  // separate ops (fuse_decode off: one tensor-core call per matrix, then add_bias / swiglu).
  for (DType t : {DType::kF16, DType::kQ8_0, DType::kQ4_K}) {
    const std::string tn = ds::dtype_name(t);
    const int64_t cols = t == DType::kQ4_K ? 768 : 1024, qr = 96, kr = 40, ff = 72;  // 1024: 2 column splits
    const auto x = rng.floats(max_n * cols);
    Buf dx(b, x);
    std::vector<Buf> ws, ys, ys2;
    std::vector<WeightRef> wr;
    for (int64_t rows : {qr, kr, kr, ff, ff}) {
      ws.emplace_back(b, make_weights(rng, t, rows, cols));
      ys.emplace_back(b, max_n * rows * 4);
      ys2.emplace_back(b, max_n * rows * 4);
      wr.push_back(WeightRef{t, ws.back().as<void>(), rows, cols});
    }
    Buf bq(b, rng.floats(qr)), bk(b, rng.floats(kr)), bv(b, rng.floats(kr));
    for (int64_t n : quick ? std::vector<int64_t>{9, 32} : std::vector<int64_t>{9, 17, 32}) {
      const std::string suffix = std::string(" ") + shape(qr, cols) + " n=" + std::to_string(n);
      for (bool bias : {false, true}) {
        const float *pq = bias ? bq.as() : nullptr, *pk = bias ? bk.as() : nullptr, *pv = bias ? bv.as() : nullptr;
        b.matmul_qkv(wr[0], wr[1], wr[2], pq, pk, pv, dx.as(), n, ys[0].as(), ys[1].as(), ys[2].as());
        b.set_fuse_decode(false);
        b.matmul_qkv(wr[0], wr[1], wr[2], pq, pk, pv, dx.as(), n, ys2[0].as(), ys2[1].as(), ys2[2].as());
        b.set_fuse_decode(true);
        bool same = true;
        for (int m = 0; m < 3; ++m)
          same = same && same_bits(ys[m].read(n * wr[m].rows).data(), ys2[m].read(n * wr[m].rows).data(), n * wr[m].rows);
        expect("determinism/tc-qkv-bits " + tn + suffix + (bias ? " bias" : ""), same,
               "one launch for Q, K, V differs from three");
      }
      b.matmul_swiglu(wr[3], wr[4], dx.as(), n, ys[3].as(), ys[4].as());
      b.set_fuse_decode(false);
      b.matmul_swiglu(wr[3], wr[4], dx.as(), n, ys2[3].as(), ys2[4].as());
      b.set_fuse_decode(true);
      expect("determinism/tc-swiglu-bits " + tn + suffix,
             same_bits(ys[3].read(n * ff).data(), ys2[3].read(n * ff).data(), n * ff),
             "one launch for gate and up differs from two");
    }
  }
  // Outside its range: n <= the GEMV's range, n > 32, BF16 / Q6_K / F32 weights (cuBLAS).
  const auto w = make_weights(rng, DType::kQ8_0, 64, 256);
  Buf dw(b, w);
  const WeightRef gw{DType::kQ8_0, dw.as<void>(), 64, 256};
  const int lim = b.gemv_limit(DType::kQ8_0);
  expect("matmul-tc/range", !b.tc_gemm_applies(gw, lim) && b.tc_gemm_applies(gw, lim + 1) &&
                                b.tc_gemm_applies(gw, 32) && !b.tc_gemm_applies(gw, 33),
         "applies exactly to gemv_limit < n <= 32");
  for (DType t : {DType::kBF16, DType::kQ6_K, DType::kF32})
    expect(std::string("matmul-tc/not ") + ds::dtype_name(t), !b.tc_gemm_applies(WeightRef{t, dw.as<void>(), 64, 256}, 16));
  b.set_tc_gemm_every_type(false);
  b.set_gemv_max_batch(gemv_max);
  require_ok(b, "matmul (tensor-core kernel)");
}

// ref::matmul of host weights w [rows, cols] of type t with x [n, cols] into want [n, rows],
// and scale [n, rows] = sum_k |w_k x_k|, the size of float rounding error in each dot product.
void ref_matmul_scaled(DType t, const std::vector<uint8_t>& w, int64_t rows, int64_t cols, const std::vector<float>& x,
                       int64_t n, std::vector<float>* want, std::vector<double>* scale) {
  const WeightRef hw{t, w.data(), rows, cols};
  want->assign(n * rows, 0.0f);
  scale->assign(n * rows, 0.0);
  ds::ref::matmul(hw, x.data(), n, want->data());
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    ds::dequantize_row(t, w.data() + r * hw.row_stride(), row.data(), cols);
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < cols; ++k) s += std::fabs(static_cast<double>(row[k]) * x[j * cols + k]);
      (*scale)[j * rows + r] = s;
    }
  }
}

// Fused decode ops (Backend::matmul_qkv, matmul_swiglu; one GEMV v3 launch each on CUDA)
// against the reference composition (ref::matmul, + bias, ref::swiglu), with matmul's
// tolerance; then the same bits as the separate CUDA ops (fuse_decode off: the defaults),
// n = 1 equal to row 0 of n = 8, and n = 9 under batch_invariant (chunks of 8).
void check_fused(CudaBackend& b, Rng& rng, bool quick) {
  struct Case { int64_t q_rows, kv_rows, cols, ff_rows; bool float_only, big; };
  const std::vector<Case> cases = {
      {64, 32, 64, 96, false, false},
      {100, 20, 100, 37, true, false},          // cols % 8 != 0: the scalar x path
      {256, 64, 512, 160, false, false},
      {1024, 256, 2048, 2816, false, true},     // bench-1b split over 2 tensor-parallel ranks
      {2048, 512, 2048, 5632, false, true},     // bench-1b (dim 2048, 4 of 32 KV heads, FFN 5632)
  };
  for (DType t : kAllTypes) {
    const std::string tn = ds::dtype_name(t);
    for (const Case& c : cases) {
      if ((c.float_only && t != DType::kF32 && t != DType::kF16 && t != DType::kBF16) || !fits(t, c.cols)) continue;
      if (c.big && quick) continue;
      const int64_t max_n = 9, cols = c.cols;
      const int64_t rows[3] = {c.q_rows, c.kv_rows, c.kv_rows};
      const auto x = rng.floats(max_n * cols);
      Buf dx(b, x);
      // ---- Q, K, V ----
      std::vector<uint8_t> w[3];
      std::vector<float> bias[3], want[3];
      std::vector<double> scale[3];
      std::vector<Buf> dw, dbias, dy, dy2;
      WeightRef gw[3];
      for (int m = 0; m < 3; ++m) {
        w[m] = make_weights(rng, t, rows[m], cols);
        bias[m] = rng.floats(rows[m]);
        ref_matmul_scaled(t, w[m], rows[m], cols, x, max_n, &want[m], &scale[m]);
        dw.emplace_back(b, w[m]);
        dbias.emplace_back(b, bias[m]);
        dy.emplace_back(b, max_n * rows[m] * 4);
        dy2.emplace_back(b, max_n * rows[m] * 4);
        gw[m] = WeightRef{t, dw[m].as<void>(), rows[m], cols};
      }
      const std::string qkv_shape = std::to_string(c.q_rows) + "+" + std::to_string(c.kv_rows) + "+" +
                                    std::to_string(c.kv_rows) + "x" + std::to_string(cols);
      // got/want of the three outputs for the first n rows, concatenated q | k | v.
      auto gather = [&](std::vector<Buf>& out, int64_t n) {
        std::vector<float> v;
        for (int m = 0; m < 3; ++m) {
          const auto part = out[m].read(n * rows[m]);
          v.insert(v.end(), part.begin(), part.end());
        }
        return v;
      };
      for (bool with_bias : {false, true}) {
        std::vector<float> wn;
        std::vector<double> sn;
        for (int64_t n : {1, 2, 8, 9}) {
          if (n == 9 && c.big) continue;
          wn.clear();
          sn.clear();
          for (int m = 0; m < 3; ++m) {
            for (int64_t i = 0; i < n * rows[m]; ++i) {
              wn.push_back(want[m][i] + (with_bias ? bias[m][i % rows[m]] : 0.0f));
              sn.push_back(scale[m][i]);
            }
          }
          const float* bq = with_bias ? dbias[0].as() : nullptr;
          const float* bk = with_bias ? dbias[1].as() : nullptr;
          const float* bv = with_bias ? dbias[2].as() : nullptr;
          const std::string suffix =
              " " + qkv_shape + " n=" + std::to_string(n) + (with_bias ? " bias" : "") + (n > 8 ? " invariant" : "");
          if (n > 8) b.set_batch_invariant(true);
          b.matmul_qkv(gw[0], gw[1], gw[2], bq, bk, bv, dx.as(), n, dy[0].as(), dy[1].as(), dy[2].as());
          const auto got = gather(dy, n);
          compare("fused-qkv/" + tn + suffix, got, wn, 1e-6, 2e-5, &sn);
          b.set_fuse_decode(false);
          b.matmul_qkv(gw[0], gw[1], gw[2], bq, bk, bv, dx.as(), n, dy2[0].as(), dy2[1].as(), dy2[2].as());
          b.set_fuse_decode(true);
          b.set_batch_invariant(false);
          const auto sep = gather(dy2, n);
          expect("determinism/fused-qkv-bits " + tn + suffix, same_bits(got.data(), sep.data(), got.size()),
                 "the fused launch differs from matmul + add_bias");
        }
        // n = 1 is row 0 of n = 8.
        b.matmul_qkv(gw[0], gw[1], gw[2], nullptr, nullptr, nullptr, dx.as(), 8, dy[0].as(), dy[1].as(), dy[2].as());
        const auto y8 = gather(dy, 8);
        b.matmul_qkv(gw[0], gw[1], gw[2], nullptr, nullptr, nullptr, dx.as(), 1, dy[0].as(), dy[1].as(), dy[2].as());
        const auto y1 = gather(dy, 1);
        bool same = true;
        for (int m = 0, off1 = 0, off8 = 0; m < 3; off1 += rows[m], off8 += 8 * rows[m], ++m)
          same = same && same_bits(y1.data() + off1, y8.data() + off8, rows[m]);
        if (!with_bias) expect("determinism/fused-qkv-n " + tn + " " + qkv_shape, same, "n=1 differs from row 0 of n=8");
      }
      // ---- gate, up, SwiGLU ----
      const int64_t ff = c.ff_rows;
      const auto wg = make_weights(rng, t, ff, cols), wu = make_weights(rng, t, ff, cols);
      std::vector<float> g, u;
      std::vector<double> sg, su;
      ref_matmul_scaled(t, wg, ff, cols, x, max_n, &g, &sg);
      ref_matmul_scaled(t, wu, ff, cols, x, max_n, &u, &su);
      std::vector<float> want_s(g.size());
      ds::ref::swiglu(g.data(), u.data(), static_cast<int64_t>(g.size()), want_s.data());
      // Error bound: |silu'| <= 1.1, so d out <= 1.1 |u| d g + |silu(g)| d u, plus silu's own rounding.
      std::vector<double> scale_s(g.size());
      for (size_t i = 0; i < g.size(); ++i) {
        const double silu = g[i] / (1.0 + std::exp(-static_cast<double>(g[i])));
        scale_s[i] = 1.1 * std::fabs(u[i]) * sg[i] + std::fabs(silu) * su[i] + std::fabs(want_s[i]);
      }
      Buf dwg(b, wg), dwu(b, wu), dout(b, max_n * ff * 4), dup(b, max_n * ff * 4), dout2(b, max_n * ff * 4);
      const WeightRef gwg{t, dwg.as<void>(), ff, cols}, gwu{t, dwu.as<void>(), ff, cols};
      const std::string ff_shape = shape(ff, cols);
      for (int64_t n : {1, 2, 8, 9}) {
        if (n == 9 && c.big) continue;
        const std::vector<float> wn(want_s.begin(), want_s.begin() + n * ff);
        const std::vector<double> sn(scale_s.begin(), scale_s.begin() + n * ff);
        const std::string suffix = " " + ff_shape + " n=" + std::to_string(n) + (n > 8 ? " invariant" : "");
        if (n > 8) b.set_batch_invariant(true);
        b.matmul_swiglu(gwg, gwu, dx.as(), n, dout.as(), dup.as());
        const auto got = dout.read(n * ff);
        compare("fused-swiglu/" + tn + suffix, got, wn, 1e-6, 2e-5, &sn);
        b.set_fuse_decode(false);
        b.matmul_swiglu(gwg, gwu, dx.as(), n, dout2.as(), dup.as());
        b.set_fuse_decode(true);
        b.set_batch_invariant(false);
        expect("determinism/fused-swiglu-bits " + tn + suffix, same_bits(got.data(), dout2.read(n * ff).data(), got.size()),
               "the fused launch differs from matmul, matmul, swiglu");
      }
      b.matmul_swiglu(gwg, gwu, dx.as(), 8, dout.as(), dup.as());
      const auto y8 = dout.read(8 * ff);
      b.matmul_swiglu(gwg, gwu, dx.as(), 1, dout.as(), dup.as());
      expect("determinism/fused-swiglu-n " + tn + " " + ff_shape, same_bits(dout.read(ff).data(), y8.data(), ff),
             "n=1 differs from row 0 of n=8");
    }
  }
  // Past the GEMV range and the tensor-core kernel (n = 40: cuBLAS on F16/BF16 operands, a
  // prefill's path), matmul_qkv and matmul_swiglu round x to F16 once for their matrices: the
  // bits of one matmul() per matrix (fuse_decode off), biases included.
  {
    const int gemv_max = b.options().gemv_max_batch;
    b.set_gemv_max_batch(0);  // the per-type dispatch the engines get
    const int64_t n = 40, cols = 256, rows[5] = {96, 32, 32, 160, 160};  // q, k, v, gate, up
    const auto x = rng.floats(n * cols);
    Buf dx(b, x);
    for (DType t : kAllTypes) {
      if (t == DType::kF32 || !fits(t, cols)) continue;
      const std::string tn = ds::dtype_name(t);
      std::vector<Buf> dw, dbias, y1, y2;
      WeightRef w[5];
      for (int m = 0; m < 5; ++m) {
        dw.emplace_back(b, make_weights(rng, t, rows[m], cols));
        dbias.emplace_back(b, rng.floats(rows[m]));
        y1.emplace_back(b, n * rows[m] * 4);
        y2.emplace_back(b, n * rows[m] * 4);
        w[m] = WeightRef{t, dw[m].as<void>(), rows[m], cols};
      }
      auto same_outputs = [&](int first, int count) {
        bool same = true;
        for (int m = first; m < first + count; ++m)
          same = same && same_bits(y1[m].read(n * rows[m]).data(), y2[m].read(n * rows[m]).data(), n * rows[m]);
        return same;
      };
      for (bool bias : {false, true}) {
        const float* bq = bias ? dbias[0].as() : nullptr;
        const float* bk = bias ? dbias[1].as() : nullptr;
        const float* bv = bias ? dbias[2].as() : nullptr;
        b.matmul_qkv(w[0], w[1], w[2], bq, bk, bv, dx.as(), n, y1[0].as(), y1[1].as(), y1[2].as());
        b.set_fuse_decode(false);
        b.matmul_qkv(w[0], w[1], w[2], bq, bk, bv, dx.as(), n, y2[0].as(), y2[1].as(), y2[2].as());
        b.set_fuse_decode(true);
        expect("determinism/cublas-shared-x-qkv " + tn + " n=40" + (bias ? " bias" : ""), same_outputs(0, 3),
               "x rounded once differs from one matmul per matrix");
      }
      b.matmul_swiglu(w[3], w[4], dx.as(), n, y1[3].as(), y1[4].as());
      b.set_fuse_decode(false);
      b.matmul_swiglu(w[3], w[4], dx.as(), n, y2[3].as(), y2[4].as());
      b.set_fuse_decode(true);
      expect("determinism/cublas-shared-x-swiglu " + tn + " n=40", same_outputs(3, 1),
             "x rounded once differs from matmul, matmul, swiglu");
    }
    b.set_gemv_max_batch(gemv_max);
  }
  require_ok(b, "fused");
}

// Q8_0 in the split layout (CudaBackend::upload_weight under q8_0_split): every op that
// reads weights gives the bits it gives on the GGUF blocks, on each path (GEMV versions 1-4
// and the batched GEMV, the fused QKV / add / SwiGLU launches, the tensor-core kernel, cuBLAS
// F16 and F32, get_rows), for row strides 8-byte aligned (the 8-byte quant loads) or not.
void check_q8_0_split(CudaBackend& b, Rng& rng, bool quick) {
  const DType t = DType::kQ8_0;
  struct Case { int64_t rows, cols; };
  // Row strides 34, 68, 102, 170 bytes (2-byte aligned: the narrow loads), 544, 4352, 2176 (8-byte).
  std::vector<Case> cases = {{1, 32}, {64, 64}, {37, 96}, {70, 160}, {129, 512}};
  if (!quick) cases.insert(cases.end(), {{300, 4096}, {2048, 2048}});
  const int gemv_max = b.options().gemv_max_batch;
  for (const Case& c : cases) {
    const std::string sh = shape(c.rows, c.cols);
    const auto w = make_weights(rng, t, c.rows, c.cols);
    const int64_t max_n = 40;
    const auto x = rng.floats(max_n * c.cols);
    const auto res = rng.floats(max_n * c.rows);
    const size_t out_bytes = static_cast<size_t>(std::max(max_n * c.rows, 3 * c.cols)) * 4;  // matmul, get_rows
    Buf dg(b, w), ds_(b, w.size()), dx(b, x), dy(b, out_bytes), dy2(b, out_bytes), dtmp(b, out_bytes);
    const WeightRef hw{t, w.data(), c.rows, c.cols};
    const WeightRef g{t, dg.as<void>(), c.rows, c.cols};
    const WeightRef sp = b.upload_weight(hw, ds_.as<void>());
    expect("q8_0-split/layout " + sh, sp.layout == ds::kLayoutQ8_0Split && sp.data == ds_.as<void>() &&
                                          sp.rows == c.rows && sp.cols == c.cols);
    // The split rows hold the quants, then the scales.
    const auto raw = ds_.read<uint8_t>(w.size());
    bool bytes_ok = true;
    const size_t stride = hw.row_stride();
    for (int64_t r = 0; r < c.rows && bytes_ok; ++r)
      for (int64_t k = 0; k < c.cols / 32 && bytes_ok; ++k)
        bytes_ok = std::memcmp(&raw[r * stride + c.cols + 2 * k], &w[r * stride + 34 * k], 2) == 0 &&
                   std::memcmp(&raw[r * stride + 32 * k], &w[r * stride + 34 * k + 2], 32) == 0;
    expect("q8_0-split/bytes " + sh, bytes_ok);
    auto same_as_gguf = [&](const std::string& what, const std::function<void(const WeightRef&, float*)>& op,
                            size_t count) {
      op(g, dy.as());
      op(sp, dy2.as());
      const auto a = dy.read(count), bb = dy2.read(count);
      expect("q8_0-split/" + what + " " + sh, same_bits(a.data(), bb.data(), count), "differs from the GGUF layout");
    };
    // matmul on every path.
    for (int64_t n : {1, 2, 3, 4, 5, 8, 9, 16, 32, 40}) {
      const std::string ns = " n=" + std::to_string(n);
      const size_t count = static_cast<size_t>(n * c.rows);
      if (n <= 8) {
        for (int v = 1; v <= kGemvVersions; ++v) {
          b.set_gemv_version(v);
          same_as_gguf("gemv" + std::to_string(v) + ns, [&](const WeightRef& wr, float* y) { b.matmul(wr, dx.as(), n, y); }, count);
        }
        b.set_gemv_version(kLiveGemv);
      }
      b.set_gemv_max_batch(0);  // the per-type dispatch: Q8_0's GEMV, tensor-core kernel, cuBLAS
      same_as_gguf("matmul" + ns, [&](const WeightRef& wr, float* y) { b.matmul(wr, dx.as(), n, y); }, count);
      same_as_gguf("matmul_add" + ns, [&](const WeightRef& wr, float* y) {
        b.upload(y, res.data(), count * 4);
        b.matmul_add(wr, dx.as(), n, y, dtmp.as());
      }, count);
      b.set_tc_gemm(false);
      same_as_gguf("matmul-no-tc" + ns, [&](const WeightRef& wr, float* y) { b.matmul(wr, dx.as(), n, y); }, count);
      b.set_gemm_half(false);
      same_as_gguf("matmul-f32-cublas" + ns, [&](const WeightRef& wr, float* y) { b.matmul(wr, dx.as(), n, y); }, count);
      b.set_gemm_half(true);
      b.set_tc_gemm(true);
      b.set_batch_invariant(true);
      same_as_gguf("gemv-batched" + ns, [&](const WeightRef& wr, float* y) { b.matmul(wr, dx.as(), n, y); }, count);
      b.set_batch_invariant(false);
      b.set_gemv_max_batch(gemv_max);
    }
    // get_rows.
    {
      std::vector<int32_t> ids = {0, static_cast<int32_t>(c.rows - 1), static_cast<int32_t>(c.rows / 2)};
      Buf dids(b, ids);
      same_as_gguf("get_rows", [&](const WeightRef& wr, float* y) { b.get_rows(wr, dids.as<int32_t>(), 3, y); },
                   static_cast<size_t>(3 * c.cols));
    }
    // The reference, once.
    {
      std::vector<float> want(c.rows);
      ds::ref::matmul(hw, x.data(), 1, want.data());
      b.matmul(sp, dx.as(), 1, dy.as());
      compare("q8_0-split/matmul-vs-ref " + sh, dy.read(c.rows), want, 1e-5, 1e-4);
    }
  }
  // Fused QKV and gate/up with split matrices (bench-1b-like shapes, and mixed layouts).
  for (int64_t cols : {int64_t{64}, int64_t{512}}) {
    const int64_t rows[3] = {cols, cols / 4, cols / 4}, ff = 3 * cols;
    const int64_t max_n = 32;
    const auto x = rng.floats(max_n * cols);
    Buf dx(b, x);
    std::vector<Buf> dg, ds_;
    WeightRef g[5], sp[5];
    const int64_t all_rows[5] = {rows[0], rows[1], rows[2], ff, ff};
    std::vector<std::vector<uint8_t>> ws;
    for (int m = 0; m < 5; ++m) {
      ws.push_back(make_weights(rng, t, all_rows[m], cols));
      dg.emplace_back(b, ws[m]);
      ds_.emplace_back(b, ws[m].size());
      g[m] = WeightRef{t, dg[m].as<void>(), all_rows[m], cols};
      sp[m] = b.upload_weight(WeightRef{t, ws[m].data(), all_rows[m], cols}, ds_[m].as<void>());
    }
    Buf y1[3] = {Buf(b, max_n * rows[0] * 4), Buf(b, max_n * rows[1] * 4), Buf(b, max_n * rows[2] * 4)};
    Buf y2[3] = {Buf(b, max_n * rows[0] * 4), Buf(b, max_n * rows[1] * 4), Buf(b, max_n * rows[2] * 4)};
    Buf o1(b, max_n * ff * 4), o2(b, max_n * ff * 4), up(b, max_n * ff * 4);
    b.set_gemv_max_batch(0);
    for (int64_t n : {1, 2, 4, 5, 8, 9, 32}) {
      const std::string suffix = std::string(" ") + std::to_string(cols) + " n=" + std::to_string(n);
      b.matmul_qkv(g[0], g[1], g[2], nullptr, nullptr, nullptr, dx.as(), n, y1[0].as(), y1[1].as(), y1[2].as());
      for (int mixed = 0; mixed < 2; ++mixed) {
        const WeightRef& k = mixed ? g[1] : sp[1];  // mixed layouts: the separate ops
        b.matmul_qkv(sp[0], k, sp[2], nullptr, nullptr, nullptr, dx.as(), n, y2[0].as(), y2[1].as(), y2[2].as());
        bool same = true;
        for (int m = 0; m < 3; ++m)
          same = same && same_bits(y1[m].read(n * rows[m]).data(), y2[m].read(n * rows[m]).data(), n * rows[m]);
        expect(std::string("q8_0-split/matmul_qkv") + (mixed ? "-mixed" : "") + suffix, same, "differs from the GGUF layout");
      }
      b.matmul_swiglu(g[3], g[4], dx.as(), n, o1.as(), up.as());
      b.matmul_swiglu(sp[3], sp[4], dx.as(), n, o2.as(), up.as());
      expect("q8_0-split/matmul_swiglu" + suffix, same_bits(o1.read(n * ff).data(), o2.read(n * ff).data(), n * ff),
             "differs from the GGUF layout");
    }
    b.set_gemv_max_batch(gemv_max);
  }
  // Off: the GGUF layout as is; other types are never split.
  b.set_q8_0_split(false);
  {
    const auto w = make_weights(rng, t, 4, 64);
    Buf d(b, w.size());
    const WeightRef r = b.upload_weight(WeightRef{t, w.data(), 4, 64}, d.as<void>());
    const auto back = d.read<uint8_t>(w.size());
    expect("q8_0-split/off", r.layout == ds::kLayoutGguf && back == w);
  }
  b.set_q8_0_split(true);
  {
    const auto w = make_weights(rng, DType::kF16, 4, 64);
    Buf d(b, w.size());
    expect("q8_0-split/f16-as-is", b.upload_weight(WeightRef{DType::kF16, w.data(), 4, 64}, d.as<void>()).layout == ds::kLayoutGguf);
  }
  // A layout the type has not: a clear error.
  {
    const auto w = make_weights(rng, DType::kF16, 4, 64);
    Buf d(b, w), dx(b, rng.floats(64)), dy(b, 16);
    WeightRef bad{DType::kF16, d.as<void>(), 4, 64};
    bad.layout = ds::kLayoutQ8_0Split;
    b.matmul(bad, dx.as(), 1, dy.as());
    expect("q8_0-split/bad-layout-error", b.last_error().find("layout") != std::string::npos, b.last_error());
    b.clear_error();
  }
  require_ok(b, "q8_0_split");
}

// The int8 decode GEMV for Q8_0 (gemv_i8.cu, CudaBackendOptions::int8_gemv): against the dot
// with x quantized on the host as the CPU backend quantizes it (quantize_row_q8a's scalar
// loop: the same bits) in double (only float rounding may differ: 1e-5 of sum |d_w d_x s|),
// the same bits for split rows as for GGUF blocks, and batch invariance; also against the
// float reference within the activations' quantization error.
void check_gemv_i8(CudaBackend& b, Rng& rng, bool quick) {
  struct Case { int64_t rows, cols; bool big; };
  const std::vector<Case> cases = {{1, 32, false}, {37, 96, false}, {64, 256, false}, {129, 512, false},
                                   {300, 4096, true}, {2048, 5632, true}};
  const DType t = DType::kQ8_0;
  b.set_int8_gemv(true);
  for (const Case& c : cases) {
    if (c.big && quick) continue;
    const int64_t max_n = 8, blocks = c.cols / 32;
    const auto w = make_weights(rng, t, c.rows, c.cols);
    const auto x = rng.floats(max_n * c.cols);
    // x quantized per 32 values (kernels/cpu/matmul.cc, quantize_row_q8a).
    std::vector<int8_t> xq(x.size());
    std::vector<float> xd(max_n * blocks);
    for (int64_t bi = 0; bi < max_n * blocks; ++bi) {
      float amax = 0;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[bi * 32 + k]));
      const float d = amax / 127.0f;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      for (int k = 0; k < 32; ++k) xq[bi * 32 + k] = static_cast<int8_t>(std::nearbyint(x[bi * 32 + k] * id));
      xd[bi] = d;
    }
    std::vector<float> want(max_n * c.rows);
    std::vector<double> scale(want.size());
    const size_t stride = ds::row_bytes(t, c.cols);
    for (int64_t r = 0; r < c.rows; ++r) {
      const uint8_t* row = w.data() + r * stride;
      for (int64_t j = 0; j < max_n; ++j) {
        double sum = 0, mag = 0;
        for (int64_t bi = 0; bi < blocks; ++bi) {
          const uint8_t* blk = row + bi * 34;
          uint16_t h;
          std::memcpy(&h, blk, 2);
          const float wd = ds::fp16_to_fp32(h);
          for (int half = 0; half < 2; ++half) {  // the kernel's 16-weight chunks
            // In double (exact for these integers): GCC 12.2 vectorizes an int8 x int8 -> int32
            // sum for AVX-VNNI with vpdpbusd (unsigned x signed) and gets it wrong; the CPU
            // emulation is built with -march=native.
            double dot = 0;
            for (int k = 16 * half; k < 16 * half + 16; ++k)
              dot += static_cast<double>(static_cast<int8_t>(blk[2 + k])) * xq[(j * blocks + bi) * 32 + k];
            const double p = static_cast<double>(wd * xd[j * blocks + bi]) * dot;
            sum += p;
            mag += std::fabs(p);
          }
        }
        want[j * c.rows + r] = static_cast<float>(sum);
        scale[j * c.rows + r] = mag;
      }
    }
    std::vector<float> ref_want;
    std::vector<double> ref_scale;
    ref_matmul_scaled(t, w, c.rows, c.cols, x, max_n, &ref_want, &ref_scale);
    Buf dw(b, w), dsp(b, w.size()), dx(b, x), dy(b, want.size() * 4), dy2(b, want.size() * 4);
    const WeightRef gw{t, dw.as<void>(), c.rows, c.cols};
    const WeightRef sp = b.upload_weight(WeightRef{t, w.data(), c.rows, c.cols}, dsp.as<void>());
    const std::string sh = shape(c.rows, c.cols);
    std::vector<float> alone;  // n = 1
    for (int64_t n : {1, 2, 3, 5, 8}) {
      const std::string suffix = " " + sh + " n=" + std::to_string(n);
      const size_t count = static_cast<size_t>(n * c.rows);
      b.matmul(gw, dx.as(), n, dy.as());
      const auto got = dy.read(count);
      {  // (the scale: sum |d_w d_x s| of the chunks)
        std::vector<double> sc(scale.begin(), scale.begin() + count);
        compare("gemv-i8/vs-quantized-x" + suffix, got, std::vector<float>(want.begin(), want.begin() + count), 1e-6,
                1e-5, &sc);
      }
      // Against float x: the quantization of x (half a step, d_x / 2, per value) bounds it.
      std::vector<double> qerr(count);
      for (size_t i = 0; i < count; ++i) qerr[i] = 2.0 * ref_scale[i];
      compare("gemv-i8/vs-ref" + suffix, got, std::vector<float>(ref_want.begin(), ref_want.begin() + count), 1e-5, 1e-2,
              &qerr);
      b.matmul(sp, dx.as(), n, dy2.as());
      expect("gemv-i8/split-same-bits" + suffix, same_bits(dy2.read(count).data(), got.data(), count),
             "split rows differ from GGUF blocks");
      if (n == 1) alone = got;
      else expect("gemv-i8/batch-invariant" + suffix, same_bits(got.data(), alone.data(), c.rows),
                  "row 0 of the batch differs from the row computed alone");
    }
    require_ok(b, "gemv-i8");
  }
  b.set_int8_gemv(false);
}

}  // namespace ds::kernel_check

namespace ds::kernel_check {

// CudaBackendOptions::half_weight_cache: quantized matrices on the F16 cuBLAS path (batches
// past the GEMV and tensor-core ranges) give the same bits from their kept F16 copy as from the
// per-call dequantization; the copy is made once (its bytes counted), follows the matrix when
// new bytes are uploaded into it, and goes with its allocation.
void check_half_weight_cache(CudaBackend& b, Rng& rng) {
  struct Case { DType t; int64_t rows, cols; int n; bool split; };
  const Case cases[] = {{DType::kQ8_0, 64, 256, 40, true}, {DType::kQ8_0, 96, 128, 36, false},
                        {DType::kQ4_K, 32, 512, 12, false}, {DType::kQ4_0, 48, 256, 40, false}};
  for (const Case& c : cases) {
    const std::string tag = std::string(ds::dtype_name(c.t)) + (c.split ? "s " : " ") + shape(c.rows, c.cols) +
                            " n=" + std::to_string(c.n);
    const size_t before = b.half_weight_cache_bytes();
    std::vector<float> got[3];
    Buf x(b, rng.floats(c.n * c.cols)), y(b, c.n * c.rows * 4);
    {
      const auto w1 = make_weights(rng, c.t, c.rows, c.cols), w2 = make_weights(rng, c.t, c.rows, c.cols);
      Buf wb(b, w1.size());
      auto put = [&](const std::vector<uint8_t>& host) {
        const WeightRef h{c.t, host.data(), c.rows, c.cols};
        if (c.split) return b.upload_weight(h, wb.as<void>());
        b.upload(wb.as<void>(), host.data(), host.size());
        return WeightRef{c.t, wb.as<void>(), c.rows, c.cols};
      };
      WeightRef w = put(w1);
      b.set_half_weight_cache(false);
      b.matmul(w, x.as(), c.n, y.as());
      const auto plain = y.read(c.n * c.rows);
      b.set_half_weight_cache(true);
      for (int k = 0; k < 2; ++k) {  // the first call makes the copy, the second uses it
        b.matmul(w, x.as(), c.n, y.as());
        got[k] = y.read(c.n * c.rows);
      }
      const size_t kept = b.half_weight_cache_bytes() - before;
      require_ok(b, "half weight cache");
      expect("half-cache/same-bits " + tag,
             same_bits(plain.data(), got[0].data(), plain.size()) && same_bits(plain.data(), got[1].data(), plain.size()),
             "the kept F16 copy gave other bits than the per-call dequantization");
      expect("half-cache/made-once " + tag, kept == static_cast<size_t>(c.rows * c.cols) * 2,
             "kept " + std::to_string(kept) + " bytes for a " + std::to_string(c.rows * c.cols * 2) + "-byte copy");
      // New bytes in the same buffer: the result must be the new matrix's.
      w = put(w2);
      b.matmul(w, x.as(), c.n, y.as());
      got[2] = y.read(c.n * c.rows);
      b.set_half_weight_cache(false);
      b.matmul(w, x.as(), c.n, y.as());
      const auto plain2 = y.read(c.n * c.rows);
      b.set_half_weight_cache(true);
      expect("half-cache/follows-new-bytes " + tag, same_bits(plain2.data(), got[2].data(), plain2.size()),
             "a matrix uploaded again kept its old F16 copy");
    }  // wb freed
    expect("half-cache/freed-with-its-matrix " + tag, b.half_weight_cache_bytes() == before,
           std::to_string(b.half_weight_cache_bytes() - before) + " bytes still kept");
  }
  b.set_half_weight_cache(false);
}

}  // namespace ds::kernel_check
