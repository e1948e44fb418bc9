#include "kernels/cpu/matmul.h"

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_* in casts): not ours.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/simd.h"

namespace ds::cpu {
namespace {

struct TileArgs {
  const uint8_t* w;  // weight rows
  size_t w_stride;   // bytes between weight rows
  const uint8_t* a;  // activation rows (f32 or BlockQ8A)
  size_t a_stride;   // bytes between activation rows
  int64_t k;         // elements per row
  float* y;
  int64_t y_stride;  // floats between output rows (= weight rows)
};

#ifdef DS_SIMD_AVX2
#if defined(__AVX512F__)
constexpr int kFloatRM = 4, kFloatRN = 6;  // 24 accumulators of 32 registers
constexpr int kQuantRM = 4, kQuantRN = 4;
#else
constexpr int kFloatRM = 3, kFloatRN = 4;  // 12 accumulators of 16 registers
constexpr int kQuantRM = 2, kQuantRN = 4;
#endif

// The float kernel's vector: 16 lanes with AVX-512 (full-width FMA on Zen 5 and
// Intel), 8 with AVX2.
#if defined(__AVX512F__)
using FVec = __m512;
constexpr int kLanes = 16;
inline FVec fzero() { return _mm512_setzero_ps(); }
inline FVec fmadd(FVec a, FVec b, FVec c) { return _mm512_fmadd_ps(a, b, c); }
inline FVec fload(const float* p) { return _mm512_loadu_ps(p); }
inline float fsum(FVec v) { return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1))); }
template <DType T>
inline FVec load_w(const uint8_t* row, int64_t k) {
  if constexpr (T == DType::kF32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(reinterpret_cast<const uint16_t*>(row) + k));
    if constexpr (T == DType::kF16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}
#else
using FVec = __m256;
constexpr int kLanes = 8;
inline FVec fzero() { return _mm256_setzero_ps(); }
inline FVec fmadd(FVec a, FVec b, FVec c) { return _mm256_fmadd_ps(a, b, c); }
inline FVec fload(const float* p) { return _mm256_loadu_ps(p); }
inline float fsum(FVec v) { return hsum(v); }
template <DType T>
inline FVec load_w(const uint8_t* row, int64_t k) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + k));
    if constexpr (T == DType::kF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}
#endif
#else
constexpr int kFloatRM = 1, kFloatRN = 1;
constexpr int kQuantRM = 1, kQuantRN = 1;
#endif

inline float load1(DType t, const uint8_t* row, int64_t k) {
  switch (t) {
    case DType::kF16: return fp16_to_fp32(reinterpret_cast<const uint16_t*>(row)[k]);
    case DType::kBF16: return bf16_to_fp32(reinterpret_cast<const uint16_t*>(row)[k]);
    default: return reinterpret_cast<const float*>(row)[k];
  }
}

#ifdef DS_SIMD_AVX2
#endif

// Float-activation kernel for F32/F16/BF16 weights.
template <DType T>
struct FloatKernel {
  static constexpr int kRM = kFloatRM, kRN = kFloatRN;
  template <int RM, int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const uint8_t* w[RM];
    const float* a[RN];
    for (int r = 0; r < RM; ++r) w[r] = t.w + (i0 + r) * t.w_stride;
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const float*>(t.a + (j0 + c) * t.a_stride);
    float sum[RM][RN];
    int64_t k = 0;
#ifdef DS_SIMD_AVX2
    FVec acc[RM][RN];
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = fzero();
    for (; k + kLanes <= t.k; k += kLanes) {
      FVec wv[RM];
      for (int r = 0; r < RM; ++r) {
        // GEMV streams weights from DRAM: fetch the next tile's rows (RM rows on) now.
        constexpr int64_t kEs = T == DType::kF32 ? 4 : 2, kPerLine = 64 / kEs;
        if (RN <= 2 && (kLanes >= kPerLine || k % kPerLine == 0)) _mm_prefetch(reinterpret_cast<const char*>(w[r] + k * kEs) + RM * t.w_stride, _MM_HINT_T0);
        wv[r] = load_w<T>(w[r], k);
      }
      for (int c = 0; c < RN; ++c) {
        const FVec av = fload(a[c] + k);
        for (int r = 0; r < RM; ++r) acc[r][c] = fmadd(wv[r], av, acc[r][c]);
      }
    }
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) sum[r][c] = fsum(acc[r][c]);
#else
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) sum[r][c] = 0;
#endif
    for (; k < t.k; ++k)
      for (int r = 0; r < RM; ++r)
        for (int c = 0; c < RN; ++c) sum[r][c] = std::fma(load1(T, w[r], k), a[c][k], sum[r][c]);  // explicit fma: same rounding in every tile shape
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) t.y[(j0 + c) * t.y_stride + i0 + r] = sum[r][c];
  }
};

// Quantized kernel: Q8_0 / Q4_0 weights x BlockQ8A activations.
template <DType T>
struct QuantKernel {
  static constexpr int kRM = kQuantRM, kRN = kQuantRN;
  using WBlock = std::conditional_t<T == DType::kQ8_0, BlockQ8_0, BlockQ4_0>;

  // Integer dot of one weight block with one activation block (scalar reference path).
  static int32_t dot_block_scalar(const WBlock& wb, const BlockQ8A& ab) {
    int32_t s = 0;
    if constexpr (T == DType::kQ8_0) {
      for (int k = 0; k < 32; ++k) s += wb.qs[k] * ab.qs[k];
    } else {
      for (int k = 0; k < 16; ++k) {
        s += ((wb.qs[k] & 0xF) - 8) * ab.qs[k];
        s += ((wb.qs[k] >> 4) - 8) * ab.qs[k + 16];
      }
    }
    return s;
  }

#ifdef DS_SIMD_AVX2
  // Weight block as 32 bytes ready for the dot instruction: unsigned (VNNI, the
  // activation's sum corrects the offset) or signed (AVX2 sign trick).
  static inline __m256i load_w(const WBlock& wb) {
    if constexpr (T == DType::kQ8_0) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs));
#ifdef DS_SIMD_VNNI
      return _mm256_xor_si256(q, _mm256_set1_epi8(static_cast<char>(0x80)));  // q + 128 as u8
#else
      return q;
#endif
    } else {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.qs));
      const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
      const __m256i u = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));  // 0..15
#ifdef DS_SIMD_VNNI
      return u;
#else
      return _mm256_sub_epi8(u, _mm256_set1_epi8(8));
#endif
    }
  }
  static constexpr int32_t kOffset = T == DType::kQ8_0 ? 128 : 8;

  // 8 lanes of int32 partial sums of w . a.
  static inline __m256i dot(__m256i wv, const BlockQ8A& ab) {
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.qs));
#ifdef DS_SIMD_VNNI
    // sum((w + off) * a) - off * sum(a): the correction rides in lane 0 of the addend.
    const __m256i init = _mm256_castsi128_si256(_mm_cvtsi32_si128(-kOffset * ab.sum));
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(init, wv, av);
#else
    return _mm256_dpbusd_avx_epi32(init, wv, av);
#endif
#else
    const __m256i ax = _mm256_sign_epi8(wv, wv);
    const __m256i sy = _mm256_sign_epi8(av, wv);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
#endif
  }
#endif

  template <int RM, int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const WBlock* w[RM];
    const BlockQ8A* a[RN];
    for (int r = 0; r < RM; ++r) w[r] = reinterpret_cast<const WBlock*>(t.w + (i0 + r) * t.w_stride);
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8A*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / 32;
    float sum[RM][RN];
#ifdef DS_SIMD_AVX2
    __m256 acc[RM][RN];
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256i wv[RM];
      __m256 dw[RM];
      for (int r = 0; r < RM; ++r) {
        // GEMV streams weights from DRAM: fetch the next tile's rows (RM rows on) now.
        if (RN <= 2) _mm_prefetch(reinterpret_cast<const char*>(&w[r][b]) + RM * t.w_stride, _MM_HINT_T0);
        wv[r] = load_w(w[r][b]);
        dw[r] = _mm256_set1_ps(fp16_to_fp32(w[r][b].d));
      }
      for (int c = 0; c < RN; ++c) {
        const __m256 da = _mm256_set1_ps(a[c][b].d);
        for (int r = 0; r < RM; ++r) {
          const __m256 p = _mm256_cvtepi32_ps(dot(wv[r], a[c][b]));
          acc[r][c] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw[r], da), acc[r][c]);
        }
      }
    }
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) sum[r][c] = hsum(acc[r][c]);
#else
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) {
        float s = 0;
        for (int64_t b = 0; b < nb; ++b)
          s += static_cast<float>(dot_block_scalar(w[r][b], a[c][b])) * (fp16_to_fp32(w[r][b].d) * a[c][b].d);
        sum[r][c] = s;
      }
#endif
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) t.y[(j0 + c) * t.y_stride + i0 + r] = sum[r][c];
  }
};

template <class K, int RM, int RN>
void tile_rn(const TileArgs& t, int64_t i0, int64_t j0, int rn) {
  if constexpr (RN >= 1) {
    if (rn == RN) return K::template tile<RM, RN>(t, i0, j0);
    tile_rn<K, RM, RN - 1>(t, i0, j0, rn);
  }
}

// Computes output rows [r0, r1) of W for all n activation rows.
template <class K>
void run_tiles(const TileArgs& t, int64_t r0, int64_t r1, int64_t n) {
  int64_t i = r0;
  for (; i + K::kRM <= r1; i += K::kRM)
    for (int64_t j = 0; j < n; j += K::kRN) tile_rn<K, K::kRM, K::kRN>(t, i, j, static_cast<int>(std::min<int64_t>(K::kRN, n - j)));
  for (; i < r1; ++i)
    for (int64_t j = 0; j < n; j += K::kRN) tile_rn<K, 1, K::kRN>(t, i, j, static_cast<int>(std::min<int64_t>(K::kRN, n - j)));
}

template <class K>
void run_parallel(ThreadPool& pool, const TileArgs& t, int64_t rows, int64_t n) {
  // Split rows in whole tiles so every thread runs full-width tiles.
  const int64_t units = (rows + K::kRM - 1) / K::kRM;
  pool.run([&](int ith, int nth) {
    int64_t b, e;
    ThreadPool::split(units, ith, nth, &b, &e);
    run_tiles<K>(t, b * K::kRM, std::min(rows, e * K::kRM), n);
  });
}

}  // namespace

void quantize_row_q8a(const float* x, BlockQ8A* out, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(xb[k]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int k = 0; k < 32; ++k) {
      const int8_t q = static_cast<int8_t>(std::nearbyint(xb[k] * id));
      out[b].qs[k] = q;
      sum += q;
    }
    out[b].d = d;
    out[b].sum = sum;
  }
}

void matmul(ThreadPool& pool, const WeightRef& w, const float* x, int64_t n, float* y, std::vector<uint8_t>* scratch) {
  TileArgs t{static_cast<const uint8_t*>(w.data), w.row_stride(), reinterpret_cast<const uint8_t*>(x),
             static_cast<size_t>(w.cols) * sizeof(float), w.cols, y, w.rows};
  switch (w.type) {
    case DType::kF32: return run_parallel<FloatKernel<DType::kF32>>(pool, t, w.rows, n);
    case DType::kF16: return run_parallel<FloatKernel<DType::kF16>>(pool, t, w.rows, n);
    case DType::kBF16: return run_parallel<FloatKernel<DType::kBF16>>(pool, t, w.rows, n);
    case DType::kQ8_0:
    case DType::kQ4_0: {
      const int64_t nb = w.cols / 32;
      const size_t a_stride = static_cast<size_t>(nb) * sizeof(BlockQ8A);
      if (scratch->size() < a_stride * n) scratch->resize(a_stride * n);
      uint8_t* qa = scratch->data();
      pool.run([&](int ith, int nth) {
        int64_t b, e;
        ThreadPool::split(n, ith, nth, &b, &e);
        for (int64_t j = b; j < e; ++j)
          quantize_row_q8a(x + j * w.cols, reinterpret_cast<BlockQ8A*>(qa + j * a_stride), w.cols);
      });
      t.a = qa;
      t.a_stride = a_stride;
      if (w.type == DType::kQ8_0) return run_parallel<QuantKernel<DType::kQ8_0>>(pool, t, w.rows, n);
      return run_parallel<QuantKernel<DType::kQ4_0>>(pool, t, w.rows, n);
    }
    default:
      return;  // REQUIRES: supported type (checked when the model loads)
  }
}

}  // namespace ds::cpu
