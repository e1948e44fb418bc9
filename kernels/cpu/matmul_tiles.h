// kernels/cpu/matmul_tiles.h: what the CPU matmul kernels share (matmul.cc: the kernels on the
// GGUF layout; matmul_interleaved.cc: those on the rows interleaved by 16). Internal to
// kernels/cpu.
#pragma once

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_* in casts): not ours. (Here, so
// that both kernel files set it before simd.h brings those headers in.)
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)  // (clang, the fuzz build, has no such group)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cpu/simd.h"  // DS_SIMD_VNNI, which DS_QUANT_PAIRS below needs
#include "kernels/cpu/thread_pool.h"

DS_CPU_BEGIN

struct TileArgs {
  const uint8_t* w;  // weight rows
  size_t w_stride;   // bytes between weight rows
  const uint8_t* a;  // activation rows (f32 or BlockQ8A)
  size_t a_stride;   // bytes between activation rows
  int64_t k;         // elements per row
  float* y;
  int64_t y_stride;  // floats between output rows (= weight rows)
};

// Q8_0 / Q4_0 blocks two at a time in 512-bit registers (QuantKernel::tile).
#if defined(DS_SIMD_VNNI) && defined(DS_CPU_AVX512VNNI)
#define DS_QUANT_PAIRS 1
#endif
// The interleaved layouts (matmul_interleaved.cc) have kernels where there are 256-bit integer
// vectors at least.
#if defined(DS_QUANT_PAIRS) || defined(DS_SIMD_AVX2)
#define DS_INTERLEAVED 1
#endif

// y = x W^T for w in one of the interleaved layouts (kernels/backend.h: kLayout*R16), t's
// activations already quantized for w's type (BlockQ8A, or BlockQ8K for the k-quants): true;
// false (nothing done) for any other layout.
bool matmul_interleaved(ThreadPool& pool, const TileArgs& t, const WeightRef& w, int64_t n);

DS_CPU_END
