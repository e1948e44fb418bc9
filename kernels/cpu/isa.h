// kernels/cpu/isa.h: which x86 instructions this compile of the CPU kernels may use, and the
// region of a kernel file that is compiled for them. Internal to kernels/cpu.
//
// The kernel files (cpu_backend.cc, matmul.cc, matmul_interleaved.cc and the headers they share)
// are compiled once per variant (kernels/CMakeLists.txt: avx512vnni, avx512, avxvnni, avx2,
// generic) and kernels/cpu/dispatch.cc picks, at run time, the best one this CPU runs, so one
// binary is fast on every x86-64 CPU and runs on all of them. A variant's compile defines, on
// the command line:
//  - DS_CPU_VARIANT: its name, the inline namespace (ds::cpu::<name>) that keeps its symbols
//    apart from the other variants';
//  - DS_CPU_TARGET: the GCC target (instruction sets) of its kernel code;
//  - DS_CPU_AVX2 / DS_CPU_AVX512 / DS_CPU_AVX512VNNI / DS_CPU_AVXVNNI: the branches it takes.
// Only the code between DS_CPU_BEGIN and DS_CPU_END gets the variant's instructions (a
// `#pragma GCC target` region); the rest of the file, and every header included before the
// region (the C++ library, kernels/backend.h, kernels/dtype.h), is compiled for the build's
// baseline. That matters: an inline function or template of those headers instantiated by a
// variant is a weak symbol that the linker may pick for every caller in the program, so it
// must not hold instructions that some CPU lacks (GCC gives a template the target of its
// definition, not of its point of use). tests/cpu/variants_isolated.sh checks the objects for it.
// So a kernel file includes everything it needs first, then opens the region.
//
// Without those definitions (a build without dispatch: not x86-64 GCC, DS_CPU_DISPATCH=OFF,
// the clang fuzz build), the kernels are compiled once for the compiler's own flags
// (-march=native by default), as the variant `native`.
#pragma once

#ifndef DS_CPU_VARIANT
#define DS_CPU_VARIANT native
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define DS_CPU_AVX2 1
#endif
#if defined(DS_CPU_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define DS_CPU_AVX512 1
#endif
#if defined(DS_CPU_AVX512) && defined(__AVX512VNNI__)
#define DS_CPU_AVX512VNNI 1
#endif
#if defined(DS_CPU_AVX2) && defined(__AVXVNNI__)
#define DS_CPU_AVXVNNI 1
#endif
#endif  // DS_CPU_VARIANT

#define DS_CPU_STR_(x) #x
#define DS_CPU_STR(x) DS_CPU_STR_(x)
#define DS_CPU_PRAGMA_(x) _Pragma(#x)
#define DS_CPU_PRAGMA(x) DS_CPU_PRAGMA_(x)
#ifdef DS_CPU_TARGET
#define DS_CPU_BEGIN                                                                 \
  DS_CPU_PRAGMA(GCC push_options) DS_CPU_PRAGMA(GCC target(DS_CPU_TARGET)) namespace ds::cpu { \
    inline namespace DS_CPU_VARIANT {
#define DS_CPU_END \
  }                \
  }                \
  DS_CPU_PRAGMA(GCC pop_options)
#else
#define DS_CPU_BEGIN  \
  namespace ds::cpu { \
  inline namespace DS_CPU_VARIANT {
#define DS_CPU_END \
  }                \
  }
#endif
