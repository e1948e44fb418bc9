// ds-admin: operate a ds cluster.
//
//   ds-admin --connect HOST:PORT cluster status [--json]
//   ds-admin --connect HOST:PORT node drain ID [--timeout SECONDS] [--no-wait]
//   ds-admin --connect HOST:PORT node remove ID
//
// Exit codes: 0 ok, 2 usage error, 3 cannot connect, 4 refused (no such member, a live member
// to remove), 5 the node did not answer or the drain did not finish in time.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include "actors/client.h"
#include "tools/common/cli_util.h"
#include "tools/common/tls_flags.h"

namespace {

nlohmann::json to_json(const ds::ClusterStatus& cs) {
  nlohmann::json nodes = nlohmann::json::array();
  int active = 0, queued = 0, n_workers = 0;
  double tps = 0;
  for (const auto& n : cs.nodes) {
  nlohmann::json workers = nlohmann::json::array();
  for (const auto& w : n.workers) {
    workers.push_back({{"id", w.id}, {"backend", w.backend}, {"state", w.state}, {"active", w.active}, {"queued", w.queued},
                       {"kv_blocks_used", w.kv_blocks_used}, {"kv_blocks_total", w.kv_blocks_total},
                       {"kv_use", w.kv_blocks_total ? static_cast<double>(w.kv_blocks_used) / w.kv_blocks_total : 0.0},
                       {"kv_type", w.kv_type}, {"kv_bytes", w.kv_bytes}, {"cpu_kernels", w.cpu_kernels},
                       {"tokens_per_s", w.tokens_per_s}, {"restarts", w.restarts}});
    active += w.active;
    queued += w.queued;
    tps += w.tokens_per_s;
    ++n_workers;
  }
  nodes.push_back({{"id", n.node_id}, {"address", n.address}, {"state", n.state}, {"uptime_s", n.uptime_s},
                   {"version", n.version}, {"model", n.model}, {"in_flight", n.in_flight}, {"members_seen", n.members},
                   {"incarnation", n.incarnation}, {"leader", n.leader}, {"reachable", n.reachable}, {"draining", n.draining},
                   {"workers", workers}});
  }
  return {{"cluster", cs.cluster_name}, {"reporter", cs.reporter}, {"leader", cs.leader}, {"has_quorum", cs.has_quorum},
          {"quorum", cs.quorum}, {"nodes", nodes},
          {"totals", {{"nodes", cs.nodes.size()}, {"workers", n_workers}, {"active", active}, {"queued", queued}, {"tokens_per_s", tps}}}};
}

void print_table(const ds::ClusterStatus& cs) {
  int active = 0, queued = 0, n_workers = 0, in_flight = 0;
  double tps = 0;
  std::printf("cluster '%s' as node %s sees it: leader %s; %s%s\n\n", cs.cluster_name.c_str(), cs.reporter.c_str(),
              cs.leader.empty() ? "(none)" : cs.leader.c_str(), cs.quorum.c_str(), cs.has_quorum ? "" : " -- NO QUORUM");
  for (const auto& n : cs.nodes) {
  std::string state = n.state;
  if (n.draining) state += ",draining";
  if (!n.reachable && (n.state == "up" || n.state == "joining" || n.state == "leaving")) state += ",unreachable";
  std::printf("%-20s %-22s %-20s %-6s %20s %10s %-8s %s\n", "NODE", "ADDRESS", "STATE", "LEADER", "INCARNATION", "UPTIME", "VERSION", "MODEL");
  std::printf("%-20s %-22s %-20s %-6s %20llu %9.0fs %-8s %s\n", n.node_id.c_str(), n.address.c_str(), state.c_str(),
              n.leader ? "*" : "", static_cast<unsigned long long>(n.incarnation), n.uptime_s, n.version.c_str(), n.model.c_str());
  std::printf("  %-6s %-8s %-10s %-12s %7s %7s %14s %-12s %9s %9s\n", "WORKER", "BACKEND", "KERNELS", "STATE", "ACTIVE", "QUEUED",
              "KV BLOCKS", "KV CACHE", "TOK/S", "RESTARTS");
  in_flight += n.in_flight;
  for (const auto& w : n.workers) {
    char kv[32];
    std::snprintf(kv, sizeof(kv), "%d/%d", w.kv_blocks_used, w.kv_blocks_total);
    char cache[32] = "-";
    if (!w.kv_type.empty())
      std::snprintf(cache, sizeof(cache), "%s %.0f MiB", w.kv_type.c_str(), static_cast<double>(w.kv_bytes) / (1 << 20));
    std::printf("  %-6s %-8s %-10s %-12s %7d %7d %14s %-12s %9.1f %9d\n", w.id.c_str(), w.backend.c_str(),
                w.cpu_kernels.empty() ? "-" : w.cpu_kernels.c_str(), w.state.c_str(), w.active, w.queued, kv, cache,
                w.tokens_per_s, w.restarts);
    active += w.active;
    queued += w.queued;
    tps += w.tokens_per_s;
    ++n_workers;
  }
  std::printf("\n");
  }
  std::printf("total: %zu nodes, %d workers, %d active, %d queued, %.1f tok/s, %d requests in flight\n", cs.nodes.size(), n_workers,
              active, queued, tps, in_flight);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds-admin: operate a ds cluster"};
  app.require_subcommand(1);
  std::string target;
  bool json = false;
  app.add_option("--connect", target, "HOST:PORT[,HOST:PORT...] of ds-nodes: the first that answers is used")->required();
  ds::TlsOptions tls;
  ds::cli::add_tls_flags(app, &tls);
  CLI::App* cluster = app.add_subcommand("cluster", "Cluster-wide commands");
  cluster->require_subcommand(1);
  CLI::App* status = cluster->add_subcommand("status", "Nodes, workers and load");
  status->add_flag("--json", json, "One JSON object (schema in README.md)");
  CLI::App* node = app.add_subcommand("node", "Commands about one member");
  node->require_subcommand(1);
  std::string node_id;
  double timeout_s = 90;
  bool no_wait = false;
  CLI::App* drain = node->add_subcommand("drain", "Stop routing work to a member, let it finish its requests, then it leaves and exits");
  drain->add_option("ID", node_id, "Node id (as cluster status shows it)")->required();
  drain->add_option("--timeout", timeout_s, "Seconds to wait for it to leave (default 90)")->check(CLI::PositiveNumber);
  drain->add_flag("--no-wait", no_wait, "Return once the drain has started");
  CLI::App* remove = node->add_subcommand("remove", "Forget a member that is down (refused for a live one: drain it)");
  remove->add_option("ID", node_id, "Node id")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : ds::cli::kExitUsage;
  }
  ds::ClientOptions co;
  co.tls = tls;
  if (!ds::parse_node_list(target, &co)) {
    std::cerr << "ds-admin: --connect wants HOST:PORT[,HOST:PORT...], got '" << target << "'\n";
    return ds::cli::kExitUsage;
  }
  int rc = 0;
  auto client = ds::cli::connect_or_report(co, "ds-admin", &rc);
  if (!client) return rc;
  if (drain->parsed() || remove->parsed()) {
    const bool draining = drain->parsed();
    ds::Status st = draining ? client->drain_node(node_id) : client->remove_node(node_id);
    if (!st.ok()) {
      std::cerr << "ds-admin: " << st.message() << "\n";
      return st.code() == ds::StatusCode::kIOError ? ds::cli::kExitRequestFailed : ds::cli::kExitRejected;
    }
    if (!draining) {
      std::cout << "member " << node_id << " removed\n";
      return ds::cli::kExitOk;
    }
    std::cout << "member " << node_id << " is draining" << std::endl;
    if (no_wait) return ds::cli::kExitOk;
    // Wait until the member is gone from the view (down or removed). When it is the node this
    // tool talks to, its exit closes the connection: that is the end of the drain too.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      auto v = client->members();
      if (!v.ok()) {
        std::cout << "member " << node_id << " left (its connection closed)\n";
        return ds::cli::kExitOk;
      }
      for (const auto& m : v->members) {
        if (m.node_id == node_id && (m.state == "down" || m.state == "removed")) {
          std::cout << "member " << node_id << " drained and left the cluster\n";
          return ds::cli::kExitOk;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    std::cerr << "ds-admin: member " << node_id << " has not left after " << timeout_s << " s (it may still be finishing requests)\n";
    return ds::cli::kExitRequestFailed;
  }
  auto st = client->cluster_status();
  if (!st.ok()) {
    std::cerr << "ds-admin: " << st.status().message() << "\n";
    return ds::cli::kExitRequestFailed;
  }
  if (json) std::cout << to_json(*st).dump() << "\n";
  else print_table(*st);
  return ds::cli::kExitOk;
}
