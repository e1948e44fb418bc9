// kernels/cuda/gemv_q4_k.cu: the GEMV kernels (gemv_kernels.cuh) for Q4_K weights.
#define DS_GEMV_PART gemv_q4_k
#define DS_GEMV_TYPES(X) X(DType::kQ4_K)
#include "kernels/cuda/gemv_kernels.cuh"
