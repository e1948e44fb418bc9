// tools/common/cli_util.h: bits shared by the ds command-line tools.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace ds::cli {

// Documented exit codes of every ds tool.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,     // the work itself failed (bad model file, generation error)
  kExitUsage = 2,       // bad flags or arguments
  kExitConnect = 3,     // cannot connect to a node
  kExitRejected = 4,    // the node refused the request (invalid, overloaded)
  kExitRequestFailed = 5,  // the request started but ended with an error
  kExitInterrupted = 130,  // cancelled by Ctrl-C (SIGINT)
};

// Prints "\rlabel  42% (1.2 / 2.9 GiB)" to stderr, throttled; a newline when done.
class Progress {
 public:
  explicit Progress(std::string label, bool enabled = true) : label_(std::move(label)), enabled_(enabled) {}
  void update(size_t done, size_t total);

 private:
  std::string label_;
  bool enabled_;
  int last_pct_ = -1;
};

std::string human_bytes(double bytes);

// Nearest-rank percentile (p in (0, 1]); 0 for no samples.
double percentile(std::vector<double> v, double p);

}  // namespace ds::cli
