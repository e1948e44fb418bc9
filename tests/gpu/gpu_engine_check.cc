// tests/gpu/gpu_engine_check.cc: the engine on a real GPU (steps 3 and 4 of
// tools/gpu-check.sh). Plain program, no test framework: the GPU machine has no GTest.
//
//   ds-gpu-engine-check --golden DIR [--bench-dir DIR] [--no-bench] [--quick] [--only CHECK] [--types LIST]
//
// Step 3: greedy generation of DIR/stories260K.gguf (and -f16) on the CUDA backend must
//         reproduce DIR/stories260K-golden.jsonl token for token (sampling on the GPU);
//         six requests of every sampling kind must give the tokens of host sampling; running
//         out of device memory at load and at run time must give a clear error and give every
//         byte back (memory_errors); the tensor-parallel engine over NCCL on the visible GPUs
//         (1 or 2) must reproduce the golden too.
// Step 4: for ds-mkmodel's bench-1b preset in Q8_0 and F16 (written to --bench-dir):
//         prefill tok/s (512 tokens), decode tok/s at batch 1, 8 and 32, the weight bytes
//         read per second at batch 1 against the device-to-device copy bandwidth measured
//         here, prefill time against the time of its GEMMs alone (backend matmuls), and
//         sampled decode at batch 8 with sampling on the GPU vs on the host, and the
//         per-op GPU time of a batch-1 decode step (CudaBackendOptions::profile_ops).
// Last (fused_decode): the persistent decode kernel (CudaBackendOptions::fused_decode) must
//         give one-token steps the per-op path's logits bit for bit (several models, caches
//         and grids), and its bench-1b batch-1 decode is timed beside the per-op path's.
//
// The checks live in tests/gpu/engine_check/ (check.h: what they share).
#include <cstdio>
#include <cstring>
#include <string>

#include "kernels/backend.h"
#include "tests/gpu/engine_check/check.h"

using namespace ds::engine_check;

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line: a run cut short by its timeout keeps what it printed
  std::string gold, bench_dir = "/tmp";
  bool do_bench = true;
  std::string only;  // one check only (development)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--golden") && i + 1 < argc) gold = argv[++i];
    else if (!std::strcmp(argv[i], "--bench-dir") && i + 1 < argc) bench_dir = argv[++i];
    else if (!std::strcmp(argv[i], "--no-bench")) do_bench = false;
    else if (!std::strcmp(argv[i], "--quick")) g_quick = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--types") && i + 1 < argc) g_bench_types = argv[++i];
    else {
      std::printf("usage: %s --golden DIR [--bench-dir DIR] [--no-bench] [--quick] [--only CHECK] [--types q8_0,f16,q4_k]\n"
                  "  CHECK: golden, q8_0_split, fused_decode, sampling, memory_errors, tensor_parallel, bench\n",
                  argv[0]);
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  if (!ds::cuda_backend_available()) {
    std::printf("RESULT: FAIL (no usable GPU)\n");
    return 2;
  }
  bool ok = true;
  auto on = [&](const char* check) { return only.empty() || only == check; };
  if (!gold.empty() && on("golden")) ok = golden(gold) && ok;
  if (on("q8_0_split")) ok = q8_0_split_engine(bench_dir) && ok;
  if (!gold.empty() && on("sampling")) ok = sampling(gold) && ok;
  if (!gold.empty() && on("memory_errors")) ok = memory_errors(gold) && ok;
  if (!gold.empty() && on("tensor_parallel")) ok = tensor_parallel_golden(gold) && ok;
  if (!gold.empty() && on("tensor_parallel")) ok = emulated_tensor_parallel(gold) && ok;
  const double copy_gbs = do_bench && (on("bench") || on("fused_decode")) ? d2d_bandwidth_gbs() : 0;
  if (do_bench && on("bench")) ok = bench(bench_dir, copy_gbs) && ok;
  // The persistent decode kernel last (never run on a GPU yet: a hang must cost nothing else).
  if (!gold.empty() && on("fused_decode")) ok = fused_decode(gold, bench_dir) && ok;
  if (do_bench && on("fused_decode")) ok = bench_fused(bench_dir, copy_gbs) && ok;
  std::printf("RESULT: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
