// kernels/cpu/matmul.h: y[n, rows] = x[n, cols] * W^T on the CPU for every weight type.
//
// Register-tiled: a tile of RM weight rows x RN activation rows keeps RM*RN vector
// accumulators, so each weight byte is read from memory once per call (decode is
// bandwidth-bound, prefill compute-bound). Quantized weights (Q8_0, Q4_0) meet
// activations quantized on the fly to 8-bit blocks of 32 with a float scale; k-quant
// weights (Q4_K, Q6_K) meet activations quantized to 8-bit super-blocks of 256
// (BlockQ8K, like ggml's block_q8_K) and are dotted in integers per sub-block.
// Each output element is computed by the same instruction sequence whatever the
// tile shape, batch size or thread count (see backend.h, determinism contract).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace ds::cpu {

// Activation block for quantized dot products: x[k] ~= d * qs[k].
struct BlockQ8A {
  float d;
  int32_t sum;  // sum of qs
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8A) == 40);

// Activation super-block for k-quant dot products: x[k] ~= d * qs[k] (d = amax / 127),
// bsums[i] = sum of qs[16 i .. 16 i + 15].
struct BlockQ8K {
  float d;
  int16_t bsums[16];
  int8_t qs[256];
};
static_assert(sizeof(BlockQ8K) == 292);

}  // namespace ds::cpu

// This compile's kernels (kernels/cpu/isa.h: one namespace per variant).
DS_CPU_BEGIN

void quantize_row_q8a(const float* x, BlockQ8A* out, int64_t n);
// REQUIRES: n % 256 == 0.
void quantize_row_q8k(const float* x, BlockQ8K* out, int64_t n);

// The layout matmul reads w fastest in: kLayout*R16 (kernels/backend.h) for Q8_0 / Q4_0 / Q4_K / Q6_K rows
// in GGUF layout, rows % 16 == 0, where this build has the interleaved kernels (AVX2 at least); else w.layout.
uint32_t preferred_layout(const WeightRef& w);
// Writes w to dst (w.row_stride() * w.rows bytes) in preferred_layout(w) and returns it there;
// with a pool, its threads share the work.
WeightRef repack(const WeightRef& w, void* dst, ThreadPool* pool = nullptr);
// Row `row` of w dequantized into out[w.cols], whatever w's layout.
void dequantize_row_any(const WeightRef& w, int64_t row, float* out);

// w in kLayoutGguf or preferred_layout(w).
// scratch holds quantized activations between calls (grown as needed).
void matmul(ThreadPool& pool, const WeightRef& w, const float* x, int64_t n, float* y,
            std::vector<uint8_t>* scratch);

DS_CPU_END
