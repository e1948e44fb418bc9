#include "kernels/dtype.h"

#include <algorithm>
#include <cmath>
#include <strings.h>
#include <vector>

namespace ds {
namespace {

constexpr DTypeTraits kUnknown{nullptr, 0, 0, false};

DTypeTraits traits_table[31] = {};

struct TraitsInit {
  TraitsInit() {
    for (auto& t : traits_table) t = kUnknown;
    traits_table[0] = {"f32", 1, 4, true};
    traits_table[1] = {"f16", 1, 2, true};
    traits_table[2] = {"q4_0", 32, 18, true};
    traits_table[3] = {"q4_1", 32, 20, false};
    traits_table[6] = {"q5_0", 32, 22, false};
    traits_table[7] = {"q5_1", 32, 24, false};
    traits_table[8] = {"q8_0", 32, 34, true};
    traits_table[9] = {"q8_1", 32, 36, false};
    traits_table[10] = {"q2_k", 256, 84, false};
    traits_table[11] = {"q3_k", 256, 110, false};
    traits_table[12] = {"q4_k", 256, 144, true};
    traits_table[13] = {"q5_k", 256, 176, false};
    traits_table[14] = {"q6_k", 256, 210, true};
    traits_table[15] = {"q8_k", 256, 292, false};
    traits_table[24] = {"i8", 1, 1, false};
    traits_table[25] = {"i16", 1, 2, false};
    traits_table[26] = {"i32", 1, 4, false};
    traits_table[27] = {"i64", 1, 8, false};
    traits_table[28] = {"f64", 1, 8, false};
    traits_table[30] = {"bf16", 1, 2, true};
  }
} traits_init;

std::vector<float> build_fp16_table() {
  std::vector<float> t(65536);
  for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_fp32_ref(static_cast<uint16_t>(i));
  return t;
}
const std::vector<float>& fp16_table_storage() {
  static const std::vector<float> t = build_fp16_table();
  return t;
}

// fp16 of a non-negative f, rounded up: the stored scale is never below the one the
// integer scales were sized for (so ceil() below never exceeds 63 / 127), even where
// f is an fp16 subnormal and rounding to nearest could lose a large fraction.
uint16_t fp16_up(float f) {
  uint16_t h = fp32_to_fp16_ref(f);
  if (fp16_to_fp32_ref(h) < f && h < 0x7bff) ++h;
  return h;
}

// Q4_K reference quantizer for one super-block of 256 weights (min/max per sub-block):
//  1. sub-block j has lo_j = min(0, min x), hi_j = max x; its min offset is -lo_j >= 0;
//  2. dmin = max_j(-lo_j) / 63 (stored fp16), m_j = ceil(-lo_j / dmin): the offset
//     dm_j = dmin * m_j >= -lo_j, so no weight falls below q = 0;
//  3. step_j = (hi_j + dm_j) / 15, d = max_j step_j / 63 (fp16), sc_j = ceil(step_j / d):
//     the step d * sc_j covers the sub-block's range, so no weight rises above q = 15;
//  4. q = round((x + dm_j) / (d * sc_j)), clamped to 0..15.
// Error bound: |x - w| <= (d * sc_j) / 2 <= (step_j + d) / 2 with step_j <=
// (hi_j - lo_j + dmin) / 15 <= amax * (2 + 1/63) / 15, so with amax = max |x| of the
// super-block, |x - w| <= 0.0683 * amax (+ an fp16 ulp of d and dmin: d and dmin are
// rounded up to fp16, which matters only when they are fp16 subnormals, amax < ~0.06).
void quantize_block_q4_k(const float* x, BlockQ4_K* b) {
  float lo[8], hi[8];
  float max_neg = 0;
  for (int j = 0; j < 8; ++j) {
    lo[j] = 0;
    hi[j] = -INFINITY;
    for (int l = 0; l < 32; ++l) {
      lo[j] = std::min(lo[j], x[32 * j + l]);
      hi[j] = std::max(hi[j], x[32 * j + l]);
    }
    max_neg = std::max(max_neg, -lo[j]);
  }
  b->dmin = fp16_up(max_neg / 63.0f);
  const float dmin = fp16_to_fp32_ref(b->dmin);
  uint8_t m[8], sc[8];
  float dm[8], step[8];
  float max_step = 0;
  for (int j = 0; j < 8; ++j) {
    m[j] = dmin > 0 ? static_cast<uint8_t>(std::min(63.0f, std::ceil(-lo[j] / dmin))) : 0;
    dm[j] = dmin * m[j];
    step[j] = std::max(0.0f, hi[j] + dm[j]) / 15.0f;
    max_step = std::max(max_step, step[j]);
  }
  b->d = fp16_up(max_step / 63.0f);
  const float d = fp16_to_fp32_ref(b->d);
  uint8_t q[kQK_K];
  for (int j = 0; j < 8; ++j) {
    sc[j] = d > 0 ? static_cast<uint8_t>(std::min(63.0f, std::ceil(step[j] / d))) : 0;
    const float s = d * sc[j];
    const float is = s > 0 ? 1.0f / s : 0.0f;
    for (int l = 0; l < 32; ++l) {
      const float v = std::nearbyint((x[32 * j + l] + dm[j]) * is);
      q[32 * j + l] = static_cast<uint8_t>(std::clamp(v, 0.0f, 15.0f));
    }
  }
  // Pack the 6-bit scales and mins (the inverse of q4k_scale_min).
  for (int j = 0; j < 4; ++j) {
    b->scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    b->scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    b->scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b->qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}

// Q6_K reference quantizer for one super-block (absmax per sub-block of 16):
//  s_k = amax_k / 31, d = max_k s_k / 127 (fp16), scales[k] = ceil(s_k / d) <= 127, so
//  the step d * scales[k] maps the sub-block into q - 32 in -31..31 without clipping;
//  q - 32 = round(x / (d * scales[k])).
// Error bound: |x - w| <= d * scales[k] / 2 <= (s_k + d) / 2 <= amax / 62 * (1 + 1/127)
// = 0.0163 * amax of the super-block (+ half an fp16 ulp of d, which is rounded up to
// fp16: 2^-25 absolute where d is an fp16 subnormal, amax < ~0.25).
void quantize_block_q6_k(const float* x, BlockQ6_K* b) {
  float s[16];
  float max_s = 0;
  for (int k = 0; k < 16; ++k) {
    float amax = 0;
    for (int l = 0; l < 16; ++l) amax = std::max(amax, std::fabs(x[16 * k + l]));
    s[k] = amax / 31.0f;
    max_s = std::max(max_s, s[k]);
  }
  b->d = fp16_up(max_s / 127.0f);
  const float d = fp16_to_fp32_ref(b->d);
  uint8_t q[kQK_K];  // q - 32 stored as 0..63
  for (int k = 0; k < 16; ++k) {
    const int sc = d > 0 ? static_cast<int>(std::min(127.0f, std::ceil(s[k] / d))) : 0;
    b->scales[k] = static_cast<int8_t>(sc);
    const float step = d * static_cast<float>(sc);
    const float is = step > 0 ? 1.0f / step : 0.0f;
    for (int l = 0; l < 16; ++l) {
      const float v = std::nearbyint(x[16 * k + l] * is);
      q[16 * k + l] = static_cast<uint8_t>(static_cast<int>(std::clamp(v, -32.0f, 31.0f)) + 32);
    }
  }
  for (int h = 0; h < 2; ++h) {
    const uint8_t* L = q + 128 * h;
    uint8_t* ql = b->ql + 64 * h;
    uint8_t* qh = b->qh + 32 * h;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<uint8_t>((L[l] & 0xF) | ((L[l + 64] & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((L[l + 32] & 0xF) | ((L[l + 96] & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((L[l] >> 4) | ((L[l + 32] >> 4) << 2) | ((L[l + 64] >> 4) << 4) | ((L[l + 96] >> 4) << 6));
    }
  }
}

}  // namespace

const float* const kFp16Table = fp16_table_storage().data();

const DTypeTraits* dtype_traits(uint32_t id) {
  if (id >= sizeof(traits_table) / sizeof(traits_table[0])) return nullptr;
  if (traits_table[id].name == nullptr) return nullptr;
  return &traits_table[id];
}

const char* dtype_name(DType t) {
  const DTypeTraits* tr = dtype_traits(static_cast<uint32_t>(t));
  return tr ? tr->name : "unknown";
}

size_t row_bytes(DType t, int64_t n) {
  const DTypeTraits& tr = dtype_traits(t);
  return static_cast<size_t>(n / tr.block_size) * tr.type_size;
}

bool parse_dtype(const char* s, DType* out) {
  static const struct { const char* n; DType t; } kNames[] = {
      {"f32", DType::kF32}, {"f16", DType::kF16}, {"bf16", DType::kBF16},
      {"q8_0", DType::kQ8_0}, {"q4_0", DType::kQ4_0}, {"q4_k", DType::kQ4_K},
      {"q6_k", DType::kQ6_K}};
  for (const auto& e : kNames) {
    if (strcasecmp(s, e.n) == 0) {
      *out = e.t;
      return true;
    }
  }
  return false;
}

float fp16_to_fp32_ref(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);  // subnormal or zero
  } else if (exp == 31) {
    v = mant ? std::nanf("") : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

uint16_t fp32_to_fp16_ref(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00);  // NaN
  if (abs >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // overflow -> inf
  if (abs < 0x38800000) {                                               // subnormal half
    if (abs < 0x33000000) return static_cast<uint16_t>(sign);           // rounds to 0
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

uint16_t fp32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);  // quiet NaN
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

void dequantize_row(DType t, const void* row, float* out, int64_t n) {
  switch (t) {
    case DType::kF32:
      std::memcpy(out, row, static_cast<size_t>(n) * 4);
      return;
    case DType::kF16: {
      const auto* h = static_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(h[i]);
      return;
    }
    case DType::kBF16: {
      const auto* h = static_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_fp32(h[i]);
      return;
    }
    case DType::kQ8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(row);
      for (int64_t i = 0; i < n / kQK8_0; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK8_0; ++j) out[i * kQK8_0 + j] = d * b[i].qs[j];
      }
      return;
    }
    case DType::kQ4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(row);
      for (int64_t i = 0; i < n / kQK4_0; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          out[i * kQK4_0 + j] = d * ((b[i].qs[j] & 0xF) - 8);
          out[i * kQK4_0 + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case DType::kQ4_K: {
      // ggml's dequantize_row_q4_K: w = (d * sc) * q - (dmin * m).
      const auto* b = static_cast<const BlockQ4_K*>(row);
      for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        float* y = out + i * kQK_K;
        for (int c = 0; c < 4; ++c) {
          uint8_t sc, m;
          q4k_scale_min(b[i].scales, 2 * c, &sc, &m);
          const float d1 = d * sc, m1 = dmin * m;
          q4k_scale_min(b[i].scales, 2 * c + 1, &sc, &m);
          const float d2 = d * sc, m2 = dmin * m;
          const uint8_t* q = b[i].qs + 32 * c;
          for (int l = 0; l < 32; ++l) y[64 * c + l] = d1 * (q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) y[64 * c + 32 + l] = d2 * (q[l] >> 4) - m2;
        }
      }
      return;
    }
    case DType::kQ6_K: {
      // ggml's dequantize_row_q6_K: w = (d * scale) * (q - 32).
      const auto* b = static_cast<const BlockQ6_K*>(row);
      for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int h = 0; h < 2; ++h) {
          const uint8_t* ql = b[i].ql + 64 * h;
          const uint8_t* qh = b[i].qh + 32 * h;
          const int8_t* sc = b[i].scales + 8 * h;
          float* y = out + i * kQK_K + 128 * h;
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc[is] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
          }
        }
      }
      return;
    }
    default:
      return;  // REQUIRES: supported type
  }
}

void quantize_row(DType t, const float* in, void* row, int64_t n) {
  switch (t) {
    case DType::kF32:
      std::memcpy(row, in, static_cast<size_t>(n) * 4);
      return;
    case DType::kF16: {
      auto* h = static_cast<uint16_t*>(row);
      for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_fp16_ref(in[i]);
      return;
    }
    case DType::kBF16: {
      auto* h = static_cast<uint16_t*>(row);
      for (int64_t i = 0; i < n; ++i) h[i] = fp32_to_bf16(in[i]);
      return;
    }
    case DType::kQ8_0: {
      auto* b = static_cast<BlockQ8_0*>(row);
      for (int64_t i = 0; i < n / kQK8_0; ++i) {
        const float* x = in + i * kQK8_0;
        float amax = 0;
        for (int j = 0; j < kQK8_0; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16_ref(d);
        for (int j = 0; j < kQK8_0; ++j) b[i].qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
      }
      return;
    }
    case DType::kQ4_0: {
      auto* b = static_cast<BlockQ4_0*>(row);
      for (int64_t i = 0; i < n / kQK4_0; ++i) {
        const float* x = in + i * kQK4_0;
        float amax = 0, max = 0;
        for (int j = 0; j < kQK4_0; ++j) {
          if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16_ref(d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          const float x0 = x[j] * id, x1 = x[j + 16] * id;
          const int q0 = std::min(15, static_cast<int>(x0 + 8.5f));
          const int q1 = std::min(15, static_cast<int>(x1 + 8.5f));
          b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    }
    case DType::kQ4_K: {
      auto* b = static_cast<BlockQ4_K*>(row);
      for (int64_t i = 0; i < n / kQK_K; ++i) quantize_block_q4_k(in + i * kQK_K, b + i);
      return;
    }
    case DType::kQ6_K: {
      auto* b = static_cast<BlockQ6_K*>(row);
      for (int64_t i = 0; i < n / kQK_K; ++i) quantize_block_q6_k(in + i * kQK_K, b + i);
      return;
    }
    default:
      return;
  }
}

}  // namespace ds
