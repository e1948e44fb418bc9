// cluster/liveness.h: when was each voter last known alive, learned from gossip, no synced clocks.
//
// Every gossip message carries a LivenessVector (messages.h): for each up_number u, the newest
// stamp the sender holds for the voter with that number and how long ago the sender learned it.
// A node's own stamp counter goes up with every vector it builds. A receiver adopts a stamp only
// when its counter is newer than the one held (serial-number order), and dates it on its own
// clock as now - age - hop_allowance(). Because a stamp is adopted once per counter value, a
// stamp that circulates among relays never looks fresher than it is; each hop can only make it
// look older. The unmeasured part (transit time) is covered by the hop allowance, which follows
// the measured heartbeat round trips (RFC 6298 smoothing: (srtt + 4 rttvar) / 2).
//
// Thread-safety: none (owned by one Membership).
#pragma once

#include <cstdint>
#include <vector>

#include "cluster/messages.h"
#include "cluster/phi_detector.h"

namespace ds::cluster {

class LivenessTable {
 public:
  static constexpr uint64_t kMaxUpNumber = 1u << 20;  // numbers beyond this get no evidence

  explicit LivenessTable(Duration min_hop_allowance) : min_hop_allowance_(min_hop_allowance) {}

  // Makes room for up_number (ignored beyond kMaxUpNumber).
  void ensure(uint64_t up_number);
  // The newest adopted evidence for up_number; min() when none.
  TimePoint evidence(uint64_t up_number) const {
    return up_number < evidence_.size() ? evidence_[up_number] : TimePoint::min();
  }
  // Adopts the newer stamps of a received vector.
  void merge(const LivenessVector& v, TimePoint now);
  // The vector to send: entries 1..max_up, with this node's own stamp (own_up; 0 = none) fresh.
  LivenessVector make(TimePoint now, uint64_t max_up, uint64_t own_up);

  // A heartbeat round trip was measured.
  void on_round_trip(Duration rtt);
  // The transit time added to each adopted age: max(the minimum, (srtt + 4 rttvar) / 2).
  Duration hop_allowance() const;

 private:
  Duration min_hop_allowance_;
  std::vector<TimePoint> evidence_;  // up_number -> newest adopted evidence
  std::vector<uint16_t> counter_;    // up_number -> counter of that stamp
  uint16_t own_counter_ = 0;
  double srtt_ms_ = -1, rttvar_ms_ = 0;
};

}  // namespace ds::cluster
