// tests/integration/node_process.h: start and stop real ds-node processes for tests.
#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "actors/client.h"

namespace ds::test {

// A free TCP port on 127.0.0.1 (bound and released: good enough for tests).
inline uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

inline std::string slurp_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A child process with stdout/stderr in files; killed (SIGKILL) when the object dies.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& log_prefix) : log_(log_prefix) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      freopen((log_ + ".out").c_str(), "w", stdout);
      freopen((log_ + ".err").c_str(), "w", stderr);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Process() { kill_now(); }
  pid_t pid() const { return pid_; }
  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  void kill_now() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  // Waits up to timeout for the exit; returns the exit code, or -1 (still running / killed).
  int wait_exit(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  std::string out() const { return slurp_file(log_ + ".out"); }
  std::string err() const { return slurp_file(log_ + ".err"); }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

// A ds-node on 127.0.0.1 with its own data dir; ready() waits for "up on" in its log.
class Node {
 public:
  Node(const std::string& dir, std::vector<std::string> extra) : port_(free_port()), dir_(dir) {
    std::vector<std::string> argv = {std::string(DS_BUILD_DIR) + "/ds-node", "--bind", "127.0.0.1", "--port",
                                     std::to_string(port_), "--data-dir", dir + "/data", "--node-id", "n" + std::to_string(port_),
                                     "--http-port", "0", "--threads", "2"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc_ = std::make_unique<Process>(argv, dir + "/node-" + std::to_string(port_));
  }
  bool ready(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (proc_->err().find(" up on ") != std::string::npos) return true;
      if (proc_->wait_exit(std::chrono::milliseconds(0)) != -1) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  Process& process() { return *proc_; }

 private:
  uint16_t port_;
  std::string dir_;
  std::unique_ptr<Process> proc_;
};

// A ds::Client connected to n (null, with a test failure, when it cannot connect).
inline std::unique_ptr<Client> connect_client(const Node& n) {
  ClientOptions o;
  o.port = n.port();
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

}  // namespace ds::test
