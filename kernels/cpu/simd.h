// kernels/cpu/simd.h: small SIMD helpers shared by the CPU kernels (AVX2/FMA/F16C
// baseline, 256-bit vectors; on AVX-512 machines the same code gets 32 registers and
// VNNI). Every reduction has one fixed order so results never depend on tiling.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define DS_SIMD_AVX2 1
#include <immintrin.h>
#endif
#if defined(DS_SIMD_AVX2) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
#define DS_SIMD_VNNI 1
#endif

namespace ds::cpu {

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

// Dot product of two float vectors of length n (fixed summation order).
inline float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t k = 0;
  float sum = 0;
#ifdef DS_SIMD_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; k + 16 <= n; k += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
  }
  for (; k + 8 <= n; k += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}

// y += a * x over n floats.
inline void axpy_f32(float a, const float* x, float* y, int64_t n) {
  int64_t k = 0;
#ifdef DS_SIMD_AVX2
  const __m256 av = _mm256_set1_ps(a);
  for (; k + 8 <= n; k += 8) _mm256_storeu_ps(y + k, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k)));
#endif
  for (; k < n; ++k) y[k] += a * x[k];
}

// dst[0, n) = the halves src[0, n) as floats (exact).
inline void f16_to_f32_row(const uint16_t* src, float* dst, int64_t n) {
  int64_t k = 0;
#ifdef DS_SIMD_AVX2
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
#endif
  for (; k < n; ++k) dst[k] = fp16_to_fp32(src[k]);
}

}  // namespace ds::cpu
