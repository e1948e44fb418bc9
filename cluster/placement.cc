#include "cluster/placement.h"

#include <tuple>

#include "cluster/membership.h"

namespace ds::cluster {

namespace {

// Lower is better: less load, then local.
bool better(const WorkerCandidate& a, const WorkerCandidate& b) {
  return std::make_tuple(a.load, !a.local) < std::make_tuple(b.load, !b.local);
}

}  // namespace

std::optional<size_t> pick_worker(const std::vector<WorkerCandidate>& candidates, std::mt19937_64& rng) {
  std::vector<size_t> eligible;
  std::optional<size_t> best_local;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const WorkerCandidate& c = candidates[i];
    if (!c.eligible) continue;
    eligible.push_back(i);
    if (c.local && (!best_local || c.load < candidates[*best_local].load)) best_local = i;
  }
  if (eligible.empty()) return std::nullopt;
  size_t choice = eligible[0];
  if (eligible.size() > 1) {
    const size_t n = eligible.size();
    const size_t a = rng() % n;
    size_t b = rng() % (n - 1);
    if (b >= a) ++b;  // two distinct samples
    choice = better(candidates[eligible[b]], candidates[eligible[a]]) ? eligible[b] : eligible[a];
  }
  if (best_local && better(candidates[*best_local], candidates[choice])) choice = *best_local;
  if (best_local && candidates[*best_local].load == candidates[choice].load) choice = *best_local;
  return choice;
}

std::vector<WorkerCandidate> worker_candidates(const Membership& view, std::string_view model) {
  std::vector<WorkerCandidate> out;
  const NodeId& self = view.self().node_id;
  for (const MemberEntry& m : view.members()) {
    const bool node_ok = m.state == MemberState::kUp && view.is_reachable(m.node_id);
    for (const WorkerSummary& w : m.info().workers) {
      if (!model.empty() && w.model != model) continue;
      out.push_back({m.node_id, w.worker_id, w.load(), m.node_id == self, node_ok && w.healthy});
    }
  }
  return out;
}

}  // namespace ds::cluster
