// tests/gpu/gpu_kernel_check.cc: validates every CUDA Backend op against the scalar
// references (kernels/ref.cc, kernels/sampling.cc) and the NCCL communicator, then times the decode GEMV against
// device-to-device memcpy.
// A plain program (no GTest) so that it builds on a bare GPU machine: see
// tests/gpu/CMakeLists.txt and tools/gpu-check.sh.
//
//   gpu_kernel_check [--device N] [--no-bench] [--quick]
//
// Output: one "CHECK PASS|FAIL <name> max_abs=.. max_rel=.. tol=.." line per comparison,
// a per-kernel summary table, "BENCH ..." lines, then "RESULT: PASS|FAIL".
// Element i of a comparison passes when |got - ref| <= atol + rtol * max(|ref|, scale_i),
// where scale_i is sum_k |w_k x_k| for dot products (the natural size of float rounding
// error there) and 0 elsewhere; max_rel is max |got - ref| / max(|ref|, scale_i).
// Exit status: 0 all checks pass, 1 a check failed, 2 no usable GPU or setup failure.
#include <cuda_runtime.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend.h"
#include "kernels/comm.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_comm.h"
#include "kernels/cuda/ops.cuh"  // grid_sync_check
#include "kernels/dtype.h"
#include "kernels/ref.h"
#include "kernels/sampling.h"

namespace {

using ds::AttentionArgs;
using ds::AttentionToken;
using ds::CudaBackend;
using ds::CudaBackendOptions;
using ds::DType;
using ds::KvLayer;
using ds::RopeParams;
using ds::RopeStyle;
using ds::WeightRef;

constexpr int kGemvVersions = 4;  // kernels/cuda/ops.cuh (4: v3 with one row per warp)
constexpr int kLiveGemv = 3;      // CudaBackendOptions::gemv_version's default

// ---- random numbers -----------------------------------------------------------------

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() >> 40) / 16777216.0f; }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
  std::vector<float> floats(size_t count, float lo = -1, float hi = 1) {
    std::vector<float> v(count);
    for (auto& x : v) x = uniform(lo, hi);
    return v;
  }
};

// ---- results ------------------------------------------------------------------------

struct Group {
  int checks = 0, failed = 0;
  double max_abs = 0, max_rel = 0;
  std::string tol;
};
std::map<std::string, Group> g_groups;  // by kernel name (the check name up to its first space)
int g_checks = 0, g_failed = 0;

Group& group_of(const std::string& name) { return g_groups[name.substr(0, name.find(' '))]; }

void record(const std::string& name, bool pass, double max_abs, double max_rel, const std::string& tol,
            const std::string& detail) {
  ++g_checks;
  Group& g = group_of(name);
  ++g.checks;
  g.max_abs = std::max(g.max_abs, max_abs);
  g.max_rel = std::max(g.max_rel, max_rel);
  g.tol = tol;
  if (!pass) {
    ++g_failed;
    ++g.failed;
  }
  std::printf("CHECK %s %-44s max_abs=%.3e max_rel=%.3e tol=%s%s\n", pass ? "PASS" : "FAIL", name.c_str(), max_abs,
              max_rel, tol.c_str(), detail.c_str());
  std::fflush(stdout);
}

// Compares got with want (see the file comment for the criterion).
void compare(const std::string& name, const float* got, const float* want, size_t count, double atol, double rtol,
             const double* scale = nullptr) {
  double max_abs = 0, max_rel = 0;
  int64_t bad = 0;
  std::string first;
  for (size_t i = 0; i < count; ++i) {
    const double g = got[i], w = want[i];
    const double err = std::fabs(g - w);
    const double denom = std::max(std::fabs(w), scale ? scale[i] : 0.0);
    const bool ok = std::isfinite(g) == std::isfinite(w) && (err <= atol + rtol * denom || g == w);
    if (std::isfinite(err)) {
      max_abs = std::max(max_abs, err);
      if (denom > 1e-20) max_rel = std::max(max_rel, err / denom);
    } else if (!ok) {
      max_abs = max_rel = INFINITY;
    }
    if (!ok && ++bad <= 3) {
      char buf[160];
      std::snprintf(buf, sizeof buf, " [%zu]: got %.9g want %.9g;", i, g, w);
      first += buf;
    }
  }
  char tol[64];
  std::snprintf(tol, sizeof tol, "%.0e+%.0e*%s", atol, rtol, scale ? "max(|ref|,sum|wx|)" : "|ref|");
  std::string detail;
  if (bad) detail = "  " + std::to_string(bad) + " of " + std::to_string(count) + " over:" + first;
  record(name, bad == 0, max_abs, max_rel, tol, detail);
}

void compare(const std::string& name, const std::vector<float>& got, const std::vector<float>& want, double atol,
             double rtol, const std::vector<double>* scale = nullptr) {
  if (got.size() != want.size()) return record(name, false, INFINITY, INFINITY, "-", "  size mismatch");
  compare(name, got.data(), want.data(), got.size(), atol, rtol, scale ? scale->data() : nullptr);
}

// A yes/no check (determinism, error reporting).
void expect(const std::string& name, bool cond, const std::string& detail = "") {
  record(name, cond, 0, 0, "exact", cond || detail.empty() ? "" : "  " + detail);
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// x as an F16 KV cache holds it: the halves' bits, and those values back as floats.
std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = ds::fp32_to_fp16_ref(x[i]);
  return h;
}
std::vector<float> f16_rounded(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = ds::fp16_to_fp32_ref(ds::fp32_to_fp16_ref(x[i]));
  return r;
}

// ---- device memory ------------------------------------------------------------------

// A buffer from the backend, freed with it.
class Buf {
 public:
  Buf(CudaBackend& b, size_t bytes) : b_(&b), p_(b.alloc(bytes)), bytes_(bytes) {}
  template <class T>
  Buf(CudaBackend& b, const std::vector<T>& host) : Buf(b, host.size() * sizeof(T)) {
    if (p_ && !host.empty()) b_->upload(p_, host.data(), bytes_);
  }
  ~Buf() {
    if (p_) b_->free(p_);
  }
  Buf(Buf&& o) noexcept : b_(o.b_), p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <class T = float>
  T* as() const {
    return static_cast<T*>(p_);
  }
  template <class T = float>
  std::vector<T> read(size_t count, size_t offset = 0) const {
    std::vector<T> v(count);
    if (count) b_->download(v.data(), static_cast<const T*>(p_) + offset, count * sizeof(T));
    return v;
  }

 private:
  CudaBackend* b_;
  void* p_;
  size_t bytes_;
};

// Random weights [rows, cols] of type t, made as ggml does: float values through the
// reference quantizer. Host bytes; ref::matmul dequantizes them again.
std::vector<uint8_t> make_weights(Rng& rng, DType t, int64_t rows, int64_t cols) {
  const size_t stride = ds::row_bytes(t, cols);
  std::vector<uint8_t> w(stride * rows);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& x : row) x = rng.uniform(-1, 1);
    ds::quantize_row(t, row.data(), w.data() + r * stride, cols);
  }
  return w;
}

const DType kAllTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                           DType::kQ4_0, DType::kQ4_K, DType::kQ6_K};
// Rows of `cols` elements can be stored in type t (a whole number of its blocks).
bool fits(DType t, int64_t cols) { return cols % ds::dtype_traits(t).block_size == 0; }
std::string shape(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

// Fails the run (exit 2) when the backend recorded an error outside an expected-error test.
void require_ok(CudaBackend& b, const char* where) {
  if (!b.synchronize()) {
    std::printf("ERROR: backend failed during %s: %s\n", where, b.last_error().c_str());
    std::exit(2);
  }
}

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

void ref_matmul_scaled(DType t, const std::vector<uint8_t>& w, int64_t rows, int64_t cols, const std::vector<float>& x,
                       int64_t n, std::vector<float>* want, std::vector<double>* scale);

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
      const std::string suffix = " " + shape(qr, cols) + " n=" + std::to_string(n);
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
      const std::string suffix = " " + std::to_string(cols) + " n=" + std::to_string(n);
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

void check_rmsnorm(CudaBackend& b, Rng& rng) {
  for (int64_t dim : {64, 2048, 5000}) {
    for (int64_t n : {1, 5, 64}) {
      const auto x = rng.floats(n * dim, -3, 3);
      const auto w = rng.floats(dim, 0.5, 1.5);
      std::vector<float> want(x.size());
      ds::ref::rmsnorm(x.data(), w.data(), n, dim, 1e-5f, want.data());
      Buf dx(b, x), dw(b, w), dout(b, x.size() * 4);
      b.rmsnorm(dx.as(), dw.as(), n, dim, 1e-5f, dout.as());
      const std::string name = "rmsnorm " + shape(n, dim);
      compare(name, dout.read(x.size()), want, 1e-6, 1e-5);
      b.rmsnorm(dx.as(), dw.as(), n, dim, 1e-5f, dx.as());  // in place
      compare("rmsnorm-inplace " + shape(n, dim), dx.read(x.size()), want, 1e-6, 1e-5);
    }
  }
  require_ok(b, "rmsnorm");
}

void check_rope(CudaBackend& b, Rng& rng) {
  struct Case { RopeStyle style; int head_dim, n_rot; float base, scale; int max_pos; };
  const Case cases[] = {
      {RopeStyle::kNormal, 64, 64, 10000, 1, 4096},   {RopeStyle::kNeox, 64, 64, 10000, 1, 4096},
      {RopeStyle::kNormal, 128, 128, 500000, 1, 32768}, {RopeStyle::kNeox, 128, 128, 1000000, 1, 32768},
      {RopeStyle::kNeox, 128, 64, 10000, 0.25f, 8192}, {RopeStyle::kNormal, 80, 80, 10000, 1, 2048},
  };
  for (const Case& c : cases) {
    const int n_heads = 6;
    for (int64_t n : {1, 7, 100}) {
      auto x = rng.floats(n * n_heads * c.head_dim);
      std::vector<int32_t> pos(n);
      for (auto& p : pos) p = rng.below(c.max_pos);
      pos[0] = c.max_pos - 1;
      RopeParams p;
      p.style = c.style;
      p.n_rot = c.n_rot;
      p.freq_base = c.base;
      p.freq_scale = c.scale;
      Buf dx(b, x), dpos(b, pos);
      ds::ref::rope(x.data(), n, n_heads, c.head_dim, pos.data(), p);
      b.rope(dx.as(), n, n_heads, c.head_dim, dpos.as<int32_t>(), p);
      char name[128];
      std::snprintf(name, sizeof name, "rope/%s hd=%d rot=%d base=%g scale=%g n=%" PRId64,
                    c.style == RopeStyle::kNeox ? "neox" : "normal", c.head_dim, c.n_rot, c.base, c.scale, n);
      compare(name, dx.read(x.size()), x, 1e-6, 1e-5);
    }
  }
  require_ok(b, "rope");
}

void check_elementwise(CudaBackend& b, Rng& rng) {
  for (int64_t count : {int64_t{1}, int64_t{1000}, int64_t{1} << 20}) {
    const auto g = rng.floats(count, -12, 12), u = rng.floats(count, -3, 3);
    std::vector<float> want(count);
    ds::ref::swiglu(g.data(), u.data(), count, want.data());
    Buf dg(b, g), du(b, u), dout(b, count * 4);
    b.swiglu(dg.as(), du.as(), count, dout.as());
    compare("swiglu n=" + std::to_string(count), dout.read(count), want, 1e-7, 1e-5);
    if (count >= 1000) {  // the 4-wide kernel (count % 4 == 0) against the scalar one (count - 1): same bits
      Buf dout1(b, count * 4);
      b.swiglu(dg.as(), du.as(), count - 1, dout1.as());
      expect("determinism/swiglu-vec-scalar n=" + std::to_string(count),
             same_bits(dout.read(count - 1).data(), dout1.read(count - 1).data(), count - 1));
    }

    std::vector<float> sum(count);
    for (int64_t i = 0; i < count; ++i) sum[i] = g[i] + u[i];
    b.add(dg.as(), du.as(), count);
    compare("add n=" + std::to_string(count), dg.read(count), sum, 0, 0);
  }
  for (int64_t dim : {1, 96, 4096}) {
    const int64_t n = 13;
    const auto x = rng.floats(n * dim), bias = rng.floats(dim);
    std::vector<float> want(x);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < dim; ++k) want[i * dim + k] += bias[k];
    Buf dx(b, x), dbias(b, bias);
    b.add_bias(dx.as(), dbias.as(), n, dim);
    compare("add_bias " + shape(n, dim), dx.read(x.size()), want, 0, 0);
  }
  // store_kv: n rows into distinct random slots of a [n_slots, kv_dim] cache; the rest stays 0.
  for (int64_t kv_dim : {64, 1024}) {
    const int64_t n = 37, n_slots = 256;
    const auto k = rng.floats(n * kv_dim), v = rng.floats(n * kv_dim);
    std::vector<int32_t> perm(n_slots);
    for (int32_t i = 0; i < n_slots; ++i) perm[i] = i;
    for (int64_t i = n_slots - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(static_cast<int>(i + 1))]);
    const std::vector<int32_t> slots(perm.begin(), perm.begin() + n);
    std::vector<float> want_k(n_slots * kv_dim, 0.0f), want_v(n_slots * kv_dim, 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(k.data() + i * kv_dim, kv_dim, want_k.data() + slots[i] * kv_dim);
      std::copy_n(v.data() + i * kv_dim, kv_dim, want_v.data() + slots[i] * kv_dim);
    }
    Buf dk(b, k), dv(b, v), dslots(b, slots), kc(b, want_k.size() * 4), vc(b, want_v.size() * 4);
    b.store_kv(dk.as(), dv.as(), n, dslots.as<int32_t>(), kv_dim, KvLayer{kc.as(), vc.as(), DType::kF32});
    compare("store_kv/k kv_dim=" + std::to_string(kv_dim), kc.read(want_k.size()), want_k, 0, 0);
    compare("store_kv/v kv_dim=" + std::to_string(kv_dim), vc.read(want_v.size()), want_v, 0, 0);
    // F16 cache: the halves rounded to nearest even (dtype.h's reference), bit for bit.
    Buf hk(b, want_k.size() * 2), hv(b, want_v.size() * 2);
    b.store_kv(dk.as(), dv.as(), n, dslots.as<int32_t>(), kv_dim, KvLayer{hk.as(), hv.as(), DType::kF16});
    expect("store_kv/f16 kv_dim=" + std::to_string(kv_dim),
           hk.read<uint16_t>(want_k.size()) == to_f16(want_k) && hv.read<uint16_t>(want_v.size()) == to_f16(want_v),
           "the F16 cache differs from fp32_to_fp16_ref of the rows");
  }
  require_ok(b, "elementwise");
}

// Attention: each case runs version 1 (no workspace) and, when max_kv > 0, version 2
// (split-K over chunks set by max_kv), both against ref::attention. Version 2 must also give
// every token the bits it gets when attended alone, the bits of version 1 for tokens of one
// chunk (n_kv <= 256, the smallest chunk), and fall back to version 1 (same bits) when the
// workspace is missing or too small.
// AttentionArgs over device buffers: q and out [n, heads * hd], the caches, n tokens; scale
// 1 / sqrt(hd), no split-K workspace, no tiles.
AttentionArgs attention_args(const Buf& q, const Buf& out, const Buf& kc, const Buf& vc, const Buf& toks, int64_t n,
                             int heads, int kv_heads, int hd, int bs) {
  AttentionArgs a;
  a.q = q.as();
  a.out = out.as();
  a.k_cache = kc.as();
  a.v_cache = vc.as();
  a.tokens = toks.as<AttentionToken>();
  a.n_tokens = n;
  a.n_heads = heads;
  a.n_kv_heads = kv_heads;
  a.head_dim = hd;
  a.block_size = bs;
  a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  return a;
}

void check_attention(CudaBackend& b, Rng& rng) {
  struct Case {
    int n_heads, n_kv_heads, head_dim, block_size;
    std::vector<int> n_kv;  // per token
    bool one_sequence;      // all tokens share one block table (prefill); else one sequence each
    int max_kv;             // > 0: also run version 2 with this bound
    int seq_len = 0;        // > 0 (and !one_sequence): sequences of seq_len consecutive tokens
  };
  const std::vector<Case> cases = {
      {4, 4, 64, 16, {1, 2, 5, 17, 64, 300}, false, 300},
      {8, 2, 128, 32, {1, 100, 1000, 2049}, false, 2049},  // GQA; 2049: chunks of 256, the last has 1
      {2, 1, 80, 16, {3, 77, 0}, false, 77},               // head_dim % 32 != 0; n_kv = 0 gives zeros
      {4, 2, 256, 16, {50, 129}, false, 0},
      {2, 2, 1024, 8, {9, 40}, false, 0},                  // the largest head_dim
      {8, 8, 64, 16, {96, 97, 98, 99, 100}, true, 0},      // prefill: consecutive positions
      // Version 2: chunks of 256 (max_kv 1024: 4 of them); n_kv 0, 1, < C, C, C + 1, several
      // chunks, all of max_kv, beyond max_kv (the last chunk stretches); GQA.
      {4, 2, 64, 16, {0, 1, 100, 256, 257, 700, 1024, 1100}, false, 1024},
      // max_kv 20000: 32 chunks of 640 (625 rounded up to 16s); head_dim % 32 != 0.
      {2, 1, 96, 16, {639, 640, 641, 1300}, false, 20000},
      // prefill of one sequence across a chunk boundary, chunks of 256.
      {4, 1, 64, 32, {250, 255, 256, 257, 260, 513}, true, 4096},
      {2, 2, 1024, 8, {40, 300}, false, 512},              // the largest head_dim, 2 chunks
      // Prefill tiles (<= 8 tokens of one sequence): 20 tokens of one sequence (tiles 8, 8, 4),
      // n_kv not monotonic; three sequences of 5 (tiles 5, 5, 5); GQA; head_dim 80 and 128.
      {4, 2, 64, 16, {5, 9, 1, 33, 64, 65, 31, 32, 100, 99, 7, 0, 2, 48, 49, 50, 17, 16, 15, 120}, true, 0},
      {2, 1, 80, 16, {1, 2, 3, 4, 5, 30, 31, 32, 33, 34, 60, 61, 62, 63, 64}, false, 0, 5},
      {8, 2, 128, 32, {300, 301, 302, 303, 304, 305, 306, 307, 308, 257}, true, 1024},
      {4, 4, 64, 16, {250, 255, 256, 257, 260, 513, 700, 1, 3}, false, 2048, 3},
      // For the tensor-core prefill kernel (also checked bit for bit as above, with it off):
      // bench-1b's heads (8 a KV head: 64 rows a tile), 16 tokens from position 200; 16 heads a
      // KV head (128 rows: 2 row chunks) at the first positions (rows masked down to 1
      // position); head_dim 128 with 8 heads a KV head (64 rows: 2 chunks of 32), ~300 positions.
      {32, 4, 64, 16, {201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216}, true, 0},
      {16, 1, 64, 16, {1, 2, 3, 4, 5, 6, 7, 8}, true, 0},
      {8, 1, 128, 32, {301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312}, true, 1024},
  };
  b.set_tc_attention(false);  // the CUDA-core kernels' bits below; the tensor-core kernel where noted
  int tc_checked = 0, fa_checked = 0;
  int case_no = 0;
  for (const Case& c : cases) {
    const int64_t n_tokens = static_cast<int64_t>(c.n_kv.size());
    const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
    // Block tables: a random permutation of the cache's blocks.
    auto seq_of = [&](int64_t t) -> int64_t { return c.one_sequence ? 0 : c.seq_len > 0 ? t / c.seq_len : t; };
    std::vector<std::vector<int32_t>> tables;
    int total_blocks = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
      if (seq_of(t) < static_cast<int64_t>(tables.size())) continue;  // its sequence has its table
      int len = 0;
      for (int64_t u = t; u < n_tokens; ++u)
        if (seq_of(u) == seq_of(t)) len = std::max(len, c.n_kv[u]);
      tables.emplace_back(std::max(1, (len + c.block_size - 1) / c.block_size));
      total_blocks += static_cast<int>(tables.back().size());
    }
    total_blocks += 3;  // unused blocks
    std::vector<int32_t> perm(total_blocks);
    for (int i = 0; i < total_blocks; ++i) perm[i] = i;
    for (int i = total_blocks - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(i + 1)]);
    std::vector<int32_t> flat;
    for (auto& tb : tables)
      for (auto& e : tb) {
        e = perm[flat.size()];
        flat.push_back(e);
      }
    const auto kc = rng.floats(static_cast<size_t>(total_blocks) * c.block_size * kv_dim);
    const auto vc = rng.floats(kc.size());
    const auto q = rng.floats(n_tokens * c.n_heads * c.head_dim, -2, 2);

    // Each case with an F32 cache, then an F16 one (the reference gets the rounded values).
    for (DType kvt : {DType::kF32, DType::kF16}) {
      const bool f16 = kvt == DType::kF16;
      const char* tag = f16 ? " f16" : "";
      const std::vector<float> kc_ref = f16 ? f16_rounded(kc) : kc, vc_ref = f16 ? f16_rounded(vc) : vc;
      std::vector<AttentionToken> host_tokens(n_tokens);
      for (int64_t t = 0; t < n_tokens; ++t) host_tokens[t] = {tables[seq_of(t)].data(), c.n_kv[t]};
      std::vector<float> want(q.size());
      AttentionArgs a;
      a.q = q.data();
      a.out = want.data();
      a.k_cache = kc_ref.data();
      a.v_cache = vc_ref.data();
      a.tokens = host_tokens.data();
      a.n_tokens = n_tokens;
      a.n_heads = c.n_heads;
      a.n_kv_heads = c.n_kv_heads;
      a.head_dim = c.head_dim;
      a.block_size = c.block_size;
      a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      ds::ref::attention(a);

      Buf dflat(b, flat), dq(b, q), dout(b, q.size() * 4);
      Buf dkc = f16 ? Buf(b, to_f16(kc)) : Buf(b, kc), dvc = f16 ? Buf(b, to_f16(vc)) : Buf(b, vc);
      std::vector<AttentionToken> dev_tokens(n_tokens);
      for (int64_t t = 0; t < n_tokens; ++t) {
        const int64_t table = seq_of(t);
        int64_t start = 0;  // tables are concatenated in flat
        for (int64_t i = 0; i < table; ++i) start += static_cast<int64_t>(tables[i].size());
        dev_tokens[t] = {dflat.as<int32_t>() + start, c.n_kv[t]};
      }
      Buf dtok(b, dev_tokens);
      AttentionArgs d = attention_args(dq, dout, dkc, dvc, dtok, n_tokens, c.n_heads, c.n_kv_heads, c.head_dim,
                                       c.block_size);
      d.kv_type = kvt;
      b.attention(d);
      const auto got = dout.read(q.size());
      if (f16) {
        // The F16 cache gives the bits of an F32 cache holding the rounded values.
        Buf rkc(b, kc_ref), rvc(b, vc_ref), rout(b, q.size() * 4);
        AttentionArgs r = d;
        r.k_cache = rkc.as();
        r.v_cache = rvc.as();
        r.kv_type = DType::kF32;
        r.out = rout.as();
        b.attention(r);
        expect("attention-f16/same-bits-as-rounded-f32 #" + std::to_string(case_no),
               same_bits(rout.read(q.size()).data(), got.data(), q.size()), "differs from F32 over the rounded rows");
      }
      char name[128];
      std::snprintf(name, sizeof name, "attention%s heads=%d/%d hd=%d bs=%d tokens=%" PRId64 " #%d", tag, c.n_heads,
                    c.n_kv_heads, c.head_dim, c.block_size, n_tokens, case_no);
      compare(name, got, want, 1e-5, 1e-4);

      // The token attended alone gets the bits it got in the batch.
      const int64_t width = static_cast<int64_t>(c.n_heads) * c.head_dim;
      Buf one(b, width * 4);
      auto alone_matches = [&](const AttentionArgs& batch, const std::vector<float>& batch_out, int64_t t) {
        AttentionArgs s = batch;
        s.q = dq.as() + t * width;
        s.out = one.as();
        s.tokens = dtok.as<AttentionToken>() + t;
        s.n_tokens = 1;
        b.attention(s);
        const auto alone = one.read(width);
        return same_bits(alone.data(), batch_out.data() + t * width, width);
      };
      expect("determinism/attention-alone" + std::string(tag) + " #" + std::to_string(case_no), alone_matches(d, got, n_tokens - 1),
             "the last token alone differs from the batch");
      // Prefill tiles (runs of <= kAttentionTileTokens tokens of one sequence): the same bits.
      std::vector<int32_t> tiles = {0};
      for (int64_t t = 1; t <= n_tokens; ++t)
        if (t == n_tokens || seq_of(t) != seq_of(t - 1) || t - tiles.back() == ds::kAttentionTileTokens)
          tiles.push_back(static_cast<int32_t>(t));
      Buf dtiles(b, tiles);
      auto tiled_matches = [&](AttentionArgs s, const std::vector<float>& untiled) {
        Buf tout(b, q.size() * 4);
        s.out = tout.as();
        s.tiles = dtiles.as<int32_t>();
        s.n_tiles = static_cast<int64_t>(tiles.size()) - 1;
        b.attention(s);
        return same_bits(tout.read(q.size()).data(), untiled.data(), q.size());
      };
      expect("attention-tiled/same-bits" + std::string(tag) + " #" + std::to_string(case_no) + " (" + std::to_string(tiles.size() - 1) + " tiles)",
             tiled_matches(d, got), "tiled output differs from version 1");
      // The tensor-core prefill kernel, where it takes the tiles (they average >= 4 tokens,
      // head_dim 64 or 128): against the reference with F16 operands' error (scores from F16
      // queries and keys, probabilities and values rounded to F16).
      {
        b.set_tc_attention(true);
        AttentionArgs s = d;
        Buf tout(b, q.size() * 4);
        s.out = tout.as();
        s.tiles = dtiles.as<int32_t>();
        s.n_tiles = static_cast<int64_t>(tiles.size()) - 1;
        const bool applies = b.tc_attention_applies(s);
        const bool expected = (c.head_dim == 64 || c.head_dim == 128) && n_tokens >= 4 * s.n_tiles;
        expect("attention-tc/applies #" + std::to_string(case_no), applies == expected,
               applies ? "took tiles it should not" : "refused tiles it should take");
        std::vector<float> unpadded, padded_out;
        b.set_tc_attention_mma(false);  // the WMMA kernel first
        for (bool padded : {false, true}) {  // shared-memory rows as the H200 run timed them, then padded
          if (!applies) break;
          b.set_tc_attention_padded(padded);
          b.attention(s);
          const auto got_tc = tout.read(q.size());
          std::snprintf(name, sizeof name, "attention-tc%s%s heads=%d/%d hd=%d tokens=%" PRId64 " #%d",
                        padded ? "-padded" : "", tag, c.n_heads, c.n_kv_heads, c.head_dim, n_tokens, case_no);
          compare(name, got_tc, want, 1e-3, 5e-3);
          if (padded) {
            expect("determinism/attention-tc-padded-same-bits" + std::string(tag) + " #" + std::to_string(case_no),
                   same_bits(got_tc.data(), unpadded.data(), q.size()), "the padded layout changed the arithmetic");
            padded_out = got_tc;
          } else {
            unpadded = got_tc;
          }
          ++tc_checked;
        }
        // Flash attention 2 on mma.sync (F16 caches; an F32 cache keeps the padded WMMA kernel).
        b.set_tc_attention_mma(true);
        if (applies) {
          b.attention(s);
          const auto got_fa = tout.read(q.size());
          if (s.kv_type == DType::kF16) {
            std::snprintf(name, sizeof name, "attention-fa%s heads=%d/%d hd=%d tokens=%" PRId64 " #%d", tag, c.n_heads,
                          c.n_kv_heads, c.head_dim, n_tokens, case_no);
            compare(name, got_fa, want, 1e-3, 5e-3);
            ++fa_checked;
          } else {
            expect("attention-fa/f32-cache-is-padded-wmma #" + std::to_string(case_no),
                   padded_out.size() == got_fa.size() && same_bits(got_fa.data(), padded_out.data(), q.size()));
          }
        }
        b.set_tc_attention_padded(true);
        b.set_tc_attention(false);
      }

      if (c.max_kv > 0) {
        const size_t ws_floats = b.attention_workspace_floats(n_tokens, c.n_heads, c.head_dim, c.max_kv);
        expect("attention-v2/workspace-size" + std::string(tag) + " #" + std::to_string(case_no), ws_floats > 0, "no workspace for split-K");
        Buf ws(b, ws_floats * 4), dout2(b, q.size() * 4);
        AttentionArgs d2 = d;
        d2.out = dout2.as();
        d2.max_kv = c.max_kv;
        d2.workspace = ws.as();
        d2.workspace_floats = ws_floats;
  #ifdef DS_CUDA_EMULATION
        const int64_t launches0 = emu::launches();
  #endif
        b.attention(d2);
  #ifdef DS_CUDA_EMULATION
        // One launch whatever the chunks: the last block of a pair's chunks merges them.
        const int64_t launched = emu::launches() - launches0;
        expect("attention-v2/launches" + std::string(tag) + " #" + std::to_string(case_no), launched == 1,
               std::to_string(launched) + " launches");
  #endif
        const auto got2 = dout2.read(q.size());
        std::snprintf(name, sizeof name, "attention-v2%s heads=%d/%d hd=%d bs=%d tokens=%" PRId64 " max_kv=%d #%d",
                      tag, c.n_heads, c.n_kv_heads, c.head_dim, c.block_size, n_tokens, c.max_kv, case_no);
        compare(name, got2, want, 1e-5, 1e-4);
        int64_t differ = -1, not_v1 = -1;
        for (int64_t t = 0; t < n_tokens; ++t) {
          if (differ < 0 && !alone_matches(d2, got2, t)) differ = t;
          if (not_v1 < 0 && c.n_kv[t] <= 256 && !same_bits(got.data() + t * width, got2.data() + t * width, width))
            not_v1 = t;
        }
        expect("determinism/attention-v2-alone" + std::string(tag) + " #" + std::to_string(case_no), differ < 0,
               "token " + std::to_string(differ) + " alone differs from the batch");
        expect("attention-tiled/v2-same-bits" + std::string(tag) + " #" + std::to_string(case_no), tiled_matches(d2, got2),
               "tiled output differs from version 2");
        expect("attention-v2/one-chunk-is-v1" + std::string(tag) + " #" + std::to_string(case_no), not_v1 < 0,
               "token " + std::to_string(not_v1) + " (one chunk) differs from version 1");
        // Fallbacks: no workspace, or one float short of it, run version 1.
        for (int variant = 0; variant < 2; ++variant) {
          AttentionArgs f = d2;
          if (variant == 0) f.workspace = nullptr;
          else f.workspace_floats = ws_floats - 1;
          b.attention(f);
          expect(std::string("attention-v2/fallback-") + (variant == 0 ? "no-workspace" : "small-workspace") + tag + " #" +
                     std::to_string(case_no),
                 same_bits(dout2.read(q.size()).data(), got.data(), q.size()), "output differs from version 1");
        }
      }
    }
    ++case_no;
  }
  expect("attention-tc/cases", tc_checked >= 24, std::to_string(tc_checked) + " cases took the tensor-core kernel");
  expect("attention-fa/cases", fa_checked >= 6, std::to_string(fa_checked) + " cases took the mma.sync kernel");
  b.set_tc_attention(true);
  require_ok(b, "attention");
}

// Bad arguments become errors a worker can report, not aborts.
// Recording (CUDA graphs): a recorded rmsnorm + GEMV + add sequence (and a fused QKV + gate/up
// pair) replays to the same bits as the eager ops, sees new inputs uploaded between replays,
// and a recording that meets an op it cannot record (the cuBLAS path) reports failure and
// runs nothing.
// matmul_add (one GEMV v3 launch with the residual add) and rope_store_kv (one launch):
// against the reference and bit for bit against the separate ops (fuse_decode off).
void check_fused_residual_rope(CudaBackend& b, Rng& rng, bool quick) {
  struct Shape { int64_t rows, cols; };
  for (DType t : kAllTypes) {
    const std::string tn = ds::dtype_name(t);
    for (Shape sh : {Shape{64, 96}, Shape{256, 512}, Shape{2048, 5632}}) {
      if ((quick && sh.rows > 256) || !fits(t, sh.cols)) continue;
      const int64_t max_n = 40;
      const auto w = make_weights(rng, t, sh.rows, sh.cols);
      const auto x = rng.floats(max_n * sh.cols);
      const auto res = rng.floats(max_n * sh.rows, -4, 4);
      std::vector<float> want;
      std::vector<double> scale;
      ref_matmul_scaled(t, w, sh.rows, sh.cols, x, max_n, &want, &scale);
      Buf dw(b, w), dx(b, x), dy(b, res), dy2(b, res), tmp(b, max_n * sh.rows * 4);
      const WeightRef gw{t, dw.as<void>(), sh.rows, sh.cols};
      for (int64_t n : {1, 3, 8, 9}) {
        const std::string suffix = " " + shape(sh.rows, sh.cols) + " n=" + std::to_string(n) + (n > 8 ? " invariant" : "");
        b.upload(dy.as(), res.data(), res.size() * 4);
        b.upload(dy2.as(), res.data(), res.size() * 4);
        if (n > 8) b.set_batch_invariant(true);
        b.matmul_add(gw, dx.as(), n, dy.as(), tmp.as());
        b.set_fuse_decode(false);
        b.matmul_add(gw, dx.as(), n, dy2.as(), tmp.as());
        b.set_fuse_decode(true);
        b.set_batch_invariant(false);
        check_residual_add("fused-add/" + tn + suffix, "determinism/fused-add-bits " + tn + suffix,
                           dy.read(n * sh.rows), dy2.read(n * sh.rows), res, want, scale, n * sh.rows, 1e-6, 2e-5);
      }
      // matmul_add_rmsnorm: the residual add and the next RMSNorm in one launch (the last block
      // normalizes), bit for bit as matmul_add then rmsnorm; twice (the arrival counter resets).
      {
        const auto nw = rng.floats(sh.rows, 0.5f, 1.5f);
        Buf dnw(b, nw), xn1(b, max_n * sh.rows * 4), xn2(b, max_n * sh.rows * 4);
        for (int64_t n : {1, 3, 8, 9}) {
          const std::string suffix = " " + shape(sh.rows, sh.cols) + " n=" + std::to_string(n);
          bool same = true;
          for (int rep = 0; rep < 2; ++rep) {
            b.upload(dy.as(), res.data(), res.size() * 4);
            b.upload(dy2.as(), res.data(), res.size() * 4);
            b.matmul_add_rmsnorm(gw, dx.as(), n, dy.as(), tmp.as(), dnw.as(), 1e-5f, xn1.as());
            b.matmul_add(gw, dx.as(), n, dy2.as(), tmp.as());
            b.rmsnorm(dy2.as(), dnw.as(), n, sh.rows, 1e-5f, xn2.as());
            const size_t cnt = static_cast<size_t>(n * sh.rows);
            same = same && same_bits(dy.read(cnt).data(), dy2.read(cnt).data(), cnt) &&
                   same_bits(xn1.read(cnt).data(), xn2.read(cnt).data(), cnt);
          }
          expect("determinism/fused-add-rmsnorm-bits " + tn + suffix, same, "differs from matmul_add + rmsnorm");
        }
      }
      // n = 40 (past the tensor-core kernel): cuBLAS with the add as its beta = 1, within the
      // cuBLAS path's tolerance (F16 operands unless F32 weights; BF16 2^-8).
      {
        const int64_t n = max_n;
        b.upload(dy.as(), res.data(), res.size() * 4);
        b.matmul_add(gw, dx.as(), n, dy.as(), tmp.as());
        const auto got = dy.read(n * sh.rows);
        std::vector<float> wn(n * sh.rows);
        std::vector<double> sn(n * sh.rows);
        for (int64_t i = 0; i < n * sh.rows; ++i) {
          wn[i] = res[i] + want[i];
          sn[i] = scale[i] + std::fabs(res[i]);
        }
        compare("fused-add-cublas/" + tn + " " + shape(sh.rows, sh.cols) + " n=40", got, wn, 1e-5,
                t == DType::kBF16 ? 8e-3 : t == DType::kF32 ? 2e-5 : 1.5e-3, &sn);
      }
    }
  }
  // rope_store_kv: both styles, GQA, partial rotation, scattered cache slots.
  struct Rope { int n_heads, n_kv_heads, head_dim, n_rot; RopeStyle style; };
  for (Rope rp : {Rope{4, 2, 16, 16, RopeStyle::kNormal}, Rope{4, 4, 32, 32, RopeStyle::kNeox},
                  Rope{32, 4, 64, 64, RopeStyle::kNormal}, Rope{6, 2, 24, 16, RopeStyle::kNeox},
                  Rope{6, 3, 24, 8, RopeStyle::kNormal}}) {
    for (int64_t n : {1, 5, 17}) {
      const int64_t qd = static_cast<int64_t>(rp.n_heads) * rp.head_dim, kvd = static_cast<int64_t>(rp.n_kv_heads) * rp.head_dim;
      const auto q = rng.floats(n * qd), k = rng.floats(n * kvd), v = rng.floats(n * kvd);
      std::vector<int32_t> pos(n), slots(n);
      for (int64_t i = 0; i < n; ++i) {
        pos[i] = static_cast<int32_t>(rng.below(4000));
        slots[i] = static_cast<int32_t>((i * 7 + 3) % 64);  // distinct for n <= 64
      }
      const int64_t cache = 64 * kvd;
      RopeParams p;
      p.style = rp.style;
      p.n_rot = rp.n_rot;
      p.freq_base = 10000;
      Buf dpos(b, pos), dslots(b, slots), dv(b, v);
      Buf q1(b, q), k1(b, k), kc1(b, cache * 4), vc1(b, cache * 4);
      Buf q2(b, q), k2(b, k), kc2(b, cache * 4), vc2(b, cache * 4);
      const std::string suffix = " h" + std::to_string(rp.n_heads) + "/" + std::to_string(rp.n_kv_heads) + " hd" +
                                 std::to_string(rp.head_dim) + " rot" + std::to_string(rp.n_rot) +
                                 (rp.style == RopeStyle::kNeox ? " neox" : " normal") + " n=" + std::to_string(n);
      // F16 caches (on copies of q and k): the fused launch writes the separate ops' halves.
      {
        Buf qh1(b, q), kh1(b, k), qh2(b, q), kh2(b, k);
        Buf hk1(b, cache * 2), hv1(b, cache * 2), hk2(b, cache * 2), hv2(b, cache * 2);
        b.rope_store_kv(qh1.as(), kh1.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                        dslots.as<int32_t>(), KvLayer{hk1.as(), hv1.as(), DType::kF16});
        b.set_fuse_decode(false);
        b.rope_store_kv(qh2.as(), kh2.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                        dslots.as<int32_t>(), KvLayer{hk2.as(), hv2.as(), DType::kF16});
        b.set_fuse_decode(true);
        expect("determinism/fused-rope-store-f16-bits" + suffix,
               hk1.read<uint16_t>(cache) == hk2.read<uint16_t>(cache) &&
                   hv1.read<uint16_t>(cache) == hv2.read<uint16_t>(cache),
               "the F16 cache differs from rope, rope, store_kv's");
      }
      b.rope_store_kv(q1.as(), k1.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                      dslots.as<int32_t>(), KvLayer{kc1.as(), vc1.as(), DType::kF32});
      b.set_fuse_decode(false);
      b.rope_store_kv(q2.as(), k2.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                      dslots.as<int32_t>(), KvLayer{kc2.as(), vc2.as(), DType::kF32});
      b.set_fuse_decode(true);
      bool same = true;
      for (auto* pair : {&q1, &k1, &kc1, &vc1}) {
        const Buf& other = pair == &q1 ? q2 : pair == &k1 ? k2 : pair == &kc1 ? kc2 : vc2;
        const size_t count = pair == &q1 ? n * qd : pair == &k1 ? n * kvd : cache;
        same = same && same_bits(pair->read(count).data(), other.read(count).data(), count);
      }
      expect("determinism/fused-rope-store-bits" + suffix, same, "differs from rope, rope, store_kv");
      // And the reference: ref::rope on the host copies, then the cache rows.
      std::vector<float> rq = q, rk = k;
      ds::ref::rope(rq.data(), n, rp.n_heads, rp.head_dim, pos.data(), p);
      ds::ref::rope(rk.data(), n, rp.n_kv_heads, rp.head_dim, pos.data(), p);
      compare("fused-rope-store/q" + suffix, q1.read(n * qd), rq, 1e-6, 1e-5);
      const auto kc = kc1.read(cache), vc = vc1.read(cache);
      std::vector<float> gk, gv, wk, wv;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < kvd; ++c) {
          gk.push_back(kc[slots[i] * kvd + c]);
          gv.push_back(vc[slots[i] * kvd + c]);
          wk.push_back(rk[i * kvd + c]);
          wv.push_back(v[i * kvd + c]);
        }
      compare("fused-rope-store/k-cache" + suffix, gk, wk, 1e-6, 1e-5);
      compare("fused-rope-store/v-cache" + suffix, gv, wv, 0, 0);
    }
  }
  // matmul_qkv_rope_store_kv (decode: Q/K/V GEMV, RoPE and the cache write in one launch):
  // every output (q, k, v, both caches) bit for bit as matmul_qkv then rope_store_kv, for
  // both styles, partial rotation, GQA, biases (qwen2), F32 and F16 caches, the GEMV's n range,
  // split Q8_0 rows; and where it does not apply (n past the GEMV) the same default path.
  {
    struct QR { int n_heads, n_kv_heads, head_dim, n_rot; RopeStyle style; int64_t cols; DType t; bool bias; };
    const std::vector<QR> qrs = {
        {4, 2, 16, 16, RopeStyle::kNormal, 64, DType::kF32, false},
        {4, 4, 32, 32, RopeStyle::kNeox, 96, DType::kF16, true},
        {8, 2, 64, 64, RopeStyle::kNormal, 128, DType::kQ8_0, false},
        {6, 2, 24, 16, RopeStyle::kNeox, 64, DType::kQ8_0, true},
        {6, 3, 24, 8, RopeStyle::kNormal, 256, DType::kQ4_K, false},
        {4, 1, 64, 64, RopeStyle::kNeox, 512, DType::kBF16, false},
    };
    for (const QR& c : qrs) {
      const int64_t qd = static_cast<int64_t>(c.n_heads) * c.head_dim, kvd = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
      const int64_t max_n = 12, cache_rows = 64;
      const auto x = rng.floats(max_n * c.cols);
      const int64_t rows[3] = {qd, kvd, kvd};
      std::vector<std::vector<uint8_t>> hw;
      std::vector<Buf> dw, db;
      WeightRef w[3];
      for (int m = 0; m < 3; ++m) {
        hw.push_back(make_weights(rng, c.t, rows[m], c.cols));
        dw.emplace_back(b, hw[m].size());
        w[m] = b.upload_weight(WeightRef{c.t, hw[m].data(), rows[m], c.cols}, dw[m].as<void>());  // Q8_0: split rows
        db.emplace_back(b, rng.floats(rows[m]));
      }
      std::vector<int32_t> pos(max_n), slots(max_n);
      for (int64_t i = 0; i < max_n; ++i) {
        pos[i] = static_cast<int32_t>(rng.below(4000));
        slots[i] = static_cast<int32_t>((i * 11 + 5) % cache_rows);
      }
      Buf dx(b, x), dpos(b, pos), dslots(b, slots);
      RopeParams p;
      p.style = c.style;
      p.n_rot = c.n_rot;
      p.freq_base = 10000;
      const std::string tag = std::string(" ") + ds::dtype_name(c.t) + " h" + std::to_string(c.n_heads) + "/" +
                              std::to_string(c.n_kv_heads) + " hd" + std::to_string(c.head_dim) + " rot" +
                              std::to_string(c.n_rot) + (c.style == RopeStyle::kNeox ? " neox" : " normal") +
                              (c.bias ? " bias" : "");
      for (DType kvt : {DType::kF32, DType::kF16}) {
        const size_t eb = ds::kv_elem_bytes(kvt);
        for (int64_t n : {1, 2, 5, 8, 12}) {
          std::vector<uint8_t> outs[2][5];
          for (int fused = 0; fused < 2; ++fused) {
            Buf q(b, max_n * qd * 4), k(b, max_n * kvd * 4), v(b, max_n * kvd * 4);
            Buf kc(b, cache_rows * kvd * eb), vc(b, cache_rows * kvd * eb);
            const ds::Backend::RopeStore rs{c.n_heads, c.n_kv_heads, c.head_dim, dpos.as<int32_t>(), p, dslots.as<int32_t>(),
                                        KvLayer{kc.as(), vc.as(), kvt}};
            const float* bq = c.bias ? db[0].as() : nullptr;
            const float* bk = c.bias ? db[1].as() : nullptr;
            const float* bv = c.bias ? db[2].as() : nullptr;
            if (fused) {
              b.matmul_qkv_rope_store_kv(w[0], w[1], w[2], bq, bk, bv, dx.as(), n, q.as(), k.as(), v.as(), rs);
            } else {
              b.matmul_qkv(w[0], w[1], w[2], bq, bk, bv, dx.as(), n, q.as(), k.as(), v.as());
              b.rope_store_kv(q.as(), k.as(), v.as(), n, c.n_heads, c.n_kv_heads, c.head_dim, dpos.as<int32_t>(), p,
                              dslots.as<int32_t>(), rs.cache);
            }
            outs[fused][0] = q.read<uint8_t>(n * qd * 4);
            outs[fused][1] = k.read<uint8_t>(n * kvd * 4);
            outs[fused][2] = v.read<uint8_t>(n * kvd * 4);
            outs[fused][3] = kc.read<uint8_t>(cache_rows * kvd * eb);
            outs[fused][4] = vc.read<uint8_t>(cache_rows * kvd * eb);
          }
          bool same = true;
          for (int o = 0; o < 5; ++o) same = same && outs[0][o] == outs[1][o];
          expect("determinism/fused-qkv-rope-bits" + tag + " kv " + ds::dtype_name(kvt) + " n=" + std::to_string(n), same,
                 "differs from matmul_qkv + rope_store_kv");
        }
      }
    }
  }
  require_ok(b, "fused residual / rope");
}

// sample_candidates: penalties, NaN -> -inf, the m best in the sampler's order and the
// softmax sums, against ref::sample_candidates on the same rows. Rows carry ties (values
// rounded to a coarse grid), NaN, +-0, +-inf, and penalty entries. The penalized logits and
// the candidate words must be bit-identical; the sums (another summation order) within 1e-12.
void check_sample(CudaBackend& b, Rng& rng, bool quick) {
  std::vector<int64_t> vocabs = {300, 32000};
  if (!quick) vocabs.push_back(151936);
  for (int64_t V : vocabs) {
    const int ms[] = {1, 40, ds::kSampleMaxCandidates, 7};
    const int n_rows = 4;
    std::vector<float> logits(static_cast<size_t>(n_rows) * V);
    for (int r = 0; r < n_rows; ++r) {
      float* l = logits.data() + r * V;
      for (int64_t i = 0; i < V; ++i) {
        float x = rng.uniform(-8, 8);
        if (r % 2 == 1) x = std::round(x * 2) / 2;  // many ties
        l[i] = x;
      }
      l[rng.below(static_cast<int>(V))] = NAN;
      l[rng.below(static_cast<int>(V))] = -0.0f;
      l[rng.below(static_cast<int>(V))] = 0.0f;
      l[rng.below(static_cast<int>(V))] = -INFINITY;
      if (r == 3) l[rng.below(static_cast<int>(V))] = INFINITY;
    }
    std::vector<ds::SampleRow> rows(n_rows);
    std::vector<int32_t> pen_tokens, pen_counts;
    int64_t words = 0;
    for (int r = 0; r < n_rows; ++r) {
      ds::SampleRow& row = rows[r];
      row.m = static_cast<int32_t>(std::min<int64_t>(ms[r], V));
      row.out = words;
      words += 2 + row.m;
      row.want_sums = r != 0;
      row.temperature = r == 3 ? 1.0f : 0.7f;
      row.repeat_penalty = r == 2 ? 1.0f : 1.3f;
      row.frequency_penalty = r == 1 ? 0.25f : 0.0f;
      row.presence_penalty = r >= 2 ? 0.5f : 0.0f;
      row.pen_begin = static_cast<int32_t>(pen_tokens.size());
      for (int i = 0; i < 64 && i < V; ++i) {  // distinct ids
        pen_tokens.push_back(static_cast<int32_t>((i * 37 + r) % V));
        pen_counts.push_back(1 + rng.below(5));
      }
      // 64 * 37 < 32000 keeps them distinct; for V = 300 drop repeats.
      std::vector<bool> seen(V, false);
      size_t keep = row.pen_begin;
      for (size_t i = row.pen_begin; i < pen_tokens.size(); ++i)
        if (!seen[pen_tokens[i]]) {
          seen[pen_tokens[i]] = true;
          pen_tokens[keep] = pen_tokens[i];
          pen_counts[keep++] = pen_counts[i];
        }
      pen_tokens.resize(keep);
      pen_counts.resize(keep);
      row.pen_count = static_cast<int32_t>(keep) - row.pen_begin;
    }
    // Reference on host copies.
    std::vector<float> ref_logits = logits;
    std::vector<uint64_t> ref_out(words);
    ds::SampleArgs ra;
    ra.logits = ref_logits.data();
    ra.n_rows = n_rows;
    ra.n_vocab = V;
    ra.rows = rows.data();
    ra.pen_tokens = pen_tokens.data();
    ra.pen_counts = pen_counts.data();
    ra.out = ref_out.data();
    ds::ref::sample_candidates(ra);

    Buf dl(b, logits), drows(b, rows), dpt(b, pen_tokens), dpc(b, pen_counts), dout(b, words * 8);
    ds::SampleArgs a = ra;
    a.logits = dl.as();
    a.rows = drows.as<ds::SampleRow>();
    a.pen_tokens = dpt.as<int32_t>();
    a.pen_counts = dpc.as<int32_t>();
    a.out = dout.as<uint64_t>();
    b.sample_candidates(a);
    require_ok(b, "sample_candidates");
    const std::vector<uint64_t> got = dout.read<uint64_t>(words);
    const std::vector<float> got_logits = dl.read<float>(logits.size());
    const std::string vs = " V=" + std::to_string(V);
    expect("sample_candidates penalized logits" + vs, same_bits(got_logits.data(), ref_logits.data(), logits.size()));
    for (int r = 0; r < n_rows; ++r) {
      const int64_t o = rows[r].out;
      int64_t first_bad = -1;
      for (int j = 0; j < rows[r].m && first_bad < 0; ++j)
        if (got[o + 2 + j] != ref_out[o + 2 + j]) first_bad = j;
      std::string detail;
      if (first_bad >= 0) {
        const uint64_t g = got[o + 2 + first_bad], w = ref_out[o + 2 + first_bad];
        detail = "candidate " + std::to_string(first_bad) + ": got id " + std::to_string(ds::sample_id(g)) + " (" +
                 std::to_string(ds::sample_logit(g)) + "), want id " + std::to_string(ds::sample_id(w)) + " (" +
                 std::to_string(ds::sample_logit(w)) + ")";
      }
      expect("sample_candidates m=" + std::to_string(rows[r].m) + vs + " row " + std::to_string(r), first_bad < 0, detail);
      if (rows[r].want_sums) {
        double gs[2], ws[2];
        std::memcpy(gs, &got[o], 16);
        std::memcpy(ws, &ref_out[o], 16);
        auto rel = [](double g, double w) { return std::isnan(g) && std::isnan(w) ? 0.0 : std::fabs(g - w) / w; };
        const double e0 = rel(gs[0], ws[0]), e1 = rel(gs[1], ws[1]);  // +inf in the row: both NaN
        const bool ok = e0 <= 1e-12 && e1 <= 1e-12;
        record("sample_candidates sums" + vs + " row " + std::to_string(r), ok, std::max(e0 * ws[0], e1 * ws[1]),
               std::max(e0, e1), "1e-12*|ref|", ok ? "" : "  s1 " + std::to_string(gs[0]) + " vs " + std::to_string(ws[0]));
      }
    }
  }
}

// A decode layer's chain of ops without attention (rmsnorm, Q/K/V, O + residual, rmsnorm,
// gate/up + SwiGLU, down + residual), `layers` times over one residual stream x, on a backend
// that does not wait between ops: each GEMV reads what the kernel before it wrote, which is
// what programmatic dependent launch (CudaBackendOptions::pdl) must get right.
struct DecodeChain {
  int64_t dim, kv, ff;
  DType t;
  std::vector<Buf> w;  // per layer: q, k, v, o, gate, up, down
  Buf norm, x, xn, q, k, v, g, u, tmp;
  std::vector<WeightRef> refs;  // as uploaded (split: upload_weight's layout)
  // split: the weights uploaded as the engine uploads them (Q8_0: split rows).
  DecodeChain(CudaBackend& b, Rng& rng, DType type, int64_t d, int64_t kvd, int64_t f, int layers, int n,
              bool split = false)
      : dim(d), kv(kvd), ff(f), t(type), norm(b, rng.floats(d, 0.5f, 1.5f)), x(b, rng.floats(n * d)),
        xn(b, n * d * 4), q(b, n * d * 4), k(b, n * kvd * 4), v(b, n * kvd * 4), g(b, n * f * 4), u(b, n * f * 4),
        tmp(b, n * d * 4) {
    for (int l = 0; l < layers; ++l) {
      const int64_t rows[7] = {d, kvd, kvd, d, f, f, d}, cols[7] = {d, d, d, d, d, d, f};
      for (int m = 0; m < 7; ++m) {
        const auto host = make_weights(rng, type, rows[m], cols[m]);
        w.emplace_back(b, host.size());
        const WeightRef h{type, host.data(), rows[m], cols[m]};
        if (split) {
          refs.push_back(b.upload_weight(h, w.back().as<void>()));
        } else {
          b.upload(w.back().as<void>(), host.data(), host.size());
          refs.push_back(WeightRef{type, w.back().as<void>(), rows[m], cols[m]});
        }
      }
    }
  }
  WeightRef ref(int l, int m, int64_t /*rows*/, int64_t /*cols*/) const { return refs[7 * l + m]; }
  // steps layers, cycling over the distinct ones (0: each once). fused_norm: each residual add
  // and the next norm in one op (matmul_add_rmsnorm), as the engine runs them.
  void run(CudaBackend& b, int n, int steps = 0, bool fused_norm = false) {
    const int distinct = static_cast<int>(w.size() / 7);
    if (fused_norm) b.rmsnorm(x.as(), norm.as(), n, dim, 1e-5f, xn.as());
    for (int l = 0; l < (steps ? steps : distinct); ++l) {
      const int li = l % distinct;
      if (!fused_norm) b.rmsnorm(x.as(), norm.as(), n, dim, 1e-5f, xn.as());
      b.matmul_qkv(ref(li, 0, dim, dim), ref(li, 1, kv, dim), ref(li, 2, kv, dim), nullptr, nullptr, nullptr, xn.as(), n,
                   q.as(), k.as(), v.as());
      if (fused_norm) {
        b.matmul_add_rmsnorm(ref(li, 3, dim, dim), q.as(), n, x.as(), tmp.as(), norm.as(), 1e-5f, xn.as());
      } else {
        b.matmul_add(ref(li, 3, dim, dim), q.as(), n, x.as(), tmp.as());
        b.rmsnorm(x.as(), norm.as(), n, dim, 1e-5f, xn.as());
      }
      b.matmul_swiglu(ref(li, 4, ff, dim), ref(li, 5, ff, dim), xn.as(), n, g.as(), u.as());
      if (fused_norm) b.matmul_add_rmsnorm(ref(li, 6, dim, ff), g.as(), n, x.as(), tmp.as(), norm.as(), 1e-5f, xn.as());
      else b.matmul_add(ref(li, 6, dim, ff), g.as(), n, x.as(), tmp.as());
    }
  }
};

void check_pdl(int device, Rng& rng) {
  std::string error;
  CudaBackendOptions o;
  o.device = device;
  o.record_graphs = false;
  auto b = CudaBackend::create(o, &error);
  if (!b) return record("pdl/backend", false, 0, 0, "-", "  " + error);
  for (DType t : {DType::kQ8_0, DType::kF16}) {
    for (int n : {1, 3}) {
      DecodeChain c(*b, rng, t, 512, 128, 1408, 6, n, /*split=*/true);
      const auto x0 = c.x.read(n * c.dim);
      std::vector<float> out[4];  // [pdl + 2 fused_norm]
      for (int v = 0; v < 4; ++v) {
        b->upload(c.x.as(), x0.data(), x0.size() * 4);
        b->set_pdl(v % 2 == 1);
        c.run(*b, n, 0, v >= 2);
        out[v] = c.x.read(n * c.dim);
      }
      b->set_pdl(true);
      require_ok(*b, "pdl chain");
      const std::string tag = std::string(ds::dtype_name(t)) + " n=" + std::to_string(n);
      expect("determinism/pdl-chain " + tag, same_bits(out[0].data(), out[1].data(), out[0].size()),
             "programmatic dependent launch changed the result");
      // The norms fused into the residual adds (with and without PDL): the same chain, bit for bit.
      expect("determinism/pdl-chain-fused-norm " + tag,
             same_bits(out[0].data(), out[2].data(), out[0].size()) && same_bits(out[0].data(), out[3].data(), out[0].size()),
             "matmul_add_rmsnorm changed the chain's result");
    }
  }
}

// The grid-wide barrier of the persistent decode kernel (common.cuh's grid_sync): every block
// writes, the grid meets, every block must read every block's write (64 rounds), on grids of
// 1, 2 and 3 blocks (the emulation runs them all at once) or 1 and 3 an SM on a GPU.
void check_grid_sync(CudaBackend& b) {
#ifdef DS_CUDA_EMULATION
  const std::vector<int> per_sm = {1, 2, 3};
#else
  const std::vector<int> per_sm = {1, 3};
#endif
  for (int bps : per_sm) {
    const int blocks = ds::cuda::grid_sync_blocks(bps);
    if (blocks <= 0) return record("grid_sync/cooperative", false, 0, 0, "-", "  the device cannot launch cooperatively");
    auto* mem = static_cast<unsigned*>(b.alloc((blocks + 2) * sizeof(unsigned)));  // bar, errors, data
    const int rounds = 64;
    const cudaError_t e = ds::cuda::grid_sync_check(blocks, rounds, mem, mem + 2, mem + 1,
                                                    static_cast<cudaStream_t>(b.stream()));
    unsigned out[2] = {0, 0};
    b.download(out, mem, sizeof out);
    require_ok(b, "grid_sync");
    b.free(mem);
    // After 2 * rounds barriers the counter's top bit is back where it started (0), the rest too.
    expect("grid_sync/visibility grid=" + std::to_string(blocks), e == cudaSuccess && out[1] == 0 && out[0] == 0,
           std::string(cudaGetErrorString(e)) + ", " + std::to_string(out[1]) + " wrong sums, counter " +
               std::to_string(out[0]));
  }
}

void check_recording(int device, Rng& rng) {
#ifdef DS_CUDA_EMULATION
  std::printf("SKIP graph: the CPU emulation records nothing (CudaBackend::record_begin refuses)\n");
  return;
#endif
  std::string error;
  CudaBackendOptions o;
  o.device = device;
  auto bp = CudaBackend::create(o, &error);
  if (!bp) {
    expect("graph/create", false, error);
    return;
  }
  CudaBackend& b = *bp;
  const int64_t rows = 384, cols = 512;
  const auto w = make_weights(rng, DType::kQ8_0, rows, cols);
  const auto norm = rng.floats(cols, 0.5, 1.5);
  Buf dw(b, w), dn(b, norm), dx(b, 4 * cols * 4), dxn(b, 4 * cols * 4), dy(b, 64 * rows * 4), dacc(b, 4 * rows * 4);
  const WeightRef gw{DType::kQ8_0, dw.as<void>(), rows, cols};
  auto ops = [&](int n) {
    b.rmsnorm(dx.as(), dn.as(), n, cols, 1e-5f, dxn.as());
    b.matmul(gw, dxn.as(), n, dy.as());
    b.add(dacc.as(), dy.as(), n * rows);
  };
  bool same = true;
  for (int step = 0; step < 3; ++step) {
    const auto x = rng.floats(4 * cols);
    const auto acc0 = rng.floats(4 * rows);
    b.upload(dx.as(), x.data(), x.size() * 4);
    b.upload(dacc.as(), acc0.data(), acc0.size() * 4);
    ops(4);
    const auto eager = dacc.read(4 * rows);
    b.upload(dacc.as(), acc0.data(), acc0.size() * 4);
    const uint64_t key = 4;
    if (!b.replay(key)) {
      if (!b.record_begin(key)) {
        expect("graph/record-begin", false, "record_begin refused");
        return;
      }
      ops(4);
      expect("graph/record-end", b.record_end(), "recording failed: " + b.last_error());
      expect("graph/replay-after-record", b.replay(key), "no replay");
    }
    same = same && same_bits(dacc.read(4 * rows).data(), eager.data(), 4 * rows);
  }
  expect("graph/replay-same-bits", same && b.replays() == 3 && b.recordings() == 1,
         "replayed ops differ from eager ops, or not every step replayed");
  // The fused decode ops (QKV with biases, gate/up + SwiGLU) record and replay as well.
  {
    const int64_t qr = 256, kr = 64, ff = 320, n = 2;
    const auto wq = make_weights(rng, DType::kQ8_0, qr, cols), wk = make_weights(rng, DType::kQ8_0, kr, cols),
               wv = make_weights(rng, DType::kQ8_0, kr, cols), wg = make_weights(rng, DType::kQ8_0, ff, cols),
               wu = make_weights(rng, DType::kQ8_0, ff, cols);
    Buf dwq(b, wq), dwk(b, wk), dwv(b, wv), dwg(b, wg), dwu(b, wu), dbq(b, rng.floats(qr)), dbk(b, rng.floats(kr)),
        dbv(b, rng.floats(kr)), dq(b, n * qr * 4), dk(b, n * kr * 4), dv(b, n * kr * 4), dout(b, n * ff * 4),
        dup(b, n * ff * 4);
    const WeightRef q{DType::kQ8_0, dwq.as<void>(), qr, cols}, k{DType::kQ8_0, dwk.as<void>(), kr, cols},
        v{DType::kQ8_0, dwv.as<void>(), kr, cols}, g{DType::kQ8_0, dwg.as<void>(), ff, cols},
        u{DType::kQ8_0, dwu.as<void>(), ff, cols};
    auto fused = [&] {
      b.matmul_qkv(q, k, v, dbq.as(), dbk.as(), dbv.as(), dxn.as(), n, dq.as(), dk.as(), dv.as());
      b.matmul_swiglu(g, u, dxn.as(), n, dout.as(), dup.as());
    };
    auto outputs = [&] {
      auto all = dq.read(n * qr);
      for (const auto& part : {dk.read(n * kr), dv.read(n * kr), dout.read(n * ff)}) all.insert(all.end(), part.begin(), part.end());
      return all;
    };
    const int64_t replays0 = b.replays();
    bool fused_same = true;
    for (int step = 0; step < 2; ++step) {
      const auto xn = rng.floats(n * cols);
      b.upload(dxn.as(), xn.data(), xn.size() * 4);
      fused();
      const auto eager = outputs();
      const std::vector<float> zeros(n * ff, 0.0f);
      b.upload(dout.as(), zeros.data(), zeros.size() * 4);
      const uint64_t key = 5;
      if (!b.replay(key)) {
        if (!b.record_begin(key)) {
          expect("graph/fused-record-begin", false, "record_begin refused");
          break;
        }
        fused();
        expect("graph/fused-record-end", b.record_end(), "recording failed: " + b.last_error());
        expect("graph/fused-replay-after-record", b.replay(key), "no replay");
      }
      const auto replayed = outputs();
      fused_same = fused_same && same_bits(replayed.data(), eager.data(), eager.size());
    }
    expect("graph/fused-replay-same-bits", fused_same && b.replays() == replays0 + 2,
           "replayed fused ops differ from eager ones, or not every step replayed");
  }
  // Split-K attention records once and replays while each token's n_kv changes on the device
  // (the grid is fixed by max_kv): every replay gives the eager bits.
  {
    const int heads = 4, kv_heads = 2, hd = 64, bs = 16, max_kv = 1024, n = 2;
    const int blocks = max_kv / bs;
    std::vector<int32_t> table(n * blocks);
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(table.size() - 1 - i);
    Buf dtable(b, table), dkc(b, rng.floats(table.size() * bs * kv_heads * hd)),
        dvc(b, rng.floats(table.size() * bs * kv_heads * hd)), dq(b, rng.floats(n * heads * hd)),
        dout(b, n * heads * hd * 4), dtok(b, n * sizeof(AttentionToken));
    const size_t ws_floats = b.attention_workspace_floats(n, heads, hd, max_kv);
    Buf ws(b, ws_floats * 4);
    AttentionArgs a = attention_args(dq, dout, dkc, dvc, dtok, n, heads, kv_heads, hd, bs);  // scale 1/8
    a.max_kv = max_kv;
    a.workspace = ws.as();
    a.workspace_floats = ws_floats;
    const int64_t replays0 = b.replays();
    bool att_same = true;
    const int n_kvs[3][2] = {{5, 300}, {700, 1}, {1024, 257}};
    for (const auto& step : n_kvs) {
      const std::vector<AttentionToken> toks = {{dtable.as<int32_t>(), step[0]}, {dtable.as<int32_t>() + blocks, step[1]}};
      b.upload(dtok.as<void>(), toks.data(), toks.size() * sizeof(AttentionToken));
      b.attention(a);
      const auto eager = dout.read(n * heads * hd);
      const std::vector<float> zeros(eager.size(), 0.0f);
      b.upload(dout.as(), zeros.data(), zeros.size() * 4);
      const uint64_t key = 6;
      if (!b.replay(key)) {
        if (!b.record_begin(key)) {
          expect("graph/attention-record-begin", false, "record_begin refused");
          break;
        }
        b.attention(a);
        expect("graph/attention-record-end", b.record_end(), "recording failed: " + b.last_error());
        expect("graph/attention-replay-after-record", b.replay(key), "no replay");
      }
      att_same = att_same && same_bits(dout.read(eager.size()).data(), eager.data(), eager.size());
    }
    expect("graph/attention-v2-replay-same-bits", att_same && b.replays() == replays0 + 3,
           "replayed split-K attention differs from eager, or not every step replayed");
  }
  // The cuBLAS path (n = 64) and the tensor-core kernel (n = 16) record too. A recording that
  // needs the scratch buffer to grow fails and runs nothing, but only for now: once an eager run
  // grew it, the same key records and replays the eager bits.
  for (int n : {64, 16}) {
    Buf dxn_big(b, rng.floats(n * cols));
    const uint64_t key = 90 + n;
    const std::string sn = " n=" + std::to_string(n) + (n > 32 ? " (cuBLAS)" : " (tensor cores)");
    b.matmul(gw, dxn_big.as(), n, dy.as());
    const auto eager = dy.read(n * rows);
    const std::vector<float> zeros(eager.size(), 0.0f);
    b.upload(dy.as(), zeros.data(), zeros.size() * 4);
    bool recorded = b.record_begin(key);
    b.matmul(gw, dxn_big.as(), n, dy.as());
    recorded = recorded && b.record_end() && b.replay(key);
    expect("graph/matmul-records" + sn, recorded && same_bits(dy.read(n * rows).data(), eager.data(), eager.size()) && b.ok(),
           "the matmul did not record, or its replay differs from the eager run: " + b.last_error());
  }
  {  // More scratch needed inside a recording (a larger n): it fails and runs nothing, for now.
    const int n = 32;
    const size_t scratch0 = b.scratch_bytes();
    b.forget_recordings();
    Buf big_w(b, make_weights(rng, DType::kQ8_0, 2 * rows, 8 * cols)), big_x(b, rng.floats(n * 8 * cols)),
        big_y(b, 2 * rows * n * 4);
    const WeightRef bw{DType::kQ8_0, big_w.as<void>(), 2 * rows, 8 * cols};
    const std::vector<float> zeros(2 * rows * n, 0.0f);
    b.upload(big_y.as(), zeros.data(), zeros.size() * 4);
    bool failed = b.record_begin(98);
    b.matmul(bw, big_x.as(), n, big_y.as());
    failed = failed && !b.record_end() && b.scratch_bytes() == scratch0;
    const bool ran_nothing = same_bits(big_y.read(zeros.size()).data(), zeros.data(), zeros.size());
    b.matmul(bw, big_x.as(), n, big_y.as());  // eager: grows the scratch
    const auto eager = big_y.read(zeros.size());
    b.upload(big_y.as(), zeros.data(), zeros.size() * 4);
    bool again = b.scratch_bytes() > scratch0 && b.record_begin(98);
    b.matmul(bw, big_x.as(), n, big_y.as());
    again = again && b.record_end() && b.replay(98);
    expect("graph/scratch-growth-retries", failed && ran_nothing && again &&
                                               same_bits(big_y.read(zeros.size()).data(), eager.data(), eager.size()),
           "a recording that needed more scratch did not fail cleanly, or the key did not record once it had grown");
  }
  // A wait inside a recording fails it for good: no second try.
  bool refused = b.record_begin(99);
  b.synchronize();
  refused = refused && !b.record_end() && !b.record_begin(99);
  expect("graph/unrecordable-fails", refused && b.ok(), "a wait inside a recording did not fail it cleanly");
  require_ok(b, "recording");
}

void check_errors(CudaBackend& b) {
  std::vector<uint8_t> host(64);
  Buf w(b, host), x(b, 64), y(b, 64);
  b.clear_error();
  b.matmul(WeightRef{DType::kQ4_1, w.as<void>(), 1, 32}, x.as(), 1, y.as());
  expect("errors/unsupported-type", !b.ok() && b.last_error().find("not supported") != std::string::npos,
         "last_error: '" + b.last_error() + "'");
  std::printf("      (message: %s)\n", b.last_error().c_str());
  b.clear_error();
  AttentionArgs a;
  a.n_tokens = 1;
  a.n_heads = a.n_kv_heads = 1;
  a.head_dim = 2048;
  a.block_size = 16;
  b.attention(a);
  expect("errors/attention-head-dim", !b.ok(), "no error for head_dim 2048");
  b.clear_error();
  void* huge = b.alloc(size_t{1} << 50);
  expect("errors/alloc-oom-returns-null", huge == nullptr && b.ok(), "alloc(1 PiB) did not give a clean nullptr");
  if (huge) b.free(huge);
  b.clear_error();
  require_ok(b, "error checks");
}

// NCCL (kernels/cuda/nccl_comm.h): one rank per visible GPU (up to 4; one rank on a
// one-GPU machine), each driven by its own thread on its own backend. Checks the three
// collectives, then a row-parallel matmul: rank r multiplies its slice of W's columns
// and an all-reduce sums the partial products into the whole y = W x, compared with
// ref::matmul (float rounding only: the sum runs in another order). Skipped (not
// failed) where the build has no NCCL.
void check_nccl(int first_device) {
  std::string version, error;
  if (!ds::nccl_available(&version)) {
    std::string why;
    ds::make_nccl_comm_group({}, &why);
    std::printf("SKIP nccl: %s\n", why.c_str());
    return;
  }
  int n_devices = 0;
  cudaGetDeviceCount(&n_devices);
  const int R = std::max(1, std::min(4, n_devices - first_device));
  std::vector<std::unique_ptr<CudaBackend>> backends;
  std::vector<CudaBackend*> raw;
  for (int r = 0; r < R; ++r) {
    CudaBackendOptions o;
    o.device = first_device + r;
    backends.push_back(CudaBackend::create(o, &error));
    if (!backends.back()) return expect("nccl/setup", false, error);
    raw.push_back(backends.back().get());
  }
  auto comms = ds::make_nccl_comm_group(raw, &error);
  expect("nccl/group " + std::to_string(R) + "ranks", comms.size() == static_cast<size_t>(R), error);
  if (comms.empty()) return;
  std::printf("      (NCCL %s, %d rank%s)\n", version.c_str(), R, R > 1 ? "s" : "");

  const int64_t rows = 300, cols = 512 * R, n = 3, cols_r = cols / R;
  Rng rng(77);
  const std::vector<float> w = rng.floats(rows * cols), x = rng.floats(n * cols);
  std::vector<float> want(n * rows);
  ds::ref::matmul(WeightRef{DType::kF32, w.data(), rows, cols}, x.data(), n, want.data());
  std::vector<std::vector<float>> reduced(R), gathered(R), bcast(R), y(R);
  std::vector<std::string> errors(R);
  std::vector<std::thread> threads;
  for (int r = 0; r < R; ++r) {
    threads.emplace_back([&, r] {
      CudaBackend& b = *backends[r];
      ds::Communicator& c = *comms[r];
      auto ok = [&](bool done) {
        if (!done && errors[r].empty()) errors[r] = c.last_error();
        return done;
      };
      // all_reduce_sum of rank-specific integers: exact.
      std::vector<float> v(1000);
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i * (r + 1));
      Buf rv(b, v);
      if (ok(c.all_reduce_sum(rv.as(), v.size()))) reduced[r] = rv.read(v.size());
      // all_gather: rank r sends 100 copies of r.
      Buf send(b, std::vector<float>(100, static_cast<float>(r))), recv(b, 100 * R * sizeof(float));
      if (ok(c.all_gather(send.as(), 100, recv.as()))) gathered[r] = recv.read(100 * R);
      // broadcast from the last rank.
      Buf bb(b, std::vector<float>(64, static_cast<float>(10 + r)));
      if (ok(c.broadcast(bb.as(), 64, R - 1))) bcast[r] = bb.read(64);
      // Row-parallel matmul: columns [r * cols_r, (r + 1) * cols_r) of W and of each x row.
      std::vector<float> w_r(rows * cols_r), x_r(n * cols_r);
      for (int64_t i = 0; i < rows; ++i) std::copy_n(&w[i * cols + r * cols_r], cols_r, &w_r[i * cols_r]);
      for (int64_t t = 0; t < n; ++t) std::copy_n(&x[t * cols + r * cols_r], cols_r, &x_r[t * cols_r]);
      Buf dw(b, w_r), dx(b, x_r), dy(b, n * rows * sizeof(float));
      b.matmul(WeightRef{DType::kF32, dw.as<void>(), rows, cols_r}, dx.as(), n, dy.as());
      if (ok(c.all_reduce_sum(dy.as(), n * rows))) y[r] = dy.read(n * rows);
      if (!b.synchronize() && errors[r].empty()) errors[r] = b.last_error();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < R; ++r) {
    const std::string rank = " rank" + std::to_string(r);
    expect("nccl/errors" + rank, errors[r].empty(), errors[r]);
    if (!errors[r].empty()) continue;
    std::vector<float> want_sum(1000), want_gather(100 * R), want_bcast(64, static_cast<float>(10 + R - 1));
    for (size_t i = 0; i < want_sum.size(); ++i) want_sum[i] = static_cast<float>(i * R * (R + 1) / 2);
    for (int q = 0; q < R; ++q) std::fill_n(&want_gather[q * 100], 100, static_cast<float>(q));
    expect("nccl/all_reduce_sum" + rank, reduced[r] == want_sum, "wrong sums");
    expect("nccl/all_gather" + rank, gathered[r] == want_gather, "wrong slots");
    expect("nccl/broadcast" + rank, bcast[r] == want_bcast, "wrong values");
    compare("nccl/row-parallel-matmul" + rank + " " + shape(rows, cols), y[r], want, 1e-4, 1e-4);
  }
  comms.clear();  // before the backends whose streams they use
}

// ---- benchmarks ---------------------------------------------------------------------

constexpr size_t kRotateBytes = size_t{256} << 20;  // > 4x L2 (50 MiB on H100): every read comes from HBM

// Average milliseconds per call of f(i) over iters calls, timed with events on stream s.
template <class F>
double time_ms(cudaStream_t s, int iters, F&& f) {
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
  return ms / iters;
}

// Decode GEMV (n = 1) reading weights from HBM: bytes of weights / time.
// split: Q8_0 uploaded as the engine uploads it (upload_weight: split rows), "q8_0s" below.
double bench_gemv(CudaBackend& b, Rng& rng, DType t, int64_t rows, int64_t cols, int version, int n, bool split = false) {
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
  const int gemv_max = b.options().gemv_max_batch;
  b.set_gemv_max_batch(std::max(n, 8));  // the GEMV whatever the type's range (gemv_limit)
  auto run = [&](int i) { b.matmul(refs[i % copies], x.as(), n, y.as()); };
  auto s = static_cast<cudaStream_t>(b.stream());
  time_ms(s, copies, run);  // warm-up
  const int iters = version == 1 ? copies : std::max(4 * copies, 200);
  const double ms = time_ms(s, iters, run);
  b.set_gemv_version(kLiveGemv);
  b.set_gemv_max_batch(gemv_max);
  require_ok(b, "gemv benchmark");
  const double gbps = bytes / (ms * 1e-3) / 1e9;
  char what[96];
  std::snprintf(what, sizeof what, "gemv%d %s%s %s n=%d", version, ds::dtype_name(t), split ? "s" : "",
                shape(rows, cols).c_str(), n);
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (weight bytes / time)\n", what, ms * 1e3, gbps);
  std::fflush(stdout);
  return gbps;
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
  const double ms = time_ms(s, std::max(4 * copies, 200), run);
  if (err != cudaSuccess) {
    std::printf("ERROR: cudaMemcpyAsync: %s\n", cudaGetErrorString(err));
    std::exit(2);
  }
  const double gbps = 2.0 * bytes / (ms * 1e-3) / 1e9;
  char what[96];
  std::snprintf(what, sizeof what, "memcpy-d2d %.1f MiB", bytes / 1048576.0);
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (read+write bytes / time; copy rate %.1f GB/s)\n", what, ms * 1e3,
              gbps, gbps / 2);
  std::fflush(stdout);
  return gbps;
}

// Decode at batch n: the tensor-core kernel against cuBLAS (F16 operands; a quantized matrix
// dequantized to F16 first) and the GEMV in launches of 8, weights rotated, each forced
// (gemv_max_batch 1, tc_gemm_every_type; batch_invariant for the GEMV): are the per-type
// GEMV ranges and the kernel's types right?
void bench_tc(CudaBackend& b, Rng& rng, DType t, int64_t rows, int64_t cols, int n) {
  const size_t bytes = ds::row_bytes(t, cols) * rows;
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes));
  const auto w = make_weights(rng, t, rows, cols);
  std::vector<Buf> ws;
  for (int i = 0; i < copies; ++i) ws.emplace_back(b, w);
  Buf x(b, rng.floats(n * cols)), y(b, n * rows * 4);
  auto s = static_cast<cudaStream_t>(b.stream());
  const int gemv_max = b.options().gemv_max_batch;
  double us[3] = {0, 0, 0};
  b.set_tc_gemm_every_type(true);
  for (int path = 0; path < 3; ++path) {  // 0: tensor-core kernel, 1: cuBLAS, 2: GEMV
    b.set_tc_gemm(path == 0);
    b.set_batch_invariant(path == 2);
    b.set_gemv_max_batch(path == 2 ? gemv_max : 1);
    auto run = [&](int i) { b.matmul(WeightRef{t, ws[i % copies].as<void>(), rows, cols}, x.as(), n, y.as()); };
    time_ms(s, copies, run);
    us[path] = 1e3 * time_ms(s, std::max(4 * copies, 100), run);
  }
  b.set_tc_gemm(true);
  b.set_tc_gemm_every_type(false);
  b.set_batch_invariant(false);
  b.set_gemv_max_batch(gemv_max);
  require_ok(b, "tensor-core benchmark");
  char what[96];
  std::snprintf(what, sizeof what, "matmul-tc %s %s n=%d", ds::dtype_name(t), shape(rows, cols).c_str(), n);
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
// five distinct layers cycled), with and without programmatic dependent launch, eager.
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
  b.set_pdl(true);
  require_ok(b, "pdl benchmark");
  size_t bytes = 0;
  for (int64_t rows_cols : {2048 * 2048, 256 * 2048, 256 * 2048, 2048 * 2048, 5632 * 2048, 5632 * 2048, 2048 * 5632})
    bytes += ds::row_bytes(t, 2048) * (rows_cols / 2048);
  bytes *= 22;
  std::printf("BENCH %-36s %9.2f us  %8.1f GB/s (without PDL: %.2f us, %.1f GB/s; 22 layers, no attention, eager)\n",
              (std::string("decode layers n=1 pdl ") + ds::dtype_name(t) + (split ? "s" : "") + (fused_norm ? " +norm" : ""))
                  .c_str(),
              ms[1] * 1e3,
              bytes / (ms[1] * 1e-3) / 1e9, ms[0] * 1e3, bytes / (ms[0] * 1e-3) / 1e9);
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
      gemv_bw.emplace_back(std::string(ds::dtype_name(t)) + " " + shape(s.rows, s.cols),
                           bench_gemv(b, rng, t, s.rows, s.cols, kLiveGemv, 1));
      if (t == DType::kQ8_0)  // split rows, as the engine uploads Q8_0
        gemv_bw.emplace_back("q8_0s " + shape(s.rows, s.cols), bench_gemv(b, rng, t, s.rows, s.cols, kLiveGemv, 1, true));
    }
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
  bench_gemv(b, rng, DType::kQ8_0, 5632, 2048, 1, 1);  // v1, for comparison
  for (DType t : {DType::kQ8_0, DType::kF16})
    for (int n : {1, 8}) bench_fused(b, rng, t, n);
  const double copy_bw = bench_memcpy(b, ds::row_bytes(DType::kF16, 2048) * 5632);
  bench_memcpy(b, ds::row_bytes(DType::kF16, 2048) * 2048);
  std::printf("\nGEMV v%d (n=1) bandwidth vs device-to-device memcpy (%.1f GB/s read+write):\n", kLiveGemv, copy_bw);
  for (const auto& [name, bw] : gemv_bw)
    std::printf("BENCH-RATIO gemv%d %-20s %8.1f GB/s = %5.1f%% of memcpy\n", kLiveGemv, name.c_str(), bw,
                100.0 * bw / copy_bw);
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

void print_summary() {
  std::printf("\n== summary: %d checks, %d failed ==\n", g_checks, g_failed);
  std::printf("%-28s %7s %5s %11s %11s  %s\n", "kernel", "checks", "fail", "max_abs", "max_rel", "tolerance");
  for (const auto& [name, g] : g_groups)
    std::printf("%-28s %7d %5d %11.3e %11.3e  %s%s\n", name.c_str(), g.checks, g.failed, g.max_abs, g.max_rel,
                g.tol.c_str(), g.failed ? "   <== FAIL" : "");
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line: a run cut short by its timeout keeps what it printed
  int device = 0;
  bool bench = true, quick = false;
  std::string only;  // ",a,b,": run only these check groups (and no benchmarks)
  const char* kGroups =
      "errors,get_rows,elementwise,rmsnorm,rope,attention,matmul,matmul_tc,fused,q8_0_split,fused_residual_rope,sample,"
      "recording,pdl,nccl,grid_sync";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--device") && i + 1 < argc) {
      device = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--no-bench")) {
      bench = false;
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) {
      only = std::string(",") + argv[++i] + ",";
      bench = false;
    } else {
      std::fprintf(stderr, "usage: %s [--device N] [--no-bench] [--quick] [--only GROUP,...]\n  groups: %s\n", argv[0],
                   kGroups);
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  auto want = [&](const char* group) { return only.empty() || only.find(std::string(",") + group + ",") != std::string::npos; };
  for (size_t a = 1; a < only.size();) {  // every named group exists
    const size_t e = only.find(',', a);
    const std::string g = only.substr(a, e - a);
    if (!g.empty() && (std::string(",") + kGroups + ",").find("," + g + ",") == std::string::npos) {
      std::fprintf(stderr, "unknown check group '%s' (groups: %s)\n", g.c_str(), kGroups);
      return 2;
    }
    a = e + 1;
  }
  std::string error;
  CudaBackendOptions opts;
  opts.device = device;
  opts.sync_each_op = true;  // validation: a fault is reported by the op that caused it
  opts.gemv_max_batch = 8;   // the checks' GEMV range for every type (check_matmul_tc: the per-type default)
  auto b = CudaBackend::create(opts, &error);
  CudaBackendOptions tf32_opts = opts;
  tf32_opts.allow_tf32 = true;
  tf32_opts.gemm_half = false;  // the TF32 check is of the F32 path
  auto tf32 = b ? CudaBackend::create(tf32_opts, &error) : nullptr;
  if (!b || !tf32) {
    std::printf("ERROR: %s\nRESULT: FAIL (no usable GPU)\n", error.c_str());
    return 2;
  }
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  std::printf("gpu_kernel_check: %s, CUDA runtime %d, driver %d\n\n", b->device_description().c_str(), runtime, driver);

  Rng rng(20240601);
  if (want("errors")) check_errors(*b);
  if (want("get_rows")) check_get_rows(*b, rng);
  if (want("elementwise")) check_elementwise(*b, rng);
  if (want("rmsnorm")) check_rmsnorm(*b, rng);
  if (want("rope")) check_rope(*b, rng);
  if (want("attention")) check_attention(*b, rng);
  if (want("matmul")) check_matmul(*b, *tf32, rng, quick);
  if (want("matmul_tc")) check_matmul_tc(*b, rng, quick);
  if (want("fused")) check_fused(*b, rng, quick);
  if (want("q8_0_split")) check_q8_0_split(*b, rng, quick);
  if (want("fused_residual_rope")) check_fused_residual_rope(*b, rng, quick);
  if (want("sample")) check_sample(*b, rng, quick);
  if (want("recording")) check_recording(device, rng);
  if (want("pdl")) check_pdl(device, rng);
  if (want("nccl")) check_nccl(device);
  // Last: the one check whose failure may be a hang (a cooperative grid barrier that never
  // opens); the script's timeout then costs nothing before it.
  if (want("grid_sync")) check_grid_sync(*b);
  print_summary();

  if (bench) {
    tf32.reset();
    CudaBackendOptions bench_opts;
    bench_opts.device = device;
    auto fast = CudaBackend::create(bench_opts, &error);
    if (!fast) {
      std::printf("ERROR: %s\n", error.c_str());
      return 2;
    }
    run_benchmarks(*fast, rng);
  }
  std::printf("\nRESULT: %s (%d checks, %d failed)\n", g_failed ? "FAIL" : "PASS", g_checks, g_failed);
  return g_failed ? 1 : 0;
}
