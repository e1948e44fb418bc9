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
    traits_table[12] = {"q4_k", 256, 144, false};
    traits_table[13] = {"q5_k", 256, 176, false};
    traits_table[14] = {"q6_k", 256, 210, false};
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
      {"q8_0", DType::kQ8_0}, {"q4_0", DType::kQ4_0}};
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
    default:
      return;
  }
}

}  // namespace ds
