#include "cluster/phi_detector.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <string>

namespace ds::cluster {

namespace {

double to_ms(Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// P(X > mean + y * sd) for a normal X.
double upper_tail(double y) { return 0.5 * std::erfc(y / std::sqrt(2.0)); }

}  // namespace

Status validate(const PhiDetectorOptions& o) {
  if (!(o.threshold > 0) || o.threshold > 100) {
    return Status::InvalidArgument("failure detector threshold must be in (0, 100], got " + std::to_string(o.threshold));
  }
  if (o.max_sample_size < 2) return Status::InvalidArgument("failure detector max_sample_size must be >= 2");
  if (o.min_std_deviation <= Duration::zero()) {
    return Status::InvalidArgument("failure detector min_std_deviation must be > 0");
  }
  if (o.acceptable_heartbeat_pause < Duration::zero()) {
    return Status::InvalidArgument("failure detector acceptable_heartbeat_pause must be >= 0");
  }
  if (o.first_heartbeat_estimate <= Duration::zero()) {
    return Status::InvalidArgument("failure detector first_heartbeat_estimate must be > 0");
  }
  return Status::Ok();
}

double phi_threshold_z(double threshold) {
  const double target = std::pow(10.0, -threshold);
  double lo = 0, hi = 40;
  for (int i = 0; i < 100; ++i) {
    const double mid = 0.5 * (lo + hi);
    (upper_tail(mid) > target ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

PhiAccrualDetector::PhiAccrualDetector(const PhiDetectorOptions& options, TimePoint start)
    : options_(options), window_(options.max_sample_size, 0.0), last_(start) {
  assert(validate(options).ok());
  const double mean = to_ms(options.first_heartbeat_estimate);
  record(mean - mean / 4);
  record(mean + mean / 4);
}

void PhiAccrualDetector::record(double interval_ms) {
  if (count_ == window_.size()) {
    const double old = window_[next_];
    sum_ -= old;
    sum_sq_ -= old * old;
  } else {
    ++count_;
  }
  window_[next_] = interval_ms;
  sum_ += interval_ms;
  sum_sq_ += interval_ms * interval_ms;
  next_ = (next_ + 1) % window_.size();
}

void PhiAccrualDetector::heartbeat(TimePoint now) {
  assert(now >= last_);
  if (!skip_next_) record(to_ms(now - last_));
  skip_next_ = false;
  last_ = now;
}

void PhiAccrualDetector::reset(TimePoint now) {
  last_ = std::max(last_, now);
  skip_next_ = true;
}

double PhiAccrualDetector::mean_ms() const { return sum_ / static_cast<double>(count_); }

double PhiAccrualDetector::std_deviation_ms() const {
  const double m = mean_ms();
  return std::sqrt(std::max(0.0, sum_sq_ / static_cast<double>(count_) - m * m));
}

double PhiAccrualDetector::effective_std_ms() const {
  return std::max(std_deviation_ms(), to_ms(options_.min_std_deviation));
}

double PhiAccrualDetector::phi(TimePoint now) const {
  const double elapsed = now > last_ ? to_ms(now - last_) : 0.0;
  const double mean = mean_ms() + to_ms(options_.acceptable_heartbeat_pause);
  const double p = upper_tail((elapsed - mean) / effective_std_ms());
  if (p <= 0) return std::numeric_limits<double>::infinity();
  return -std::log10(std::min(p, 1.0));
}

Duration PhiAccrualDetector::time_to_unavailable() const {
  const double ms =
      mean_ms() + to_ms(options_.acceptable_heartbeat_pause) + phi_threshold_z(options_.threshold) * effective_std_ms();
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double, std::milli>(ms));
}

}  // namespace ds::cluster
