// cluster/placement.h: which worker gets a request: power of two choices over gossiped load.
//
// The router samples two eligible workers at random and takes the less loaded (Mitzenmacher's
// "power of two choices": the maximum queue drops from O(log n / log log n) to
// O(log log n) against one random choice, while needing only two load readings, which may be a
// publish interval old). The least loaded local worker always joins the comparison, and wins
// ties: its load is exact (not gossiped) and it saves a network hop.
// Ineligible: a worker that is unhealthy, or on a node that is not up (joining, leaving, down,
// removed) or that some member reports unreachable.
//
// Pure: the RNG is an argument. Thread-safety: none needed (functions of their arguments).
#pragma once

#include <cstddef>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/member.h"

namespace ds::cluster {

class Membership;

struct WorkerCandidate {
  NodeId node_id;
  std::string worker_id;
  double load = 0;         // WorkerSummary::load(): 0 idle, 1 full
  bool local = false;      // on the node that routes
  bool eligible = true;    // healthy worker on an up, reachable node
};

// The index of the chosen candidate, or nullopt when none is eligible.
std::optional<size_t> pick_worker(const std::vector<WorkerCandidate>& candidates, std::mt19937_64& rng);

// Every worker serving `model` (empty = any model) in `view`, with eligibility filled in;
// `local` marks the workers of `view.self()`.
std::vector<WorkerCandidate> worker_candidates(const Membership& view, std::string_view model);

}  // namespace ds::cluster
