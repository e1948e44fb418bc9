// Q4_K and Q6_K (ggml k-quants): block layouts decoded against hand-built blocks,
// quantizer round-trip bounds, and the CPU kernel against an exact-integer reference.
#include <cmath>
#include <cstring>

#include "kernels/backend.h"
#include "kernels/cpu/matmul.h"  // BlockQ8A, BlockQ8K
#include "kernels/cpu/variants.h"
#include "kernels/dtype.h"
#include "test_util.h"

namespace ds {
namespace {

// The CPU kernels in use (kernels/cpu/variants.h): the best this CPU runs, or DS_CPU_KERNELS's.
const cpu::Variant& kern() { return cpu::active_variant(); }

constexpr uint16_t kHalf = 0x3800;     // fp16 0.5
constexpr uint16_t kQuarter = 0x3400;  // fp16 0.25

TEST(KQuant, TraitsAndNames) {
  EXPECT_TRUE(dtype_traits(DType::kQ4_K).supported);
  EXPECT_TRUE(dtype_traits(DType::kQ6_K).supported);
  EXPECT_EQ(dtype_traits(DType::kQ4_K).block_size, 256);
  EXPECT_EQ(dtype_traits(DType::kQ4_K).type_size, sizeof(BlockQ4_K));
  EXPECT_EQ(dtype_traits(DType::kQ6_K).type_size, sizeof(BlockQ6_K));
  EXPECT_EQ(row_bytes(DType::kQ4_K, 512), 288u);
  EXPECT_EQ(row_bytes(DType::kQ6_K, 512), 420u);
  DType t;
  ASSERT_TRUE(parse_dtype("q4_k", &t));
  EXPECT_EQ(t, DType::kQ4_K);
  ASSERT_TRUE(parse_dtype("Q6_K", &t));
  EXPECT_EQ(t, DType::kQ6_K);
  EXPECT_FALSE(parse_dtype("q5_k", &t));
  // ggml's field offsets (block_q4_K: d, dmin, scales[12], qs[128]; block_q6_K: ql[128], qh[64], scales[16], d).
  EXPECT_EQ(offsetof(BlockQ4_K, dmin), 2u);
  EXPECT_EQ(offsetof(BlockQ4_K, scales), 4u);
  EXPECT_EQ(offsetof(BlockQ4_K, qs), 16u);
  EXPECT_EQ(offsetof(BlockQ6_K, qh), 128u);
  EXPECT_EQ(offsetof(BlockQ6_K, scales), 192u);
  EXPECT_EQ(offsetof(BlockQ6_K, d), 208u);
}

// One Q4_K block built byte by byte; values checked against w = d*sc*q - dmin*m by hand.
TEST(KQuant, Q4KDequantizesHandBuiltBlock) {
  BlockQ4_K b;
  std::memset(&b, 0, sizeof(b));
  b.d = kHalf;
  b.dmin = kQuarter;
  b.scales[0] = 0xC5;  // sc0 = 5 (low 6 bits); top bits 3 -> bits 4,5 of sc4
  b.scales[1] = 0x0A;  // sc1 = 10; top bits 0 -> sc5 < 16
  b.scales[4] = 0x47;  // m0 = 7; top bits 1 -> bits 4,5 of m4
  b.scales[5] = 0x82;  // m1 = 2; top bits 2 -> bits 4,5 of m5
  b.scales[8] = 0x29;  // sc4 = 9 | 3 << 4 = 57, m4 = 2 | 1 << 4 = 18
  b.scales[9] = 0x3F;  // sc5 = 15 | 0 << 4 = 15, m5 = 3 | 2 << 4 = 35
  uint8_t sc, m;
  const uint8_t want_sc[8] = {5, 10, 0, 0, 57, 15, 0, 0}, want_m[8] = {7, 2, 0, 0, 18, 35, 0, 0};
  for (int j = 0; j < 8; ++j) {
    q4k_scale_min(b.scales, j, &sc, &m);
    EXPECT_EQ(sc, want_sc[j]) << j;
    EXPECT_EQ(m, want_m[j]) << j;
  }
  b.qs[0] = 0xA3;   // weight 0: q 3 (sub-block 0); weight 32: q 10 (sub-block 1)
  b.qs[69] = 0x7C;  // 69 = 32*2 + 5: weight 128+5: q 12 (sub-block 4); weight 160+5: q 7 (sub-block 5)
  float y[256];
  dequantize_row(DType::kQ4_K, &b, y, 256);
  EXPECT_EQ(y[0], 0.5f * 5 * 3 - 0.25f * 7);     // 5.75
  EXPECT_EQ(y[1], -0.25f * 7);                   // q 0
  EXPECT_EQ(y[32], 0.5f * 10 * 10 - 0.25f * 2);  // 49.5
  EXPECT_EQ(y[133], 0.5f * 57 * 12 - 0.25f * 18);  // 337.5
  EXPECT_EQ(y[165], 0.5f * 15 * 7 - 0.25f * 35);   // 43.75
  EXPECT_EQ(y[133], 337.5f);
  EXPECT_EQ(y[165], 43.75f);
  EXPECT_EQ(y[64], 0.0f);  // sub-block 2: sc 0, m 0
  EXPECT_EQ(y[255], 0.0f);
}

// One Q6_K block built byte by byte; values checked against w = d*scale*(q - 32) by hand.
TEST(KQuant, Q6KDequantizesHandBuiltBlock) {
  BlockQ6_K b;
  std::memset(&b, 0, sizeof(b));
  b.d = kHalf;
  b.scales[0] = -3;
  b.scales[4] = 2;
  b.scales[10] = 3;
  b.scales[12] = 100;
  b.scales[14] = -7;
  b.ql[0] = 0xE5;  // weight 0: low 4 bits 5; weight 64: low 4 bits 14
  b.qh[0] = 0x21;  // weight 0: high bits 1 (bits 0-1); weight 64: high bits 2 (bits 4-5)
  b.ql[67] = 0xB0;  // half 1, l 3: weight 128+64+3 = 195 has low bits 11; weight 131 has 0
  b.ql[99] = 0x40;  // half 1, l 32+3: weight 128+96+3 = 227 low bits 4; weight 128+32+3 = 163 low bits 0
  b.qh[35] = 0x60;  // half 1, l 3: bits 4-5 = 2 (weight 195), bits 6-7 = 1 (weight 227), others 0
  float y[256];
  dequantize_row(DType::kQ6_K, &b, y, 256);
  EXPECT_EQ(y[0], 0.5f * -3 * ((5 | 1 << 4) - 32));   // 16.5
  EXPECT_EQ(y[64], 0.5f * 2 * ((14 | 2 << 4) - 32));  // 14
  EXPECT_EQ(y[195], 0.5f * 100 * ((11 | 2 << 4) - 32));  // 550
  EXPECT_EQ(y[227], 0.5f * -7 * ((4 | 1 << 4) - 32));    // 42
  EXPECT_EQ(y[163], 0.5f * 3 * (0 - 32));                // -48
  EXPECT_EQ(y[0], 16.5f);
  EXPECT_EQ(y[195], 550.0f);
  EXPECT_EQ(y[227], 42.0f);
  EXPECT_EQ(y[1], 0.5f * -3 * -32);  // q 0 in sub-block 0
  EXPECT_EQ(y[16], 0.0f);            // sub-block 1: scale 0
}

// Rows whose sub-blocks differ in magnitude and sign, so every scale and min differs.
std::vector<float> structured_row(int64_t n, uint32_t seed) {
  auto x = test::random_floats(n, seed);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t sub = i / 16;
    x[i] = x[i] * std::ldexp(1.0f, -static_cast<int>(sub % 7)) + (sub % 3 == 0 ? 0.3f : sub % 3 == 1 ? -0.2f : 0.0f);
  }
  return x;
}

// Round trip error per super-block against the quantizers' bounds (dtype.cc):
// q4_k |x - w| <= 0.0683 amax (half of a 4-bit step over the range of a sub-block of 32
// spanning [min(0, min), max]), q6_k <= 0.0163 amax (half of a 6-bit step over a
// sub-block's amax), amax = max |x| of the super-block; plus 2^-24 absolute for the
// fp16 rounding of d / dmin where they are fp16 subnormals (variant 2: amax ~1e-3).
TEST(KQuant, RoundTripWithinStatedBounds) {
  for (DType t : {DType::kQ4_K, DType::kQ6_K}) {
    const double bound = t == DType::kQ4_K ? 0.0683 : 0.0163;
    for (int variant = 0; variant < 4; ++variant) {
      const int64_t n = 1024;
      std::vector<float> x = variant == 0 ? test::random_floats(n, 7)
                             : variant == 1 ? structured_row(n, 8)
                             : variant == 2 ? test::random_floats(n, 9, 1e-3f)
                                            : test::random_floats(n, 10, 30.0f);
      if (variant == 3)
        for (auto& v : x) v = std::fabs(v) + 5.0f;  // all positive: the mins are 0
      std::vector<uint8_t> q(row_bytes(t, n));
      std::vector<float> y(n);
      quantize_row(t, x.data(), q.data(), n);
      dequantize_row(t, q.data(), y.data(), n);
      double worst = 0, sq = 0, sq_x = 0;
      for (int64_t b = 0; b < n / 256; ++b) {
        double amax = 0, err = 0;
        for (int64_t i = 256 * b; i < 256 * (b + 1); ++i) {
          const double e = static_cast<double>(x[i]) - y[i];
          amax = std::max(amax, std::fabs(static_cast<double>(x[i])));
          err = std::max(err, std::fabs(e));
          sq += e * e;
          sq_x += static_cast<double>(x[i]) * x[i];
        }
        EXPECT_LE(err, bound * amax + 0x1p-24) << dtype_name(t) << " variant " << variant << " block " << b;
        worst = std::max(worst, err / amax);
      }
      std::printf("[ info ] %s variant %d: max error %.4f of amax (bound %.4f), rms error %.4f of rms\n", dtype_name(t), variant, worst,
                  bound, std::sqrt(sq / sq_x));
    }
  }
}

TEST(KQuant, ZeroAndConstantBlocks) {
  for (DType t : {DType::kQ4_K, DType::kQ6_K}) {
    std::vector<uint8_t> q(row_bytes(t, 512));
    std::vector<float> x(512, 0.0f), y(512, 1.0f);
    for (int i = 256; i < 512; ++i) x[i] = -0.75f;
    quantize_row(t, x.data(), q.data(), 512);
    dequantize_row(t, q.data(), y.data(), 512);
    for (int i = 0; i < 256; ++i) ASSERT_EQ(y[i], 0.0f) << dtype_name(t) << " " << i;
    for (int i = 256; i < 512; ++i) ASSERT_NEAR(y[i], -0.75f, 0.75 * (t == DType::kQ4_K ? 0.0683 : 0.0163)) << dtype_name(t) << " " << i;
  }
}

TEST(KQuant, ActivationQuantizerQ8K) {
  const auto x = structured_row(512, 3);
  std::vector<cpu::BlockQ8K> a(2);
  kern().quantize_row_q8k(x.data(), a.data(), 512);
  for (int b = 0; b < 2; ++b) {
    float amax = 0;
    for (int i = 0; i < 256; ++i) amax = std::max(amax, std::fabs(x[256 * b + i]));
    EXPECT_EQ(a[b].d, amax / 127.0f);
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) {
        sum += a[b].qs[16 * g + i];
        ASSERT_LE(std::fabs(x[256 * b + 16 * g + i] - a[b].d * a[b].qs[16 * g + i]), a[b].d * 0.5001f);
        // Exactly the scalar rounding (nearest, ties to even) on every instruction set.
        ASSERT_EQ(a[b].qs[16 * g + i], static_cast<int>(std::nearbyint(x[256 * b + 16 * g + i] * (1.0f / a[b].d))));
      }
      EXPECT_EQ(a[b].bsums[g], sum);
    }
  }
}

// Both activation quantizers (SIMD where built) give the scalar definition's bytes: d =
// amax / 127, q = nearbyint(x / d) with ties to even (a block of amax 127 makes d = 1, so the
// halves 2.5, -3.5, 0.5 are ties), sums exact; an all-zero block gives d = 0 and zeros.
TEST(KQuant, ActivationQuantizersMatchTheScalarDefinition) {
  std::vector<float> x = test::random_floats(1024, 21);
  for (int i = 0; i < 256; ++i) x[i] = static_cast<float>(i % 64) - 31.5f;  // super-block 0: ties everywhere ...
  x[7] = 127.0f;                                                           // ... with amax 127
  for (int i = 256 + 32; i < 256 + 64; ++i) x[i] = 0.0f;  // a zero Q8A block
  auto check = [&](const float* xb, int n, float d, const int8_t* qs) {
    float amax = 0;
    for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(xb[i]));
    ASSERT_EQ(d, amax / 127.0f);
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (int i = 0; i < n; ++i) ASSERT_EQ(qs[i], static_cast<int8_t>(std::nearbyint(xb[i] * id))) << i;
  };
  std::vector<cpu::BlockQ8K> k(4);
  kern().quantize_row_q8k(x.data(), k.data(), 1024);
  for (int b = 0; b < 4; ++b) {
    check(x.data() + 256 * b, 256, k[b].d, k[b].qs);
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += k[b].qs[16 * g + i];
      EXPECT_EQ(k[b].bsums[g], sum);
    }
  }
  EXPECT_EQ(k[0].qs[0], -32);  // -31.5 rounds to even
  EXPECT_EQ(k[0].qs[1], -30);  // -30.5
  std::vector<cpu::BlockQ8A> a(32);
  kern().quantize_row_q8a(x.data(), a.data(), 1024);
  for (int b = 0; b < 32; ++b) {
    check(x.data() + 32 * b, 32, a[b].d, a[b].qs);
    int sum = 0;
    for (int i = 0; i < 32; ++i) sum += a[b].qs[i];
    EXPECT_EQ(a[b].sum, sum);
  }
  EXPECT_EQ(a[9].d, 0.0f);
}

// The kernel against float64 sums over the dequantized weights and the *quantized*
// activations (d * qs): this isolates the kernel's own arithmetic (exact integer dot
// products per super-block, then float scaling), so the tolerance is float rounding.
TEST(KQuant, MatmulMatchesExactIntegerReference) {
  auto be = make_cpu_backend({2});
  for (DType t : {DType::kQ4_K, DType::kQ6_K}) {
    const int64_t rows = 67, cols = 768;  // 67: full tiles and a tail of single rows
    std::vector<float> wf(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      const auto row = structured_row(cols, 40 + static_cast<uint32_t>(r));
      std::copy(row.begin(), row.end(), wf.begin() + r * cols);
    }
    std::vector<uint8_t> q(row_bytes(t, cols) * rows);
    for (int64_t r = 0; r < rows; ++r) quantize_row(t, wf.data() + r * cols, q.data() + r * row_bytes(t, cols), cols);
    std::vector<float> wd(rows * cols);
    for (int64_t r = 0; r < rows; ++r) dequantize_row(t, q.data() + r * row_bytes(t, cols), wd.data() + r * cols, cols);
    const WeightRef w{t, q.data(), rows, cols};
    for (int64_t n : {1, 3, 7}) {
      const auto x = test::random_floats(n * cols, 77 + static_cast<uint32_t>(n));
      std::vector<float> y(n * rows);
      be->matmul(w, x.data(), n, y.data());
      double worst = 0;
      for (int64_t j = 0; j < n; ++j) {
        std::vector<cpu::BlockQ8K> a(cols / 256);
        kern().quantize_row_q8k(x.data() + j * cols, a.data(), cols);
        for (int64_t i = 0; i < rows; ++i) {
          double s = 0, mag = 0;
          for (int64_t k = 0; k < cols; ++k) {
            const double xa = static_cast<double>(a[k / 256].d) * a[k / 256].qs[k % 256];
            s += static_cast<double>(wd[i * cols + k]) * xa;
            mag += std::fabs(static_cast<double>(wd[i * cols + k]) * xa);
          }
          worst = std::max(worst, std::fabs(y[j * rows + i] - s) / mag);
        }
      }
      // Relative to sum |w x|: float32 scaling and accumulation over 3 super-blocks.
      EXPECT_LE(worst, 1e-6) << dtype_name(t) << " n=" << n;
    }
  }
}

// One-hot activations read single weights back through the kernel: checks that the
// kernel's bit layout is dequantize_row's for every position of a super-block.
TEST(KQuant, MatmulOneHotReadsEveryWeight) {
  auto be = make_cpu_backend({1});
  for (DType t : {DType::kQ4_K, DType::kQ6_K}) {
    const int64_t rows = 5, cols = 512;
    std::vector<float> wf(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      const auto row = structured_row(cols, 90 + static_cast<uint32_t>(r));
      std::copy(row.begin(), row.end(), wf.begin() + r * cols);
    }
    std::vector<uint8_t> q(row_bytes(t, cols) * rows);
    for (int64_t r = 0; r < rows; ++r) quantize_row(t, wf.data() + r * cols, q.data() + r * row_bytes(t, cols), cols);
    std::vector<float> x(cols * cols, 0.0f), y(cols * rows), wd(cols);
    for (int64_t k = 0; k < cols; ++k) x[k * cols + k] = 1.0f;  // row k: one-hot at k (d = 1/127, q = 127)
    be->matmul(WeightRef{t, q.data(), rows, cols}, x.data(), cols, y.data());
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(t, q.data() + r * row_bytes(t, cols), wd.data(), cols);
      float wmax = 0;
      for (float v : wd) wmax = std::max(wmax, std::fabs(v));
      // q4_k subtracts the min term from the scale term: float rounding of both, ~1e-7 of the row's scale.
      for (int64_t k = 0; k < cols; ++k)
        ASSERT_NEAR(y[k * rows + r], wd[k], 1e-6 * wmax) << dtype_name(t) << " row " << r << " col " << k;
    }
  }
}

}  // namespace
}  // namespace ds
