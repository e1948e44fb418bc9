// tests/gpu/kernel_check/check.h: what the parts of gpu_kernel_check share: random inputs,
// the comparison and its per-kernel summary, device buffers, reference weights, the decode
// chain the launch checks and benchmarks run, and each file's check groups.
#pragma once

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

namespace ds::kernel_check {


using ds::AttentionArgs;
using ds::AttentionToken;
using ds::CudaBackend;
using ds::CudaBackendOptions;
using ds::DType;
using ds::KvLayer;
using ds::RopeParams;
using ds::RopeStyle;
using ds::WeightRef;

constexpr int kGemvVersions = 5;  // kernels/cuda/ops.cuh (4: v3 with one row per warp; 5: streamed)
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
inline std::map<std::string, Group> g_groups;  // by kernel name (the check name up to its first space)
inline int g_checks = 0, g_failed = 0;

inline Group& group_of(const std::string& name) { return g_groups[name.substr(0, name.find(' '))]; }

inline void record(const std::string& name, bool pass, double max_abs, double max_rel, const std::string& tol,
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
inline void compare(const std::string& name, const float* got, const float* want, size_t count, double atol, double rtol,
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

inline void compare(const std::string& name, const std::vector<float>& got, const std::vector<float>& want, double atol,
             double rtol, const std::vector<double>* scale = nullptr) {
  if (got.size() != want.size()) return record(name, false, INFINITY, INFINITY, "-", "  size mismatch");
  compare(name, got.data(), want.data(), got.size(), atol, rtol, scale ? scale->data() : nullptr);
}

// A yes/no check (determinism, error reporting).
inline void expect(const std::string& name, bool cond, const std::string& detail = "") {
  record(name, cond, 0, 0, "exact", cond || detail.empty() ? "" : "  " + detail);
}

inline bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// x as an F16 KV cache holds it: the halves' bits, and those values back as floats.
inline std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = ds::fp32_to_fp16_ref(x[i]);
  return h;
}
inline std::vector<float> f16_rounded(const std::vector<float>& x) {
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
inline std::vector<uint8_t> make_weights(Rng& rng, DType t, int64_t rows, int64_t cols) {
  const size_t stride = ds::row_bytes(t, cols);
  std::vector<uint8_t> w(stride * rows);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& x : row) x = rng.uniform(-1, 1);
    ds::quantize_row(t, row.data(), w.data() + r * stride, cols);
  }
  return w;
}

inline const DType kAllTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                           DType::kQ4_0, DType::kQ4_K, DType::kQ6_K};
// Rows of `cols` elements can be stored in type t (a whole number of its blocks).
inline bool fits(DType t, int64_t cols) { return cols % ds::dtype_traits(t).block_size == 0; }
inline std::string shape(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

// Fails the run (exit 2) when the backend recorded an error outside an expected-error test.
inline void require_ok(CudaBackend& b, const char* where) {
  if (!b.synchronize()) {
    std::printf("ERROR: backend failed during %s: %s\n", where, b.last_error().c_str());
    std::exit(2);
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

// ---- the check groups and benchmarks (main() is in tests/gpu/gpu_kernel_check.cc) ----------

// matmul.cc
void check_get_rows(CudaBackend& b, Rng& rng);
void check_matmul(CudaBackend& b, CudaBackend& tf32, Rng& rng, bool quick);
void check_matmul_tc(CudaBackend& b, Rng& rng, bool quick);
void check_fused(CudaBackend& b, Rng& rng, bool quick);
void check_q8_0_split(CudaBackend& b, Rng& rng, bool quick);
void check_gemv_i8(CudaBackend& b, Rng& rng, bool quick);
void check_half_weight_cache(CudaBackend& b, Rng& rng);
// want[n, rows] = x W^T by the reference (w: host bytes of type t) and, per element, the
// natural size of its rounding error (sum |w x|).
void ref_matmul_scaled(DType t, const std::vector<uint8_t>& w, int64_t rows, int64_t cols, const std::vector<float>& x,
                       int64_t n, std::vector<float>* want, std::vector<double>* scale);
// A fused residual add (got) against res + want within tolerance, and bit for bit against
// the separate ops' result (sep).
void check_residual_add(const std::string& name, const std::string& bits_name, const std::vector<float>& got,
                        const std::vector<float>& sep, const std::vector<float>& res, const std::vector<float>& want,
                        const std::vector<double>& scale, int64_t count, double atol, double rtol);

// layers.cc
void check_rmsnorm(CudaBackend& b, Rng& rng);
void check_rope(CudaBackend& b, Rng& rng);
void check_elementwise(CudaBackend& b, Rng& rng);
void check_attention(CudaBackend& b, Rng& rng);
void check_fused_residual_rope(CudaBackend& b, Rng& rng, bool quick);
// AttentionArgs over device buffers: n tokens, paged caches of block size bs.
AttentionArgs attention_args(const Buf& q, const Buf& out, const Buf& kc, const Buf& vc, const Buf& toks, int64_t n,
                             int heads, int kv_heads, int hd, int bs);

// sample.cc
void check_sample(CudaBackend& b, Rng& rng, bool quick);

// device.cc: launches, recording, errors, NCCL, the grid barrier
void check_pdl(int device, Rng& rng);
void check_l2_prefetch_pieces(Rng& rng);
void check_self_check(int device);
void check_grid_sync(CudaBackend& b);
void check_recording(int device, Rng& rng);
void check_errors(CudaBackend& b);
void check_nccl(int first_device);

// bench.cc
void run_benchmarks(CudaBackend& b, Rng& rng);

}  // namespace ds::kernel_check
