// kernels/cpu/variants.h: the compiles of the CPU kernels that this build holds (one per x86
// instruction set, or just `native`: kernels/cpu/isa.h) and the one this process runs.
//
// make_cpu_backend() (kernels/backend.h) builds its backend from active_variant(): the best
// variant this CPU runs, or the one the environment variable DS_CPU_KERNELS names ("auto",
// "avx512vnni", "avx512", "avxvnni", "avx2", "generic"; "native" in a build without dispatch):
// ds-node's cpu-kernels setting, ds-bench's --cpu-kernels, the tests' per-variant runs. The unit tests check each variant's entry points below directly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace ds::cpu {

struct BlockQ8A;  // kernels/cpu/matmul.h
struct BlockQ8K;

// One compile of the kernels: its name, what it runs on, and its entry points.
struct Variant {
  const char* name;  // "avx512vnni", "avx512", "avxvnni", "avx2", "generic" or "native"
  const char* isa;   // as cpu_kernel_isa() says it: "avx512+vnni", "avx512", "avx2+vnni", "avx2", "scalar"
  bool interleaves_quant;  // has the kernels of the layouts interleaved by 16 rows
  std::unique_ptr<Backend> (*make_backend)(int threads, bool interleave_quant);
  // The parts of the kernels that the tests check one by one (kernels/cpu/simd.h, matmul.h).
  void (*quantize_row_q8a)(const float* x, BlockQ8A* out, int64_t n);
  void (*quantize_row_q8k)(const float* x, BlockQ8K* out, int64_t n);
  float (*exp_scalar)(float x);
  float (*exp_sub_sum)(float* s, int64_t n, float mx);
  void (*swiglu_f32)(const float* gate, const float* up, float* out, int64_t n);
  float (*dot_row_f32)(const float* q, const float* k, int64_t n);
  float (*dot_row_f16)(const float* q, const uint16_t* k, int64_t n);
  void (*dot8_rows_f32)(const float* q, const float* k, int64_t stride, int64_t n, float* out);
  void (*dot8_rows_f16)(const float* q, const uint16_t* k, int64_t stride, int64_t n, float* out);
};

struct CompiledVariant {
  const Variant* variant;
  bool runs_here;  // this CPU (and OS) has every instruction set the variant uses
  std::string needs;  // those instruction sets, as a person reads them ("AVX-512 F/BW/DQ/VL, VNNI")
};
// Every variant of this build, best first.
const std::vector<CompiledVariant>& compiled_variants();

// The variant called `name` ("auto" or empty: the best this CPU runs); nullptr with *error saying
// why when this build has no variant of that name, or this CPU lacks instructions it uses.
const Variant* find_variant(const std::string& name, std::string* error);

// The variant DS_CPU_KERNELS names, or with none set the best one this CPU runs; nullptr with
// *error saying why when DS_CPU_KERNELS names no variant of this build, or one this CPU lacks
// instructions for. The binaries call it at start-up.
const Variant* select_variant(std::string* error);

// The variant that make_cpu_backend() uses: DS_CPU_KERNELS's, or the best one this CPU runs.
// (select_variant's, or where that fails the best one, with a line on stderr.)
const Variant& active_variant();

}  // namespace ds::cpu
