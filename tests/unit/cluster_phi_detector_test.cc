// Phi-accrual failure detector: made-up arrival times, no sleeping.
#include "cluster/phi_detector.h"

#include <gtest/gtest.h>

#include <random>

namespace ds::cluster {
namespace {

using std::chrono::milliseconds;

const TimePoint kStart = TimePoint{} + std::chrono::hours(1);

// A detector fed `n` heartbeats every `interval` (+ uniform jitter); returns the last arrival.
TimePoint feed(PhiAccrualDetector& d, int n, milliseconds interval, milliseconds jitter = milliseconds(0),
               uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> j(0, static_cast<int>(jitter.count()));
  TimePoint t = kStart;
  for (int i = 0; i < n; ++i) {
    t += interval + milliseconds(j(rng));
    d.heartbeat(t);
  }
  return t;
}

TEST(ClusterPhiDetector, PhiGrowsWithSilence) {
  PhiAccrualDetector d(PhiDetectorOptions{}, kStart);
  const TimePoint last = feed(d, 50, milliseconds(200));
  double previous = -1;
  for (int ms = 0; ms <= 3000; ms += 100) {
    const double phi = d.phi(last + milliseconds(ms));
    EXPECT_GE(phi, previous) << "at +" << ms << " ms";
    previous = phi;
  }
  EXPECT_LT(d.phi(last), 0.01);
  EXPECT_GT(d.phi(last + milliseconds(3000)), 50);
}

TEST(ClusterPhiDetector, RegularHeartbeatsStayAvailable) {
  PhiAccrualDetector d(PhiDetectorOptions{}, kStart);
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> jitter(0, 60);  // LAN scheduling noise
  TimePoint t = kStart;
  for (int i = 0; i < 5000; ++i) {
    const TimePoint next = t + milliseconds(200 + jitter(rng));
    ASSERT_TRUE(d.is_available(next - milliseconds(1))) << "heartbeat " << i;
    d.heartbeat(next);
    t = next;
  }
}

TEST(ClusterPhiDetector, PauseWithinAcceptablePauseIsTolerated) {
  PhiDetectorOptions o;
  o.acceptable_heartbeat_pause = milliseconds(1000);
  PhiAccrualDetector d(o, kStart);
  const TimePoint last = feed(d, 100, milliseconds(200), milliseconds(20));
  // A 1.2 s gap (one interval plus the whole acceptable pause) is fine ...
  for (int ms = 0; ms <= 1200; ms += 10) EXPECT_TRUE(d.is_available(last + milliseconds(ms))) << ms;
  d.heartbeat(last + milliseconds(1200));
  // ... and a single long gap does not make the detector trigger-happy afterwards.
  const TimePoint after = last + milliseconds(1200);
  for (int ms = 0; ms <= 1200; ms += 10) EXPECT_TRUE(d.is_available(after + milliseconds(ms))) << ms;
}

TEST(ClusterPhiDetector, UnavailableWithinTargetAfterHeartbeatsStop) {
  PhiAccrualDetector d(PhiDetectorOptions{}, kStart);
  const TimePoint last = feed(d, 100, milliseconds(200), milliseconds(10));
  // Defaults: 0.2 + 1.0 + 5.6 * 0.1 = 1.76 s of silence. The cluster target is 3 s (p99) for
  // every node, which leaves over a second for dissemination.
  EXPECT_TRUE(d.is_available(last + milliseconds(1600)));
  EXPECT_FALSE(d.is_available(last + milliseconds(2000)));
  EXPECT_NEAR(std::chrono::duration<double>(d.time_to_unavailable()).count(), 1.77, 0.05);
}

TEST(ClusterPhiDetector, FirstHeartbeatEstimateSeedsTheWindow) {
  // A peer that never answers is judged on first_heartbeat_estimate: same silence as a stop.
  PhiAccrualDetector d(PhiDetectorOptions{}, kStart);
  EXPECT_EQ(d.samples(), 2u);
  EXPECT_NEAR(d.mean_ms(), 200, 1e-9);
  EXPECT_TRUE(d.is_available(kStart + milliseconds(1500)));
  EXPECT_FALSE(d.is_available(kStart + milliseconds(2000)));
}

TEST(ClusterPhiDetector, ResetAfterOwnStallRecordsNoInterval) {
  PhiAccrualDetector d(PhiDetectorOptions{}, kStart);
  const TimePoint last = feed(d, 100, milliseconds(200));
  const double mean = d.mean_ms();
  // This process was stopped for 5 s: the silence says nothing about the peer.
  d.reset(last + milliseconds(5000));
  EXPECT_TRUE(d.is_available(last + milliseconds(5100)));
  d.heartbeat(last + milliseconds(5150));
  EXPECT_NEAR(d.mean_ms(), mean, 1e-9);  // the 5 s gap was not recorded
}

TEST(ClusterPhiDetector, WindowSlides) {
  PhiDetectorOptions o;
  o.max_sample_size = 10;
  PhiAccrualDetector d(o, kStart);
  TimePoint t = feed(d, 10, milliseconds(1000));
  EXPECT_NEAR(d.mean_ms(), 1000, 1e-6);
  for (int i = 0; i < 10; ++i) d.heartbeat(t += milliseconds(100));
  EXPECT_NEAR(d.mean_ms(), 100, 1e-6);
  EXPECT_NEAR(d.std_deviation_ms(), 0, 1e-3);
}

TEST(ClusterPhiDetector, ThresholdZMatchesTheNormalTail) {
  EXPECT_NEAR(phi_threshold_z(8), 5.612, 0.005);
  EXPECT_NEAR(phi_threshold_z(1), 1.2816, 0.001);
}

TEST(ClusterPhiDetector, ValidateNamesTheBadField) {
  PhiDetectorOptions o;
  EXPECT_TRUE(validate(o).ok());
  o.threshold = 0;
  EXPECT_NE(validate(o).message().find("threshold"), std::string::npos);
  o = {};
  o.min_std_deviation = milliseconds(0);
  EXPECT_NE(validate(o).message().find("min_std_deviation"), std::string::npos);
  o = {};
  o.max_sample_size = 1;
  EXPECT_FALSE(validate(o).ok());
}

}  // namespace
}  // namespace ds::cluster
