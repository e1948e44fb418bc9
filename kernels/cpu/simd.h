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

// Element loads of the second operand of dot / axpy: floats as they are, halves (an F16 KV
// cache) widened exactly. One template body serves both, so the F16 versions do the F32
// versions' operations in the same order: the same bits as F32 over the widened values.
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return fp16_to_fp32(*p); }
#ifdef DS_SIMD_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif

// Dot product of a with b (floats or halves) over n elements (fixed summation order).
template <class B>
inline float dot(const float* a, const B* b, int64_t n) {
  int64_t k = 0;
  float sum = 0;
#ifdef DS_SIMD_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; k + 16 <= n; k += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), load8(b + k), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), load8(b + k + 8), acc1);
  }
  for (; k + 8 <= n; k += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), load8(b + k), acc0);
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; k < n; ++k) sum = tail_fma(a[k], load1(b + k), sum);
  return sum;
}

// y += a * x over n elements of x (floats or halves).
template <class X>
inline void axpy(float a, const X* x, float* y, int64_t n) {
  int64_t k = 0;
#ifdef DS_SIMD_AVX2
  const __m256 av = _mm256_set1_ps(a);
  for (; k + 8 <= n; k += 8) _mm256_storeu_ps(y + k, _mm256_fmadd_ps(av, load8(x + k), _mm256_loadu_ps(y + k)));
#endif
  for (; k < n; ++k) y[k] = tail_fma(a, load1(x + k), y[k]);
}

inline float dot_f32(const float* a, const float* b, int64_t n) { return dot(a, b, n); }
inline void axpy_f32(float a, const float* x, float* y, int64_t n) { axpy(a, x, y, n); }
inline float dot_f32_f16(const float* a, const uint16_t* b, int64_t n) { return dot(a, b, n); }
inline void axpy_f32_f16(float a, const uint16_t* x, float* y, int64_t n) { axpy(a, x, y, n); }

}  // namespace ds::cpu
