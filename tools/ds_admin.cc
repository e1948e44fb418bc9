// ds-admin: operate a ds cluster.
//
//   ds-admin --connect HOST:PORT cluster status [--json]
//
// Exit codes: 0 ok, 2 usage error, 3 cannot connect, 5 the node did not answer.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "actors/client.h"
#include "tools/common/cli_util.h"

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
                       {"tokens_per_s", w.tokens_per_s}, {"restarts", w.restarts}});
    active += w.active;
    queued += w.queued;
    tps += w.tokens_per_s;
    ++n_workers;
  }
  nodes.push_back({{"id", n.node_id}, {"address", n.address}, {"state", n.state}, {"uptime_s", n.uptime_s},
                   {"version", n.version}, {"model", n.model}, {"in_flight", n.in_flight}, {"members_seen", n.members},
                   {"incarnation", n.incarnation}, {"leader", n.leader},
                   {"workers", workers}});
  }
  return {{"nodes", nodes},
          {"totals", {{"nodes", cs.nodes.size()}, {"workers", n_workers}, {"active", active}, {"queued", queued}, {"tokens_per_s", tps}}}};
}

void print_table(const ds::ClusterStatus& cs) {
  int active = 0, queued = 0, n_workers = 0, in_flight = 0;
  double tps = 0;
  for (const auto& n : cs.nodes) {
  std::printf("%-20s %-22s %-11s %-6s %20s %10s %-8s %s\n", "NODE", "ADDRESS", "STATE", "LEADER", "INCARNATION", "UPTIME", "VERSION", "MODEL");
  std::printf("%-20s %-22s %-11s %-6s %20llu %9.0fs %-8s %s\n", n.node_id.c_str(), n.address.c_str(), n.state.c_str(),
              n.leader ? "*" : "", static_cast<unsigned long long>(n.incarnation), n.uptime_s, n.version.c_str(), n.model.c_str());
  std::printf("  %-6s %-8s %-12s %7s %7s %14s %9s %9s\n", "WORKER", "BACKEND", "STATE", "ACTIVE", "QUEUED", "KV BLOCKS", "TOK/S", "RESTARTS");
  in_flight += n.in_flight;
  for (const auto& w : n.workers) {
    char kv[32];
    std::snprintf(kv, sizeof(kv), "%d/%d", w.kv_blocks_used, w.kv_blocks_total);
    std::printf("  %-6s %-8s %-12s %7d %7d %14s %9.1f %9d\n", w.id.c_str(), w.backend.c_str(), w.state.c_str(), w.active, w.queued,
                kv, w.tokens_per_s, w.restarts);
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
  app.add_option("--connect", target, "HOST:PORT of any ds-node")->required();
  CLI::App* cluster = app.add_subcommand("cluster", "Cluster-wide commands");
  cluster->require_subcommand(1);
  CLI::App* status = cluster->add_subcommand("status", "Nodes, workers and load");
  status->add_flag("--json", json, "One JSON object (schema in README.md)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : ds::cli::kExitUsage;
  }
  ds::ClientOptions co;
  if (!ds::parse_host_port(target, &co.host, &co.port)) {
    std::cerr << "ds-admin: --connect wants HOST:PORT, got '" << target << "'\n";
    return ds::cli::kExitUsage;
  }
  auto client = ds::Client::Connect(co);
  if (!client.ok()) {
    std::cerr << "ds-admin: " << client.status().message() << "\n";
    return ds::cli::kExitConnect;
  }
  auto st = (*client)->cluster_status();
  if (!st.ok()) {
    std::cerr << "ds-admin: " << st.status().message() << "\n";
    return ds::cli::kExitRequestFailed;
  }
  if (json) std::cout << to_json(*st).dump() << "\n";
  else print_table(*st);
  return ds::cli::kExitOk;
}
