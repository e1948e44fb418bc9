// tests/gpu/emu/include/cuda_fp16.h: the fp16 conversions ds's kernels use (emulation; see
// cuda_runtime.h here). Exact IEEE half -> float, written independently of kernels/dtype.cc.
#pragma once

#include <cmath>
#include <cstdint>

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
