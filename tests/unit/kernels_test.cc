// CPU kernels against the scalar references (kernels/ref.h) on random inputs.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "kernels/backend.h"
#include "kernels/cpu/variants.h"
#include "kernels/ref.h"
#include "test_util.h"

namespace ds {
namespace {

// The CPU kernels in use (kernels/cpu/variants.h): the best this CPU runs, or DS_CPU_KERNELS's.
const cpu::Variant& kern() { return cpu::active_variant(); }

// ctest runs this binary's kernel and engine tests once per variant (tests/CMakeLists.txt:
// cpu_kernels_<variant>, with DS_CPU_KERNELS set). Before any test: a variant this CPU cannot run
// skips the run (exit 77); one this build does not have fails it.
const bool kVariantChecked = [] {
  const char* want = std::getenv("DS_CPU_KERNELS");
  if (want == nullptr) return true;
  std::string error;
  if (cpu::select_variant(&error) != nullptr) {
    std::printf("CPU kernels: variant %s (%s), from DS_CPU_KERNELS\n", cpu::active_variant().name, cpu::active_variant().isa);
    return true;
  }
  std::printf("%s\n", error.c_str());
  for (const cpu::CompiledVariant& c : cpu::compiled_variants())
    if (c.variant->name == std::string(want)) std::exit(77);  // SKIP: built, but not for this CPU
  std::exit(1);
}();

// max |a - b| / max(|b|), the error measure used throughout (absolute, scaled by the
// reference's magnitude so it means the same for any input scale).
double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return den == 0 ? num : num / den;
}

std::vector<uint8_t> quantize_matrix(DType t, const std::vector<float>& w, int64_t rows, int64_t cols) {
  std::vector<uint8_t> q(row_bytes(t, cols) * rows);
  for (int64_t r = 0; r < rows; ++r) quantize_row(t, w.data() + r * cols, q.data() + r * row_bytes(t, cols), cols);
  return q;
}

TEST(Kernels, Fp16ConversionMatchesHardwareForEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float a = fp16_to_fp32_ref(static_cast<uint16_t>(h));
    const float b = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(a)) {
      EXPECT_TRUE(std::isnan(b));
      continue;
    }
    ASSERT_EQ(a, b) << h;
    ASSERT_EQ(fp32_to_fp16_ref(a), h) << "round trip of " << h;
  }
}

TEST(Kernels, QuantizeDequantizeRoundTrip) {
  const auto x = test::random_floats(256, 7);
  for (DType t : {DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
    std::vector<uint8_t> q(row_bytes(t, 256));
    std::vector<float> y(256);
    quantize_row(t, x.data(), q.data(), 256);
    dequantize_row(t, q.data(), y.data(), 256);
    // Step sizes: fp16 2^-11, bf16 2^-8, q8_0 amax/127/2; q4_0 maps the signed max to -8
    // so the opposite extreme clips at +7: up to amax/8. q4_k, q6_k: the reference
    // quantizers' bounds (dtype.cc), 0.0683 and 0.0163 of amax.
    const double tol = t == DType::kF16 ? 1e-3 : t == DType::kBF16 ? 4e-3 : t == DType::kQ8_0 ? 5e-3 : t == DType::kQ4_0 ? 0.13
                       : t == DType::kQ4_K ? 0.0683 : 0.0163;
    EXPECT_LE(rel_err(y.data(), x.data(), 256), tol) << dtype_name(t);
  }
}

struct MatmulCase {
  DType type;
  int64_t rows, cols;
};

class KernelsMatmul : public ::testing::TestWithParam<MatmulCase> {};

TEST_P(KernelsMatmul, MatchesReferenceAndIsBatchInvariant) {
  const MatmulCase c = GetParam();
  const auto wf = test::random_floats(c.rows * c.cols, 11);
  const auto q = quantize_matrix(c.type, wf, c.rows, c.cols);
  const WeightRef gguf{c.type, q.data(), c.rows, c.cols};
  auto be = make_cpu_backend({2});
  // Also in the backend's own layout where it has one (Q8_0 / Q4_0 / Q4_K / Q6_K rows
  // interleaved by 16, where their kernels are built: x86 with AVX2 or AVX-512).
  std::vector<uint8_t> own(q.size());
  std::vector<WeightRef> layouts = {gguf};
  if (be->relayouts(gguf)) layouts.push_back(be->upload_weight(gguf, own.data()));
  std::vector<std::vector<float>> first;  // each layout's result at n = 13
  for (const WeightRef& w : layouts) {
    for (int64_t n : {1, 2, 5, 13, 21}) {
      const auto x = test::random_floats(n * c.cols, 100 + static_cast<uint32_t>(n));
      std::vector<float> y(n * c.rows), yr(n * c.rows);
      be->matmul(w, x.data(), n, y.data());
      ref::matmul(gguf, x.data(), n, yr.data());
      // Float weights: f32 accumulation vs double, ~1e-6. Quantized weights: the CPU kernel
      // also quantizes activations to 8 bits (step amax/254 per block of 32, or per super-
      // block of 256 for q4_k / q6_k): ~1% of a dot.
      const bool quant = c.type == DType::kQ8_0 || c.type == DType::kQ4_0 || c.type == DType::kQ4_K || c.type == DType::kQ6_K;
      const double tol = quant ? 3e-2 : 1e-5;
      if (quant) std::printf("[ info ] %s%s %lldx%lld n=%lld: error %.2e of max |y| (tolerance %.0e)\n", dtype_name(c.type),
                             w.layout != kLayoutGguf ? " interleaved" : "", static_cast<long long>(c.rows),
                             static_cast<long long>(c.cols), static_cast<long long>(n), rel_err(y.data(), yr.data(), y.size()), tol);
      EXPECT_LE(rel_err(y.data(), yr.data(), y.size()), tol) << dtype_name(c.type) << " layout " << w.layout << " n=" << n;
      if (n == 13) first.push_back(y);
      // Determinism: every row of a batch is bit-identical to the same row computed alone.
      for (int64_t j = 0; j < n; ++j) {
        std::vector<float> y1(c.rows);
        be->matmul(w, x.data() + j * c.cols, 1, y1.data());
        ASSERT_EQ(0, std::memcmp(y1.data(), y.data() + j * c.rows, c.rows * sizeof(float)))
            << dtype_name(c.type) << " layout " << w.layout << " row " << j;
      }
    }
  }
  // The two layouts' kernels take the same exact integer dots and differ in float rounding only.
  if (first.size() == 2) {
    EXPECT_LE(rel_err(first[1].data(), first[0].data(), first[0].size()), 1e-5);
  }
}

// Where their kernels are built (x86 with AVX2 or AVX-512), Q8_0 / Q4_0 / Q4_K / Q6_K matrices of
// whole 16-row groups are interleaved, and get_rows reads them as the file's rows (bit for bit).
TEST(Kernels, InterleavedQuantLayout) {
  auto be = make_cpu_backend({1});
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
    const int64_t rows = 32, cols = t == DType::kQ4_K || t == DType::kQ6_K ? 512 : 96;
    const auto q = quantize_matrix(t, test::random_floats(rows * cols, 5), rows, cols);
    const WeightRef gguf{t, q.data(), rows, cols};
    EXPECT_FALSE(be->relayouts(WeightRef{t, q.data(), rows - 1, cols})) << "a partial group of rows stays as it is";
    if (!be->relayouts(gguf)) {
      std::printf("[ info ] %s: no interleaved layout in this build (no AVX2)\n", dtype_name(t));
      continue;
    }
    std::vector<uint8_t> own(q.size());
    const WeightRef w = be->upload_weight(gguf, own.data());
    EXPECT_EQ(w.layout, t == DType::kQ8_0   ? kLayoutQ8_0R16
                        : t == DType::kQ4_0 ? kLayoutQ4_0R16
                        : t == DType::kQ4_K ? kLayoutQ4_KR16
                                            : kLayoutQ6_KR16);
    EXPECT_FALSE(be->relayouts(w));
    EXPECT_NE(0, std::memcmp(own.data(), q.data(), q.size()));
    const int32_t ids[] = {0, 17, 31, 5};
    std::vector<float> a(4 * cols), b(4 * cols);
    be->get_rows(gguf, ids, 4, a.data());
    be->get_rows(w, ids, 4, b.data());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << dtype_name(t);
  }
}

// The integer dots at their largest: every weight at its type's largest magnitude and every
// activation of a row with the same sign as row 0's weights, so that row's products are all
// maximal and positive. The AVX2 kernels sum pairs of byte products in saturating int16 lanes
// (maddubs) and are exact only within their stated bounds; a kernel that overstepped them
// would clip here, far beyond the tolerance. Both layouts, whole and partial 16-row groups.
TEST(Kernels, LargestProductsDoNotSaturate) {
  auto be = make_cpu_backend({1});
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
    for (int64_t rows : {32, 37}) {
      const int64_t cols = 512;
      std::vector<float> wf(rows * cols);
      std::mt19937 rng(7);
      for (auto& v : wf) v = rng() & 1 ? 1.0f : -1.0f;
      const auto q = quantize_matrix(t, wf, rows, cols);
      const WeightRef gguf{t, q.data(), rows, cols};
      std::vector<uint8_t> own(q.size());
      std::vector<WeightRef> layouts = {gguf};
      if (be->relayouts(gguf)) layouts.push_back(be->upload_weight(gguf, own.data()));
      const int64_t n = 3;
      std::vector<float> x(n * cols);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t k = 0; k < cols; ++k) x[j * cols + k] = (j == 1 ? -1.0f : 1.0f) * wf[k];
      std::vector<float> yr(n * rows);
      ref::matmul(gguf, x.data(), n, yr.data());
      for (const WeightRef& w : layouts) {
        std::vector<float> y(n * rows);
        be->matmul(w, x.data(), n, y.data());
        EXPECT_LE(rel_err(y.data(), yr.data(), y.size()), 1e-2) << dtype_name(t) << " rows " << rows << " layout " << w.layout;
        EXPECT_NEAR(y[0], yr[0], 1e-2 * std::fabs(yr[0])) << dtype_name(t) << " layout " << w.layout;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, KernelsMatmul,
                         ::testing::Values(MatmulCase{DType::kF32, 37, 64}, MatmulCase{DType::kF32, 19, 172},
                                           MatmulCase{DType::kF16, 37, 96}, MatmulCase{DType::kF16, 9, 172},
                                           MatmulCase{DType::kBF16, 37, 96}, MatmulCase{DType::kBF16, 5, 44},
                                           MatmulCase{DType::kQ8_0, 37, 128}, MatmulCase{DType::kQ8_0, 130, 256},
                                           MatmulCase{DType::kQ4_0, 37, 128}, MatmulCase{DType::kQ4_0, 130, 256},
                                           // odd block counts: the 512-bit kernel's lone last block
                                           MatmulCase{DType::kQ8_0, 11, 96}, MatmulCase{DType::kQ4_0, 11, 160},
                                           // rows % 16 == 0: the CPU backend's interleaved layout too
                                           MatmulCase{DType::kQ8_0, 48, 96}, MatmulCase{DType::kQ4_0, 64, 160},
                                           MatmulCase{DType::kQ8_0, 16, 32}, MatmulCase{DType::kQ4_0, 32, 32},
                                           MatmulCase{DType::kQ4_K, 32, 256}, MatmulCase{DType::kQ4_K, 48, 768},
                                           MatmulCase{DType::kQ6_K, 32, 256}, MatmulCase{DType::kQ6_K, 48, 768},
                                           MatmulCase{DType::kQ4_K, 37, 256}, MatmulCase{DType::kQ4_K, 130, 768},
                                           MatmulCase{DType::kQ6_K, 37, 256}, MatmulCase{DType::kQ6_K, 130, 768}),
                         [](const auto& info) {
                           return std::string(dtype_name(info.param.type)) + "_" + std::to_string(info.param.rows) + "x" +
                                  std::to_string(info.param.cols);
                         });

// The CPU backend's exp (softmax, SiLU): within 2 ulp of the true value where the result is
// a normal float, 0 below, exp(88) above; and each element's bits the same whether it is
// computed in a vector or in a scalar tail (so a split over threads or a batch changes nothing).
TEST(Kernels, FastExpIsAccurateAndItsTailsMatchItsVectors) {
  double worst = 0;
  for (int i = 0; i <= 400000; ++i) {
    const float x = -87.0f + 175.0f * static_cast<float>(i) / 400000.0f;
    const double want = std::exp(static_cast<double>(x)), got = kern().exp_scalar(x);
    worst = std::max(worst, std::fabs(got - want) / want);
  }
  std::printf("[ info ] exp_scalar on [-87, 88]: worst relative error %.2e\n", worst);
  EXPECT_LE(worst, 2.5e-7);
  EXPECT_EQ(kern().exp_scalar(0.0f), 1.0f);
  EXPECT_EQ(kern().exp_scalar(-90.0f), 0.0f);
  EXPECT_EQ(kern().exp_scalar(-INFINITY), 0.0f);
  EXPECT_EQ(kern().exp_scalar(1000.0f), kern().exp_scalar(88.0f));
  EXPECT_TRUE(std::isfinite(kern().exp_scalar(88.0f)));

  const auto base = test::random_floats(64, 41, 30.0f);
  for (int n = 0; n <= 37; ++n) {
    for (int off = 0; off < 3; ++off) {
      std::vector<float> s(base.begin() + off, base.begin() + off + n);
      const float mx = 5.0f;
      kern().exp_sub_sum(s.data(), n, mx);
      for (int i = 0; i < n; ++i) {
        const float want = kern().exp_scalar(base[off + i] - mx);
        ASSERT_EQ(0, std::memcmp(&s[i], &want, 4)) << "n " << n << " i " << i;
      }
      std::vector<float> out(n + 1, -1.0f);
      kern().swiglu_f32(base.data() + off, base.data() + 20, out.data(), n);
      for (int i = 0; i < n; ++i) {
        const float g = base[off + i], want = g / (1.0f + kern().exp_scalar(-g)) * base[20 + i];
        ASSERT_EQ(0, std::memcmp(&out[i], &want, 4)) << "n " << n << " i " << i;
      }
      EXPECT_EQ(out[n], -1.0f);
    }
  }
}

// Attention's scores 8 rows at a time are each row's own dot_row, bit for bit (F32 and F16 rows).
TEST(Kernels, EightRowScoresAreTheOneRowScores) {
  for (int64_t n : {8, 40, 64, 128}) {
    const int64_t stride = n + 24;
    const auto q = test::random_floats(n, 51, 2.0f), k = test::random_floats(8 * stride, 52, 2.0f);
    std::vector<uint16_t> kh(k.size());
    for (size_t i = 0; i < k.size(); ++i) kh[i] = fp32_to_fp16_ref(k[i]);
    float got[8], goth[8];
    kern().dot8_rows_f32(q.data(), k.data(), stride, n, got);
    kern().dot8_rows_f16(q.data(), kh.data(), stride, n, goth);
    for (int r = 0; r < 8; ++r) {
      const float want = kern().dot_row_f32(q.data(), k.data() + r * stride, n);
      const float wanth = kern().dot_row_f16(q.data(), kh.data() + r * stride, n);
      EXPECT_EQ(0, std::memcmp(&got[r], &want, 4)) << "n " << n << " row " << r;
      EXPECT_EQ(0, std::memcmp(&goth[r], &wanth, 4)) << "f16 n " << n << " row " << r;
      double ref = 0;
      for (int64_t i = 0; i < n; ++i) ref += static_cast<double>(q[i]) * k[r * stride + i];
      EXPECT_NEAR(want, ref, 1e-5 * n);
    }
  }
}

TEST(Kernels, RmsNormSwigluGetRows) {
  auto be = make_cpu_backend({2});
  const int64_t n = 5, dim = 100;
  const auto x = test::random_floats(n * dim, 1), w = test::random_floats(dim, 2);
  std::vector<float> y(n * dim), yr(n * dim);
  be->rmsnorm(x.data(), w.data(), n, dim, 1e-5f, y.data());
  ref::rmsnorm(x.data(), w.data(), n, dim, 1e-5f, yr.data());
  EXPECT_LE(rel_err(y.data(), yr.data(), y.size()), 1e-5);

  const auto g = test::random_floats(1000, 3, 8.0f), u = test::random_floats(1000, 4);
  std::vector<float> s(1000), sr(1000);
  be->swiglu(g.data(), u.data(), 1000, s.data());
  ref::swiglu(g.data(), u.data(), 1000, sr.data());
  EXPECT_LE(rel_err(s.data(), sr.data(), 1000), 1e-6);

  const auto table = test::random_floats(20 * 64, 5);
  const auto q = quantize_matrix(DType::kQ8_0, table, 20, 64);
  const int32_t ids[3] = {19, 0, 7};
  std::vector<float> r(3 * 64), rr(3 * 64);
  be->get_rows(WeightRef{DType::kQ8_0, q.data(), 20, 64}, ids, 3, r.data());
  ref::get_rows(WeightRef{DType::kQ8_0, q.data(), 20, 64}, ids, 3, rr.data());
  EXPECT_EQ(r, rr);
}

TEST(Kernels, RopeBothStyles) {
  auto be = make_cpu_backend({2});
  for (RopeStyle style : {RopeStyle::kNormal, RopeStyle::kNeox}) {
    const int64_t n = 4;
    const int heads = 3, hd = 16;
    auto x = test::random_floats(n * heads * hd, 9);
    auto xr = x;
    const int32_t pos[4] = {0, 1, 17, 500};
    RopeParams p{style, hd, 10000.0f, 0.5f};
    be->rope(x.data(), n, heads, hd, pos, p);
    ref::rope(xr.data(), n, heads, hd, pos, p);
    EXPECT_LE(rel_err(x.data(), xr.data(), x.size()), 1e-6) << static_cast<int>(style);
  }
}

TEST(Kernels, PagedAttentionWithGqa) {
  auto be = make_cpu_backend({2});
  const int heads = 8, kv_heads = 2, hd = 32, bs = 4, n_blocks = 16;
  const int64_t kv_dim = kv_heads * hd;
  const auto k = test::random_floats(n_blocks * bs * kv_dim, 21), v = test::random_floats(n_blocks * bs * kv_dim, 22);
  // Two sequences with scattered blocks; three query tokens.
  const std::vector<int32_t> t1 = {5, 2, 9, 14}, t2 = {0, 11};
  const AttentionToken toks[3] = {{t1.data(), 13}, {t1.data(), 16}, {t2.data(), 1}};
  const auto q = test::random_floats(3 * heads * hd, 23, 2.0f);
  std::vector<float> out(3 * heads * hd), outr(3 * heads * hd);
  AttentionArgs a{q.data(), out.data(), k.data(), v.data(), toks, 3, heads, kv_heads, hd, bs, 1.0f / std::sqrt(32.0f)};
  be->attention(a);
  a.out = outr.data();
  ref::attention(a);
  EXPECT_LE(rel_err(out.data(), outr.data(), out.size()), 1e-5);
}

// An F16 cache: store_kv rounds to nearest even, and attention over it gives the bits of
// attention over an F32 cache holding the rounded values (the reference agrees too).
TEST(Kernels, F16KvCacheIsF32AttentionOverTheRoundedRows) {
  auto be = make_cpu_backend({2});
  const int heads = 4, kv_heads = 2, hd = 44, bs = 4, n_blocks = 8, n = n_blocks * bs;  // 44: every SIMD tail
  const int64_t kv_dim = kv_heads * hd;
  auto k = test::random_floats(n * kv_dim, 31, 3.0f), v = test::random_floats(n * kv_dim, 32, 3.0f);
  k[5] = 1e-7f;     // an F16 subnormal
  v[7] = 70000.0f;  // past the largest half: inf
  std::vector<int32_t> slots(n);
  for (int i = 0; i < n; ++i) slots[i] = (i * 5 + 3) % n;  // scattered rows
  std::vector<uint16_t> k16(n * kv_dim), v16(n * kv_dim);
  be->store_kv(k.data(), v.data(), n, slots.data(), kv_dim, KvLayer{k16.data(), v16.data(), DType::kF16});
  std::vector<float> kr(n * kv_dim), vr(n * kv_dim);  // the rounded values, at the same rows
  for (int i = 0; i < n; ++i)
    for (int64_t c = 0; c < kv_dim; ++c) {
      const int64_t at = slots[i] * kv_dim + c;
      ASSERT_EQ(k16[at], fp32_to_fp16_ref(k[i * kv_dim + c]));
      ASSERT_EQ(v16[at], fp32_to_fp16_ref(v[i * kv_dim + c]));
      kr[at] = fp16_to_fp32_ref(k16[at]);
      vr[at] = fp16_to_fp32_ref(v16[at]);
    }
  EXPECT_TRUE(std::isinf(fp16_to_fp32_ref(v16[slots[0] * kv_dim + 7])));
  for (auto& x : v) x = std::min(x, 60000.0f);  // keep the attention inputs finite from here on
  be->store_kv(k.data(), v.data(), n, slots.data(), kv_dim, KvLayer{k16.data(), v16.data(), DType::kF16});
  for (int64_t i = 0; i < n * kv_dim; ++i) vr[i] = fp16_to_fp32_ref(v16[i]);
  const std::vector<int32_t> table = {3, 0, 6, 1, 7, 2, 4, 5};
  const AttentionToken toks[3] = {{table.data(), 1}, {table.data(), 17}, {table.data(), 32}};
  const auto q = test::random_floats(3 * heads * hd, 33, 2.0f);
  std::vector<float> out16(3 * heads * hd), out32(out16.size()), outr(out16.size());
  AttentionArgs a{q.data(), out16.data(), k16.data(), v16.data(), toks, 3, heads, kv_heads, hd, bs, 1.0f / std::sqrt(44.0f)};
  a.kv_type = DType::kF16;
  be->attention(a);
  AttentionArgs b = a;
  b.k_cache = kr.data();
  b.v_cache = vr.data();
  b.kv_type = DType::kF32;
  b.out = out32.data();
  be->attention(b);
  EXPECT_EQ(std::memcmp(out16.data(), out32.data(), out16.size() * sizeof(float)), 0);
  a.out = outr.data();
  ref::attention(a);  // the reference reads the halves itself
  EXPECT_LE(rel_err(out16.data(), outr.data(), out16.size()), 1e-5);
}

// The build's variants (kernels/cpu/variants.h): named once each, the plain one last and runnable
// everywhere, and without DS_CPU_KERNELS the one in use is the first this CPU runs.
TEST(CpuVariants, ListedBestFirstAndTheBestRunnableIsUsed) {
  const auto& all = cpu::compiled_variants();
  ASSERT_FALSE(all.empty());
  std::set<std::string> names;
  for (const cpu::CompiledVariant& c : all) {
    EXPECT_TRUE(names.insert(c.variant->name).second) << c.variant->name;
    std::printf("[ info ] variant %-10s isa %-12s %s\n", c.variant->name, c.variant->isa, c.runs_here ? "runs here" : "not on this CPU");
  }
  EXPECT_TRUE(all.back().runs_here);
  if (all.size() > 1) {  // a dispatching build: the five x86-64 variants
    EXPECT_EQ(all.size(), 5u);
    EXPECT_STREQ(all.back().variant->name, "generic");
    EXPECT_STREQ(all.back().variant->isa, "scalar");
    EXPECT_STREQ(all.front().variant->isa, "avx512+vnni");
  }
  if (std::getenv("DS_CPU_KERNELS") == nullptr) {
    for (const cpu::CompiledVariant& c : all)
      if (c.runs_here) {
        EXPECT_EQ(&cpu::active_variant(), c.variant);
        break;
      }
  }
  EXPECT_STREQ(cpu_kernel_isa(), cpu::active_variant().isa);
}

// DS_CPU_KERNELS naming no variant of the build, or one that this CPU cannot run, is an error
// that says which (the binaries refuse to start on it).
TEST(CpuVariants, UnknownOrUnrunnableChoiceIsRefused) {
  const char* before = std::getenv("DS_CPU_KERNELS");
  const std::string saved = before ? before : "";
  std::string error;
  setenv("DS_CPU_KERNELS", "avx1024", 1);
  EXPECT_EQ(cpu::select_variant(&error), nullptr);
  EXPECT_NE(error.find("DS_CPU_KERNELS=avx1024: no such variant"), std::string::npos) << error;
  EXPECT_NE(error.find(cpu::compiled_variants().back().variant->name), std::string::npos) << error;
  setenv("DS_CPU_KERNELS", "auto", 1);
  EXPECT_EQ(cpu::select_variant(&error), cpu::find_variant("", &error));
  for (const cpu::CompiledVariant& c : cpu::compiled_variants()) {
    setenv("DS_CPU_KERNELS", c.variant->name, 1);
    error.clear();
    const cpu::Variant* got = cpu::select_variant(&error);
    if (c.runs_here) {
      EXPECT_EQ(got, c.variant);
    } else {
      EXPECT_EQ(got, nullptr);
      EXPECT_NE(error.find("cannot run"), std::string::npos) << error;
    }
  }
  if (before) setenv("DS_CPU_KERNELS", saved.c_str(), 1);
  else unsetenv("DS_CPU_KERNELS");
}

// Every variant this CPU runs, side by side in one process: its matmul agrees with the scalar
// reference for every weight type, in the file's layout and its own. (ctest's cpu_kernels_*
// runs put each through all the kernel and engine tests; this one sees them all in the default
// run, on one binary, as the dispatch picks among them.)
TEST(CpuVariants, EveryRunnableVariantMatchesTheReference) {
  const int64_t rows = 48, cols = 512;
  const auto wf = test::random_floats(rows * cols, 61);
  for (const cpu::CompiledVariant& c : cpu::compiled_variants()) {
    if (!c.runs_here) continue;
    auto be = c.variant->make_backend(2, true);
    for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
      const auto q = quantize_matrix(t, wf, rows, cols);
      const WeightRef gguf{t, q.data(), rows, cols};
      std::vector<uint8_t> own(q.size());
      std::vector<WeightRef> layouts = {gguf};
      if (be->relayouts(gguf)) layouts.push_back(be->upload_weight(gguf, own.data()));
      EXPECT_EQ(layouts.size() == 2, c.variant->interleaves_quant && t != DType::kF32 && t != DType::kF16 && t != DType::kBF16)
          << c.variant->name << " " << dtype_name(t);
      for (const WeightRef& w : layouts) {
        for (int64_t n : {1, 6}) {
          const auto x = test::random_floats(n * cols, 62 + static_cast<uint32_t>(n));
          std::vector<float> y(n * rows), yr(n * rows);
          be->matmul(w, x.data(), n, y.data());
          ref::matmul(gguf, x.data(), n, yr.data());
          const bool quant = t != DType::kF32 && t != DType::kF16 && t != DType::kBF16;
          EXPECT_LE(rel_err(y.data(), yr.data(), y.size()), quant ? 3e-2 : 1e-5)
              << c.variant->name << " " << dtype_name(t) << " layout " << w.layout << " n=" << n;
        }
      }
    }
  }
}

}  // namespace
}  // namespace ds
