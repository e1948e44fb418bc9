#include "tools/common/cli_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace ds::cli {

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t k = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, k == 0 ? 0 : k - 1)];
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

void Progress::update(size_t done, size_t total) {
  if (!enabled_) return;
  const int pct = total ? static_cast<int>(100.0 * done / total) : 100;
  if (pct == last_pct_) return;
  last_pct_ = pct;
  const bool tty = isatty(STDERR_FILENO);
  if (!tty && pct != 100 && pct % 25 != 0) return;
  std::fprintf(stderr, "%s%s %3d%% (%s / %s)%s", tty ? "\r" : "", label_.c_str(), pct, human_bytes(done).c_str(),
               human_bytes(total).c_str(), (pct == 100 || !tty) ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace ds::cli
