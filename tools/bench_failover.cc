#include "tools/bench_failover.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "actors/client.h"
#include "tools/common/cli_util.h"

namespace ds::bench {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  uint16_t port = 0;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  if (fd >= 0) ::close(fd);
  return port;
}

std::string read_file(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// One ds-node process of the benchmark's cluster.
struct NodeProc {
  std::string id;
  uint16_t port = 0;
  std::string dir;
  pid_t pid = -1;
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
  std::string log() const { return dir + "/node.log"; }
};

bool spawn(NodeProc& n, const FailoverArgs& a, const std::string& node_bin, const std::string& join) {
  std::vector<std::string> argv = {node_bin, "--model", a.model, "--bind", "127.0.0.1", "--port", std::to_string(n.port),
                                   "--node-id", n.id, "--data-dir", n.dir, "--http-port", "0", "--threads",
                                   std::to_string(a.threads), "--max-tokens-limit", "100000", "--drain-timeout", "2"};
  if (!join.empty()) argv.insert(argv.end(), {"--join", join});
  std::filesystem::create_directories(n.dir);
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    const int fd = ::open(n.log().c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    std::vector<char*> args;
    for (auto& s : argv) args.push_back(s.data());
    args.push_back(nullptr);
    ::execv(node_bin.c_str(), args.data());
    std::_Exit(127);
  }
  n.pid = pid;
  return true;
}

void stop(NodeProc& n, int sig) {
  if (n.pid <= 0) return;
  ::kill(n.pid, SIGCONT);
  ::kill(n.pid, sig);
  int st = 0;
  ::waitpid(n.pid, &st, 0);
  n.pid = -1;
}

// The member `id` in the view of the client's node (state "" when unknown).
MemberInfo member(Client& c, const std::string& id) {
  auto v = c.members();
  if (v.ok())
    for (const auto& m : v->members)
      if (m.node_id == id) return m;
  return {};
}

// Waits until every node in `nodes` is up in the client's view.
bool all_up(Client& c, const std::vector<NodeProc>& nodes, std::chrono::seconds timeout) {
  const auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    auto v = c.members();
    if (v.ok()) {
      size_t up = 0;
      for (const auto& m : v->members)
        for (const auto& n : nodes) up += (m.node_id == n.id && m.state == "up" && m.reachable) ? 1 : 0;
      if (up == nodes.size()) return true;
    }
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

struct Round {
  int victim = 0;
  int on_victim = 0;      // sequences the victim's worker ran at the signal
  double detect_ms = -1;  // -1: not detected within the limit
  double failover_ms = 0; // longest gap across the signal over all streams
  int errors = 0;
};

}  // namespace

CLI::App* add_failover_command(CLI::App& app, FailoverArgs* a) {
  CLI::App* c = app.add_subcommand(
      "failover",
      "Cluster failure detection and failover: starts N local ds-nodes, streams through node 0, kills (or freezes) another "
      "node K times; reports detection and failover time p50/p99");
  c->add_option("--model", a->model, "GGUF model every node serves (a slow one makes long streams)")->required()->check(CLI::ExistingFile);
  c->add_option("--nodes", a->nodes, "Nodes (>= 3, default 3)")->check(CLI::Range(3, 16));
  c->add_option("--kills", a->kills, "Rounds (default 20)")->check(CLI::Range(1, 10000));
  c->add_option("--streams", a->streams, "Concurrent streams through node 0 (default 6)")->check(CLI::Range(1, 256));
  c->add_option("--max-tokens", a->max_tokens, "Tokens per stream (default 400)")->check(CLI::Range(10, 100000));
  c->add_option("--threads", a->threads, "CPU threads per node (default 1)")->check(CLI::Range(1, 256));
  c->add_option("--signal", a->signal, "kill (SIGKILL, then restart) or stop (SIGSTOP, then SIGCONT)")
      ->check(CLI::IsMember({"kill", "stop"}));
  c->add_option("--stop-seconds", a->stop_seconds, "With --signal stop: seconds frozen (default 5)")->check(CLI::Range(1, 600));
  c->add_option("--work-dir", a->work_dir, "Where node data dirs and logs go (default: a temporary dir)");
  c->add_flag("--keep", a->keep, "Keep the work dir (node logs) afterwards");
  c->add_flag("--json", a->json, "One JSON object instead of a table");
  return c;
}

int bench_failover(const FailoverArgs& a) {
  namespace fs = std::filesystem;
  const std::string node_bin = (fs::read_symlink("/proc/self/exe").parent_path() / "ds-node").string();
  if (!fs::exists(node_bin)) {
    std::fprintf(stderr, "ds-bench failover: %s not found (it runs the ds-node beside ds-bench)\n", node_bin.c_str());
    return cli::kExitFailure;
  }
  std::string work = a.work_dir;
  if (work.empty()) {
    std::string t = (fs::temp_directory_path() / "ds-failover-XXXXXX").string();
    if (!::mkdtemp(t.data())) return cli::kExitFailure;
    work = t;
  }
  std::vector<NodeProc> nodes(a.nodes);
  for (int i = 0; i < a.nodes; ++i) {
    nodes[i].id = "b" + std::to_string(i);
    nodes[i].port = free_port();
    nodes[i].dir = work + "/" + nodes[i].id;
  }
  auto cleanup = [&] {
    for (auto& n : nodes) stop(n, SIGKILL);
    if (!a.keep && a.work_dir.empty()) fs::remove_all(work);
  };
  auto progress = [&](const std::string& s) {
    if (!a.json) std::fprintf(stderr, "%s\n", s.c_str());
  };
  auto wait_ready = [&](NodeProc& n, const std::string& since) {
    const auto end = Clock::now() + 60s;
    while (Clock::now() < end) {
      const std::string log = read_file(n.log());
      if (log.size() > since.size() && log.find(" up on ", since.size()) != std::string::npos) return true;
      int st = 0;
      if (::waitpid(n.pid, &st, WNOHANG) == n.pid) return false;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  };
  progress("starting " + std::to_string(a.nodes) + " nodes in " + work);
  for (int i = 0; i < a.nodes; ++i) {
    if (!spawn(nodes[i], a, node_bin, i == 0 ? "" : nodes[0].address()) || !wait_ready(nodes[i], "")) {
      std::fprintf(stderr, "ds-bench failover: node %s did not start; its log:\n%s\n", nodes[i].id.c_str(), read_file(nodes[i].log()).c_str());
      cleanup();
      return cli::kExitFailure;
    }
  }
  ClientOptions co;
  co.port = nodes[0].port;
  auto connected = Client::Connect(co);
  if (!connected.ok()) {
    std::fprintf(stderr, "ds-bench failover: %s\n", connected.status().message().c_str());
    cleanup();
    return cli::kExitConnect;
  }
  Client& client = **connected;
  if (!all_up(client, nodes, 30s)) {
    std::fprintf(stderr, "ds-bench failover: the cluster did not converge\n");
    cleanup();
    return cli::kExitFailure;
  }

  std::vector<Round> rounds;
  int total_errors = 0;
  for (int k = 0; k < a.kills; ++k) {
    Round r;
    r.victim = 1 + k % (a.nodes - 1);
    NodeProc& victim = nodes[r.victim];
    const uint64_t victim_inc = member(client, victim.id).incarnation;
    std::vector<std::vector<Clock::time_point>> stamps(a.streams);
    std::vector<Status> results(a.streams);
    std::atomic<int> chunks{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < a.streams; ++i) {
      ts.emplace_back([&, i] {
        GenerateRequest g;
        g.prompt = "round " + std::to_string(k) + " stream " + std::to_string(i);
        g.max_tokens = a.max_tokens;
        auto res = client.generate(g, [&](const TokenChunk&) {
          stamps[i].push_back(Clock::now());
          ++chunks;
        });
        results[i] = res.ok() ? (res->finish_reason == "error" ? Status::Internal(res->error) : Status::Ok()) : res.status();
      });
    }
    while (chunks.load() < a.streams * 20) std::this_thread::sleep_for(1ms);
    if (auto cs = client.cluster_status(); cs.ok())
      for (const auto& n : cs->nodes)
        if (n.node_id == victim.id)
          for (const auto& w : n.workers) r.on_victim += w.active;
    const std::string log_before = read_file(victim.log());
    const auto t_signal = Clock::now();
    ::kill(victim.pid, a.signal == "kill" ? SIGKILL : SIGSTOP);
    // Detection: node 0's view marks this incarnation down.
    while (Clock::now() - t_signal < 30s) {
      const MemberInfo m = member(client, victim.id);
      if (m.incarnation == victim_inc && (m.state == "down" || m.state == "removed")) {
        r.detect_ms = ms_between(t_signal, Clock::now());
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    for (auto& t : ts) t.join();
    for (int i = 0; i < a.streams; ++i) {
      if (!results[i].ok()) {
        ++r.errors;
        progress("  stream " + std::to_string(i) + " failed: " + results[i].ToString());
      }
      Clock::time_point before{}, after{};
      for (auto t : stamps[i]) {
        if (t <= t_signal) before = t;
        else if (after == Clock::time_point{}) after = t;
      }
      if (before != Clock::time_point{} && after != Clock::time_point{}) r.failover_ms = std::max(r.failover_ms, ms_between(before, after));
    }
    total_errors += r.errors;
    rounds.push_back(r);
    char line[200];
    std::snprintf(line, sizeof(line), "round %2d: %s %s (%d sequences there): detected in %.0f ms, longest stream gap %.0f ms%s", k + 1,
                  a.signal == "kill" ? "killed" : "froze", victim.id.c_str(), r.on_victim, r.detect_ms, r.failover_ms,
                  r.errors ? ", ERRORS" : "");
    progress(line);
    // Bring it back: a restart (same id and data dir: a new incarnation) or SIGCONT (it rejoins).
    if (a.signal == "kill") {
      int st = 0;
      ::waitpid(victim.pid, &st, 0);
      victim.pid = -1;
      if (!spawn(victim, a, node_bin, nodes[0].address()) || !wait_ready(victim, log_before)) {
        std::fprintf(stderr, "ds-bench failover: %s did not restart\n", victim.id.c_str());
        cleanup();
        return cli::kExitFailure;
      }
    } else {
      const auto frozen_until = t_signal + std::chrono::seconds(a.stop_seconds);
      if (Clock::now() < frozen_until) std::this_thread::sleep_until(frozen_until);
      ::kill(victim.pid, SIGCONT);
    }
    if (!all_up(client, nodes, 60s)) {
      std::fprintf(stderr, "ds-bench failover: %s did not rejoin\n", victim.id.c_str());
      cleanup();
      return cli::kExitFailure;
    }
  }
  // False downs: node 0 should have logged exactly one member-down per round (the victim).
  int downs = 0;
  {
    const std::string log0 = read_file(nodes[0].log());
    for (size_t at = log0.find("cluster: member-down "); at != std::string::npos; at = log0.find("cluster: member-down ", at + 1)) ++downs;
  }
  const int false_downs = std::max(0, downs - a.kills);
  cleanup();

  std::vector<double> detect, failover;
  int undetected = 0, affected = 0;
  for (const Round& r : rounds) {
    if (r.detect_ms < 0) ++undetected;
    else detect.push_back(r.detect_ms);
    if (r.on_victim > 0) {
      ++affected;
      failover.push_back(r.failover_ms);
    }
  }
  if (a.json) {
    nlohmann::json j;
    j["signal"] = a.signal;
    j["nodes"] = a.nodes;
    j["kills"] = a.kills;
    j["streams"] = a.streams;
    j["undetected"] = undetected;
    j["rounds_with_work_on_victim"] = affected;
    j["stream_errors"] = total_errors;
    j["false_downs"] = false_downs;
    j["detection_ms_p50"] = cli::percentile(detect, 0.50);
    j["detection_ms_p99"] = cli::percentile(detect, 0.99);
    j["detection_ms_max"] = cli::percentile(detect, 1.0);
    j["failover_ms_p50"] = cli::percentile(failover, 0.50);
    j["failover_ms_p99"] = cli::percentile(failover, 0.99);
    j["failover_ms_max"] = cli::percentile(failover, 1.0);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("\n%d rounds (%s), %d nodes, %d streams through node 0\n", a.kills, a.signal == "kill" ? "SIGKILL" : "SIGSTOP",
                a.nodes, a.streams);
    std::printf("%-36s %10s %10s %10s\n", "", "p50 ms", "p99 ms", "max ms");
    std::printf("%-36s %10.0f %10.0f %10.0f\n", "detection (signal -> marked down)", cli::percentile(detect, 0.5),
                cli::percentile(detect, 0.99), cli::percentile(detect, 1.0));
    std::printf("%-36s %10.0f %10.0f %10.0f\n", "failover (last token -> next token)", cli::percentile(failover, 0.5),
                cli::percentile(failover, 0.99), cli::percentile(failover, 1.0));
    std::printf("rounds with work on the victim: %d of %d; not detected within 30 s: %d; failed streams: %d; false downs: %d\n",
                affected, a.kills, undetected, total_errors, false_downs);
  }
  return (undetected == 0 && total_errors == 0 && false_downs == 0) ? cli::kExitOk : cli::kExitRequestFailed;
}

}  // namespace ds::bench
