// kernels/cuda/gemv_q4_0_q6_k.cu: the GEMV kernels (gemv_kernels.cuh) for Q4_0 and Q6_K weights.
#define DS_GEMV_PART gemv_q4_0_q6_k
#define DS_GEMV_TYPES(X) X(DType::kQ4_0) X(DType::kQ6_K)
#include "kernels/cuda/gemv_kernels.cuh"
