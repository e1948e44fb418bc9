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
#include "actors/router.h"
#include "actors/supervisor.h"
#include "config/node_config.h"
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
    if (c.heartbeat_interval.count() > 0) set("middleman.heartbeat-interval", caf::timespan{c.heartbeat_interval});
    if (c.connection_timeout.count() > 0) set("middleman.connection-timeout", caf::timespan{c.connection_timeout});
    set("middleman.app-identifiers", std::vector<std::string>{"ds-v1"});
  }
};

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
  setup_logging(cfg);
  const bool use_cuda = cfg.backend == ds::BackendKind::kCuda ||
                        (cfg.backend == ds::BackendKind::kAuto && ds::cuda_backend_available());
  if (cfg.backend == ds::BackendKind::kCuda && !ds::cuda_backend_available()) {
    spdlog::error("--backend cuda: no usable CUDA device (or this build has no CUDA backend)");
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
  const std::string address = (cfg.bind == "0.0.0.0" ? std::string("127.0.0.1") : cfg.bind) + ":" + std::to_string(cfg.port);

  ds::RouterConfig rc;
  rc.node_id = cfg.node_id;
  rc.cluster_name = cfg.cluster_name;
  rc.address = address;
  rc.version = kVersion;
  rc.model = *model;
  rc.n_ctx = n_ctx;
  rc.max_tokens_limit = cfg.max_tokens_limit;
  caf::actor router = ds::spawn_router(sys, rc);

  ds::SupervisorConfig sc;
  sc.worker.id = "w0";
  sc.worker.model = *model;
  sc.worker.backend = use_cuda ? "cuda" : "cpu";
  sc.worker.cpu_fallback = cfg.backend == ds::BackendKind::kAuto;
  sc.worker.threads = cfg.threads;
  sc.worker.engine.max_batch = cfg.max_batch;
  sc.worker.engine.n_ctx = n_ctx;
  sc.worker.engine.kv_cache_tokens = cfg.kv_cache_tokens;
  sc.worker.engine.kv_block_size = cfg.kv_block_size;
  sc.worker.engine.max_step_tokens = cfg.max_step_tokens;
  sc.worker.fault_crash_after_steps = cfg.fault_worker_crash_after_steps;
  sc.worker.fault_crash_count = cfg.fault_worker_crash_count;
  if (cfg.fault_worker_crash_after_steps > 0) {
    spdlog::warn("TEST FAULT armed: the worker crashes after {} steps (test.fault-worker-crash-after-steps)",
                 cfg.fault_worker_crash_after_steps);
  }
  caf::actor supervisor = ds::spawn_supervisor(sys, sc, router);

  const char* bind = cfg.bind.empty() ? nullptr : cfg.bind.c_str();
  auto port = sys.middleman().publish(router, cfg.port, bind, true);
  if (!port) {
    spdlog::error("cannot listen on {}:{}: {}", cfg.bind, cfg.port, sys.render(port.error()));
    caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
    return 1;
  }
  spdlog::info("ds-node {} up on {}:{} (model '{}', {} {}, ctx {}, max batch {}, worker w0 on {}, {} threads)", cfg.node_id,
               cfg.bind, *port, mc.name, mc.arch_name, (*model)->weight_type_name(), n_ctx, cfg.max_batch,
               sc.worker.backend, cfg.threads > 0 ? cfg.threads : static_cast<int>(std::thread::hardware_concurrency()));

  // Join through the seeds (retried with backoff while none is reachable).
  std::atomic<bool> stopping{false};
  std::thread joiner;
  if (!cfg.join.empty()) {
    joiner = std::thread([&sys, &router, &cfg, &stopping] {
      std::vector<std::pair<std::string, uint16_t>> seeds;
      std::stringstream ss(cfg.join);
      for (std::string item; std::getline(ss, item, ',');) {
        const size_t colon = item.rfind(':');
        seeds.emplace_back(item.substr(0, colon), static_cast<uint16_t>(std::stoi(item.substr(colon + 1))));
      }
      auto backoff = std::chrono::milliseconds(200);
      while (!stopping.load()) {
        for (const auto& [host, port] : seeds) {
          caf::scoped_actor self{sys};
          caf::actor seed;
          self->request(sys.middleman().actor_handle(), std::chrono::seconds(2), caf::connect_atom::value, host, port)
              .receive([&](const caf::node_id&, caf::strong_actor_ptr& p, const std::set<std::string>&) { seed = caf::actor_cast<caf::actor>(p); },
                       [&](caf::error&) {});
          if (!seed) {
            spdlog::info("seed {}:{} not reachable", host, port);
            continue;
          }
          bool joined = false;
          self->request(router, std::chrono::seconds(10), ds::join_atom::value, seed)
              .receive([&](bool) { joined = true; },
                       [&](caf::error& e) {
                         spdlog::error("join through {}:{} refused: {}", host, port, ds::render_error(e));
                         if (e.category() == caf::atom("ds") && e.code() == static_cast<uint8_t>(ds::errc::wrong_cluster)) {
                           std::_Exit(1);  // misconfigured: retrying cannot help
                         }
                       });
          if (joined) return;
        }
        std::this_thread::sleep_for(backoff);
        backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
      }
    });
  } else {
    spdlog::info("no --join: founding cluster '{}'", cfg.cluster_name);
  }

  if (cfg.http_port != 0) {
    spdlog::warn("--http-port {}: the HTTP gateway (OpenAI API, /metrics, /health) is not part of this build yet; "
                 "use the actor client (ds-client --connect)", cfg.http_port);
  }

  int sig = 0;
  sigwait(&sigs, &sig);
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
    caf::scoped_actor self{sys};
    self->request(router, cfg.drain_timeout, ds::drain_atom::value)
        .receive([](bool) { spdlog::info("drained: nothing in flight"); },
                 [](caf::error& e) { spdlog::warn("drain timeout: stopping with requests in flight ({})", caf::to_string(e)); });
  }
  stopping = true;
  if (joiner.joinable()) joiner.join();
  sys.middleman().unpublish(router, *port);
  caf::anon_send_exit(supervisor, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  sys.await_all_actors_done();
  spdlog::info("ds-node {} stopped", cfg.node_id);
  return 0;
}
