// Tests of config/node_config: defaults, the three sources and their precedence, the
// errors (naming key and source), the shipped ds.toml, --help and --print-config.
#include "config/node_config.h"
#include "kernels/backend.h"
#include "kernels/cpu/variants.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "tests/unit/test_util.h"

namespace ds {
namespace {

using Env = std::map<std::string, std::string>;
using namespace std::chrono_literals;

Result<NodeConfig> load(std::vector<std::string> args, const Env& env = {}, std::string* help = nullptr) {
  args.insert(args.begin(), "ds-node");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  return load_node_config(static_cast<int>(args.size()), argv.data(), env, help);
}

NodeConfig load_ok(std::vector<std::string> args, const Env& env = {}) {
  Result<NodeConfig> r = load(std::move(args), env);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r.value() : NodeConfig{};
}

// The error message of a load that must fail.
std::string load_error(std::vector<std::string> args, const Env& env = {}) {
  Result<NodeConfig> r = load(std::move(args), env);
  EXPECT_FALSE(r.ok()) << "loaded, but should have failed";
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().message();
}

std::string write(const test::TempDir& dir, const std::string& name, const std::string& text) {
  const std::string path = dir.file(name);
  std::ofstream(path) << text;
  return path;
}

std::string shipped_toml() { return std::string(DS_SOURCE_DIR) + "/config/ds.toml"; }

// The contract: every flag, its environment variable and TOML key.
struct ContractKey {
  const char* flag;
  const char* env;
  const char* table;
  const char* key;
};
const ContractKey kContract[] = {
    {"--model", "DS_MODEL", "model", "path"},
    {"--port", "DS_PORT", "node", "port"},
    {"--bind", "DS_BIND", "node", "bind"},
    {"--advertise", "DS_ADVERTISE", "node", "advertise"},
    {"--http-port", "DS_HTTP_PORT", "node", "http-port"},
    {"--data-dir", "DS_DATA_DIR", "node", "data-dir"},
    {"--node-id", "DS_NODE_ID", "node", "id"},
    {"--threads", "DS_THREADS", "model", "threads"},
    {"--max-batch", "DS_MAX_BATCH", "model", "max-batch"},
    {"--backend", "DS_BACKEND", "model", "backend"},
    {"--log-format", "DS_LOG_FORMAT", "log", "format"},
    {"--log-level", "DS_LOG_LEVEL", "log", "level"},
    {"--drain-timeout", "DS_DRAIN_TIMEOUT", "node", "drain-timeout"},
    {"--ctx", "DS_CTX", "model", "ctx"},
    {"--kv-cache-tokens", "DS_KV_CACHE_TOKENS", "model", "kv-cache-tokens"},
    {"--kv-block-size", "DS_KV_BLOCK_SIZE", "model", "kv-block-size"},
    {"--kv-type", "DS_KV_TYPE", "model", "kv-type"},
    {"--fused-decode", "DS_FUSED_DECODE", "model", "fused-decode"},
    {"--cuda-kernels", "DS_CUDA_KERNELS", "model", "cuda-kernels"},
    {"--cuda-tuning", "DS_CUDA_TUNING", "model", "cuda-tuning"},
    {"--cpu-weights", "DS_CPU_WEIGHTS", "model", "cpu-weights"},
    {"--cpu-kernels", "DS_CPU_KERNELS", "model", "cpu-kernels"},
    {"--gpu-memory-percent", "DS_GPU_MEMORY_PERCENT", "model", "gpu-memory-percent"},
    {"--max-step-tokens", "DS_MAX_STEP_TOKENS", "model", "max-step-tokens"},
    {"--max-tokens-limit", "DS_MAX_TOKENS_LIMIT", "model", "max-tokens-limit"},
    {"--scheduler-threads", "DS_SCHEDULER_THREADS", "caf", "scheduler-threads"},
    {"--scheduler-policy", "DS_SCHEDULER_POLICY", "caf", "scheduler-policy"},
    {"--heartbeat-interval-ms", "DS_HEARTBEAT_INTERVAL_MS", "caf", "heartbeat-interval-ms"},
    {"--connection-timeout-ms", "DS_CONNECTION_TIMEOUT_MS", "caf", "connection-timeout-ms"},
    {"--fault-worker-crash-after-steps", "DS_FAULT_WORKER_CRASH_AFTER_STEPS", "test", "fault-worker-crash-after-steps"},
    {"--fault-worker-crash-count", "DS_FAULT_WORKER_CRASH_COUNT", "test", "fault-worker-crash-count"},
    {"--join", "DS_JOIN", "cluster", "join"},
    {"--cluster-name", "DS_CLUSTER_NAME", "cluster", "name"},
    {"--failure-detector-interval-ms", "DS_FAILURE_DETECTOR_INTERVAL_MS", "cluster", "failure-detector-interval-ms"},
    {"--failure-detector-threshold", "DS_FAILURE_DETECTOR_THRESHOLD", "cluster", "failure-detector-threshold"},
    {"--gpus", "DS_GPUS", "model", "gpus"},
    {"--tensor-parallel", "DS_TENSOR_PARALLEL", "model", "tensor-parallel"},
    {"--shard-step-timeout-ms", "DS_SHARD_STEP_TIMEOUT_MS", "model", "shard-step-timeout-ms"},
    {"--stuck-step-exit-ms", "DS_STUCK_STEP_EXIT_MS", "model", "stuck-step-exit-ms"},
    {"--fault-worker-hang-after-steps", "DS_FAULT_WORKER_HANG_AFTER_STEPS", "test", "fault-worker-hang-after-steps"},
    {"--tls-certificate", "DS_TLS_CERTIFICATE", "tls", "certificate"},
    {"--tls-key", "DS_TLS_KEY", "tls", "key"},
    {"--tls-passphrase", "DS_TLS_PASSPHRASE", "tls", "passphrase"},
    {"--tls-cafile", "DS_TLS_CAFILE", "tls", "cafile"},
    {"--tls-capath", "DS_TLS_CAPATH", "tls", "capath"},
    {"--failure-detector-acceptable-pause-ms", "DS_FAILURE_DETECTOR_ACCEPTABLE_PAUSE_MS", "cluster", "failure-detector-acceptable-pause-ms"},
};

TEST(Config, Defaults) {
  const NodeConfig c = load_ok({});
  EXPECT_EQ(c.port, 4242);
  EXPECT_EQ(c.http_port, 8080);
  EXPECT_EQ(c.bind, "0.0.0.0");
  EXPECT_EQ(c.data_dir, "./ds-data");
  EXPECT_EQ(c.drain_timeout, 30s);
  EXPECT_EQ(c.model_path, "");
  EXPECT_EQ(c.backend, BackendKind::kAuto);
  EXPECT_EQ(c.kv_type, KvTypeKind::kAuto);
  EXPECT_EQ(c.fused_decode, FusedDecodeKind::kOff);
  EXPECT_EQ(c.threads, 0);
  EXPECT_EQ(c.max_batch, 0);  // auto: 32 on GPUs, 8 on the CPU (ds-node resolves it)
  EXPECT_EQ(c.ctx, 0);
  EXPECT_EQ(c.kv_cache_tokens, 0);
  EXPECT_EQ(c.kv_block_size, 16);
  EXPECT_EQ(c.max_step_tokens, 256);
  EXPECT_EQ(c.max_tokens_limit, 4096);
  EXPECT_EQ(c.log_format, LogFormat::kText);
  EXPECT_EQ(c.log_level, LogLevel::kInfo);
  EXPECT_EQ(c.scheduler_threads, 0);
  EXPECT_EQ(c.heartbeat_interval, 1000ms);
  EXPECT_EQ(c.connection_timeout, 10000ms);
  EXPECT_EQ(c.fd_interval, 200ms);
  EXPECT_EQ(c.fd_threshold, 8);
  EXPECT_EQ(c.fd_acceptable_pause, 1000ms);
  EXPECT_EQ(c.shard_step_timeout, 60000ms);
  EXPECT_EQ(c.fault_worker_crash_after_steps, 0);
  EXPECT_EQ(c.fault_worker_crash_count, 1);
  EXPECT_FALSE(c.help_requested);
  EXPECT_FALSE(c.print_config);
  EXPECT_EQ(c.config_file, "");
  // node-id: <hostname>-<port>
  ASSERT_GT(c.node_id.size(), 5u);
  EXPECT_EQ(c.node_id.substr(c.node_id.size() - 5), "-4242");
  EXPECT_EQ(c.origin.size(), std::size(kContract));
  for (const auto& [key, from] : c.origin) EXPECT_EQ(from, "default") << key;
}

TEST(Config, DefaultNodeIdFollowsPort) {
  const NodeConfig c = load_ok({"--port", "5000"});
  EXPECT_EQ(c.node_id.substr(c.node_id.size() - 5), "-5000");
}

TEST(Config, FileAlone) {
  test::TempDir dir;
  const std::string path = write(dir, "ds.toml", R"(
[node]
id = "n1"
port = 5001
http-port = 0
drain-timeout = 2.5
[model]
backend = "cpu"
max-batch = 4
[log]
format = "json"
level = "debug"
[caf]
heartbeat-interval-ms = 250
connection-timeout-ms = 1000
[test]
fault-worker-crash-after-steps = 7
)");
  const NodeConfig c = load_ok({"--config", path});
  EXPECT_EQ(c.node_id, "n1");
  EXPECT_EQ(c.port, 5001);
  EXPECT_EQ(c.http_port, 0);
  EXPECT_EQ(c.drain_timeout, 2500ms);
  EXPECT_EQ(c.backend, BackendKind::kCpu);
  EXPECT_EQ(c.max_batch, 4);
  EXPECT_EQ(c.log_format, LogFormat::kJson);
  EXPECT_EQ(c.log_level, LogLevel::kDebug);
  EXPECT_EQ(c.heartbeat_interval, 250ms);
  EXPECT_EQ(c.connection_timeout, 1000ms);
  EXPECT_EQ(c.fault_worker_crash_after_steps, 7);
  EXPECT_EQ(c.config_file, path);
  EXPECT_EQ(c.origin.at("port"), "file " + path);
  EXPECT_EQ(c.origin.at("threads"), "default");
}

TEST(Config, EnvAlone) {
  const NodeConfig c = load_ok({}, {{"DS_PORT", "5002"},
                                    {"DS_NODE_ID", "env-node"},
                                    {"DS_BACKEND", "cuda"},
                                    {"DS_THREADS", "3"},
                                    {"DS_DRAIN_TIMEOUT", "5"},
                                    {"DS_LOG_LEVEL", "warn"},
                                    {"DS_DATA_DIR", "/tmp/x"},
                                    {"DS_BIND", "::1"},
                                    {"DS_KV_CACHE_TOKENS", "8192"}});
  EXPECT_EQ(c.port, 5002);
  EXPECT_EQ(c.node_id, "env-node");
  EXPECT_EQ(c.backend, BackendKind::kCuda);
  EXPECT_EQ(c.threads, 3);
  EXPECT_EQ(c.drain_timeout, 5s);
  EXPECT_EQ(c.log_level, LogLevel::kWarn);
  EXPECT_EQ(c.data_dir, "/tmp/x");
  EXPECT_EQ(c.bind, "::1");
  EXPECT_EQ(c.kv_cache_tokens, 8192);
  EXPECT_EQ(c.origin.at("port"), "env DS_PORT");
}

TEST(Config, FlagsAlone) {
  test::TempDir dir;
  const std::string model = write(dir, "m.gguf", "not really a model");
  const NodeConfig c = load_ok({"--port", "5003", "--http-port=9090", "--model", model, "--bind", "node-a.example.com",
                                "--max-batch", "32", "--log-format", "json", "--ctx", "2048",
                                "--max-tokens-limit", "100", "--scheduler-threads", "2", "--print-config"});
  EXPECT_EQ(c.port, 5003);
  EXPECT_EQ(c.http_port, 9090);
  EXPECT_EQ(c.model_path, model);
  EXPECT_EQ(c.bind, "node-a.example.com");
  EXPECT_EQ(c.max_batch, 32);
  EXPECT_EQ(c.log_format, LogFormat::kJson);
  EXPECT_EQ(c.ctx, 2048);
  EXPECT_EQ(c.max_tokens_limit, 100);
  EXPECT_EQ(c.scheduler_threads, 2);
  EXPECT_TRUE(c.print_config);
  EXPECT_EQ(c.origin.at("port"), "flag --port");
  EXPECT_EQ(c.origin.at("model"), "flag --model");
}

TEST(Config, PrecedenceFlagsOverEnvOverFile) {
  test::TempDir dir;
  const std::string path = write(dir, "ds.toml", "[node]\nport = 1001\n[model]\nthreads = 5\nmax-batch = 6\nctx = 7\n");
  const Env env = {{"DS_PORT", "1002"}, {"DS_MAX_BATCH", "16"}, {"DS_CTX", "17"}};
  const NodeConfig c = load_ok({"--config", path, "--port", "1003", "--ctx", "27"}, env);
  EXPECT_EQ(c.port, 1003);         // flag > env > file
  EXPECT_EQ(c.ctx, 27);            // flag > env > file
  EXPECT_EQ(c.max_batch, 16);      // env > file
  EXPECT_EQ(c.threads, 5);         // file > default
  EXPECT_EQ(c.kv_block_size, 16);  // default
  EXPECT_EQ(c.origin.at("port"), "flag --port");
  EXPECT_EQ(c.origin.at("max-batch"), "env DS_MAX_BATCH");
  EXPECT_EQ(c.origin.at("threads"), "file " + path);
  EXPECT_EQ(c.origin.at("kv-block-size"), "default");

  EXPECT_EQ(load_ok({"--config", path}, env).port, 1002);
  EXPECT_EQ(load_ok({"--config", path}).port, 1001);
}

TEST(Config, ConfigFileFromEnv) {
  test::TempDir dir;
  const std::string a = write(dir, "a.toml", "[node]\nport = 2001\n");
  const std::string b = write(dir, "b.toml", "[node]\nport = 2002\n");
  EXPECT_EQ(load_ok({}, {{"DS_CONFIG", a}}).port, 2001);
  EXPECT_EQ(load_ok({"--config", b}, {{"DS_CONFIG", a}}).port, 2002);  // the flag wins
}

TEST(Config, UnknownTomlKeyRejectedNamingIt) {
  test::TempDir dir;
  const std::string path = write(dir, "ds.toml", "[node]\nport = 4242\nmax_bach = 3\n");
  const std::string msg = load_error({"--config", path});
  EXPECT_NE(msg.find("config file " + path + ": unknown key 'node.max_bach'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'model.max-batch'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
}

TEST(Config, UnknownTomlTableRejected) {
  test::TempDir dir;
  const std::string msg = load_error({"--config", write(dir, "ds.toml", "[nodes]\nport = 1\n")});
  EXPECT_NE(msg.find("unknown table '[nodes]'"), std::string::npos) << msg;
  const std::string top = load_error({"--config", write(dir, "top.toml", "port = 1\n")});
  EXPECT_NE(top.find("unknown key 'port'"), std::string::npos) << top;
}

TEST(Config, WrongTomlTypeRejectedNamingKey) {
  test::TempDir dir;
  std::string msg = load_error({"--config", write(dir, "a.toml", "[node]\nport = \"4242\"\n")});
  EXPECT_NE(msg.find("key 'node.port' must be an integer, not string"), std::string::npos) << msg;
  msg = load_error({"--config", write(dir, "b.toml", "[log]\nlevel = 3\n")});
  EXPECT_NE(msg.find("key 'log.level' must be a string"), std::string::npos) << msg;
  msg = load_error({"--config", write(dir, "c.toml", "[model]\nthreads = 2.5\n")});
  EXPECT_NE(msg.find("key 'model.threads' must be an integer"), std::string::npos) << msg;
  msg = load_error({"--config", write(dir, "d.toml", "node = 1\n")});
  EXPECT_NE(msg.find("key 'node' must be a table"), std::string::npos) << msg;
}

TEST(Config, BadTomlValueRejectedNamingKey) {
  test::TempDir dir;
  const std::string path = write(dir, "ds.toml", "[node]\nport = 70000\n");
  const std::string msg = load_error({"--config", path});
  EXPECT_NE(msg.find("config file " + path + ": node.port='70000': not a port number"), std::string::npos) << msg;
  const std::string bad = load_error({"--config", write(dir, "b.toml", "[model]\nbackend = \"gpu\"\n")});
  EXPECT_NE(bad.find("model.backend='gpu': not one of auto|cpu|cuda"), std::string::npos) << bad;
  const std::string kv = load_error({"--kv-type", "q8_0"});
  EXPECT_NE(kv.find("q8_0"), std::string::npos) << kv;
  EXPECT_NE(kv.find("auto|f32|f16"), std::string::npos) << kv;
  EXPECT_EQ(load_ok({"--kv-type", "f16"}).kv_type, KvTypeKind::kF16);
  const std::string fd = load_error({"--fused-decode", "yes"});
  EXPECT_NE(fd.find("off|on|auto"), std::string::npos) << fd;
  EXPECT_EQ(load_ok({"--fused-decode", "auto"}).fused_decode, FusedDecodeKind::kAuto);
  EXPECT_EQ(load_ok({}).cuda_kernels, CudaKernelsKind::kAll);
  EXPECT_EQ(load_ok({"--cuda-kernels", "proven"}).cuda_kernels, CudaKernelsKind::kProven);
  const std::string ck = load_error({"--config", write(dir, "ck.toml", "[model]\ncuda-kernels = \"safe\"\n")});
  EXPECT_NE(ck.find("model.cuda-kernels='safe': not one of all|proven"), std::string::npos) << ck;
  EXPECT_EQ(load_ok({}).cuda_tuning, "");
  EXPECT_EQ(load_ok({"--cuda-tuning", "l2-prefetch,half-weights"}).cuda_tuning, "l2-prefetch,half-weights");
  const std::string ct = load_error({"--config", write(dir, "ct.toml", "[model]\ncuda-tuning = \"l2-prefetch,turbo\"\n")});
  EXPECT_NE(ct.find("'turbo' is not a CUDA tuning (l2-prefetch, stream-gemv, half-weights"), std::string::npos) << ct;
  EXPECT_EQ(load_ok({}).cpu_weights, CpuWeightsKind::kInterleaved);
  EXPECT_EQ(load_ok({"--cpu-weights", "gguf"}).cpu_weights, CpuWeightsKind::kGguf);
  const std::string cw = load_error({"--config", write(dir, "cw.toml", "[model]\ncpu-weights = \"packed\"\n")});
  EXPECT_NE(cw.find("model.cpu-weights='packed': not one of interleaved|gguf"), std::string::npos) << cw;
  EXPECT_EQ(load_ok({}).cpu_kernels, "auto");
  // The plain variant (every build has one, and every CPU runs it), then one no build has.
  const std::string plain = cpu::compiled_variants().back().variant->name;
  EXPECT_EQ(load_ok({"--cpu-kernels", plain}).cpu_kernels, plain);
  const std::string kk = load_error({"--config", write(dir, "kk.toml", "[model]\ncpu-kernels = \"avx1024\"\n")});
  EXPECT_NE(kk.find("cpu-kernels"), std::string::npos) << kk;
  EXPECT_NE(kk.find("no such variant of the CPU kernels in this build (it has: auto, "), std::string::npos) << kk;
  EXPECT_EQ(load_ok({}).gpu_memory_percent, 90);
  EXPECT_EQ(load_ok({"--gpu-memory-percent", "50"}).gpu_memory_percent, 50);
  EXPECT_NE(load_error({"--gpu-memory-percent", "0"}).find("gpu-memory-percent"), std::string::npos);
  EXPECT_NE(load_error({"--gpu-memory-percent", "101"}).find("gpu-memory-percent"), std::string::npos);
  EXPECT_EQ(load_ok({"--config", write(dir, "k.toml", "[model]\nkv-type = \"f32\"\n")}).kv_type, KvTypeKind::kF32);
}

TEST(Config, TomlSyntaxErrorRejected) {
  test::TempDir dir;
  const std::string path = write(dir, "ds.toml", "[node\nport = \n");
  const std::string msg = load_error({"--config", path});
  EXPECT_NE(msg.find("config file " + path + ": not valid TOML"), std::string::npos) << msg;
}

TEST(Config, MissingConfigFileIsClearError) {
  test::TempDir dir;
  const std::string path = dir.file("nope.toml");
  std::string msg = load_error({"--config", path});
  EXPECT_EQ(msg, "config file " + path + ": no such file");
  msg = load_error({}, {{"DS_CONFIG", path}});
  EXPECT_EQ(msg, "config file " + path + ": no such file");
  msg = load_error({"--config", dir.path()});
  EXPECT_NE(msg.find("is a directory"), std::string::npos) << msg;
}

TEST(Config, BadEnvValueRejectedNamingVariable) {
  EXPECT_EQ(load_error({}, {{"DS_PORT", "abc"}}), "DS_PORT='abc': not a port number (1..65535)");
  EXPECT_EQ(load_error({}, {{"DS_PORT", "0"}}), "DS_PORT='0': not a port number (1..65535)");
  EXPECT_EQ(load_error({}, {{"DS_BACKEND", "gpu"}}), "DS_BACKEND='gpu': not one of auto|cpu|cuda");
  EXPECT_EQ(load_error({}, {{"DS_LOG_FORMAT", "xml"}}), "DS_LOG_FORMAT='xml': not one of text|json");
  EXPECT_EQ(load_error({}, {{"DS_LOG_LEVEL", "verbose"}}),
            "DS_LOG_LEVEL='verbose': not one of trace|debug|info|warn|error|off");
  EXPECT_NE(load_error({}, {{"DS_DRAIN_TIMEOUT", "0"}}).find("DS_DRAIN_TIMEOUT='0': not a duration in seconds"),
            std::string::npos);
  EXPECT_EQ(load_error({}, {{"DS_THREADS", "4x"}}), "DS_THREADS='4x': not an integer");
  EXPECT_EQ(load_error({}, {{"DS_NODE_ID", ""}}), "DS_NODE_ID='': must not be empty");
}

TEST(Config, BadFlagValueRejected) {
  EXPECT_EQ(load_error({"--threads", "2000"}), "--threads='2000': out of range 0..1024");
  EXPECT_EQ(load_error({"--max-batch", "-1"}), "--max-batch='-1': out of range 0..1024");
  EXPECT_EQ(load_error({"--http-port", "65536"}), "--http-port='65536': not a port number (0..65535)");
  EXPECT_EQ(load_error({"--node-id", "a b"}), "--node-id='a b': may hold only letters, digits, '.', '_' and '-'");
  const std::string long_id(65, 'a');
  EXPECT_EQ(load_error({"--node-id", long_id}), "--node-id='" + long_id + "': longer than 64 characters");
  EXPECT_EQ(load_error({"--bind", "bad host!"}), "--bind='bad host!': not an IPv4/IPv6 address or host name");
  EXPECT_EQ(load_error({"--bind", "300.1.1.1"}), "--bind='300.1.1.1': not an IPv4/IPv6 address or host name");
  EXPECT_NE(load_error({"--drain-timeout", "-1"}).find("--drain-timeout='-1'"), std::string::npos);
  EXPECT_NE(load_error({"--heartbeat-interval-ms", "1.5"}).find("not a duration in milliseconds"), std::string::npos);
}

TEST(Config, BadFlagWinsOverGoodEnvButBadEnvStillRejected) {
  // Bad values are rejected wherever they are, even when a higher source overrides them.
  EXPECT_EQ(load_error({"--port", "5000"}, {{"DS_PORT", "abc"}}), "DS_PORT='abc': not a port number (1..65535)");
}

TEST(Config, UnknownFlagRejected) {
  std::string msg = load_error({"--bogus", "1"});
  EXPECT_NE(msg.find("command line"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--bogus"), std::string::npos) << msg;
  msg = load_error({"stray"});
  EXPECT_NE(msg.find("stray"), std::string::npos) << msg;
  msg = load_error({"--port"});  // missing value
  EXPECT_NE(msg.find("--port"), std::string::npos) << msg;
}

TEST(Config, UnknownDsEnvIgnored) {
  const NodeConfig c = load_ok({}, {{"DS_FOO", "1"}, {"DS_JOBS", "8"}, {"DS_PORTS", "x"}, {"HOME", "/root"}});
  EXPECT_EQ(c.port, 4242);
}

TEST(Config, ShippedDsTomlLoadsAndEqualsDefaults) {
  const NodeConfig shipped = load_ok({"--config", shipped_toml()});
  const NodeConfig defaults = load_ok({});
  EXPECT_TRUE(shipped == defaults) << "ds.toml:\n" << to_toml(shipped) << "\ndefaults:\n" << to_toml(defaults);
  EXPECT_EQ(shipped.origin.at("port"), "file " + shipped_toml());
  EXPECT_EQ(shipped.origin.at("node-id"), "default");  // commented out in ds.toml: <hostname>-<port>
  // Every key except node.id is spelled out in the shipped file.
  const std::string text = test::read_file(shipped_toml());
  for (const ContractKey& k : kContract) {
    if (std::string_view(k.key) == "id") continue;
    std::string line = "\n";
    line += k.key;
    line += " = ";
    EXPECT_NE(text.find(line), std::string::npos) << k.key;
    EXPECT_NE(text.find(std::string("flag ") + k.flag + ", env " + k.env), std::string::npos) << k.flag;
  }
}

TEST(Config, HelpListsEveryFlagEnvAndKey) {
  std::string help;
  Result<NodeConfig> r = load({"--help"}, {}, &help);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->help_requested);
  for (const ContractKey& k : kContract) {
    EXPECT_NE(help.find(k.flag), std::string::npos) << k.flag << "\n" << help;
    EXPECT_NE(help.find(k.env), std::string::npos) << k.env;
    EXPECT_NE(help.find(std::string("[") + k.table + "] " + k.key), std::string::npos) << k.key;
  }
  for (const char* extra : {"--config", "DS_CONFIG", "--print-config", "default 4242", "TEST ONLY"})
    EXPECT_NE(help.find(extra), std::string::npos) << extra;
  // --help wins over errors elsewhere: nothing else is read.
  Result<NodeConfig> r2 = load({"--help", "--config", "/nonexistent.toml"}, {{"DS_PORT", "abc"}}, nullptr);
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  EXPECT_TRUE(r2->help_requested);
}

TEST(Config, PrintConfigParsesBackToSameConfig) {
  test::TempDir dir;
  const std::string model = write(dir, "m.gguf", "x");
  const std::string file = write(dir, "ds.toml", "[log]\nlevel = \"trace\"\n[caf]\nscheduler-threads = 3\n");
  const NodeConfig c = load_ok({"--config", file, "--port", "6000", "--model", model, "--drain-timeout", "0.25",
                                "--node-id", "n.1_x-y", "--backend", "cpu", "--print-config"},
                               {{"DS_MAX_BATCH", "12"}, {"DS_DATA_DIR", "dir with \"quotes\", \\ and\nnewline"}});
  const std::string text = to_toml(c);
  EXPECT_NE(text.find("port = 6000"), std::string::npos) << text;
  EXPECT_NE(text.find("# flag --port"), std::string::npos) << text;
  EXPECT_NE(text.find("# env DS_MAX_BATCH"), std::string::npos) << text;
  EXPECT_NE(text.find("# file " + file), std::string::npos) << text;
  EXPECT_NE(text.find("# default"), std::string::npos) << text;
  EXPECT_NE(text.find("drain-timeout = 0.25"), std::string::npos) << text;
  EXPECT_NE(text.find(R"(data-dir = "dir with \"quotes\", \\ and\nnewline")"), std::string::npos) << text;  // one line

  const std::string printed = write(dir, "printed.toml", text);
  const NodeConfig back = load_ok({"--config", printed});
  EXPECT_TRUE(back == c) << "printed:\n" << text << "\nreloaded:\n" << to_toml(back);
  EXPECT_EQ(back.data_dir, "dir with \"quotes\", \\ and\nnewline");
  EXPECT_EQ(back.drain_timeout, 250ms);

  // The defaults round-trip too (node.id included).
  const NodeConfig d = load_ok({});
  const NodeConfig d_back = load_ok({"--config", write(dir, "d.toml", to_toml(d))});
  EXPECT_TRUE(d_back == d) << to_toml(d_back);
}

TEST(Config, ModelPathMustBeReadableFile) {
  test::TempDir dir;
  const std::string missing = dir.file("missing.gguf");
  EXPECT_EQ(load_error({"--model", missing}), "--model='" + missing + "': no such file");
  EXPECT_EQ(load_error({}, {{"DS_MODEL", missing}}), "DS_MODEL='" + missing + "': no such file");
  EXPECT_EQ(load_error({"--model", dir.path()}), "--model='" + dir.path() + "': not a regular file");
  const std::string file = write(dir, "ds.toml", "[model]\npath = \"" + missing + "\"\n");
  EXPECT_EQ(load_error({"--config", file}), "config file " + file + ": model.path='" + missing + "': no such file");
  // Only the effective path must exist: a flag may replace a file's stale path.
  const std::string model = write(dir, "m.gguf", "x");
  EXPECT_EQ(load_ok({"--config", file, "--model", model}).model_path, model);
}

TEST(Config, ConnectionTimeoutMustExceedHeartbeat) {
  const std::string msg = load_error({"--connection-timeout-ms", "500"});
  EXPECT_NE(msg.find("--connection-timeout-ms=500: must be greater than heartbeat-interval-ms (1000"), std::string::npos)
      << msg;
  EXPECT_TRUE(load({"--connection-timeout-ms", "0"}).ok());   // timeout off
  EXPECT_TRUE(load({"--heartbeat-interval-ms", "0", "--connection-timeout-ms", "5"}).ok());  // heartbeat off
}

TEST(Config, ShardStepTimeout) {
  EXPECT_EQ(load_ok({"--shard-step-timeout-ms", "0"}).shard_step_timeout, 0ms);  // off
  EXPECT_EQ(load_ok({"--shard-step-timeout-ms", "250"}).shard_step_timeout, 250ms);
  EXPECT_EQ(load_ok({}, {{"DS_SHARD_STEP_TIMEOUT_MS", "120000"}}).shard_step_timeout, 120000ms);
  test::TempDir dir;
  const std::string file = write(dir, "ds.toml", "[model]\nshard-step-timeout-ms = 5000\n");
  EXPECT_EQ(load_ok({"--config", file}).shard_step_timeout, 5000ms);
  EXPECT_EQ(load_error({"--shard-step-timeout-ms", "-1"}),
            "--shard-step-timeout-ms='-1': not a duration in milliseconds (0..3600000)");
  EXPECT_EQ(load_error({"--shard-step-timeout-ms", "30s"}),
            "--shard-step-timeout-ms='30s': not a duration in milliseconds (0..3600000)");
  EXPECT_EQ(load_error({}, {{"DS_SHARD_STEP_TIMEOUT_MS", "3600001"}}),
            "DS_SHARD_STEP_TIMEOUT_MS='3600001': not a duration in milliseconds (0..3600000)");
}

TEST(Config, RepeatedFlagTakesLast) { EXPECT_EQ(load_ok({"--port", "1", "--port", "2"}).port, 2); }

TEST(Config, EnumNamesRoundTrip) {
  for (BackendKind b : {BackendKind::kAuto, BackendKind::kCpu, BackendKind::kCuda}) EXPECT_EQ(parse_backend(backend_name(b)), b);
  for (LogFormat f : {LogFormat::kText, LogFormat::kJson}) EXPECT_EQ(parse_log_format(log_format_name(f)), f);
  for (LogLevel l : {LogLevel::kTrace, LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError, LogLevel::kOff})
    EXPECT_EQ(parse_log_level(log_level_name(l)), l);
  EXPECT_FALSE(parse_backend("CPU").has_value());
}

TEST(Config, EnvironmentMap) {
  std::string a = "DS_PORT=1234", b = "EMPTY=", c = "NOEQUALS", d = "X=a=b";
  char* envp[] = {a.data(), b.data(), c.data(), d.data(), nullptr};
  const Env env = environment_map(envp);
  EXPECT_EQ(env.size(), 3u);
  EXPECT_EQ(env.at("DS_PORT"), "1234");
  EXPECT_EQ(env.at("EMPTY"), "");
  EXPECT_EQ(env.at("X"), "a=b");
  EXPECT_TRUE(environment_map(nullptr).empty());
  EXPECT_EQ(load_ok({}, env).port, 1234);
}

}  // namespace
// kernels/backend.h: the CUDA tuning list of ds-node --cuda-tuning and ds-bench engine --cuda-tuning.
TEST(CudaTuning, ParsesEachNameAndRefusesOthers) {
  CudaBackendChoices c;
  std::string error;
  ASSERT_TRUE(parse_cuda_tuning("l2-prefetch,stream-gemv,half-weights", &c, &error)) << error;
  EXPECT_TRUE(c.l2_prefetch && c.gemv_stream && c.half_weight_cache);
  ASSERT_TRUE(parse_cuda_tuning("stream-gemv", &c, &error)) << error;
  EXPECT_TRUE(!c.l2_prefetch && c.gemv_stream && !c.half_weight_cache);  // a list replaces the last one
  for (const char* none : {"", "none"}) {
    ASSERT_TRUE(parse_cuda_tuning(none, &c, &error)) << none;
    EXPECT_TRUE(!c.l2_prefetch && !c.gemv_stream && !c.half_weight_cache) << none;
  }
  c.fused_decode = true;  // the other choices are kept
  c.l2_prefetch = true;
  for (const char* bad : {"l2", "l2-prefetch,", ",half-weights", "stream-gemv,,half-weights", "L2-PREFETCH"}) {
    EXPECT_FALSE(parse_cuda_tuning(bad, &c, &error)) << bad;
    EXPECT_NE(error.find("is not a CUDA tuning (l2-prefetch, stream-gemv, half-weights"), std::string::npos) << error;
    EXPECT_TRUE(c.l2_prefetch && c.fused_decode) << "a refused list changed the choices: " << bad;
  }
}

}  // namespace ds
