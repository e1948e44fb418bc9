// kernels/cuda/gemv.cu: ops.cuh's GEMV entry points, each routed to the part of the GEMV that
// compiles the weight type's kernels (gemv_kernels.cuh, which documents the kernels; the parts
// are gemv_float.cu, gemv_q8_0.cu, gemv_q4_0_q6_k.cu and gemv_q4_k.cu).
#include "kernels/cuda/gemv_parts.h"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {

// In each function below: the call DS_GEMV_FN in the part that handles t.
#define DS_GEMV_ROUTE_PART(P) \
  if (P::handles(t)) return P::DS_GEMV_FN;

bool gemv_wide_loads(DType t, const void* w, int64_t cols, size_t row_stride) {
#define DS_GEMV_FN gemv_wide_loads(t, w, cols, row_stride)
  DS_GEMV_PARTS(DS_GEMV_ROUTE_PART)
#undef DS_GEMV_FN
  return false;
}

cudaError_t gemv(int version, DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols,
                 const float* x, int n, float* y, cudaStream_t stream, bool pdl, const L2Prefetch* l2) {
#define DS_GEMV_FN gemv(version, t, w, row_stride, rows, cols, x, n, y, stream, pdl, l2)
  DS_GEMV_PARTS(DS_GEMV_ROUTE_PART)
#undef DS_GEMV_FN
  return cudaErrorInvalidValue;
}

cudaError_t gemv_add(DType t, const void* w, size_t row_stride, int64_t rows, int64_t cols, const float* x, int n,
                     float* y, cudaStream_t stream, bool pdl, const GemvNorm* norm, const L2Prefetch* l2,
                     bool stream_rows) {
#define DS_GEMV_FN gemv_add(t, w, row_stride, rows, cols, x, n, y, stream, pdl, norm, l2, stream_rows)
  DS_GEMV_PARTS(DS_GEMV_ROUTE_PART)
#undef DS_GEMV_FN
  return cudaErrorInvalidValue;
}

cudaError_t gemv_qkv(DType t, const GemvQkv& a, size_t row_stride, int64_t cols, const float* x, int n,
                     cudaStream_t stream, bool pdl, const L2Prefetch* l2) {
#define DS_GEMV_FN gemv_qkv(t, a, row_stride, cols, x, n, stream, pdl, l2)
  DS_GEMV_PARTS(DS_GEMV_ROUTE_PART)
#undef DS_GEMV_FN
  return cudaErrorInvalidValue;
}

cudaError_t gemv_qkv_rope(DType t, const GemvQkv& a, const GemvQkvRope& r, size_t row_stride, int64_t cols,
                          const float* x, int n, cudaStream_t stream, bool pdl, const L2Prefetch* l2,
                          bool stream_rows) {
#define DS_GEMV_FN gemv_qkv_rope(t, a, r, row_stride, cols, x, n, stream, pdl, l2, stream_rows)
  DS_GEMV_PARTS(DS_GEMV_ROUTE_PART)
#undef DS_GEMV_FN
  return cudaErrorInvalidValue;
}

cudaError_t gemv_swiglu(DType t, const void* w_gate, const void* w_up, size_t row_stride, int64_t rows, int64_t cols,
                        const float* x, int n, float* out, cudaStream_t stream, bool pdl, const L2Prefetch* l2,
                        bool stream_rows) {
#define DS_GEMV_FN gemv_swiglu(t, w_gate, w_up, row_stride, rows, cols, x, n, out, stream, pdl, l2, stream_rows)
  DS_GEMV_PARTS(DS_GEMV_ROUTE_PART)
#undef DS_GEMV_FN
  return cudaErrorInvalidValue;
}

#undef DS_GEMV_ROUTE_PART

}  // namespace ds::cuda
