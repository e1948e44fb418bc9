// tests/gpu/engine_check/common.cc: what the engine checks share (check.h).
#include "tests/gpu/engine_check/check.h"

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace ds::engine_check {

// Minimal readers for the golden JSONL fields (strings with escapes, int arrays).
std::string json_string(const std::string& line, const std::string& key) {
  size_t p = line.find("\"" + key + "\":");
  if (p == std::string::npos) return "";
  p = line.find('"', p + key.size() + 3);
  std::string out;
  for (size_t i = p + 1; i < line.size() && line[i] != '"'; ++i) {
    if (line[i] != '\\') {
      out += line[i];
      continue;
    }
    const char e = line[++i];
    if (e == 'n') out += '\n';
    else if (e == 't') out += '\t';
    else if (e == 'u') {
      const unsigned cp = std::stoul(line.substr(i + 1, 4), nullptr, 16);
      i += 4;
      if (cp < 0x80) out += static_cast<char>(cp);
      else if (cp < 0x800) out += static_cast<char>(0xC0 | (cp >> 6)), out += static_cast<char>(0x80 | (cp & 0x3F));
      else out += static_cast<char>(0xE0 | (cp >> 12)), out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), out += static_cast<char>(0x80 | (cp & 0x3F));
    } else out += e;
  }
  return out;
}
std::vector<int32_t> json_ints(const std::string& line, const std::string& key) {
  std::vector<int32_t> v;
  size_t p = line.find("\"" + key + "\":");
  if (p == std::string::npos) return v;
  p = line.find('[', p);
  const size_t e = line.find(']', p);
  for (size_t i = p + 1; i < e;) {
    while (i < e && (line[i] == ' ' || line[i] == ',')) ++i;
    if (i >= e) break;
    size_t used = 0;
    v.push_back(std::stoi(line.substr(i), &used));
    i += used;
  }
  return v;
}

std::unique_ptr<ds::Backend> gpu() {
  std::string err;
  auto be = ds::make_cuda_backend(0, &err);
  if (!be) std::printf("ERROR: no CUDA backend: %s\n", err.c_str());
  return be;
}

bool g_pdl = true;  // CudaBackendOptions::pdl of the engines made below
bool g_tc = true;   // CudaBackendOptions::tc_gemm of the engines made below
bool g_tc_att = true;  // CudaBackendOptions::tc_attention of the engines made below
bool g_q8_0_split = true;  // CudaBackendOptions::q8_0_split of the engines made below
bool g_tc_att_mma = true;  // CudaBackendOptions::tc_attention_mma of the engines made below
bool g_fused = false;       // CudaBackendOptions::fused_decode of the engines made below
bool g_fused_auto = false;  // CudaBackendOptions::fused_decode_auto of the engines made below
bool g_fused_prefetch = true;  // CudaBackendOptions::fused_decode_prefetch of the engines made below
int g_fused_blocks = 4;        // CudaBackendOptions::fused_decode_blocks_per_sm of the engines made below
bool g_time_replays = false;   // CudaBackendOptions::time_replays of the engines made below
bool g_l2_prefetch = false;    // CudaBackendOptions::l2_prefetch of the engines made below
bool g_half_cache = false;     // CudaBackendOptions::half_weight_cache of the engines made below
bool g_gemv_stream = false;    // CudaBackendOptions::gemv_stream of the engines made below
std::string g_bench_types;     // --types: the bench-1b weight types bench() runs (empty: all)
std::optional<ds::DType> g_kv_type;  // EngineOptions::kv_type of the engines made below (unset: F16 on the GPU)
// --quick (the CPU emulation of CUDA, tests/gpu/emu, where a step takes ~1 s): the golden's
// first case and first 16 tokens, sampling for 10 tokens a request.
bool g_quick = false;

// graphs: whether the backend records decode steps as CUDA graphs; *replays (when given)
// points at the backend's replay counter afterwards.
std::unique_ptr<ds::Engine> engine(std::shared_ptr<ds::Model> m, int max_batch, int ctx, int step_tokens,
                                   bool graphs, const ds::CudaBackend** cuda, ds::BackendSampling sampling, int candidates,
                                   bool profile) {
  std::string err;
  ds::CudaBackendOptions co;
  co.record_graphs = graphs;
  co.profile_ops = profile;
  co.pdl = g_pdl;
  co.tc_gemm = g_tc;
  co.tc_attention = g_tc_att;
  co.q8_0_split = g_q8_0_split;
  co.tc_attention_mma = g_tc_att_mma;
  co.fused_decode = g_fused;
  co.fused_decode_auto = g_fused_auto;
  co.fused_decode_prefetch = g_fused_prefetch;
  co.fused_decode_blocks_per_sm = g_fused_blocks;
  co.time_replays = g_time_replays;
  co.l2_prefetch = g_l2_prefetch;
  co.half_weight_cache = g_half_cache;
  co.gemv_stream = g_gemv_stream;
  std::unique_ptr<ds::CudaBackend> be = ds::CudaBackend::create(co, &err);
  if (!be) {
    std::printf("ERROR: no CUDA backend: %s\n", err.c_str());
    return nullptr;
  }
  // The start-up self-check's verdict: once, and again whenever a later engine's differs (it
  // decides the layout and kernels the engine runs, so a benchmark must know).
  static std::optional<std::string> told;
  if (!told || *told != be->self_check_note()) {
    std::printf("kernel self-check at start-up%s: %s\n", told ? " (a later engine, a different verdict)" : "",
                be->self_check_note().empty() ? "every unproven path agreed with the one it replaces"
                                              : ("switched off " + be->self_check_note()).c_str());
    told = be->self_check_note();
  }
  if (cuda) *cuda = be.get();
  ds::EngineOptions o;
  o.max_batch = max_batch;
  o.n_ctx = ctx;
  o.max_step_tokens = step_tokens;
  o.kv_cache_tokens = max_batch * ctx;
  o.kv_type = g_kv_type;
  o.backend_sampling = sampling;
  o.backend_sample_candidates = candidates;
  auto e = ds::Engine::Create(std::move(m), std::move(be), o);
  if (!e.ok()) {
    std::printf("ERROR: engine: %s\n", e.status().ToString().c_str());
    return nullptr;
  }
  return std::move(e).value();
}

// Runs until idle; returns generated tokens per id.
std::vector<std::vector<int32_t>> run(ds::Engine& e, size_t n, int* steps) {
  std::vector<std::vector<int32_t>> out(n);
  while (!e.idle()) {
    std::vector<ds::TokenEvent> evs;
    ds::Status s = e.step(&evs);
    if (!s.ok()) {
      std::printf("ERROR: step: %s\n", s.ToString().c_str());
      break;
    }
    if (steps) ++*steps;
    for (const auto& ev : evs)
      if (ev.token >= 0 && ev.id < n) out[ev.id].push_back(ev.token);
  }
  return out;
}

// Prints a failed call's status; false when it failed (a benchmark must not time errors).
bool check_ok(const ds::Status& st, const char* what) {
  if (!st.ok()) std::printf("ERROR: %s: %s\n", what, st.ToString().c_str());
  return st.ok();
}

}  // namespace ds::engine_check
