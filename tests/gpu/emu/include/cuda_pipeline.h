// tests/gpu/emu/include/cuda_pipeline.h: CUDA's pipeline primitives (asynchronous
// global -> shared copies, sm_80) for the CPU emulation: a copy happens at once, so commit
// and wait have nothing to do. The alignment and size rules are checked (they are the
// hardware's: 4, 8 or 16 bytes, both pointers aligned to it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

inline void __pipeline_memcpy_async(void* dst, const void* src, size_t size_and_align, size_t zfill = 0) {
  const bool ok = (size_and_align == 4 || size_and_align == 8 || size_and_align == 16) &&
                  reinterpret_cast<uintptr_t>(dst) % size_and_align == 0 &&
                  reinterpret_cast<uintptr_t>(src) % size_and_align == 0 && zfill <= size_and_align;
  if (!ok) {
    std::fprintf(stderr, "emulated __pipeline_memcpy_async: bad size or alignment (%zu bytes)\n", size_and_align);
    std::abort();
  }
  std::memcpy(dst, src, size_and_align - zfill);
  std::memset(static_cast<char*>(dst) + (size_and_align - zfill), 0, zfill);
}
inline void __pipeline_commit() {}
inline void __pipeline_wait_prior(size_t) {}
