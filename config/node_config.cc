// config/node_config.cc: the key table, and the three sources (TOML file, DS_* environment,
// flags) read through it. CLI11 parses the flags and toml11 the file; every value, whatever
// its source, goes through the same text parser and checks (parse_value), so a rule is
// written once.
#include "config/node_config.h"

#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <sstream>
#include <toml.hpp>
#include <type_traits>
#include <variant>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/variants.h"

namespace ds {
namespace {

constexpr const char* kBackendNames[] = {"auto", "cpu", "cuda"};                          // enum BackendKind
constexpr const char* kKvTypeNames[] = {"auto", "f32", "f16"};                            // enum KvTypeKind
constexpr const char* kFusedDecodeNames[] = {"off", "on", "auto"};                        // enum FusedDecodeKind
constexpr const char* kCudaKernelsNames[] = {"all", "proven"};                             // enum CudaKernelsKind
constexpr const char* kCpuWeightsNames[] = {"interleaved", "gguf"};                        // enum CpuWeightsKind
constexpr const char* kLogFormatNames[] = {"text", "json"};                               // enum LogFormat
constexpr const char* kSchedulerPolicyNames[] = {"sharing", "stealing"};                  // enum SchedulerPolicy
constexpr const char* kLogLevelNames[] = {"trace", "debug", "info", "warn", "error", "off"};  // enum LogLevel

template <typename E, size_t N>
std::optional<E> parse_enum(const char* const (&names)[N], std::string_view s) {
  for (size_t i = 0; i < N; ++i)
    if (s == names[i]) return static_cast<E>(i);
  return std::nullopt;
}

}  // namespace

const char* backend_name(BackendKind b) { return kBackendNames[static_cast<int>(b)]; }
const char* log_format_name(LogFormat f) { return kLogFormatNames[static_cast<int>(f)]; }
const char* log_level_name(LogLevel l) { return kLogLevelNames[static_cast<int>(l)]; }
std::optional<BackendKind> parse_backend(std::string_view s) { return parse_enum<BackendKind>(kBackendNames, s); }
std::optional<LogFormat> parse_log_format(std::string_view s) { return parse_enum<LogFormat>(kLogFormatNames, s); }
std::optional<LogLevel> parse_log_level(std::string_view s) { return parse_enum<LogLevel>(kLogLevelNames, s); }

namespace {

// ---- value kinds and checks --------------------------------------------------------------

enum class Kind {
  kString,   // free text, then `check`
  kInt,      // decimal integer in [min, max]
  kPort,     // decimal integer in [min, max], reported as a port number
  kMillis,   // decimal integer of milliseconds in [min, max]
  kSeconds,  // seconds, integer or decimal; stored as ms in [min, max]
  kChoice,   // one of `choices`; stored as its index
};

// A parsed value: integers, ports and durations (ms) in i; text in s; a choice as both.
struct Value {
  int64_t i = 0;
  std::string s;
  bool operator==(const Value&) const = default;
};

// Extra check of a kString value: "" when fine, else why not.
using Check = std::string (*)(const std::string&);

// Comma-separated HOST:PORT seeds ("" = found a new cluster).
std::string check_seeds(const std::string& s) {
  if (s.empty()) return "";
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    const std::string item = s.substr(start, comma - start);
    const size_t colon = item.rfind(':');
    if (item.empty() || colon == std::string::npos || colon == 0) return "'" + item + "' is not HOST:PORT";
    const std::string port = item.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) < 1 ||
        std::stoi(port) > 65535) {
      return "'" + item + "' has no valid port";
    }
    start = comma + 1;
  }
  return "";
}

// Comma-separated distinct GPU ordinals ("" = none given).
std::string check_gpus(const std::string& s) {
  if (s.empty()) return "";
  std::vector<int> seen;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    const std::string item = s.substr(start, comma - start);
    if (item.empty() || item.size() > 3 || item.find_first_not_of("0123456789") != std::string::npos)
      return "'" + item + "' is not a GPU number (want e.g. 0,1)";
    const int g = std::stoi(item);
    if (std::find(seen.begin(), seen.end(), g) != seen.end()) return "GPU " + item + " is listed twice";
    seen.push_back(g);
    start = comma + 1;
  }
  return "";
}

std::string check_node_id(const std::string& s) {
  if (s.empty()) return "must not be empty";
  if (s.size() > 64) return "longer than 64 characters";
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-')
      return "may hold only letters, digits, '.', '_' and '-'";
  return "";
}

std::string check_not_empty(const std::string& s) { return s.empty() ? "must not be empty" : ""; }

// A variant of the CPU kernels this build has and this CPU runs (kernels/cpu/variants.h), or auto.
std::string check_cuda_tuning(const std::string& s) {
  CudaBackendChoices c;
  std::string error;
  return parse_cuda_tuning(s, &c, &error) ? "" : error;
}

std::string check_cpu_kernels(const std::string& s) {
  std::string error;
  return cpu::find_variant(s, &error) != nullptr ? "" : error;
}

std::string check_bind(const std::string& s);
std::string check_advertise(const std::string& s) {
  if (s.empty()) return "";
  if (s == "0.0.0.0" || s == "::") return "must be an address others can connect to, not a wildcard";
  return check_bind(s);
}

// An IPv4 or IPv6 literal, or a host name (RFC 1123 labels). Not resolved here.
std::string check_bind(const std::string& s) {
  unsigned char buf[sizeof(in6_addr)];
  if (inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1) return "";
  const std::string bad = "not an IPv4/IPv6 address or host name";
  if (s.empty() || s.size() > 253) return bad;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('.', start);
    if (end == std::string::npos) end = s.size();
    const std::string_view label(s.data() + start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return bad;
    for (char c : label)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return bad;
    start = end + 1;
  }
  // All-numeric dotted names ("999.1.1.1") are malformed addresses, not host names.
  if (s.find_first_not_of("0123456789.") == std::string::npos) return bad;
  return "";
}

// ---- the key table -----------------------------------------------------------------------

// One line per setting. Flag: "--" + name; environment: "DS_" + NAME with '-' -> '_';
// TOML: [table] key. The default is whatever NodeConfig{} holds. Adding a setting: a field
// in NodeConfig, a line in kKeys, the key in config/ds.toml (a test checks the file).
struct KeyDesc {
  const char* name;
  const char* table;
  const char* key;
  Kind kind;
  int64_t min, max;                      // kInt, kPort, kMillis; kSeconds in ms
  std::span<const char* const> choices;  // kChoice
  Check check;                           // kString, may be null
  const char* type_name;                 // placeholder in --help
  const char* help;
  void (*store)(NodeConfig&, const Value&);
  Value (*load)(const NodeConfig&);
};

template <auto M>
void store_str(NodeConfig& c, const Value& v) { c.*M = v.s; }
template <auto M>
Value load_str(const NodeConfig& c) { return {0, c.*M}; }
template <auto M>
void store_int(NodeConfig& c, const Value& v) { c.*M = static_cast<std::remove_reference_t<decltype(c.*M)>>(v.i); }
template <auto M>
Value load_int(const NodeConfig& c) { return {static_cast<int64_t>(c.*M), {}}; }
template <auto M>
void store_ms(NodeConfig& c, const Value& v) { c.*M = std::chrono::milliseconds(v.i); }
template <auto M>
Value load_ms(const NodeConfig& c) { return {static_cast<int64_t>((c.*M).count()), {}}; }
template <auto M>
void store_enum(NodeConfig& c, const Value& v) { c.*M = static_cast<std::remove_reference_t<decltype(c.*M)>>(v.i); }
template <auto M, const auto& Names>
Value load_enum(const NodeConfig& c) { const auto i = static_cast<int64_t>(c.*M); return {i, Names[i]}; }

#define DS_STR(m) store_str<&NodeConfig::m>, load_str<&NodeConfig::m>
#define DS_INT(m) store_int<&NodeConfig::m>, load_int<&NodeConfig::m>
#define DS_MS(m) store_ms<&NodeConfig::m>, load_ms<&NodeConfig::m>
#define DS_ENUM(m, names) store_enum<&NodeConfig::m>, load_enum<&NodeConfig::m, names>

constexpr int64_t kHour = 3'600'000;  // ms
constexpr std::span<const char* const> kNone{};

// clang-format off
const KeyDesc kKeys[] = {
  // name          [table] key           kind           min  max         choices / check           type    help
  {"node-id",       "node", "id",             Kind::kString,  0, 0,            kNone, check_node_id,   "NAME", "Unique name of this node in the cluster, [A-Za-z0-9._-]{1,64}", DS_STR(node_id)},
  {"data-dir",      "node", "data-dir",       Kind::kString,  0, 0,            kNone, check_not_empty, "DIR",  "Directory for the node's store and journal (created when missing)", DS_STR(data_dir)},
  {"bind",          "node", "bind",           Kind::kString,  0, 0,            kNone, check_bind,      "ADDR", "Address to listen on: IPv4/IPv6 literal or host name", DS_STR(bind)},
  {"advertise",     "node", "advertise",      Kind::kString,  0, 0,            kNone, check_advertise, "HOST", "Host or IP the other members and clients reach this node at (empty: the bind address, or this host's first non-loopback IPv4 when bound to 0.0.0.0)", DS_STR(advertise)},
  {"port",          "node", "port",           Kind::kPort,    1, 65535,        kNone, nullptr,         "PORT", "TCP port for peers (actor system)", DS_INT(port)},
  {"http-port",     "node", "http-port",      Kind::kPort,    0, 65535,        kNone, nullptr,         "PORT", "TCP port of the HTTP gateway (0 = no gateway)", DS_INT(http_port)},
  {"drain-timeout", "node", "drain-timeout",  Kind::kSeconds, 1, kHour,        kNone, nullptr,         "SECONDS", "On SIGTERM, wait this long for running requests before stopping (> 0)", DS_MS(drain_timeout)},
  {"join",          "cluster", "join",        Kind::kString,  0, 0,            kNone, check_seeds,     "HOST:PORT[,...]", "Seeds to join through (any reachable one); empty = found a new cluster", DS_STR(join)},
  {"cluster-name",  "cluster", "name",        Kind::kString,  0, 0,            kNone, check_node_id,   "NAME", "Cluster name: a join with another name is refused on both sides", DS_STR(cluster_name)},
  {"failure-detector-interval-ms", "cluster", "failure-detector-interval-ms", Kind::kMillis, 10, 60'000, kNone, nullptr, "MS",
   "Failure detector: each member is pinged by its monitors this often, in ms", DS_MS(fd_interval)},
  {"failure-detector-threshold", "cluster", "failure-detector-threshold", Kind::kInt, 1, 100, kNone, nullptr, "PHI",
   "Failure detector: phi-accrual suspicion at which a member is unreachable (higher: slower, fewer false downs)", DS_INT(fd_threshold)},
  {"failure-detector-acceptable-pause-ms", "cluster", "failure-detector-acceptable-pause-ms", Kind::kMillis, 0, kHour, kNone, nullptr, "MS",
   "Failure detector: silence tolerated on top of the usual heartbeat gaps (GC or load pauses), in ms", DS_MS(fd_acceptable_pause)},
  {"model",         "model", "path",          Kind::kString,  0, 0,            kNone, nullptr,         "FILE", "GGUF model file to serve (must be a readable file; empty = none)", DS_STR(model_path)},
  {"backend",       "model", "backend",       Kind::kChoice,  0, 0,            kBackendNames, nullptr, "", "Compute backend: auto = CUDA when a GPU is usable, else CPU", DS_ENUM(backend, kBackendNames)},
  {"threads",       "model", "threads",       Kind::kInt,     0, 1024,         kNone, nullptr,         "N",    "CPU threads for the forward pass (0 = all cores)", DS_INT(threads)},
  {"gpus",          "model", "gpus",          Kind::kString,  0, 0,            kNone, check_gpus,      "0,1,...", "GPUs of this node's worker: one model replica split over them (tensor parallel, NCCL); empty = GPU 0", DS_STR(gpus)},
  {"tensor-parallel", "model", "tensor-parallel", Kind::kInt, 1, 64,           kNone, nullptr,         "N",    "CPU backend: split the worker's model over N rank threads (tensor parallel; 1 = off)", DS_INT(tensor_parallel)},
  {"shard-step-timeout-ms", "model", "shard-step-timeout-ms", Kind::kMillis, 0, kHour, kNone, nullptr, "MS",
   "Tensor parallel (gpus or tensor-parallel > 1): a step not finished in this many ms means a hung rank; the group is aborted and the worker restarts (the first step gets 10x; 0 = off)", DS_MS(shard_step_timeout)},
  {"stuck-step-exit-ms", "model", "stuck-step-exit-ms", Kind::kMillis, 0, 24 * kHour, kNone, nullptr, "MS",
   "An engine step still running after this many ms (a wedged GPU kernel, a hung rank) makes the node exit with status 6, so the cluster fails its requests over (the first step gets 10x; 0 = off)", DS_MS(stuck_step_exit)},
  {"max-batch",     "model", "max-batch",     Kind::kInt,     0, 1024,         kNone, nullptr,         "N",    "Most sequences a worker runs at once (0 = auto: 32 on GPUs, 8 on the CPU)", DS_INT(max_batch)},
  {"ctx",           "model", "ctx",           Kind::kInt,     0, 1 << 24,      kNone, nullptr,         "N",    "Context length in tokens per sequence (0 = the model's)", DS_INT(ctx)},
  {"kv-cache-tokens", "model", "kv-cache-tokens", Kind::kInt, 0, 1 << 30,      kNone, nullptr,         "N",    "KV-cache capacity in token positions (0 = auto: max-batch x ctx, within 4 GiB on the CPU, within gpu-memory-percent on GPUs)", DS_INT(kv_cache_tokens)},
  {"kv-block-size", "model", "kv-block-size", Kind::kInt,     1, 1024,         kNone, nullptr,         "N",    "Token positions per KV-cache block", DS_INT(kv_block_size)},
  {"kv-type",       "model", "kv-type",       Kind::kChoice,  0, 0,            kKvTypeNames, nullptr,  "", "KV-cache elements: f16 halves its memory (twice the sequences or context in the same memory); auto = f16 on GPUs, f32 on the CPU", DS_ENUM(kv_type, kKvTypeNames)},
  {"fused-decode",  "model", "fused-decode",  Kind::kChoice,  0, 0,            kFusedDecodeNames, nullptr, "", "CUDA: one-token decode steps as one persistent kernel (same logits as the kernel-per-op path); auto = only where a probe at load times it faster on this GPU", DS_ENUM(fused_decode, kFusedDecodeNames)},
  {"cuda-kernels",  "model", "cuda-kernels",  Kind::kChoice,  0, 0,            kCudaKernelsNames, nullptr, "", "CUDA, one GPU: all = every kernel path (those not yet run on a GPU pass a self-check against the proven ones at start, else they are switched off); proven = only paths that have run on a GPU (no flash attention 2, padded WMMA, split Q8_0 rows, one-launch decode ops or persistent decode kernel)", DS_ENUM(cuda_kernels, kCudaKernelsNames)},
  {"cuda-tuning",   "model", "cuda-tuning",   Kind::kString,  0, 0,            kNone, check_cuda_tuning, "LIST", "CUDA: performance options not yet timed on a GPU, comma-separated (each keeps every token the same): l2-prefetch = GEMV launches ask L2 for the next op's weights; stream-gemv = one-token steps on the streamed GEMV; half-weights = F16 copies of quantized matrices kept for prefill (2 bytes a weight, while memory allows); empty or none = none", DS_STR(cuda_tuning)},
  {"cpu-weights",   "model", "cpu-weights",   Kind::kChoice,  0, 0,            kCpuWeightsNames, nullptr, "", "CPU workers: interleaved = Q8_0 / Q4_0 / Q4_K / Q6_K matrices rewritten at load with 16 rows interleaved, for kernels 1.3-3.5x faster (x86 CPUs with AVX2 or AVX-512; elsewhere the file's layout either way); gguf = computed on the file's bytes (no copy at load)", DS_ENUM(cpu_weights, kCpuWeightsNames)},
  {"cpu-kernels",   "model", "cpu-kernels",   Kind::kString,  0, 0,            kNone, check_cpu_kernels, "NAME", "CPU workers: which compile of the CPU kernels runs: auto = the best this CPU runs; avx512vnni, avx512, avxvnni, avx2 or generic (x86-64 builds; each refused on a CPU without its instructions) to compare them or to work around one", DS_STR(cpu_kernels)},
  {"gpu-memory-percent", "model", "gpu-memory-percent", Kind::kInt, 1, 100,  kNone, nullptr,         "PERCENT", "GPUs: the worker's weights, buffers and KV cache stay within this percent of each device's memory (and what is free at start); an automatic KV cache (kv-cache-tokens 0) shrinks to fit", DS_INT(gpu_memory_percent)},
  {"max-step-tokens", "model", "max-step-tokens", Kind::kInt, 1, 1 << 20,      kNone, nullptr,         "N",    "Most tokens in one forward pass (prefill chunk budget)", DS_INT(max_step_tokens)},
  {"max-tokens-limit", "model", "max-tokens-limit", Kind::kInt, 1, 1 << 24,    kNone, nullptr,         "N",    "Cap on max_tokens of one request", DS_INT(max_tokens_limit)},
  {"log-format",    "log", "format",          Kind::kChoice,  0, 0,            kLogFormatNames, nullptr, "", "Log line format", DS_ENUM(log_format, kLogFormatNames)},
  {"log-level",     "log", "level",           Kind::kChoice,  0, 0,            kLogLevelNames, nullptr, "", "Least severe level written", DS_ENUM(log_level, kLogLevelNames)},
  {"scheduler-threads", "caf", "scheduler-threads", Kind::kInt, 0, 1024,       kNone, nullptr,         "N",    "CAF scheduler worker threads (0 = auto)", DS_INT(scheduler_threads)},
  {"scheduler-policy", "caf", "scheduler-policy", Kind::kChoice, 0, 0,        kSchedulerPolicyNames, nullptr, "", "CAF scheduler: sharing (idle threads sleep; best when workers' compute threads need the cores) or stealing", DS_ENUM(scheduler_policy, kSchedulerPolicyNames)},
  {"heartbeat-interval-ms", "caf", "heartbeat-interval-ms", Kind::kMillis, 0, kHour, kNone, nullptr,   "MS",   "CAF middleman heartbeat interval in ms (0 = off)", DS_MS(heartbeat_interval)},
  {"connection-timeout-ms", "caf", "connection-timeout-ms", Kind::kMillis, 0, kHour, kNone, nullptr,   "MS",   "CAF middleman: close a connection silent this long, in ms (0 = off; else > heartbeat-interval-ms)", DS_MS(connection_timeout)},
  {"tls-certificate", "tls", "certificate",   Kind::kString,  0, 0,            kNone, nullptr,         "FILE", "TLS: PEM certificate of this node; TLS is on when set (then tls-key and tls-cafile are required)", DS_STR(tls_certificate)},
  {"tls-key",       "tls", "key",             Kind::kString,  0, 0,            kNone, nullptr,         "FILE", "TLS: PEM private key of the certificate", DS_STR(tls_key)},
  {"tls-passphrase", "tls", "passphrase",     Kind::kString,  0, 0,            kNone, nullptr,         "TEXT", "TLS: passphrase of an encrypted key (prefer DS_TLS_PASSPHRASE to a flag)", DS_STR(tls_passphrase)},
  {"tls-cafile",    "tls", "cafile",          Kind::kString,  0, 0,            kNone, nullptr,         "FILE", "TLS: PEM file of the CA that signs every node and client (peers are authenticated)", DS_STR(tls_cafile)},
  {"tls-capath",    "tls", "capath",          Kind::kString,  0, 0,            kNone, nullptr,         "DIR",  "TLS: directory of CA certificates, instead of tls-cafile", DS_STR(tls_capath)},
  {"fault-worker-crash-after-steps", "test", "fault-worker-crash-after-steps", Kind::kInt, 0, INT32_MAX, kNone, nullptr, "N",
   "TEST ONLY (integration/fault suites): a worker crashes after N engine steps (0 = off)", DS_INT(fault_worker_crash_after_steps)},
  {"fault-worker-crash-count", "test", "fault-worker-crash-count", Kind::kInt, 1, 1000, kNone, nullptr, "N",
   "TEST ONLY: how many worker incarnations in a row crash that way (then they run normally)", DS_INT(fault_worker_crash_count)},
  {"fault-worker-hang-after-steps", "test", "fault-worker-hang-after-steps", Kind::kInt, 0, INT32_MAX, kNone, nullptr, "N",
   "TEST ONLY: the worker's engine step number N never returns (a wedged GPU, simulated; 0 = off)", DS_INT(fault_worker_hang_after_steps)},
};
// clang-format on
constexpr size_t kNumKeys = std::size(kKeys);

std::string env_name(const KeyDesc& d) {
  std::string s = std::string("DS_") + d.name;
  for (char& c : s) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
std::string flag_name(const KeyDesc& d) { return std::string("--") + d.name; }
std::string toml_path(const KeyDesc& d) { return std::string(d.table) + "." + d.key; }

std::string join_choices(const KeyDesc& d) {
  std::string s;
  for (const char* c : d.choices) {
    if (!s.empty()) s += '|';
    s += c;
  }
  return s;
}

// ---- parsing one value -------------------------------------------------------------------

std::optional<int64_t> parse_int(const std::string& s) {
  int64_t v = 0;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || p != end || s.empty()) return std::nullopt;
  return v;
}

std::string range_text(const KeyDesc& d) { return std::to_string(d.min) + ".." + std::to_string(d.max); }

// Parses `text` as a value of key `d`: the Value, or why not (without the key and source).
std::variant<Value, std::string> parse_value(const KeyDesc& d, const std::string& text) {
  Value v;
  switch (d.kind) {
    case Kind::kString: {
      if (d.check) {
        if (std::string why = d.check(text); !why.empty()) return why;
      }
      v.s = text;
      return v;
    }
    case Kind::kChoice: {
      for (size_t i = 0; i < d.choices.size(); ++i)
        if (text == d.choices[i]) return Value{static_cast<int64_t>(i), text};
      return "not one of " + join_choices(d);
    }
    case Kind::kInt:
    case Kind::kPort:
    case Kind::kMillis: {
      const std::optional<int64_t> n = parse_int(text);
      if (!n || *n < d.min || *n > d.max) {
        if (d.kind == Kind::kPort) return "not a port number (" + range_text(d) + ")";
        if (d.kind == Kind::kMillis) return "not a duration in milliseconds (" + range_text(d) + ")";
        return n ? "out of range " + range_text(d) : "not an integer";
      }
      v.i = *n;
      return v;
    }
    case Kind::kSeconds: {
      double x = 0;
      const char* end = text.data() + text.size();
      auto [p, ec] = std::from_chars(text.data(), end, x);
      const std::string why = "not a duration in seconds (> 0, at most " + std::to_string(d.max / 1000) + ")";
      if (ec != std::errc() || p != end || text.empty() || !std::isfinite(x)) return why;
      const double ms = std::round(x * 1000.0);
      if (ms < static_cast<double>(d.min) || ms > static_cast<double>(d.max)) return why;
      v.i = static_cast<int64_t>(ms);
      return v;
    }
  }
  return "unhandled kind";
}

// The value as a TOML literal: "text", 42, 2.5 (seconds).
std::string toml_literal(const KeyDesc& d, const Value& v) {
  switch (d.kind) {
    case Kind::kString:
    case Kind::kChoice:
      // Unlimited width: always a one-line basic string, control characters escaped.
      return toml::format(toml::value(v.s), std::numeric_limits<std::size_t>::max());
    case Kind::kSeconds: {
      if (v.i % 1000 == 0) return std::to_string(v.i / 1000);
      char buf[64];
      auto [p, ec] = std::to_chars(buf, buf + sizeof buf, static_cast<double>(v.i) / 1000.0, std::chars_format::fixed);
      return std::string(buf, ec == std::errc() ? p : buf);
    }
    default:
      return std::to_string(v.i);
  }
}

std::string default_text(const KeyDesc& d) {
  const Value v = d.load(NodeConfig{});
  if (std::string_view(d.name) == "node-id") return "<hostname>-<port>";
  if (d.kind == Kind::kString && v.s.empty()) return "none";
  if (d.kind == Kind::kString || d.kind == Kind::kChoice) return v.s;
  return toml_literal(d, v);
}

// ---- sources -----------------------------------------------------------------------------

enum class Source { kDefault, kFile, kEnv, kFlag };

struct Loader {
  NodeConfig cfg;
  std::array<Source, kNumKeys> source{};  // all kDefault
  std::string file;                       // the config file read

  std::string origin_text(size_t k) const {
    switch (source[k]) {
      case Source::kFile: return "file " + file;
      case Source::kEnv: return "env " + env_name(kKeys[k]);
      case Source::kFlag: return "flag " + flag_name(kKeys[k]);
      default: return "default";
    }
  }
  // How an error names key k's current value: "--port", "DS_PORT", "config file F: node.port".
  std::string label(size_t k) const {
    switch (source[k]) {
      case Source::kFile: return "config file " + file + ": " + toml_path(kKeys[k]);
      case Source::kEnv: return env_name(kKeys[k]);
      case Source::kFlag: return flag_name(kKeys[k]);
      default: return "default " + toml_path(kKeys[k]);
    }
  }

  // Parses `text` for key k from `src` (label `where`) and stores it.
  Status set(size_t k, Source src, const std::string& where, const std::string& text) {
    std::variant<Value, std::string> r = parse_value(kKeys[k], text);
    if (const std::string* why = std::get_if<std::string>(&r))
      return Status::InvalidArgument(where + "='" + text + "': " + *why);
    kKeys[k].store(cfg, std::get<Value>(r));
    source[k] = src;
    return Status::Ok();
  }
};

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean 'model.max-batch'?)" for a near miss of a known key, else "".
std::string suggestion(const std::string& key) {
  std::string norm = key;
  std::replace(norm.begin(), norm.end(), '_', '-');
  size_t best = 3;
  const KeyDesc* hit = nullptr;
  for (const KeyDesc& d : kKeys) {
    const size_t dist = edit_distance(norm, d.key);
    if (dist < best) best = dist, hit = &d;
  }
  return hit ? " (did you mean '" + toml_path(*hit) + "'?)" : "";
}

std::string type_of(const toml::value& v) {
  std::ostringstream os;
  os << v.type();
  return os.str();
}

Status read_file(Loader& loader, const std::string& path) {
  loader.file = path;
  const std::string where = "config file " + path + ": ";
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) return Status::InvalidArgument(where + "no such file");
  if (std::filesystem::is_directory(st)) return Status::InvalidArgument(where + "is a directory, not a TOML file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidArgument(where + "cannot open: " + std::strerror(errno));
  toml::value root;
  try {
    root = toml::parse(in, path);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(where + "not valid TOML: " + e.what());
  }
  if (!root.is_table()) return Status::InvalidArgument(where + "not a TOML table");

  // Sorted, so that the first error reported does not depend on hash order.
  std::map<std::string, const toml::value*> tables;
  for (const auto& [name, v] : root.as_table()) tables[name] = &v;
  for (const auto& [tname, tval] : tables) {
    const auto line = " (line " + std::to_string(tval->location().line()) + ")";
    const bool known = std::any_of(std::begin(kKeys), std::end(kKeys),
                                   [&](const KeyDesc& d) { return tname == d.table; });
    if (!known && tval->is_table()) return Status::InvalidArgument(where + "unknown table '[" + tname + "]'" + line);
    if (!known) return Status::InvalidArgument(where + "unknown key '" + tname + "'" + suggestion(tname) + line);
    if (!tval->is_table())
      return Status::InvalidArgument(where + "key '" + tname + "' must be a table [" + tname + "], not " +
                                     type_of(*tval) + line);
    std::map<std::string, const toml::value*> keys;
    for (const auto& [k, v] : tval->as_table()) keys[k] = &v;
    for (const auto& [kname, v] : keys) {
      const std::string path_text = tname + "." + kname;
      const std::string kline = " (line " + std::to_string(v->location().line()) + ")";
      size_t k = 0;
      while (k < kNumKeys && !(tname == kKeys[k].table && kname == kKeys[k].key)) ++k;
      if (k == kNumKeys)
        return Status::InvalidArgument(where + "unknown key '" + path_text + "'" + suggestion(kname) + kline);
      const KeyDesc& d = kKeys[k];
      std::string text;
      const char* want = nullptr;
      switch (d.kind) {
        case Kind::kString:
        case Kind::kChoice:
          if (v->is_string()) text = v->as_string().str; else want = "a string";
          break;
        case Kind::kSeconds:
          if (v->is_floating()) {
            char buf[64];
            auto [p, e] = std::to_chars(buf, buf + sizeof buf, v->as_floating());
            text.assign(buf, e == std::errc() ? p : buf);
            break;
          }
          [[fallthrough]];
        default:
          if (v->is_integer()) text = std::to_string(v->as_integer());
          else want = d.kind == Kind::kSeconds ? "a number of seconds" : "an integer";
      }
      if (want)
        return Status::InvalidArgument(where + "key '" + path_text + "' must be " + want + ", not " + type_of(*v) + kline);
      if (Status s = loader.set(k, Source::kFile, where + path_text, text); !s.ok())
        return Status::InvalidArgument(s.message() + kline);
    }
  }
  return Status::Ok();
}

Status read_env(Loader& loader, const std::map<std::string, std::string>& env) {
  for (size_t k = 0; k < kNumKeys; ++k) {
    const std::string name = env_name(kKeys[k]);
    if (auto it = env.find(name); it != env.end()) DS_RETURN_IF_ERROR(loader.set(k, Source::kEnv, name, it->second));
  }
  return Status::Ok();
}

std::string default_node_id(uint16_t port) {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  std::string h;
  for (const char* c = host; *c; ++c)
    h += (std::isalnum(static_cast<unsigned char>(*c)) || *c == '.' || *c == '_' || *c == '-') ? *c : '-';
  if (h.empty()) h = "node";
  const std::string suffix = "-" + std::to_string(port);
  return h.substr(0, 64 - suffix.size()) + suffix;
}

size_t key_index(std::string_view name) {
  size_t k = 0;
  while (k < kNumKeys && name != kKeys[k].name) ++k;
  return k;
}

// Checks that need the final values: the model file, and CAF's timeout vs heartbeat.
Status check_final(const Loader& loader) {
  const NodeConfig& c = loader.cfg;
  if (!c.model_path.empty()) {
    const std::string where = loader.label(key_index("model")) + "='" + c.model_path + "': ";
    std::error_code ec;
    const auto st = std::filesystem::status(c.model_path, ec);
    if (!std::filesystem::exists(st)) return Status::InvalidArgument(where + "no such file");
    if (!std::filesystem::is_regular_file(st)) return Status::InvalidArgument(where + "not a regular file");
    if (access(c.model_path.c_str(), R_OK) != 0)
      return Status::InvalidArgument(where + "not readable: " + std::strerror(errno));
  }
  if (!c.gpus.empty() && c.backend == BackendKind::kCpu) {
    return Status::InvalidArgument(loader.label(key_index("gpus")) + "=" + c.gpus + ": needs backend cuda or auto, not cpu");
  }
  if (!c.gpus.empty() && c.tensor_parallel > 1) {
    return Status::InvalidArgument(loader.label(key_index("tensor-parallel")) + "=" + std::to_string(c.tensor_parallel) +
                                   ": with gpus the group has one rank per listed GPU; leave tensor-parallel at 1");
  }
  if (c.heartbeat_interval.count() > 0 && c.connection_timeout.count() > 0 &&
      c.connection_timeout <= c.heartbeat_interval) {
    const size_t t = key_index("connection-timeout-ms"), h = key_index("heartbeat-interval-ms");
    return Status::InvalidArgument(loader.label(t) + "=" + std::to_string(c.connection_timeout.count()) +
                                   ": must be greater than heartbeat-interval-ms (" +
                                   std::to_string(c.heartbeat_interval.count()) + ", from " + loader.label(h) +
                                   "), or 0 to turn the timeout off");
  }
  return Status::Ok();
}

Result<NodeConfig> load(int argc, const char* const* argv, const std::map<std::string, std::string>& env,
                        std::string* help_out) {
  CLI::App app{"ds-node: one node of the ds LLM inference cluster", "ds-node"};
  app.get_formatter()->column_width(42);
  app.footer(
      "Every setting is also a key of the TOML file (--config FILE, or env DS_CONFIG) and a DS_* environment\n"
      "variable. Precedence: flags > environment > file > defaults. Unknown file keys and bad values are\n"
      "errors; unknown DS_* variables are ignored. The documented default file is config/ds.toml.");
  std::string config_path;
  bool print_config = false;
  CLI::Option* config_opt =
      app.add_option("--config", config_path, "TOML config file [env DS_CONFIG, default none]")->type_name("FILE");
  app.add_flag("--print-config", print_config, "Print the effective config as TOML (with each value's source) and exit");
  std::array<std::string, kNumKeys> flag_text;
  std::array<CLI::Option*, kNumKeys> opts{};
  for (size_t k = 0; k < kNumKeys; ++k) {
    const KeyDesc& d = kKeys[k];
    const bool choice = d.kind == Kind::kChoice;
    const std::string help = std::string(d.help) + " [env " + env_name(d) + ", toml [" +
                             d.table + "] " + d.key + ", default " + default_text(d) + "]";
    opts[k] = app.add_option(flag_name(d), flag_text[k], help)
                  ->type_name(choice ? join_choices(d) : std::string(d.type_name))
                  ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)
                  ->group(std::string(d.table) == "test" ? "Testing" : "Options");
  }

  NodeConfig help_cfg;
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    if (help_out) *help_out = app.help();
    help_cfg.help_requested = true;
    return help_cfg;
  } catch (const CLI::CallForAllHelp&) {
    if (help_out) *help_out = app.help();
    help_cfg.help_requested = true;
    return help_cfg;
  } catch (const CLI::ParseError& e) {
    return Status::InvalidArgument(std::string("command line: ") + e.what());
  }

  Loader loader;
  if (config_opt->count() > 0) {
    DS_RETURN_IF_ERROR(read_file(loader, config_path));
  } else if (auto it = env.find("DS_CONFIG"); it != env.end()) {
    DS_RETURN_IF_ERROR(read_file(loader, it->second));
  }
  DS_RETURN_IF_ERROR(read_env(loader, env));
  for (size_t k = 0; k < kNumKeys; ++k)
    if (opts[k]->count() > 0) DS_RETURN_IF_ERROR(loader.set(k, Source::kFlag, flag_name(kKeys[k]), flag_text[k]));

  if (loader.source[key_index("node-id")] == Source::kDefault) loader.cfg.node_id = default_node_id(loader.cfg.port);
  DS_RETURN_IF_ERROR(check_final(loader));

  loader.cfg.print_config = print_config;
  loader.cfg.config_file = loader.file;
  for (size_t k = 0; k < kNumKeys; ++k) loader.cfg.origin[kKeys[k].name] = loader.origin_text(k);
  return std::move(loader.cfg);
}

}  // namespace

bool operator==(const NodeConfig& a, const NodeConfig& b) {
  return std::all_of(std::begin(kKeys), std::end(kKeys), [&](const KeyDesc& d) { return d.load(a) == d.load(b); });
}

Result<NodeConfig> load_node_config(int argc, const char* const* argv, const std::map<std::string, std::string>& env,
                                    std::string* help_out) {
  try {
    return load(argc, argv, env, help_out);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("configuration: ") + e.what());
  } catch (...) {
    return Status::InvalidArgument("configuration: unknown error");
  }
}

std::string to_toml(const NodeConfig& config) {
  std::string out =
      "# ds-node effective configuration (ds-node --print-config); each comment says where the value came from.\n"
      "# Load it with: ds-node --config FILE\n";
  std::string table;
  for (const KeyDesc& d : kKeys) {
    if (table != d.table) {
      table = d.table;
      out += "\n[" + table + "]\n";
    }
    std::string line = std::string(d.key) + " = " + toml_literal(d, d.load(config));
    if (std::string_view(d.name) == "tls-passphrase" && !config.tls_passphrase.empty()) {
      // A secret: never printed. The file it goes to may be read by others.
      line = std::string(d.key) + " = \"\"                             # set but not shown: give it as DS_TLS_PASSPHRASE";
      out += line + "\n";
      continue;
    }
    if (auto it = config.origin.find(d.name); it != config.origin.end()) {
      line.resize(std::max<size_t>(line.size() + 1, 44), ' ');
      line += "# " + it->second;
    }
    out += line + "\n";
  }
  return out;
}

std::map<std::string, std::string> environment_map(char** envp) {
  std::map<std::string, std::string> env;
  for (char** e = envp; e && *e; ++e) {
    const std::string_view s(*e);
    const size_t eq = s.find('=');
    if (eq != std::string_view::npos) env.emplace(std::string(s.substr(0, eq)), std::string(s.substr(eq + 1)));
  }
  return env;
}

}  // namespace ds
