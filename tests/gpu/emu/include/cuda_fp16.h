// tests/gpu/emu/include/cuda_fp16.h: the fp16 conversions ds's kernels use (emulation; see
// cuda_runtime.h here). Exact IEEE half -> float, written independently of kernels/dtype.cc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;
};
inline __half __ushort_as_half(uint16_t h) { return __half{h}; }
inline float __half2float(__half h) {
  const uint32_t sign = h.bits >> 15, exp = (h.bits >> 10) & 0x1f, mant = h.bits & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(1024 + mant), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}
inline uint16_t __half_as_ushort(__half h) { return h.bits; }
// float -> half, round to nearest even (subnormals, overflow to inf, NaN kept).
inline __half __float2half_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return __half{static_cast<uint16_t>(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to >= 65520: inf
  const double v = std::fabs(static_cast<double>(f));
  // Scale so the half's last mantissa bit is 1, round half to even, rebuild.
  int e;
  std::frexp(v, &e);  // v = m * 2^e, m in [0.5, 1)
  int exp = e - 1;    // v in [2^exp, 2^(exp+1))
  if (v == 0) return __half{sign};
  if (exp < -14) exp = -14;  // subnormal: fixed scale 2^-24
  const double q = std::nearbyint(std::ldexp(v, 10 - exp));  // mantissa incl. implicit bit, RNE
  const double r = std::ldexp(q, exp - 10);
  if (r == 0) return __half{sign};
  // Encode r exactly (it is representable as a half).
  int re;
  std::frexp(r, &re);
  int hexp = re - 1;
  uint16_t bits;
  if (hexp < -14) {
    bits = static_cast<uint16_t>(std::ldexp(r, 24));
  } else {
    const uint16_t mant = static_cast<uint16_t>(std::ldexp(r, 10 - hexp) - 1024);
    bits = static_cast<uint16_t>(((hexp + 15) << 10) | mant);
  }
  return __half{static_cast<uint16_t>(sign | bits)};
}

