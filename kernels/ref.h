// kernels/ref.h: plain scalar reference versions of every backend op. They are the
// yardstick the CPU (and CUDA) kernels are tested against: simple loops, no SIMD, no
// threads, written to be obviously right rather than fast.
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace ds::ref {

void matmul(const WeightRef& w, const float* x, int64_t n, float* y);
void get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out);
void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);
void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p);
void swiglu(const float* gate, const float* up, int64_t count, float* out);
void attention(const AttentionArgs& a);

}  // namespace ds::ref
