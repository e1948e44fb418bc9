#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/matmul_tiles.h"
#include "kernels/cpu/simd.h"

DS_CPU_BEGIN
namespace {

#ifdef DS_SIMD_AVX2
#if defined(DS_CPU_AVX512)
constexpr int kFloatRM = 5, kFloatRN = 5;  // 25 accumulators, 5 weight vectors, 1 activation: 31 of 32 registers
constexpr int kQuantRM = 4, kQuantRN = 4;
constexpr int kKQuantRM = 2, kKQuantRN = 4;  // k-quants: 8 int32 + 8 float accumulators
#else
constexpr int kFloatRM = 3, kFloatRN = 4;  // 12 accumulators of 16 registers
constexpr int kQuantRM = 2, kQuantRN = 4;
constexpr int kKQuantRM = 2, kKQuantRN = 2;
#endif

// The float kernel's vector: 16 lanes with AVX-512 (full-width FMA on Zen 5 and
// Intel), 8 with AVX2.
#if defined(DS_CPU_AVX512)
using FVec = __m512;
constexpr int kLanes = 16;
inline FVec fzero() { return _mm512_setzero_ps(); }
inline FVec fmadd(FVec a, FVec b, FVec c) { return _mm512_fmadd_ps(a, b, c); }
inline FVec fload(const float* p) { return _mm512_loadu_ps(p); }
inline float fsum(FVec v) { return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1))); }
// Keeps a loaded operand in its register. Left alone, GCC folds every load into each FMA that
// uses it (a 5 x 5 tile then issues 5 loads per 5 FMAs instead of 10 loads per 25), and 512-bit
// loads, not FMAs, set the pace: on the dev VM (Zen 5) the F32 kernel ran at 33 GMAC/s on one
// thread (2048 x 768, 128 activation rows), 71 with the operands pinned; F16 39 -> 82. (The
// 256-bit kernel is at its FMA peak either way and pins nothing: pinning slowed its GEMV.)
inline void pin(FVec& v) { __asm__("" : "+v"(v)); }
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
inline void pin(FVec&) {}
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
constexpr int kKQuantRM = 1, kKQuantRN = 1;
#endif

inline float load1(DType t, const uint8_t* row, int64_t k) {
  switch (t) {
    case DType::kF16: return fp16_to_fp32(reinterpret_cast<const uint16_t*>(row)[k]);
    case DType::kBF16: return bf16_to_fp32(reinterpret_cast<const uint16_t*>(row)[k]);
    default: return reinterpret_cast<const float*>(row)[k];
  }
}

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
        pin(wv[r]);
      }
      for (int c = 0; c < RN; ++c) {
        FVec av = fload(a[c] + k);
        pin(av);
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
        // tail_fma: one rounding (fused) where the vectors fuse, so the same in every tile shape;
        // in the plain build (no FMA instruction) a multiply and an add, not a libm fmaf call per
        // element.
        for (int c = 0; c < RN; ++c) sum[r][c] = tail_fma(load1(T, w[r], k), a[c][k], sum[r][c]);
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
    return dpbusd256(init, wv, av);
#else
    const __m256i ax = _mm256_sign_epi8(wv, wv);
    const __m256i sy = _mm256_sign_epi8(av, wv);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
#endif
  }
#endif

#ifdef DS_QUANT_PAIRS
  // Two blocks in one zmm: block b in the low 256 bits, b + 1 (or zeros: nothing, for an
  // odd last block) in the high ones.
  static inline __m512i pair_i(__m256i lo, const __m256i* hi) {
    return hi ? _mm512_inserti64x4(_mm512_castsi256_si512(lo), *hi, 1) : _mm512_zextsi256_si512(lo);
  }
  // Blocks b0 and b1 (null: zeros) as pair_i(load_w(b0), load_w(b1)) would give them.
  static inline __m512i load_w2(const WBlock& b0, const WBlock* b1) {
    if constexpr (T == DType::kQ8_0) {
      const __m256i hi = b1 ? load_w(*b1) : _mm256_setzero_si256();
      return pair_i(load_w(b0), b1 ? &hi : nullptr);
    } else {  // Q4_0: [qs0, qs1, qs0 >> 4, qs1 >> 4] in 128-bit lanes, reordered to [0, 2, 1, 3]
      const __m128i* q0 = reinterpret_cast<const __m128i*>(b0.qs);
      const __m256i raw = b1 ? _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(b1->qs), q0)
                             : _mm256_zextsi128_si256(_mm_loadu_si128(q0));
      const __m512i t = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1);
      return _mm512_and_si512(_mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(3, 1, 2, 0)), _mm512_set1_epi8(0x0F));
    }
  }
  static inline __m512 pair_f(float lo, const float* hi) {
    const __m512 l = _mm512_zextps256_ps512(_mm256_set1_ps(lo));
    return hi ? _mm512_insertf32x8(l, _mm256_set1_ps(*hi), 1) : l;
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
#if defined(DS_QUANT_PAIRS)
    // Blocks b and b + 1 at once (512-bit VNNI): per pair of blocks and (row, column) one
    // dot, one convert, one scale product and one FMA, half the 256-bit path's count. Lane
    // 8 q + l holds block b + q's partial sums; the correction -offset * sum(a) rides in
    // lanes 0 and 8. The sequence per output depends on k only, not on the tile or batch.
    __m512 acc[RM][RN];
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {
      const bool two = b + 1 < nb;
      __m512i wv[RM];
      __m512 dw[RM];
      for (int r = 0; r < RM; ++r) {
        // The first column tile of these rows streams them from DRAM (a GEMV's only one; at
        // batch 8 too, where the hardware prefetchers alone left the kernel waiting on memory:
        // 2.2x at batch 8): fetch two tiles ahead (2 * RM rows on) now.
        if (RN <= 2 || j0 == 0) {
          const char* ahead = reinterpret_cast<const char*>(&w[r][b]) + 2 * RM * t.w_stride;
          _mm_prefetch(ahead, _MM_HINT_T0);
          _mm_prefetch(ahead + sizeof(WBlock), _MM_HINT_T0);
        }
        const float dhi = two ? fp16_to_fp32(w[r][b + 1].d) : 0.0f;
        wv[r] = load_w2(w[r][b], two ? &w[r][b + 1] : nullptr);
        dw[r] = pair_f(fp16_to_fp32(w[r][b].d), two ? &dhi : nullptr);
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8A& a0 = a[c][b];
        const BlockQ8A* a1 = two ? &a[c][b + 1] : nullptr;
        const __m256i ahi = a1 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a1->qs)) : __m256i{};
        const __m512i av = pair_i(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a0.qs)), a1 ? &ahi : nullptr);
        const __m512 da = pair_f(a0.d, a1 ? &a1->d : nullptr);
        const __m512i init = _mm512_maskz_set1_epi32(1, -kOffset * a0.sum);
        const __m512i corr = a1 ? _mm512_mask_set1_epi32(init, 1 << 8, -kOffset * a1->sum) : init;
        for (int r = 0; r < RM; ++r) {
          const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, wv[r], av));
          acc[r][c] = _mm512_fmadd_ps(p, _mm512_mul_ps(dw[r], da), acc[r][c]);
        }
      }
    }
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c)
        sum[r][c] = hsum(_mm256_add_ps(_mm512_castps512_ps256(acc[r][c]), _mm512_extractf32x8_ps(acc[r][c], 1)));
#elif defined(DS_SIMD_AVX2)
    __m256 acc[RM][RN];
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256i wv[RM];
      __m256 dw[RM];
      for (int r = 0; r < RM; ++r) {
        // The first column tile of these rows streams them from DRAM: fetch two tiles ahead.
        if (RN <= 2 || j0 == 0) _mm_prefetch(reinterpret_cast<const char*>(&w[r][b]) + 2 * RM * t.w_stride, _MM_HINT_T0);
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

// K-quant kernel: Q4_K / Q6_K weights x BlockQ8K activations, one super-block of 256
// at a time. Per (weight row, activation row) and super-block the integer part is exact:
//   Q4_K: sumi = sum_j sc_j * sum_l q * a (sub-blocks of 32), summ = sum_j m_j * sum_l a
//   Q6_K: sumi = sum_k sc_k * sum_l (q - 32) * a (sub-blocks of 16)
// (ggml's vec_dot_q4_K_q8_K / q6_K_q8_K), then the float part is
//   s += sumi * (d * da) [- summ * (dmin * da)].
// Integer dots: maddubs (unsigned weight x signed activation) then a multiply-add with
// the int16 sub-block scales (dpwssd with VNNI); with AVX-512BW two 32-weight vectors go
// through each zmm instruction and the 16 int32 lanes are folded to 8 (exact). The SIMD
// path keeps sumi split over 8 int32 lanes and accumulates the float part per lane (one
// fmadd per super-block), reduced once at the end; the scalar path (no AVX2) accumulates
// scalars. Either way each output's sequence ignores the tile shape and batch size.
#if defined(DS_SIMD_AVX2) && defined(DS_CPU_AVX512)
#define DS_KQ_AVX512 1
#endif

template <DType T>
struct KQuantKernel {
  static constexpr int kRM = kKQuantRM, kRN = kKQuantRN;
  static constexpr bool kQ4 = T == DType::kQ4_K;
  using WBlock = std::conditional_t<kQ4, BlockQ4_K, BlockQ6_K>;

  static void dot_scalar(const WBlock& wb, const BlockQ8K& ab, int32_t* sumi, int32_t* summ) {
    int32_t si = 0, sm = 0;
    if constexpr (kQ4) {
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        q4k_scale_min(wb.scales, j, &sc, &m);
        const uint8_t* q = wb.qs + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        int32_t s = 0;
        for (int l = 0; l < 32; ++l) s += ((q[l] >> shift) & 0xF) * ab.qs[32 * j + l];
        si += sc * s;
        sm += m * (ab.bsums[2 * j] + ab.bsums[2 * j + 1]);
      }
    } else {
      for (int e0 = 0; e0 < kQK_K; e0 += 16) {
        const int h = e0 / 128, v = (e0 % 128) / 32;  // half, 32-wide vector within it
        const uint8_t* ql = wb.ql + 64 * h + 32 * (v % 2);
        const uint8_t* qh = wb.qh + 32 * h;
        int32_t s = 0;
        for (int i = 0; i < 16; ++i) {
          const int l = e0 % 32 + i;
          const int q = ((ql[l] >> (4 * (v / 2))) & 0xF) | (((qh[l] >> (2 * v)) & 3) << 4);
          s += (q - 32) * ab.qs[e0 + i];
        }
        si += wb.scales[e0 / 16] * s;
      }
    }
    *sumi = si;
    *summ = sm;
  }

#ifdef DS_SIMD_AVX2
  // isum += scale16 * maddubs(w, a): w unsigned (0..15 or 0..63), a signed; the int16
  // pair sums stay below 2 * 63 * 127, and the scale is constant over each 16-wide
  // half-lane, so the int32 result is exact.
  static inline __m256i dot_acc(__m256i isum, __m256i w, __m256i a, __m256i scale16) {
    const __m256i p = _mm256_maddubs_epi16(w, a);
#if defined(DS_SIMD_VNNI) && defined(DS_CPU_AVX512VNNI)
    return _mm256_dpwssd_epi32(isum, p, scale16);
#elif defined(DS_SIMD_VNNI)
    return _mm256_dpwssd_avx_epi32(isum, p, scale16);
#else
    return _mm256_add_epi32(isum, _mm256_madd_epi16(p, scale16));
#endif
  }

  // Shuffle control that broadcasts int16 element lo (low 128-bit lane) and hi (high
  // lane) of a vector whose lanes hold the same 8 int16.
  static inline __m256i pick16(int lo, int hi) {
    return _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(0x0100 + 0x0202 * hi)),
                            _mm_set1_epi16(static_cast<int16_t>(0x0100 + 0x0202 * lo)));
  }

  // Per weight row and super-block: what every activation row shares.
  struct RowPrep {
    __m256i scales;  // Q4_K: sc[0..7] as int16 in both lanes. Q6_K: scales[0..15] as int16.
    __m256i extra;   // Q4_K: m[0..7] as int16, each twice (pairs with bsums). Q6_K: unused.
#ifdef DS_KQ_AVX512
    __m512i s512[2];  // Q4_K: sc[0..7] as int16 in every 128-bit lane. Q6_K: half h's 8 scales, likewise.
#endif
    float d, dmin;
  };
  static inline RowPrep prep(const WBlock& wb) {
    RowPrep p;
    p.d = fp16_to_fp32(wb.d);
    if constexpr (kQ4) {
      p.dmin = fp16_to_fp32(wb.dmin);
      // Unpack the 12 bytes of 6-bit scales and mins into sc[0..7], m[0..7].
      uint32_t u[3];
      std::memcpy(u, wb.scales, 12);
      constexpr uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
      const uint32_t out[4] = {u[0] & k6, (u[2] & k4) | (((u[0] >> 6) & k2) << 4), u[1] & k6,
                               ((u[2] >> 4) & k4) | (((u[1] >> 6) & k2) << 4)};
      const __m256i sm = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(out)));
      const __m128i sc = _mm256_castsi256_si128(sm), m = _mm256_extracti128_si256(sm, 1);
      p.scales = _mm256_set_m128i(sc, sc);
      p.extra = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
#ifdef DS_KQ_AVX512
      p.s512[0] = p.s512[1] = _mm512_broadcast_i32x4(sc);
#endif
    } else {
      p.dmin = 0;
      p.scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.scales)));
      p.extra = _mm256_setzero_si256();
#ifdef DS_KQ_AVX512
      p.s512[0] = _mm512_broadcast_i32x4(_mm256_castsi256_si128(p.scales));
      p.s512[1] = _mm512_broadcast_i32x4(_mm256_extracti128_si256(p.scales, 1));
#endif
    }
    return p;
  }

  // The s-th 32 weights (s < 8) as unsigned bytes, and their int16 scales per 16-wide half.
  template <int S>
  static inline __m256i weights(const WBlock& wb) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    if constexpr (kQ4) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * (S / 2)));
      return _mm256_and_si256(S % 2 ? _mm256_srli_epi16(raw, 4) : raw, m4);
    } else {
      constexpr int h = S / 4, v = S % 4;
      const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.ql + 64 * h + 32 * (v % 2)));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qh + 32 * h));
      const __m256i lo = _mm256_and_si256(v / 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
      __m256i hi = _mm256_and_si256(qh, _mm256_set1_epi8(static_cast<char>(3 << (2 * v))));  // bits 2v, 2v+1
      if constexpr (v < 2) hi = _mm256_slli_epi16(hi, 4 - 2 * v);  // to bits 4, 5 (within each byte)
      if constexpr (v == 3) hi = _mm256_srli_epi16(hi, 2);
      return _mm256_or_si256(lo, hi);
    }
  }
  template <int S>
  static inline __m256i scales(const RowPrep& p) {
    if constexpr (kQ4) {
      return _mm256_shuffle_epi8(p.scales, pick16(S, S));
    } else {
      // Sub-blocks 2S and 2S + 1 (elements 32 S ..): lane h of scales holds 8 h .. 8 h + 7.
      constexpr int h = S / 4, v = S % 4;
      const __m256i lanes = _mm256_permute2x128_si256(p.scales, p.scales, h ? 0x11 : 0x00);
      return _mm256_shuffle_epi8(lanes, pick16(2 * v, 2 * v + 1));
    }
  }

  template <int S, int RM, int RN>
  static inline void step(const WBlock* const* w, const BlockQ8K* const* a, int64_t b, const RowPrep* p, __m256i (&isum)[RM][RN]) {
    __m256i wv[RM], sv[RM];
    for (int r = 0; r < RM; ++r) {
      wv[r] = weights<S>(w[r][b]);
      sv[r] = scales<S>(p[r]);
    }
    for (int c = 0; c < RN; ++c) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[c][b].qs + 32 * S));
      for (int r = 0; r < RM; ++r) isum[r][c] = dot_acc(isum[r][c], wv[r], av, sv[r]);
    }
  }

#ifdef DS_KQ_AVX512
  // 512-bit variant: the s-th pair of 32-weight vectors (elements 64 P ..) in one zmm,
  // half the instructions; the integer sums are the same exact values.
  static inline __m512i dot_acc512(__m512i isum, __m512i w, __m512i a, __m512i scale16) {
    const __m512i p = _mm512_maddubs_epi16(w, a);
#ifdef DS_CPU_AVX512VNNI
    return _mm512_dpwssd_epi32(isum, p, scale16);
#else
    return _mm512_add_epi32(isum, _mm512_madd_epi16(p, scale16));
#endif
  }
  // Shuffle control: 128-bit lane k broadcasts int16 element e_k of its lane.
  static inline __m512i pick16x4(int e0, int e1, int e2, int e3) {
    auto v = [](int e) { const int x = 0x0100 + 0x0202 * e; return x | (x << 16); };
    return _mm512_set_epi32(v(e3), v(e3), v(e3), v(e3), v(e2), v(e2), v(e2), v(e2), v(e1), v(e1), v(e1), v(e1), v(e0), v(e0),
                            v(e0), v(e0));
  }
  template <int P>
  static inline __m512i weights2(const WBlock& wb) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    if constexpr (kQ4) {
      // Low nibbles: sub-block 2P; high nibbles: sub-block 2P + 1.
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qs + 32 * P));
      return _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1), m4);
    } else {
      // Half h = P / 2; q = P % 2 picks the low (vectors 0, 1) or high (2, 3) nibbles of ql
      // and qh bits 0-3 or 4-7 (2 bits per vector: low 256 bits, then high 256 bits).
      constexpr int h = P / 2, q = P % 2;
      const __m512i ql = _mm512_loadu_si512(wb.ql + 64 * h);
      const __m512i lo = _mm512_and_si512(q ? _mm512_srli_epi16(ql, 4) : ql, m4);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb.qh + 32 * h)));
      const __m512i mask = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(static_cast<char>(q ? 0x30 : 0x03))),
                                              _mm256_set1_epi8(static_cast<char>(q ? 0xC0 : 0x0C)), 1);
      const __m512i bits = _mm512_and_si512(qh, mask);  // shift each half's 2 bits to bits 4, 5
      const __m512i hi = q ? _mm512_srlv_epi16(bits, _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1))
                           : _mm512_sllv_epi16(bits, _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1));
      return _mm512_or_si512(lo, hi);
    }
  }
  template <int P>
  static inline __m512i scales2(const RowPrep& p) {
    if constexpr (kQ4) {
      return _mm512_shuffle_epi8(p.s512[0], pick16x4(2 * P, 2 * P, 2 * P + 1, 2 * P + 1));
    } else {
      constexpr int h = P / 2, q = P % 2;  // sub-blocks 8h + 4q + k in lane k
      return _mm512_shuffle_epi8(p.s512[h], pick16x4(4 * q, 4 * q + 1, 4 * q + 2, 4 * q + 3));
    }
  }
  template <int P, int RM, int RN>
  static inline void step2(const WBlock* const* w, const BlockQ8K* const* a, int64_t b, const RowPrep* p, __m512i (&isum)[RM][RN]) {
    __m512i wv[RM], sv[RM];
    for (int r = 0; r < RM; ++r) {
      wv[r] = weights2<P>(w[r][b]);
      sv[r] = scales2<P>(p[r]);
    }
    for (int c = 0; c < RN; ++c) {
      const __m512i av = _mm512_loadu_si512(a[c][b].qs + 64 * P);
      for (int r = 0; r < RM; ++r) isum[r][c] = dot_acc512(isum[r][c], wv[r], av, sv[r]);
    }
  }
#endif
#endif

  template <int RM, int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const WBlock* w[RM];
    const BlockQ8K* a[RN];
    for (int r = 0; r < RM; ++r) w[r] = reinterpret_cast<const WBlock*>(t.w + (i0 + r) * t.w_stride);
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8K*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / kQK_K;
    float sum[RM][RN];
#ifdef DS_SIMD_AVX2
    __m256 acc[RM][RN];
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      RowPrep p[RM];
      for (int r = 0; r < RM; ++r) {
        if (RN <= 2) {
          // GEMV streams weights from DRAM: fetch the next tile's rows (RM rows on) now.
          const char* next = reinterpret_cast<const char*>(&w[r][b]) + RM * t.w_stride;
          for (size_t off = 0; off < sizeof(WBlock); off += 64) _mm_prefetch(next + off, _MM_HINT_T0);
        }
        p[r] = prep(w[r][b]);
      }
      __m256i isum[RM][RN];
#ifdef DS_KQ_AVX512
      {
        // Two independent chains (even and odd pairs) halve the dpwssd latency chain.
        __m512i ie[RM][RN], io[RM][RN];
        for (int r = 0; r < RM; ++r)
          for (int c = 0; c < RN; ++c) ie[r][c] = io[r][c] = _mm512_setzero_si512();
        step2<0>(w, a, b, p, ie);
        step2<1>(w, a, b, p, io);
        step2<2>(w, a, b, p, ie);
        step2<3>(w, a, b, p, io);
        for (int r = 0; r < RM; ++r)
          for (int c = 0; c < RN; ++c) {
            const __m512i i = _mm512_add_epi32(ie[r][c], io[r][c]);
            isum[r][c] = _mm256_add_epi32(_mm512_castsi512_si256(i), _mm512_extracti64x4_epi64(i, 1));
          }
      }
#else
      for (int r = 0; r < RM; ++r)
        for (int c = 0; c < RN; ++c) isum[r][c] = _mm256_setzero_si256();
      step<0>(w, a, b, p, isum);
      step<1>(w, a, b, p, isum);
      step<2>(w, a, b, p, isum);
      step<3>(w, a, b, p, isum);
      step<4>(w, a, b, p, isum);
      step<5>(w, a, b, p, isum);
      step<6>(w, a, b, p, isum);
      step<7>(w, a, b, p, isum);
#endif
      for (int c = 0; c < RN; ++c) {
        const float da = a[c][b].d;
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[c][b].bsums));
        for (int r = 0; r < RM; ++r) {
          if constexpr (kQ4) {
            const __m256i mins = _mm256_madd_epi16(bs, p[r].extra);  // m_j * (bsums[2j] + bsums[2j+1])
            acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][c]), _mm256_set1_ps(p[r].d * da), acc[r][c]);
            acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(-(p[r].dmin * da)), acc[r][c]);
          } else {
            // q - 32: subtract 32 * sum_k scales[k] * bsums[k].
            const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(bs, p[r].scales), 5);
            const __m256i s = _mm256_sub_epi32(isum[r][c], off);
            acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(p[r].d * da), acc[r][c]);
          }
        }
      }
    }
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) sum[r][c] = hsum(acc[r][c]);
#else
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) {
        float s = 0;
        for (int64_t b = 0; b < nb; ++b) {
          int32_t sumi, summ;
          dot_scalar(w[r][b], a[c][b], &sumi, &summ);
          const float da = a[c][b].d;
          s = std::fma(static_cast<float>(sumi), fp16_to_fp32(w[r][b].d) * da, s);
          if constexpr (kQ4) s = std::fma(static_cast<float>(summ), -(fp16_to_fp32(w[r][b].dmin) * da), s);
        }
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

#if defined(DS_SIMD_AVX2) && !(defined(DS_CPU_AVX512))
namespace {
// Helpers of the AVX2 activation quantizers.
inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
inline float abs_max8(__m256 m) {  // the largest lane (exact in any order)
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}
inline int32_t hsum_i32(__m256i v) {
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1))));
}
// 8 int32 lanes (each within int8 range) stored as 8 bytes.
inline void store8_i8(int8_t* p, __m256i q) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w, w));
}
}  // namespace
#endif

void quantize_row_q8a(const float* x, BlockQ8A* out, int64_t n) {
  int64_t b = 0;
#if defined(DS_CPU_AVX512)
  // Same results as the scalar loop below: max of |x| is exact in any order, and
  // cvtps_epi32 rounds to nearest even like nearbyint in the default rounding mode.
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (; b < n / 32; ++b) {
    const float* xb = x + b * 32;
    const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16), _mm512_cvtsepi32_epi8(q1));
    out[b].d = d;
    out[b].sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  }
#elif defined(DS_SIMD_AVX2)
  for (; b < n / 32; ++b) {
    const float* xb = x + b * 32;
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    const float d = abs_max8(_mm256_max_ps(_mm256_max_ps(abs8(v[0]), abs8(v[1])), _mm256_max_ps(abs8(v[2]), abs8(v[3])))) / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i sum = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
      const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));
      store8_i8(out[b].qs + 8 * i, q);
      sum = _mm256_add_epi32(sum, q);
    }
    out[b].d = d;
    out[b].sum = hsum_i32(sum);
  }
#endif
  for (; b < n / 32; ++b) {
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

void quantize_row_q8k(const float* x, BlockQ8K* out, int64_t n) {
  int64_t b = 0;
  // The same bits as the scalar loop below (see quantize_row_q8a).
#if defined(DS_CPU_AVX512)
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < 16; ++i) m = _mm512_max_ps(m, _mm512_andnot_ps(sign, _mm512_loadu_ps(xb + 16 * i)));
    const float d = _mm512_reduce_max_ps(m) / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    for (int i = 0; i < 16; ++i) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * i), vid));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16 * i), _mm512_cvtsepi32_epi8(q));
      out[b].bsums[i] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
    out[b].d = d;
  }
#elif defined(DS_SIMD_AVX2)
  for (; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 32; ++i) m = _mm256_max_ps(m, abs8(_mm256_loadu_ps(xb + 8 * i)));
    const float d = abs_max8(m) / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    for (int i = 0; i < 16; ++i) {
      const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 16 * i), vid));
      const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 16 * i + 8), vid));
      store8_i8(out[b].qs + 16 * i, q0);
      store8_i8(out[b].qs + 16 * i + 8, q1);
      out[b].bsums[i] = static_cast<int16_t>(hsum_i32(_mm256_add_epi32(q0, q1)));
    }
    out[b].d = d;
  }
#endif
  for (; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    float amax = 0;
    for (int k = 0; k < kQK_K; ++k) amax = std::max(amax, std::fabs(xb[k]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    for (int i = 0; i < 16; ++i) {
      int32_t sum = 0;
      for (int k = 16 * i; k < 16 * i + 16; ++k) {
        const int8_t q = static_cast<int8_t>(std::nearbyint(xb[k] * id));
        out[b].qs[k] = q;
        sum += q;
      }
      out[b].bsums[i] = static_cast<int16_t>(sum);
    }
    out[b].d = d;
  }
}

namespace {

// Quantizes the n activation rows into scratch (blocks of Q elements) and points the
// tile arguments at them.
template <class Block, int Q>
void quantize_activations(ThreadPool& pool, const float* x, int64_t n, int64_t cols, std::vector<uint8_t>* scratch,
                          void (*quantize)(const float*, Block*, int64_t), TileArgs* t) {
  const size_t a_stride = static_cast<size_t>(cols / Q) * sizeof(Block);
  if (scratch->size() < a_stride * n) scratch->resize(a_stride * n);
  uint8_t* qa = scratch->data();
  pool.run([&](int ith, int nth) {
    int64_t b, e;
    ThreadPool::split(n, ith, nth, &b, &e);
    for (int64_t j = b; j < e; ++j) quantize(x + j * cols, reinterpret_cast<Block*>(qa + j * a_stride), cols);
  });
  t->a = qa;
  t->a_stride = a_stride;
}

}  // namespace

void matmul(ThreadPool& pool, const WeightRef& w, const float* x, int64_t n, float* y, std::vector<uint8_t>* scratch) {
  TileArgs t{static_cast<const uint8_t*>(w.data), w.row_stride(), reinterpret_cast<const uint8_t*>(x),
             static_cast<size_t>(w.cols) * sizeof(float), w.cols, y, w.rows};
  switch (w.type) {
    case DType::kF32: return run_parallel<FloatKernel<DType::kF32>>(pool, t, w.rows, n);
    case DType::kF16: return run_parallel<FloatKernel<DType::kF16>>(pool, t, w.rows, n);
    case DType::kBF16: return run_parallel<FloatKernel<DType::kBF16>>(pool, t, w.rows, n);
    case DType::kQ8_0:
    case DType::kQ4_0: {
      quantize_activations<BlockQ8A, 32>(pool, x, n, w.cols, scratch, quantize_row_q8a, &t);
      if (matmul_interleaved(pool, t, w, n)) return;
      if (w.type == DType::kQ8_0) return run_parallel<QuantKernel<DType::kQ8_0>>(pool, t, w.rows, n);
      return run_parallel<QuantKernel<DType::kQ4_0>>(pool, t, w.rows, n);
    }
    case DType::kQ4_K:
    case DType::kQ6_K: {
      // REQUIRES: cols % 256 == 0 (GGUF stores whole super-blocks; the reader checks it).
      quantize_activations<BlockQ8K, kQK_K>(pool, x, n, w.cols, scratch, quantize_row_q8k, &t);
      if (matmul_interleaved(pool, t, w, n)) return;
      if (w.type == DType::kQ4_K) return run_parallel<KQuantKernel<DType::kQ4_K>>(pool, t, w.rows, n);
      return run_parallel<KQuantKernel<DType::kQ6_K>>(pool, t, w.rows, n);
    }
    default:
      return;  // REQUIRES: supported type (checked when the model loads)
  }
}

DS_CPU_END
