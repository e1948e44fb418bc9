// kernels/cuda/gemv_parts.h: the entry points of each part of the GEMV (gemv_kernels.cuh),
// declared for gemv.cu, which routes ops.cuh's gemv functions to the part that has the type.
#pragma once

#include "kernels/cuda/ops.cuh"

// X(part namespace) for every part; each part's .cu file lists its types.
#define DS_GEMV_PARTS(X) X(gemv_float) X(gemv_q8_0) X(gemv_q4_0_q6_k) X(gemv_q4_k)

#define DS_GEMV_DECLARE_PART(P)                                                                                     \
  namespace ds::cuda::P {                                                                                           \
  bool handles(DType t);                                                                                            \
  bool gemv_wide_loads(DType t, const void* w, int64_t cols, size_t row_stride);                                   \
  cudaError_t gemv(int version, DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols,             \
                   const float* x, int n, float* y, cudaStream_t stream, bool pdl, const L2Prefetch* l2);          \
  cudaError_t gemv_add(DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n, \
                       float* y, cudaStream_t stream, bool pdl, const GemvNorm* norm, const L2Prefetch* l2,        \
                       bool stream_rows);                                                                           \
  cudaError_t gemv_qkv(DType t, const GemvQkv& a, size_t row_stride, int64_t cols, const float* x, int n,          \
                       cudaStream_t stream, bool pdl, const L2Prefetch* l2);                                       \
  cudaError_t gemv_qkv_rope(DType t, const GemvQkv& a, const GemvQkvRope& r, size_t row_stride, int64_t cols,      \
                            const float* x, int n, cudaStream_t stream, bool pdl, const L2Prefetch* l2,            \
                            bool stream_rows);                                                                      \
  cudaError_t gemv_swiglu(DType t, const void* w_gate, const void* w_up, size_t row_stride, int64_t rows,          \
                          int64_t cols, const float* x, int n, float* out, cudaStream_t stream, bool pdl,           \
                          const L2Prefetch* l2, bool stream_rows);                                                  \
  }
DS_GEMV_PARTS(DS_GEMV_DECLARE_PART)
#undef DS_GEMV_DECLARE_PART
