// cluster/phi_detector.h: the phi-accrual failure detector (Hayashibara et al. 2004, as Akka and
// Cassandra use it) for one monitored peer.
//
// It keeps a sliding window of heartbeat inter-arrival times and answers, for the silence since
// the last heartbeat, how unlikely that silence is if the peer were alive:
//
//   phi(now) = -log10(P(interval > now - last)),  interval ~ Normal(mean + acceptable_pause,
//                                                                   max(stddev, min_std_deviation))
//
// phi = 1 means a 10% chance that a live peer would be this late, phi = 8 a 1e-8 chance. The
// peer is available while phi < threshold. acceptable_heartbeat_pause is added to the mean so
// that a pause that long (a busy scheduler, a slow network) costs nothing; min_std_deviation
// keeps a very regular peer (LAN: stddev of a few ms) from being judged on jitter alone.
// With the defaults (200 ms heartbeats, 1 s pause, 100 ms floor, threshold 8) a silent peer is
// declared unavailable 0.2 + 1.0 + 5.6 * 0.1 = 1.76 s after its last heartbeat.
//
// Pure: time comes in as arguments. Thread-safety: none (owned by one Membership).
#pragma once

#include <chrono>
#include <cstddef>
#include <vector>

#include "model/status.h"

namespace ds::cluster {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = Clock::duration;

struct PhiDetectorOptions {
  double threshold = 8.0;                                        // phi at which the peer is unavailable
  size_t max_sample_size = 200;                                  // inter-arrival window (40 s at 200 ms)
  Duration min_std_deviation = std::chrono::milliseconds(100);   // floor on the window's stddev
  Duration acceptable_heartbeat_pause = std::chrono::milliseconds(1000);  // added to the mean
  Duration first_heartbeat_estimate = std::chrono::milliseconds(200);     // the heartbeat interval
};

// OK, or InvalidArgument naming the bad field.
Status validate(const PhiDetectorOptions& o);

class PhiAccrualDetector {
 public:
  // Monitoring starts at `start` as if a heartbeat had arrived then; the window is seeded with
  // first_heartbeat_estimate +- 25% (as Akka does), so a peer that never answers is declared
  // unavailable after the same silence as one that stopped.
  // REQUIRES: validate(options).ok()
  PhiAccrualDetector(const PhiDetectorOptions& options, TimePoint start);

  // A heartbeat from the peer arrived at `now`. REQUIRES: now >= the previous arrival.
  void heartbeat(TimePoint now);
  // Restart the silence at `now` without recording an interval: used when *this* process was
  // stalled (SIGSTOP, overload), which says nothing about the peer.
  void reset(TimePoint now);

  // The suspicion level at `now` (0 right after a heartbeat, +inf for a long silence).
  double phi(TimePoint now) const;
  bool is_available(TimePoint now) const { return phi(now) < options_.threshold; }
  // The silence after the last heartbeat at which phi reaches the threshold, for the current window.
  Duration time_to_unavailable() const;

  TimePoint last_heartbeat() const { return last_; }
  double mean_ms() const;            // of the window, without acceptable pause
  double std_deviation_ms() const;   // of the window, without the floor
  size_t samples() const { return count_; }

 private:
  void record(double interval_ms);
  double effective_std_ms() const;

  PhiDetectorOptions options_;
  std::vector<double> window_;  // ring buffer of inter-arrival times [max_sample_size], ms
  size_t next_ = 0;             // where the next sample goes
  size_t count_ = 0;            // samples held (<= window_.size())
  double sum_ = 0, sum_sq_ = 0; // over the held samples
  TimePoint last_;
  bool skip_next_ = false;      // after reset(): the next arrival starts a new interval only
};

// The z for which P(Normal > mean + z * sd) = 10^-threshold: phi reaches `threshold` at
// mean + acceptable_pause + z * sd. (8 -> 5.61, 10 -> 6.36.)
double phi_threshold_z(double threshold);

}  // namespace ds::cluster
