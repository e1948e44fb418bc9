// kernels/cuda/gemv_float.cu: the GEMV kernels (gemv_kernels.cuh) for F32, F16 and BF16 weights.
#define DS_GEMV_PART gemv_float
#define DS_GEMV_TYPES(X) X(DType::kF32) X(DType::kF16) X(DType::kBF16)
#include "kernels/cuda/gemv_kernels.cuh"
