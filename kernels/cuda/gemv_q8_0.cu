// kernels/cuda/gemv_q8_0.cu: the GEMV kernels (gemv_kernels.cuh) for Q8_0 (GGUF blocks and split rows).
#define DS_GEMV_PART gemv_q8_0
#define DS_GEMV_TYPES(X) X(DType::kQ8_0) X(kQ8_0Split)
#include "kernels/cuda/gemv_kernels.cuh"
