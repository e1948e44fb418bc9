// config/node_config.h: the one typed configuration of ds-node.
//
// Every setting comes from four sources; a later one overrides an earlier one:
//   defaults (this struct)  <  TOML file (--config FILE or DS_CONFIG)  <  DS_* environment  <  flags.
// Each setting has one TOML key, one environment variable and one flag, all listed in one
// table in node_config.cc (see also config/ds.toml, the documented default file):
//   key name "max-batch"  ->  flag --max-batch,  env DS_MAX_BATCH,  ds.toml [model] max-batch
// The flag is "--" + name and the variable "DS_" + name upper-cased with '-' -> '_', so the
// three cannot drift. Unknown TOML keys and bad values from any source are errors naming the
// key and the source; unknown DS_* variables are ignored (build scripts use DS_JOBS and such).
//
// Thread-safety: NodeConfig is a plain value. load_node_config() reads the file system
// (the config file, the model path) and the host name, nothing else; it never reads the
// process environment itself (pass environment_map(environ)). No exception leaves this library.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "model/status.h"

namespace ds {

enum class BackendKind { kAuto, kCpu, kCuda };
enum class KvTypeKind { kAuto, kF32, kF16 };  // KV cache elements; auto: f16 on GPUs, f32 on the CPU
// CUDA: one-token decode steps as one persistent kernel; auto: where a probe at load finds it
// faster (and bit-identical to the per-op path).
enum class FusedDecodeKind { kOff, kOn, kAuto };
enum class CudaKernelsKind { kAll, kProven };
enum class CpuWeightsKind { kInterleaved, kGguf };
// CAF's scheduler: sharing (one queue; idle threads sleep) or stealing (per-thread queues; idle
// threads poll). The node's actors do little work (the workers run on their own threads), so
// sharing is the default: stealing's polling wakes pre-empt the compute threads on small hosts.
enum class SchedulerPolicy { kSharing, kStealing };
enum class LogFormat { kText, kJson };
enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// The config spelling ("auto", "json", "warn", ...); the parse functions accept exactly it.
const char* backend_name(BackendKind b);
const char* log_format_name(LogFormat f);
const char* log_level_name(LogLevel l);
std::optional<BackendKind> parse_backend(std::string_view s);
std::optional<LogFormat> parse_log_format(std::string_view s);
std::optional<LogLevel> parse_log_level(std::string_view s);

struct NodeConfig {
  // ---- [node] ----------------------------------------------------------------------------
  std::string node_id;                               // [A-Za-z0-9._-]{1,64}; default "<hostname>-<port>"
  std::string data_dir = "./ds-data";                // created by the node when missing
  std::string bind = "0.0.0.0";                      // IPv4/IPv6 literal or host name
  std::string advertise;                             // host others reach this node at; "" = derived
  uint16_t port = 4242;                              // actor-system (peer) port, 1..65535
  uint16_t http_port = 8080;                         // HTTP gateway port; 0 = no gateway
  std::chrono::milliseconds drain_timeout{30'000};   // flag/env/file in seconds (may be fractional), > 0
  // ---- [cluster] -------------------------------------------------------------------------
  std::string join;                                  // comma-separated HOST:PORT seeds; "" = found a cluster
  std::string cluster_name = "ds";                   // must match to join
  std::chrono::milliseconds fd_interval{200};        // failure detector: heartbeat interval
  int fd_threshold = 8;                              // phi at which a member is unreachable
  std::chrono::milliseconds fd_acceptable_pause{1'000};  // silence tolerated beyond the usual
  // ---- [model] ---------------------------------------------------------------------------
  std::string model_path;                            // GGUF file; empty = none. Checked: exists, readable
  BackendKind backend = BackendKind::kAuto;
  int threads = 0;                                   // CPU threads, 0..1024; 0 = all cores
  std::string gpus;                                  // "0,1": one worker split over these GPUs (NCCL); "" = GPU 0
  int tensor_parallel = 1;                           // CPU: one worker split over this many rank threads
  std::chrono::milliseconds shard_step_timeout{60'000};  // tensor parallel: a step's deadline (hung rank); 0 = off
  std::chrono::milliseconds stuck_step_exit{300'000};    // a step still running this long exits the node; 0 = off
  int max_batch = 0;                                 // running sequences per worker, 0..1024 (0 = auto: 32 on GPUs, 8 on the CPU)
  int ctx = 0;                                       // positions per sequence; 0 = the model's
  int kv_cache_tokens = 0;                           // KV capacity in positions; 0 = auto
  int kv_block_size = 16;                            // positions per KV block
  KvTypeKind kv_type = KvTypeKind::kAuto;            // KV cache elements
  FusedDecodeKind fused_decode = FusedDecodeKind::kOff;  // CUDA: the persistent decode kernel
  CudaKernelsKind cuda_kernels = CudaKernelsKind::kAll;  // CUDA: proven = only paths that have run on a GPU
  std::string cuda_tuning;                           // CUDA: l2-prefetch,stream-gemv,half-weights (kernels/backend.h); "" = none
  CpuWeightsKind cpu_weights = CpuWeightsKind::kInterleaved;  // CPU: quantized matrices interleaved by 16 rows at load
  std::string cpu_kernels = "auto";                  // CPU: the kernels' variant (kernels/cpu/variants.h); auto = best
  int gpu_memory_percent = 90;                       // GPUs: weights + buffers + KV cache within this % of each device
  int max_step_tokens = 256;                         // tokens per forward pass
  int max_tokens_limit = 4096;                       // per-request cap on generated tokens
  // ---- [log] -----------------------------------------------------------------------------
  LogFormat log_format = LogFormat::kText;
  LogLevel log_level = LogLevel::kInfo;
  // ---- [caf] (replaces CAF's own INI file) ------------------------------------------------
  int scheduler_threads = 0;                         // 0 = auto (CAF: one per core)
  SchedulerPolicy scheduler_policy = SchedulerPolicy::kSharing;
  std::chrono::milliseconds heartbeat_interval{1'000};    // middleman heartbeat; 0 = off
  std::chrono::milliseconds connection_timeout{10'000};   // close a silent connection; 0 = off
  // ---- [tls] (on when certificate is set; then key and cafile/capath are required) --------
  std::string tls_certificate;                       // PEM certificate of this node
  std::string tls_key;                               // its PEM private key
  std::string tls_passphrase;                        // for an encrypted key
  std::string tls_cafile;                            // CA that signs every node and client
  std::string tls_capath;                            // or a directory of CA certificates
  // ---- [test] TEST ONLY: fault switches for the integration and fault suites -------------
  int fault_worker_crash_after_steps = 0;            // a worker crashes after N steps; 0 = off
  int fault_worker_crash_count = 1;                  // how many incarnations in a row crash that way
  int fault_worker_hang_after_steps = 0;             // test: step N of the worker never returns (0 = off)

  // ---- how this config was loaded (not settings; ignored by operator==) ------------------
  bool help_requested = false;                       // --help: the caller prints the help and exits 0
  bool print_config = false;                         // --print-config: print to_toml(*this), exit 0
  std::string config_file;                           // the TOML file read; empty when none
  // key name ("port", "max-batch", ...) -> where its value came from:
  // "default", "file PATH", "env DS_X" or "flag --x".
  std::map<std::string, std::string> origin;
};

// True when every setting is equal (the "how loaded" fields above are not compared).
bool operator==(const NodeConfig& a, const NodeConfig& b);

// Builds the config from argv (argv[0] is the program name), `env` (the process
// environment, see environment_map) and the TOML file named by --config or DS_CONFIG.
// Flags: one per key (see the table in node_config.cc), plus --config FILE,
// --print-config and -h/--help.
// --help: fills *help_out (when not null) with the full help text (every flag, its
// environment variable, TOML key and default) and returns a config with help_requested set;
// nothing else is read or checked.
// Errors (all InvalidArgument, the message names the key and the source): an unknown or
// malformed flag; a config file that is missing, unreadable or not TOML, or holds an unknown
// key or a value of the wrong type; a bad value from any source; a model path that is not a
// readable file; connection-timeout-ms not above heartbeat-interval-ms (when both are on).
Result<NodeConfig> load_node_config(int argc, const char* const* argv,
                                    const std::map<std::string, std::string>& env,
                                    std::string* help_out);

// The settings as a TOML document in the layout of config/ds.toml, each value followed by a
// comment saying where it came from (config.origin); load_node_config on it gives back an
// equal config, except for a TLS passphrase, which is never printed. Used by --print-config.
std::string to_toml(const NodeConfig& config);

// "NAME=VALUE" entries (e.g. the process's `environ`) as a map; null gives an empty map.
// Entries without '=' are skipped.
std::map<std::string, std::string> environment_map(char** envp);

}  // namespace ds
