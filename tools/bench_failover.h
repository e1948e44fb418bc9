// tools/bench_failover.h: `ds-bench failover`, the cluster's detection and failover benchmark.
//
// Starts N ds-node processes on 127.0.0.1 (the ds-node beside this binary), streams greedy
// requests through node 0, and K times kills (SIGKILL) or freezes (SIGSTOP) another node that
// runs some of them, then measures
//   - detection: from the signal until node 0's membership view marks the victim down;
//   - failover: for the kill, the longest gap any stream saw between its last token before the
//     signal and its next token after it (the stream resumed on another worker);
// and brings the victim back (restart with the same node id and data dir, or SIGCONT) before
// the next round. Reports p50/p99/max over the kills, as a table or one JSON object.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace ds::bench {

struct FailoverArgs {
  std::string model;        // GGUF every node serves
  int nodes = 3;            // >= 3: a majority must survive each kill
  int kills = 20;
  int streams = 6;          // concurrent streams through node 0
  int max_tokens = 400;     // per stream
  int threads = 1;          // per node
  std::string signal = "kill";  // kill | stop
  int stop_seconds = 5;     // SIGSTOP: how long the victim stays frozen
  std::string work_dir;     // node data dirs and logs (default: a fresh dir under /tmp, removed)
  bool keep = false;        // keep work_dir
  bool json = false;
};

CLI::App* add_failover_command(CLI::App& app, FailoverArgs* args);
int bench_failover(const FailoverArgs& args);

}  // namespace ds::bench
