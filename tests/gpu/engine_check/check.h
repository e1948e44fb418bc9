// tests/gpu/engine_check/check.h: what the parts of ds-gpu-engine-check share: the golden
// file's readers, the engines they make (with the CUDA backend options below), running an
// engine to idle, and each file's check groups (called by gpu_engine_check.cc's main()).
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/sampling.h"
#include "model/engine.h"

namespace ds::engine_check {

using Clock = std::chrono::steady_clock;
inline double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Minimal readers for the golden JSONL fields (strings with escapes, int arrays).
std::string json_string(const std::string& line, const std::string& key);
std::vector<int32_t> json_ints(const std::string& line, const std::string& key);

// The CUDA backend on GPU 0 with default options, or null (the reason printed).
std::unique_ptr<ds::Backend> gpu();

// The options of the engines engine() makes (checks set them and put them back).
extern bool g_pdl;             // CudaBackendOptions::pdl
extern bool g_tc;              // CudaBackendOptions::tc_gemm
extern bool g_tc_att;          // CudaBackendOptions::tc_attention
extern bool g_q8_0_split;      // CudaBackendOptions::q8_0_split
extern bool g_tc_att_mma;      // CudaBackendOptions::tc_attention_mma
extern bool g_fused;           // CudaBackendOptions::fused_decode
extern bool g_fused_auto;      // CudaBackendOptions::fused_decode_auto
extern bool g_fused_prefetch;  // CudaBackendOptions::fused_decode_prefetch
extern int g_fused_blocks;     // CudaBackendOptions::fused_decode_blocks_per_sm
extern bool g_time_replays;    // CudaBackendOptions::time_replays
extern bool g_l2_prefetch;     // CudaBackendOptions::l2_prefetch
extern bool g_half_cache;      // CudaBackendOptions::half_weight_cache
extern bool g_gemv_stream;     // CudaBackendOptions::gemv_stream
extern std::string g_bench_types;  // --types: bench()'s weight types, comma-separated (empty: q8_0, f16, q4_k)
extern std::optional<ds::DType> g_kv_type;  // EngineOptions::kv_type (unset: F16 on the GPU)
// --quick (the CPU emulation of CUDA, tests/gpu/emu, where a step takes ~1 s): the golden's
// first case and first 16 tokens, sampling for 10 tokens a request.
extern bool g_quick;

// An engine on the CUDA backend. graphs: whether the backend records decode steps as CUDA
// graphs; *cuda (when given) points at the backend afterwards.
std::unique_ptr<ds::Engine> engine(std::shared_ptr<ds::Model> m, int max_batch, int ctx, int step_tokens,
                                   bool graphs = true, const ds::CudaBackend** cuda = nullptr,
                                   ds::BackendSampling sampling = ds::BackendSampling::kAuto,
                                   int candidates = ds::kSampleMaxCandidates, bool profile = false);
// Runs until idle; returns generated tokens per id.
std::vector<std::vector<int32_t>> run(ds::Engine& e, size_t n, int* steps = nullptr);
// Requests of every sampling kind, n of them, for prompt ids from base (golden.cc).
std::vector<ds::SequenceRequest> sampled_requests(int n, int max_tokens, int32_t base);
// Prints a failed call's status; false when it failed (a benchmark must not time errors).
bool check_ok(const ds::Status& st, const char* what);

// ---- the check groups (true: passed) ----

// golden.cc
bool golden(const std::string& dir);
bool sampling(const std::string& dir);
bool memory_errors(const std::string& dir);
bool q8_0_split_engine(const std::string& dir);
// parallel.cc
bool tensor_parallel_golden(const std::string& dir);
bool emulated_tensor_parallel(const std::string& dir);
// fused.cc
bool fused_decode(const std::string& gold, const std::string& dir);
bool bench_fused(const std::string& dir, double copy_gbs);
// bench.cc
double d2d_bandwidth_gbs();
bool bench(const std::string& dir, double copy_gbs);

}  // namespace ds::engine_check
