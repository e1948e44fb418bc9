// tests/gpu/gpu_kernel_check.cc: validates every CUDA Backend op against the scalar
// references (kernels/ref.cc, kernels/sampling.cc) and the NCCL communicator, then times the decode GEMV against
// device-to-device memcpy.
// A plain program (no GTest) so that it builds on a bare GPU machine: see
// tests/gpu/CMakeLists.txt and tools/gpu-check.sh. This file is its main(); the check groups
// and benchmarks live in tests/gpu/kernel_check/ (check.h: what they share).
//
//   gpu_kernel_check [--device N] [--no-bench] [--quick] [--only GROUP,...]
//
// Output: one "CHECK PASS|FAIL <name> max_abs=.. max_rel=.. tol=.." line per comparison,
// a per-kernel summary table, "BENCH ..." lines, then "RESULT: PASS|FAIL".
// Element i of a comparison passes when |got - ref| <= atol + rtol * max(|ref|, scale_i),
// where scale_i is sum_k |w_k x_k| for dot products (the natural size of float rounding
// error there) and 0 elsewhere; max_rel is max |got - ref| / max(|ref|, scale_i).
// Exit status: 0 all checks pass, 1 a check failed, 2 no usable GPU or setup failure.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/gpu/kernel_check/check.h"

namespace ds::kernel_check {
namespace {

void print_summary() {
  std::printf("\n== summary: %d checks, %d failed ==\n", g_checks, g_failed);
  std::printf("%-28s %7s %5s %11s %11s  %s\n", "kernel", "checks", "fail", "max_abs", "max_rel", "tolerance");
  for (const auto& [name, g] : g_groups)
    std::printf("%-28s %7d %5d %11.3e %11.3e  %s%s\n", name.c_str(), g.checks, g.failed, g.max_abs, g.max_rel,
                g.tol.c_str(), g.failed ? "   <== FAIL" : "");
}

}  // namespace
}  // namespace ds::kernel_check

int main(int argc, char** argv) {
  using namespace ds::kernel_check;  // NOLINT: the checks and their helpers
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line: a run cut short by its timeout keeps what it printed
  int device = 0;
  bool bench = true, quick = false;
  std::string only;  // ",a,b,": run only these check groups (and no benchmarks)
  const char* kGroups =
      "errors,self_check,get_rows,elementwise,rmsnorm,rope,attention,matmul,matmul_tc,fused,q8_0_split,gemv_i8,fused_residual_rope,"
      "sample,recording,pdl,l2_prefetch,half_cache,nccl,grid_sync";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--device") && i + 1 < argc) {
      device = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--no-bench")) {
      bench = false;
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) {
      only = std::string(",") + argv[++i] + ",";
      bench = false;
    } else {
      std::fprintf(stderr, "usage: %s [--device N] [--no-bench] [--quick] [--only GROUP,...]\n  groups: %s\n", argv[0],
                   kGroups);
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  auto want = [&](const char* group) { return only.empty() || only.find(std::string(",") + group + ",") != std::string::npos; };
  for (size_t a = 1; a < only.size();) {  // every named group exists
    const size_t e = only.find(',', a);
    const std::string g = only.substr(a, e - a);
    if (!g.empty() && (std::string(",") + kGroups + ",").find("," + g + ",") == std::string::npos) {
      std::fprintf(stderr, "unknown check group '%s' (groups: %s)\n", g.c_str(), kGroups);
      return 2;
    }
    a = e + 1;
  }
  std::string error;
  CudaBackendOptions opts;
  opts.device = device;
  opts.sync_each_op = true;  // validation: a fault is reported by the op that caused it
  opts.gemv_max_batch = 8;   // the checks' GEMV range for every type (check_matmul_tc: the per-type default)
  opts.self_check = false;   // every check sets the paths it checks (self_check: the start-up check itself)
  auto b = CudaBackend::create(opts, &error);
  CudaBackendOptions tf32_opts = opts;
  tf32_opts.allow_tf32 = true;
  tf32_opts.gemm_half = false;  // the TF32 check is of the F32 path
  auto tf32 = b ? CudaBackend::create(tf32_opts, &error) : nullptr;
  if (!b || !tf32) {
    std::printf("ERROR: %s\nRESULT: FAIL (no usable GPU)\n", error.c_str());
    return 2;
  }
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  std::printf("gpu_kernel_check: %s, CUDA runtime %d, driver %d\n\n", b->device_description().c_str(), runtime, driver);

  Rng rng(20240601);
  if (want("errors")) check_errors(*b);
  if (want("self_check")) check_self_check(device);
  if (want("get_rows")) check_get_rows(*b, rng);
  if (want("elementwise")) check_elementwise(*b, rng);
  if (want("rmsnorm")) check_rmsnorm(*b, rng);
  if (want("rope")) check_rope(*b, rng);
  if (want("attention")) check_attention(*b, rng);
  if (want("matmul")) check_matmul(*b, *tf32, rng, quick);
  if (want("matmul_tc")) check_matmul_tc(*b, rng, quick);
  if (want("fused")) check_fused(*b, rng, quick);
  if (want("q8_0_split")) check_q8_0_split(*b, rng, quick);
  if (want("gemv_i8")) check_gemv_i8(*b, rng, quick);
  if (want("fused_residual_rope")) check_fused_residual_rope(*b, rng, quick);
  if (want("sample")) check_sample(*b, rng, quick);
  if (want("recording")) check_recording(device, rng);
  if (want("pdl")) check_pdl(device, rng);
  if (want("l2_prefetch")) check_l2_prefetch_pieces(rng);
  if (want("half_cache")) check_half_weight_cache(*b, rng);
  if (want("nccl")) check_nccl(device);
  // Last: the one check whose failure may be a hang (a cooperative grid barrier that never
  // opens); the script's timeout then costs nothing before it.
  if (want("grid_sync")) check_grid_sync(*b);
  print_summary();

  if (bench) {
    tf32.reset();
    CudaBackendOptions bench_opts;
    bench_opts.device = device;
    bench_opts.self_check = false;
    auto fast = CudaBackend::create(bench_opts, &error);
    if (!fast) {
      std::printf("ERROR: %s\n", error.c_str());
      return 2;
    }
    run_benchmarks(*fast, rng);
  }
  std::printf("\nRESULT: %s (%d checks, %d failed)\n", g_failed ? "FAIL" : "PASS", g_checks, g_failed);
  return g_failed ? 1 : 0;
}
