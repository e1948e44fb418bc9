// tests/gpu/emu/include/mma.h: the WMMA API (nvcuda::wmma) for the CPU emulation, for the
// half-precision shapes the kernels use (m16n16k16, m32n8k16, m8n32k16; F32 accumulators).
// On a GPU a fragment is spread over the warp's lanes in an unspecified layout; here every
// lane holds the whole tile, which code that only loads, stores, fills and multiplies
// fragments (all the API allows) cannot tell; loads and stores synchronize the warp, as the
// collective operations they are on a GPU. Each operation checks the API's requirements
// (ldm a multiple of 16 bytes, pointers 32-byte aligned) so that a kernel that breaks them
// fails here instead of misbehaving on a GPU. mma_sync adds the exact products in k order.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment;
template <int M, int N, int K, typename Layout>
struct fragment<matrix_a, M, N, K, __half, Layout> {
  __half v[M * K];  // (i, k) at v[i * K + k]
};
template <int M, int N, int K, typename Layout>
struct fragment<matrix_b, M, N, K, __half, Layout> {
  __half v[K * N];  // (k, j) at v[k * N + j]
};
template <int M, int N, int K>
struct fragment<accumulator, M, N, K, float, void> {
  float v[M * N];  // (i, j) at v[i * N + j]
};

namespace detail {
template <int M, int N, int K>
constexpr bool shape_ok() {
  return (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16);
}
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "emulated wmma: %s\n", what);
    std::abort();
  }
}
// Loads and stores are warp-collective on a GPU: no lane stores before every lane has loaded
// (a fragment loaded, multiplied and stored back to the same memory is read once). Here the
// lanes are fibers that run one at a time between synchronization points, so each load and
// store starts with one.
inline void collective() { __syncwarp(); }
inline void check(const void* p, unsigned ldm, unsigned elem_bytes) {
  require(reinterpret_cast<uintptr_t>(p) % 32 == 0, "pointer not 32-byte aligned");
  require((ldm * elem_bytes) % 16 == 0, "ldm not a multiple of 16 bytes");
}
}  // namespace detail

template <int M, int N, int K>
void load_matrix_sync(fragment<matrix_a, M, N, K, __half, row_major>& f, const __half* p, unsigned ldm) {
  static_assert(detail::shape_ok<M, N, K>());
  detail::collective();
  detail::check(p, ldm, 2);
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) f.v[i * K + k] = p[i * ldm + k];
}
template <int M, int N, int K>
void load_matrix_sync(fragment<matrix_a, M, N, K, __half, col_major>& f, const __half* p, unsigned ldm) {
  static_assert(detail::shape_ok<M, N, K>());
  detail::collective();
  detail::check(p, ldm, 2);
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) f.v[i * K + k] = p[k * ldm + i];
}
template <int M, int N, int K>
void load_matrix_sync(fragment<matrix_b, M, N, K, __half, row_major>& f, const __half* p, unsigned ldm) {
  static_assert(detail::shape_ok<M, N, K>());
  detail::collective();
  detail::check(p, ldm, 2);
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) f.v[k * N + j] = p[k * ldm + j];
}
template <int M, int N, int K>
void load_matrix_sync(fragment<matrix_b, M, N, K, __half, col_major>& f, const __half* p, unsigned ldm) {
  static_assert(detail::shape_ok<M, N, K>());
  detail::collective();
  detail::check(p, ldm, 2);
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) f.v[k * N + j] = p[j * ldm + k];
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float, void>& f, const float* p, unsigned ldm, layout_t layout) {
  static_assert(detail::shape_ok<M, N, K>());
  detail::collective();
  detail::check(p, ldm, 4);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) f.v[i * N + j] = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float, void>& f, float value) {
  for (float& x : f.v) x = value;
}

template <int M, int N, int K, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float, void>& d, const fragment<matrix_a, M, N, K, __half, LA>& a,
              const fragment<matrix_b, M, N, K, __half, LB>& b, const fragment<accumulator, M, N, K, float, void>& c) {
  float out[M * N], af[M * K], bt[N * K];  // the operands widened once (exactly); b transposed
  for (int i = 0; i < M * K; ++i) af[i] = __half2float(a.v[i]);
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) bt[j * K + k] = __half2float(b.v[k * N + j]);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float s = c.v[i * N + j];
      for (int k = 0; k < K; ++k) s += af[i * K + k] * bt[j * K + k];  // exact products, k order
      out[i * N + j] = s;
    }
  }
  for (int i = 0; i < M * N; ++i) d.v[i] = out[i];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f, unsigned ldm, layout_t layout) {
  detail::collective();
  detail::check(p, ldm, 4);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.v[i * N + j];
}

}  // namespace wmma
}  // namespace nvcuda
