// kernels/cpu/dispatch.cc: picks, at run time, the compile of the CPU kernels that this CPU
// runs best (kernels/cpu/variants.h), and builds the CPU backend from it. Compiled once, for the
// build's baseline: it must run on every CPU, including the ones it then turns away.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "kernels/backend.h"
#include "kernels/cpu/isa.h"  // DS_CPU_VARIANT, in a build without dispatch
#include "kernels/cpu/variants.h"

namespace ds::cpu {

// Each variant's table (cpu_backend.cc, compiled once per variant: kernels/CMakeLists.txt).
#ifdef DS_CPU_DISPATCH
namespace avx512vnni { extern const Variant kVariant; }
namespace avx512 { extern const Variant kVariant; }
namespace avxvnni { extern const Variant kVariant; }
namespace avx2 { extern const Variant kVariant; }
namespace generic { extern const Variant kVariant; }
#else
namespace DS_CPU_VARIANT { extern const Variant kVariant; }
#endif

namespace {

std::vector<CompiledVariant> list() {
  std::vector<CompiledVariant> v;
#ifdef DS_CPU_DISPATCH
  // The instruction sets of each variant's GCC target (kernels/CMakeLists.txt): x86-64-v3 is
  // AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE; v4 adds AVX-512 F/BW/CD/DQ/VL. __builtin_cpu_supports
  // also checks that the OS saves the vector registers (XCR0).
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("x86-64-v3"), v4 = __builtin_cpu_supports("x86-64-v4");
  v.push_back({&avx512vnni::kVariant, v4 && __builtin_cpu_supports("avx512vnni"), "x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) + AVX512-VNNI"});
  v.push_back({&avx512::kVariant, v4, "x86-64-v4 (AVX-512 F/BW/CD/DQ/VL)"});
  v.push_back({&avxvnni::kVariant, v3 && __builtin_cpu_supports("avxvnni"), "x86-64-v3 (AVX2, FMA, F16C, BMI2) + AVX-VNNI"});
  v.push_back({&avx2::kVariant, v3, "x86-64-v3 (AVX2, FMA, F16C, BMI2)"});
  v.push_back({&generic::kVariant, true, "nothing beyond the build's baseline"});
#else
  v.push_back({&DS_CPU_VARIANT::kVariant, true, "the build machine's instruction sets (this build has no dispatch)"});
#endif
  return v;
}

std::string names() {
  std::string s;
  for (const CompiledVariant& c : compiled_variants()) s += (s.empty() ? "" : ", ") + std::string(c.variant->name);
  return s;
}

}  // namespace

const std::vector<CompiledVariant>& compiled_variants() {
  static const std::vector<CompiledVariant> v = list();
  return v;
}

const Variant* find_variant(const std::string& name, std::string* error) {
  if (name.empty() || name == "auto") {
    for (const CompiledVariant& c : compiled_variants())
      if (c.runs_here) return c.variant;
    if (error) *error = "no CPU kernel variant of this build runs on this CPU";  // (the last always does)
    return nullptr;
  }
  for (const CompiledVariant& c : compiled_variants()) {
    if (name != c.variant->name) continue;
    if (c.runs_here) return c.variant;
    if (error) *error = "this CPU cannot run that variant of the CPU kernels (it needs " + c.needs + ")";
    return nullptr;
  }
  if (error) *error = "no such variant of the CPU kernels in this build (it has: auto, " + names() + ")";
  return nullptr;
}

const Variant* select_variant(std::string* error) {
  const char* want = std::getenv("DS_CPU_KERNELS");
  const Variant* v = find_variant(want ? want : "", error);
  if (v == nullptr && error && want) *error = "DS_CPU_KERNELS=" + std::string(want) + ": " + *error;
  return v;
}

const Variant& active_variant() {
  static const Variant* v = [] {
    std::string error;
    const Variant* s = select_variant(&error);
    if (s != nullptr) return s;
    // The binaries check select_variant() at start-up and refuse a bad DS_CPU_KERNELS; a library
    // user who did not gets the best variant, and this line.
    for (const CompiledVariant& c : compiled_variants())
      if (c.runs_here) {
        std::fprintf(stderr, "ds: %s; using %s\n", error.c_str(), c.variant->name);
        return c.variant;
      }
    return compiled_variants().back().variant;
  }();
  return *v;
}

}  // namespace ds::cpu

namespace ds {

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& opts) {
  int n = opts.threads;
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  if (n > 256) n = 256;
  return cpu::active_variant().make_backend(n, opts.interleave_quant);
}

const char* cpu_kernel_isa() { return cpu::active_variant().isa; }

bool cpu_interleaves_quant() { return cpu::active_variant().interleaves_quant; }

}  // namespace ds
