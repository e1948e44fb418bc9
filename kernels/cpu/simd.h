// kernels/cpu/simd.h: small SIMD helpers shared by the CPU kernels (AVX2/FMA/F16C
// baseline, 256-bit vectors; on AVX-512 machines the same code gets 32 registers and
// VNNI). Every reduction has one fixed order so results never depend on tiling.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/isa.h"
#include "kernels/dtype.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#ifdef DS_CPU_AVX2
#define DS_SIMD_AVX2 1
#endif
#if defined(DS_SIMD_AVX2) && (defined(DS_CPU_AVX512VNNI) || defined(DS_CPU_AVXVNNI))
#define DS_SIMD_VNNI 1
#endif

DS_CPU_BEGIN

// a * b + c for the scalar tails: one fused operation where the vector code is FMA code (so a
// tail's bits never depend on whether the compiler contracted it in that inlining context),
// the plain expression otherwise (no FMA instruction to contract into).
inline float tail_fma(float a, float b, float c) {
#ifdef DS_SIMD_AVX2
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

#ifdef DS_SIMD_AVX2
inline float hsum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

#ifdef DS_SIMD_VNNI
// acc + per int32 lane the sum of 4 unsigned bytes of u times 4 signed bytes of a (VNNI, in its
// AVX-512 VL or its AVX-VNNI encoding).
inline __m256i dpbusd256(__m256i acc, __m256i u, __m256i a) {
#ifdef DS_CPU_AVX512VNNI
  return _mm256_dpbusd_epi32(acc, u, a);
#else
  return _mm256_dpbusd_avx_epi32(acc, u, a);
#endif
}
#endif

// Element loads of the second operand of dot_row / dot8_rows / axpy_rows: floats as they are,
// halves (an F16 KV cache) widened exactly. One template body serves both, so the F16 versions
// do the F32 versions' operations in the same order: the same bits as F32 over the widened values.
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return fp16_to_fp32(*p); }
#ifdef DS_SIMD_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif

// q . k over n elements (attention's score of one cached row; RMSNorm's sum of squares) with one
// 8-lane accumulator (k in steps of 8), summed as hsum does, then the scalar tail. dot8_rows
// gives the same bits for 8 rows at once (rows r of k at k + r * stride) when n % 8 == 0: their
// 8 accumulators run side by side (8 independent chains) and are summed in one transposed tree
// that adds, for each row, the same lanes in the same association as hsum.
template <class K>
inline float dot_row(const float* q, const K* k, int64_t n) {
  int64_t i = 0;
  float sum = 0;
#ifdef DS_SIMD_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc);
  sum = hsum(acc);
#endif
  for (; i < n; ++i) sum = tail_fma(q[i], load1(k + i), sum);
  return sum;
}

template <class K>
inline void dot8_rows(const float* q, const K* k, int64_t stride, int64_t n, float* out) {
#ifdef DS_SIMD_AVX2
  __m256 acc[8];
  for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, load8(k + r * stride + i), acc[r]);
  }
  // hsum(v) = ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)); s_j = v_j + v_{j+4} first.
  __m256 s[4];
  for (int r = 0; r < 8; r += 2)  // [s of row r | s of row r + 1]
    s[r / 2] = _mm256_add_ps(_mm256_permute2f128_ps(acc[r], acc[r + 1], 0x20), _mm256_permute2f128_ps(acc[r], acc[r + 1], 0x31));
  // t = (s0 + s2, s1 + s3) of each row: rows (r, r + 2 | r + 1, r + 3) per pair of s vectors.
  const __m256 t01 = _mm256_add_ps(_mm256_shuffle_ps(s[0], s[1], _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(s[0], s[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 t23 = _mm256_add_ps(_mm256_shuffle_ps(s[2], s[3], _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(s[2], s[3], _MM_SHUFFLE(3, 2, 3, 2)));
  // t01 = [t0 of row 0, t1 of row 0, t0 of row 2, t1 of row 2 | the same of rows 1, 3]; t23 likewise
  // for rows 4, 6 | 5, 7. Result lanes: rows 0, 2, 4, 6 | 1, 3, 5, 7.
  const __m256 res = _mm256_add_ps(_mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
  _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(res, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
  for (int r = 0; r < 8; ++r) out[r] = dot_row(q, k + r * stride, n);
#endif
}

// y[0..n) += (w[r] * scale) * x_r[0..n) for r = 0 .. rows - 1 in order, x_r = x + r * stride
// (floats or halves): one fma per element and row, rows in order, with 64 elements of y held in
// registers across the rows (attention's weighted sum of values).
template <class X>
inline void axpy_rows(float* y, const float* w, float scale, const X* x, int64_t stride, int rows, int64_t n) {
  int64_t k = 0;
#ifdef DS_SIMD_AVX2
  for (; k + 64 <= n; k += 64) {
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_loadu_ps(y + k + 8 * i);
    for (int r = 0; r < rows; ++r) {
      const __m256 a = _mm256_set1_ps(w[r] * scale);
      const X* xr = x + r * stride + k;
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(a, load8(xr + 8 * i), acc[i]);
    }
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(y + k + 8 * i, acc[i]);
  }
  for (; k + 8 <= n; k += 8) {
    __m256 acc = _mm256_loadu_ps(y + k);
    for (int r = 0; r < rows; ++r) acc = _mm256_fmadd_ps(_mm256_set1_ps(w[r] * scale), load8(x + r * stride + k), acc);
    _mm256_storeu_ps(y + k, acc);
  }
#endif
  for (; k < n; ++k)
    for (int r = 0; r < rows; ++r) y[k] = tail_fma(w[r] * scale, load1(x + r * stride + k), y[k]);
}

// exp(x) in float, within 2 ulp of the true value (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2,
// a degree-6 polynomial in r, times 2^n): x above 88 is taken as 88 (exp(88) ~ 1.7e38, finite),
// below -87.33 (past the smallest normal) the result is 0. exp_scalar is the SIMD version's
// exact twin (the same IEEE operations in the same order, fused where it fuses, NaN taken as
// 88 like min_ps), so an element's bits never depend on whether it fell in a vector or a tail.
// For the CPU backend's softmax and SiLU, where glibc's expf, one element at a time, was a
// large part of the prefill.
namespace expf_detail {
constexpr float kHi = 88.0f, kLo = -87.3365447505531f, kLog2e = 1.44269504088896341f;
constexpr float kC1 = -0.693359375f, kC2 = 2.12194440e-4f;  // -ln2 = kC1 + kC2 (kC1 exact in few bits)
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
}  // namespace expf_detail

inline float exp_scalar(float x) {
  using namespace expf_detail;
  x = x < kHi ? x : kHi;  // as _mm256_min_ps(x, kHi): NaN -> kHi
  const float n = std::nearbyint(x * kLog2e);
  float r = __builtin_fmaf(n, kC1, x);
  r = __builtin_fmaf(n, kC2, r);
  float p = __builtin_fmaf(kP0, r, kP1);
  p = __builtin_fmaf(p, r, kP2);
  p = __builtin_fmaf(p, r, kP3);
  p = __builtin_fmaf(p, r, kP4);
  p = __builtin_fmaf(p, r, kP5);
  const float y = __builtin_fmaf(p, r * r, r) + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < kLo ? 0.0f : y * scale;
}

#ifdef DS_SIMD_AVX2
inline __m256 exp8(__m256 x) {
  using namespace expf_detail;
  x = _mm256_min_ps(x, _mm256_set1_ps(kHi));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(kC1), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(kC2), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kLo), _CMP_NLT_UQ);  // !(x < kLo), as the scalar test
  return _mm256_and_ps(_mm256_mul_ps(y, scale), keep);
}
#endif

// The largest of s[0..n) (-inf for none; NaNs ignored, as std::max(m, s) ignores them): exact,
// so the same whatever the order.
inline float max_of(const float* s, int64_t n) {
  int64_t i = 0;
  float m = -INFINITY;
#ifdef DS_SIMD_AVX2
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(s + i), mv);  // NaN in s: mv kept
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  m = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
#endif
  for (; i < n; ++i) m = std::max(m, s[i]);
  return m;
}

// s[i] = exp(s[i] - mx) over n scores; returns their sum (lanes, then the tail, in one fixed
// order for a given n).
inline float exp_sub_sum(float* s, int64_t n, float mx) {
  int64_t i = 0;
  float sum = 0;
#ifdef DS_SIMD_AVX2
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), m));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  sum = hsum(acc);
#endif
  for (; i < n; ++i) sum += (s[i] = exp_scalar(s[i] - mx));
  return sum;
}

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i].
inline void swiglu_f32(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
#ifdef DS_SIMD_AVX2
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 d = _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign)));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, d), _mm256_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + exp_scalar(-gate[i])) * up[i];
}

DS_CPU_END
