// ds-node: one ds node: a CAF actor system whose router (published on the cluster
// port) accepts generation requests from remote clients, batches them on a worker
// and streams tokens back.
//
//   ds-node [--model FILE] [--port 4242] [--bind ADDR] [--config ds.toml] ...
//   (every option also as a ds.toml key and a DS_* environment variable; --help lists them)
//
// SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to --drain-timeout),
// exit 0. A second signal exits at once (code 130).
// Exit codes: 0 clean shutdown, 1 start-up failure (model, port), 2 bad flags/config.
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "actors/atoms.h"
#include "actors/membership_actor.h"
#include "actors/tls.h"
#include "actors/router.h"
#include "actors/supervisor.h"
#include "config/node_config.h"
#include "kernels/cpu/variants.h"
#include "model/mkmodel.h"
#include "model/model.h"

extern char** environ;

namespace {

constexpr const char* kVersion = "0.1.0";

// JSON lines: {"ts":..., "level":..., "node":..., "msg":...}, msg escaped.
class JsonSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JsonSink(std::string node) : node_(std::move(node)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& m) override {
    const auto t = std::chrono::system_clock::to_time_t(m.time);
    char ts[32];
    std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    std::string msg;
    for (char c : std::string_view(m.payload.data(), m.payload.size())) {
      if (c == '"' || c == '\\') msg += '\\', msg += c;
      else if (c == '\n') msg += "\\n";
      else if (static_cast<unsigned char>(c) < 0x20) msg += ' ';
      else msg += c;
    }
    const auto lv = spdlog::level::to_string_view(m.level);
    std::string line = std::string("{\"ts\":\"") + ts + "\",\"level\":\"" + std::string(lv.data(), lv.size()) + "\",\"node\":\"" +
                       node_ + "\",\"msg\":\"" + msg + "\"}\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  void flush_() override { std::fflush(stderr); }

 private:
  std::string node_;
};

void setup_logging(const ds::NodeConfig& c) {
  std::shared_ptr<spdlog::logger> lg;
  if (c.log_format == ds::LogFormat::kJson) {
    lg = std::make_shared<spdlog::logger>("ds", std::make_shared<JsonSink>(c.node_id));
  } else {
    lg = spdlog::stderr_color_mt("ds");
    lg->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ [" + c.node_id + "] %v");
  }
  static const spdlog::level::level_enum kLevels[] = {spdlog::level::trace, spdlog::level::debug, spdlog::level::info,
                                                      spdlog::level::warn, spdlog::level::err, spdlog::level::off};
  lg->set_level(kLevels[static_cast<int>(c.log_level)]);
  lg->flush_on(spdlog::level::info);
  spdlog::set_default_logger(lg);
}

struct NodeCafConfig : caf::actor_system_config {
  explicit NodeCafConfig(const ds::NodeConfig& c) {
    ds::register_types(*this);
    load<caf::io::middleman>();
    if (c.scheduler_threads > 0) set("scheduler.max-threads", c.scheduler_threads);
    set("scheduler.policy", c.scheduler_policy == ds::SchedulerPolicy::kSharing ? caf::atom("sharing") : caf::atom("stealing"));
    if (c.heartbeat_interval.count() > 0) set("middleman.heartbeat-interval", caf::timespan{c.heartbeat_interval});
    if (c.connection_timeout.count() > 0) set("middleman.connection-timeout", caf::timespan{c.connection_timeout});
    set("middleman.app-identifiers", std::vector<std::string>{"ds-v1"});
    ds::apply_tls(*this, tls_options(c));
  }
  static ds::TlsOptions tls_options(const ds::NodeConfig& c) {
    return ds::TlsOptions{c.tls_certificate, c.tls_key, c.tls_passphrase, c.tls_cafile, c.tls_capath};
  }
};

// The host other members reach this node at: --advertise, else the bind address, else (bound to
// every interface) the first non-loopback IPv4 of this host.
std::string advertised_host(const ds::NodeConfig& c) {
  if (!c.advertise.empty()) return c.advertise;
  if (c.bind != "0.0.0.0" && c.bind != "::") return c.bind.find(':') != std::string::npos ? "[" + c.bind + "]" : c.bind;
  ifaddrs* ifs = nullptr;
  std::string found;
  if (::getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i && found.empty(); i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP)) continue;
      char buf[INET_ADDRSTRLEN];
      if (::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof(buf))) found = buf;
    }
    ::freeifaddrs(ifs);
  }
  if (found.empty()) {
    spdlog::warn("bound to every interface but no non-loopback IPv4 found: advertising 127.0.0.1 (set --advertise)");
    return "127.0.0.1";
  }
  return found;
}

// The model to serve: --model, or the built-in demo model cached in the data dir.
ds::Result<std::shared_ptr<ds::Model>> load_model(const ds::NodeConfig& c) {
  std::string path = c.model_path;
  if (path.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(c.data_dir, ec);
    if (ec) return ds::Status::IOError("cannot create data dir '" + c.data_dir + "': " + ec.message());
    path = c.data_dir + "/demo-model.gguf";
    if (!std::filesystem::exists(path)) {
      auto spec = ds::model_preset("tiny");
      spec->seed = 20261127;
      spec->name = "ds-demo (random weights)";
      spdlog::info("writing the built-in demo model to {}", path);
      DS_RETURN_IF_ERROR(ds::write_random_model(*spec, path));
    }
    spdlog::warn("no --model given: serving the built-in demo model ({}); it has RANDOM weights, its output is random text", path);
  }
  ds::LoadOptions lo;
  int last = -1;
  lo.progress = [&](size_t done, size_t total) {
    const int pct = total ? static_cast<int>(100.0 * done / total) : 100;
    if (pct / 25 != last / 25 || pct == 100) {
      if (pct != last) spdlog::info("loading {}: {}%", path, pct);
      last = pct;
    }
  };
  return ds::Model::Load(path, lo);
}

}  // namespace

int main(int argc, char** argv) {
  // Signals are taken by sigwait below; block them before any thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  std::string help;
  auto loaded = ds::load_node_config(argc, argv, ds::environment_map(environ), &help);
  if (!loaded.ok()) {
    std::cerr << "ds-node: " << loaded.status().message() << "\n";
    return 2;
  }
  ds::NodeConfig cfg = std::move(loaded).value();
  if (cfg.help_requested) {
    std::cout << help;
    return 0;
  }
  if (cfg.print_config) {
    std::cout << ds::to_toml(cfg);
    return 0;
  }
  if (ds::Status st = ds::validate_tls(NodeCafConfig::tls_options(cfg)); !st.ok()) {
    std::cerr << "ds-node: " << st.message() << "\n";
    return 2;
  }
  // The CPU kernels' variant (kernels/cpu/variants.h), checked by the config; the dispatch reads it
  // from DS_CPU_KERNELS.
  if (cfg.cpu_kernels != "auto") setenv("DS_CPU_KERNELS", cfg.cpu_kernels.c_str(), 1);
  std::string cpu_error;
  const ds::cpu::Variant* cpu_kernels = ds::cpu::select_variant(&cpu_error);
  if (cpu_kernels == nullptr) {
    std::cerr << "ds-node: " << cpu_error << "\n";
    return 2;
  }
  setup_logging(cfg);
  spdlog::info("CPU kernels: {} ({}{})", cpu_kernels->name, cpu_kernels->isa,
               cfg.cpu_kernels != "auto" ? ", from cpu-kernels" : ", the best this CPU runs");
  const bool use_cuda = cfg.backend == ds::BackendKind::kCuda ||
                        (cfg.backend == ds::BackendKind::kAuto && ds::cuda_backend_available());
  // Why no GPU can be used, in the CUDA runtime's words (no device, driver too old, no CUDA
  // in this build), for the error that refuses --backend cuda or --gpus.
  auto no_gpu_reason = [] {
    std::string why;
    if (ds::make_cuda_backend(0, &why) != nullptr || why.empty()) why = "no usable CUDA device";
    return why;
  };
  if (cfg.backend == ds::BackendKind::kCuda && !ds::cuda_backend_available()) {
    spdlog::error("--backend cuda: {}", no_gpu_reason());
    return 1;
  }

  auto model = load_model(cfg);
  if (!model.ok()) {
    spdlog::error("cannot load the model: {}", model.status().ToString());
    return 1;
  }
  const ds::ModelConfig& mc = (*model)->config();
  const int n_ctx = cfg.ctx > 0 ? cfg.ctx : mc.n_ctx_train;

  NodeCafConfig caf_cfg(cfg);
  caf::actor_system sys{caf_cfg};
  const std::string address = advertised_host(cfg) + ":" + std::to_string(cfg.port);

  ds::RouterConfig rc;
  rc.node_id = cfg.node_id;
  rc.cluster_name = cfg.cluster_name;
  rc.address = address;
  rc.version = kVersion;
  rc.model = *model;
  rc.n_ctx = n_ctx;
  rc.max_tokens_limit = cfg.max_tokens_limit;
  rc.request_shutdown = [] { ::kill(::getpid(), SIGTERM); };  // same drain as SIGTERM
  caf::actor router = ds::spawn_router(sys, rc);

  ds::SupervisorConfig sc;
  sc.worker.id = "w0";
  sc.worker.model = *model;
  sc.worker.backend = use_cuda ? "cuda" : "cpu";
  sc.worker.cpu_fallback = cfg.backend == ds::BackendKind::kAuto;
  sc.worker.threads = cfg.threads;
  sc.worker.tensor_parallel = cfg.tensor_parallel;
  {
    std::stringstream gs(cfg.gpus);
    for (std::string g; std::getline(gs, g, ',');) sc.worker.gpus.push_back(std::stoi(g));  // checked by the config
  }
  if (!sc.worker.gpus.empty() && !use_cuda) {
    spdlog::error("--gpus {}: {}", cfg.gpus, no_gpu_reason());
    return 1;
  }
  // Auto: a GPU reads its weights once per step for the whole batch, so a bigger batch costs
  // little more per step (H200, bench-1b q8_0: batch 8 1446 tok/s, batch 32 3095).
  const int max_batch = cfg.max_batch > 0 ? cfg.max_batch : use_cuda ? 32 : 8;
  sc.worker.engine.max_batch = max_batch;
  sc.worker.engine.n_ctx = n_ctx;
  sc.worker.engine.kv_cache_tokens = cfg.kv_cache_tokens;
  sc.worker.engine.memory_percent = cfg.gpu_memory_percent;
  sc.worker.engine.kv_block_size = cfg.kv_block_size;
  sc.worker.cuda.fused_decode = cfg.fused_decode != ds::FusedDecodeKind::kOff;
  sc.worker.cuda.fused_decode_auto = cfg.fused_decode == ds::FusedDecodeKind::kAuto;
  sc.worker.cuda.proven_only = cfg.cuda_kernels == ds::CudaKernelsKind::kProven;
  // Checked when the configuration loaded (config/node_config.cc): it parses.
  if (std::string error; !ds::parse_cuda_tuning(cfg.cuda_tuning, &sc.worker.cuda, &error)) spdlog::warn("cuda-tuning: {}", error);
  const bool tuned = sc.worker.cuda.l2_prefetch || sc.worker.cuda.gemv_stream || sc.worker.cuda.half_weight_cache;
  if (tuned && sc.worker.cuda.proven_only)
    spdlog::warn("cuda-tuning {}: ignored: cuda-kernels = proven (these have not run on a GPU yet)", cfg.cuda_tuning);
  if (tuned && (!use_cuda || sc.worker.gpus.size() > 1))
    spdlog::warn("cuda-tuning {}: ignored: it applies to a worker on one GPU (this worker: {})", cfg.cuda_tuning,
                 use_cuda ? "tensor parallel over GPUs " + cfg.gpus : std::string("the CPU"));
  sc.worker.cpu_interleave = cfg.cpu_weights == ds::CpuWeightsKind::kInterleaved;
  if (sc.worker.cuda.proven_only && cfg.fused_decode != ds::FusedDecodeKind::kOff) {
    spdlog::warn("fused-decode {}: ignored: cuda-kernels = proven (the persistent decode kernel has not run on a GPU yet)",
                 cfg.fused_decode == ds::FusedDecodeKind::kOn ? "on" : "auto");
  }
  if (sc.worker.cuda.proven_only && (!use_cuda || sc.worker.gpus.size() > 1)) {
    spdlog::warn("cuda-kernels proven: ignored: it applies to a worker on one GPU (this worker: {})",
                 use_cuda ? "tensor parallel over GPUs " + cfg.gpus : std::string("the CPU"));
  }
  if (cfg.fused_decode != ds::FusedDecodeKind::kOff && (!use_cuda || sc.worker.gpus.size() > 1)) {
    spdlog::warn("fused-decode {}: ignored: the persistent decode kernel runs on the CUDA backend with one GPU (this "
                 "worker: {})", cfg.fused_decode == ds::FusedDecodeKind::kOn ? "on" : "auto",
                 use_cuda ? "tensor parallel over GPUs " + cfg.gpus : std::string("the CPU"));
  }
  if (cfg.kv_type != ds::KvTypeKind::kAuto) sc.worker.engine.kv_type = cfg.kv_type == ds::KvTypeKind::kF16 ? ds::DType::kF16 : ds::DType::kF32;
  sc.worker.engine.max_step_tokens = cfg.max_step_tokens;
  sc.worker.engine.shard_step_timeout_ms = static_cast<int>(cfg.shard_step_timeout.count());
  sc.worker.fault_crash_after_steps = cfg.fault_worker_crash_after_steps;
  sc.worker.fault_crash_count = cfg.fault_worker_crash_count;
  sc.worker.stuck_step_exit = cfg.stuck_step_exit;
  sc.worker.fault_hang_after_steps = cfg.fault_worker_hang_after_steps;
  if (cfg.fault_worker_hang_after_steps > 0) {
    spdlog::warn("TEST FAULT armed: the worker's step {} never returns (test.fault-worker-hang-after-steps)",
                 cfg.fault_worker_hang_after_steps);
  }
  if (cfg.fault_worker_crash_after_steps > 0) {
    spdlog::warn("TEST FAULT armed: the worker crashes after {} steps (test.fault-worker-crash-after-steps)",
                 cfg.fault_worker_crash_after_steps);
  }
  caf::actor supervisor = ds::spawn_supervisor(sys, sc, router);

  const char* bind = cfg.bind.empty() ? nullptr : cfg.bind.c_str();
  auto port = ds::publish_actor(router, cfg.port, bind);
  if (!port) {
    spdlog::error("cannot listen on {}:{}: {}", cfg.bind, cfg.port, sys.render(port.error()));
    caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
    return 1;
  }
  if (sys.has_openssl_manager()) spdlog::info("TLS on: certificate {}, peers must be signed by {}", cfg.tls_certificate,
                                              cfg.tls_cafile.empty() ? cfg.tls_capath : cfg.tls_cafile);
  const std::string step_timeout = cfg.shard_step_timeout.count() > 0
                                       ? "step timeout " + std::to_string(cfg.shard_step_timeout.count()) + " ms"
                                       : "no step timeout";
  spdlog::info("ds-node {} up on {}:{}, advertised as {} (model '{}', {} {}, ctx {}, max batch {}, worker w0 on {}, {} threads)",
               cfg.node_id, cfg.bind, *port, address, mc.name, mc.arch_name, (*model)->weight_type_name(), n_ctx, max_batch,
               sc.worker.gpus.size() > 1   ? "cuda GPUs " + cfg.gpus + " (tensor parallel, " + step_timeout + ")"
               : cfg.tensor_parallel > 1 ? "cpu, " + std::to_string(cfg.tensor_parallel) + " tensor-parallel ranks (" + step_timeout + ")"
                                         : sc.worker.backend,
               cfg.threads > 0 ? cfg.threads : static_cast<int>(std::thread::hardware_concurrency()));

  // Membership: join through the seeds (retried until one answers) or found the cluster.
  static std::atomic<int> fatal_code{0};
  ds::MembershipActorConfig mcfg;
  mcfg.options.cluster_name = cfg.cluster_name;
  mcfg.options.heartbeat_interval = cfg.fd_interval;
  mcfg.options.detector.first_heartbeat_estimate = cfg.fd_interval;
  mcfg.options.detector.threshold = cfg.fd_threshold;
  mcfg.options.detector.acceptable_heartbeat_pause = cfg.fd_acceptable_pause;
  mcfg.options.seed = std::hash<std::string>{}(cfg.node_id) ^ static_cast<uint64_t>(::getpid());
  if (ds::Status st = ds::cluster::validate(mcfg.options); !st.ok()) {
    spdlog::error("failure detector settings: {}", st.message());
    return 2;
  }
  mcfg.self.node_id = cfg.node_id;
  // A restart of the same node id must be a higher incarnation: the start time does it.
  mcfg.self.incarnation = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  mcfg.self.cluster_address = address;
  mcfg.self.workers.push_back(ds::cluster::WorkerSummary{"w0", mc.name, 0, 0, static_cast<uint32_t>(max_batch), true});
  {
    std::stringstream ss(cfg.join);
    for (std::string item; std::getline(ss, item, ',');)
      if (!item.empty()) mcfg.seeds.push_back(item);
  }
  mcfg.on_fatal = [](int code, const std::string&) {
    fatal_code = code;
    ::kill(::getpid(), SIGTERM);  // main's sigwait takes it from here
  };
  if (!mcfg.seeds.empty()) spdlog::info("joining cluster '{}' through {}", cfg.cluster_name, cfg.join);
  caf::actor membership = ds::spawn_membership(sys, mcfg, router);
  caf::anon_send(router, ds::member_atom::value, membership);

  if (cfg.http_port != 0) {
    spdlog::warn("--http-port {}: the HTTP gateway (OpenAI API, /metrics, /health) is not part of this build yet; "
                 "use the actor client (ds-client --connect)", cfg.http_port);
  }

  int sig = 0;
  sigwait(&sigs, &sig);
  if (fatal_code != 0) {
    spdlog::error("ds-node {} stopping: it cannot be part of the cluster (see above)", cfg.node_id);
    std::_Exit(fatal_code);
  }
  spdlog::info("signal {}: draining (no new requests; up to {} ms for in-flight ones); a second signal exits at once", sig,
               cfg.drain_timeout.count());
  std::thread second([&sigs] {
    int s2 = 0;
    sigwait(&sigs, &s2);
    spdlog::warn("second signal {}: exiting now", s2);
    std::_Exit(130);
  });
  second.detach();
  {
    // 1. Leave: the other routers stop sending work here. 2. Finish this router's requests.
    // 3. Let the worker finish what other routers sent it. 4. Announce the exit (down) so the
    // cluster need not wait for its failure detectors. Whatever is still running after the
    // drain timeout is moved by its owners when this node goes down.
    const auto deadline = std::chrono::steady_clock::now() + cfg.drain_timeout;
    caf::scoped_actor self{sys};
    self->send(membership, ds::leave_atom::value);
    self->request(router, cfg.drain_timeout, ds::drain_atom::value)
        .receive([](bool) { spdlog::info("drained: no request of this node in flight"); },
                 [](caf::error& e) { spdlog::warn("drain timeout: stopping with requests in flight ({})", caf::to_string(e)); });
    bool idle = false;
    while (!idle && std::chrono::steady_clock::now() < deadline) {
      self->request(router, std::chrono::seconds(2), ds::status_atom::value)
          .receive(
              [&](ds::NodeStatus& ns) {
                idle = true;
                for (const auto& w : ns.workers) idle = idle && w.active == 0 && w.queued == 0;
              },
              [&](caf::error&) { idle = true; });
      if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!idle) spdlog::warn("drain timeout: the worker still runs sequences of other nodes; they will be moved");
    self->request(membership, std::chrono::seconds(2), ds::shutdown_atom::value).receive([](bool) {}, [](caf::error&) {});
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the announcement leave
  }
  caf::anon_send_exit(membership, caf::exit_reason::user_shutdown);
  sys.middleman().unpublish(router, *port);
  caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  sys.await_all_actors_done();
  spdlog::info("ds-node {} stopped", cfg.node_id);
  // Everything is drained and every actor is done: leave without running the actor system's
  // destructor, which can wait on peers' connections (seen under load in CI: the process
  // stayed alive for 30 s after this line). Nothing is left to flush but the log.
  spdlog::shutdown();
  std::fflush(nullptr);
  std::_Exit(0);
}
