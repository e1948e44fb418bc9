// kernels/dtype.h: tensor element types and their block layouts, exactly as GGUF
// (ggml) defines them, with scalar reference conversions.
//
// Thread-safety: pure functions and constants.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

// Helpers the CUDA kernels share with the host (plain inline functions elsewhere).
#if defined(__CUDACC__)
#define DS_HOST_DEVICE __host__ __device__
#else
#define DS_HOST_DEVICE
#endif

namespace ds {

// GGUF/ggml type ids (ggml_type). Only the ones ds computes with are "supported";
// the others are named so that errors can say what a file holds.
enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
  // Not a GGUF type (no file holds it; dtype_traits has no entry): the CUDA kernels' name for
  // Q8_0 weights stored in kLayoutQ8_0Split (kernels/backend.h, kernels/cuda/ops.cuh).
  kQ8_0Split = 0x100 | 8,
};

constexpr int kQK8_0 = 32;
constexpr int kQK4_0 = 32;

// One block of 32 weights: fp16 scale d, then 32 signed bytes; w[i] = d * qs[i].
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must be 34 bytes (GGUF format)");

// One block of 32 weights: fp16 scale d, then 16 bytes of nibbles.
// w[j] = d * ((qs[j] & 0xF) - 8), w[j + 16] = d * ((qs[j] >> 4) - 8), j < 16.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must be 18 bytes (GGUF format)");

// ---- k-quants: super-blocks of 256 weights (ggml's QK_K) -----------------------
constexpr int kQK_K = 256;
constexpr int kKScaleSize = 12;

// Q4_K: 8 sub-blocks of 32 weights, each with a 6-bit scale sc[j] and a 6-bit min
// m[j] (packed in scales[12], see q4k_scale_min), relative to the fp16 super-block
// scales d and dmin. qs[32 c + l] holds weight 64 c + l in its low nibble and weight
// 64 c + 32 + l in its high nibble (c < 4, l < 32); weight e of sub-block j = e / 32:
//   w = (d * sc[j]) * q - (dmin * m[j]),  q = 0..15.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block must be 144 bytes (GGUF format)");

// Scale and min (both 0..63) of Q4_K sub-block j < 8: j < 4 use the low 6 bits of
// scales[j] and scales[j + 4]; j >= 4 take their low 4 bits from the nibbles of
// scales[j + 4] and their top 2 bits from the top bits of scales[j - 4] / scales[j].
DS_HOST_DEVICE inline void q4k_scale_min(const uint8_t* scales, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Q6_K: 16 sub-blocks of 16 weights with signed 8-bit scales relative to the fp16 d.
// In each half h < 2 (weights 128 h ..): ql = ql + 64 h, qh = qh + 32 h, and for l < 32
//   weight 128h + l      = ql[l] & 0xF      | ((qh[l] >> 0) & 3) << 4
//   weight 128h + l + 32 = ql[l + 32] & 0xF | ((qh[l] >> 2) & 3) << 4
//   weight 128h + l + 64 = ql[l] >> 4       | ((qh[l] >> 4) & 3) << 4
//   weight 128h + l + 96 = ql[l + 32] >> 4  | ((qh[l] >> 6) & 3) << 4
// each a 6-bit q; weight e: w = (d * scales[e / 16]) * (q - 32).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block must be 210 bytes (GGUF format)");

struct DTypeTraits {
  const char* name;   // "f32", "q8_0", ... (ggml's names)
  int block_size;     // elements per block (1 for plain types)
  size_t type_size;   // bytes per block
  bool supported;     // ds can compute with it
};

// Traits of a type id, or nullptr when the id is not a known ggml type.
const DTypeTraits* dtype_traits(uint32_t type_id);
inline const DTypeTraits& dtype_traits(DType t) { return *dtype_traits(static_cast<uint32_t>(t)); }
const char* dtype_name(DType t);
// Bytes of a row of n elements. REQUIRES: n % block_size == 0.
size_t row_bytes(DType t, int64_t n);
// Parses "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k" (case-insensitive);
// false when unknown.
bool parse_dtype(const char* s, DType* out);

// ---- scalar conversions (reference) -------------------------------------------

float fp16_to_fp32_ref(uint16_t h);
uint16_t fp32_to_fp16_ref(float f);  // round to nearest even

inline float bf16_to_fp32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t fp32_to_bf16(float f);  // round to nearest even, NaN kept

// Table-driven fp16 -> fp32 (exact; 256 KiB table built once).
extern const float* const kFp16Table;
inline float fp16_to_fp32(uint16_t h) { return kFp16Table[h]; }

// Dequantizes one row of n elements of type t into out[n]. REQUIRES: supported type.
void dequantize_row(DType t, const void* row, float* out, int64_t n);
// Quantizes one row (reference quantizers, as ggml's quantize_row_*_ref for the
// 32-blocks; simple min/max and absmax quantizers for q4_k / q6_k, see dtype.cc for
// their error bounds).
void quantize_row(DType t, const float* in, void* row, int64_t n);

}  // namespace ds
