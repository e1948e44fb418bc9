#include "cluster/liveness.h"

#include <algorithm>
#include <cmath>

namespace ds::cluster {

namespace {
// A held stamp older than this is replaced by whatever arrives (its counter may have wrapped).
constexpr std::chrono::seconds kStampExpiry{60};
}  // namespace

void LivenessTable::ensure(uint64_t up_number) {
  if (up_number >= evidence_.size() && up_number < kMaxUpNumber) {
    evidence_.resize(up_number + 1, TimePoint::min());
    counter_.resize(up_number + 1, 0);
  }
}

void LivenessTable::merge(const LivenessVector& v, TimePoint now) {
  // Runs for every gossip message over every voter: written without branches so that the
  // compiler can use conditional moves (whether a stamp is newer is a coin flip).
  const size_t n = std::min(v.size(), evidence_.size());
  const int64_t now_ns = now.time_since_epoch().count();
  const int64_t extra_ns = hop_allowance().count();
  const int64_t expired_ns = (now - kStampExpiry).time_since_epoch().count();
  const int64_t unit_ns = Duration(kLivenessUnit).count();
  static_assert(sizeof(TimePoint) == sizeof(int64_t));
  int64_t* ev = reinterpret_cast<int64_t*>(evidence_.data());
  uint16_t* ctr = counter_.data();
  for (size_t u = 1; u < n; ++u) {
    const LivenessStamp st = v[u];
    const bool known = st.age_10ms != kUnknownAge;
    const bool expired_here = ev[u] < expired_ns;
    // RFC 1982 serial-number order on 16 bits: counter - held in [1, 0x7FFF].
    const bool newer = static_cast<uint16_t>(st.counter - ctr[u] - 1) < 0x7FFF;
    const bool take = known & (expired_here | newer);
    const int64_t t = now_ns - static_cast<int64_t>(st.age_10ms) * unit_ns - extra_ns;
    const int64_t best = (expired_here | (t > ev[u])) ? t : ev[u];
    ctr[u] = take ? st.counter : ctr[u];
    ev[u] = take ? best : ev[u];
  }
}

LivenessVector LivenessTable::make(TimePoint now, uint64_t max_up, uint64_t own_up) {
  LivenessVector v(std::min<size_t>(max_up + 1, evidence_.size()));
  for (size_t u = 1; u < v.size(); ++u) {
    if (evidence_[u] == TimePoint::min()) continue;
    const auto age = (now - evidence_[u] + kLivenessUnit - Duration(1)) / kLivenessUnit;  // rounded up
    v[u] = {counter_[u], static_cast<uint16_t>(std::clamp<decltype(age)>(age, 0, kUnknownAge - 1))};
  }
  if (own_up > 0 && own_up < v.size()) v[own_up] = {++own_counter_, 0};
  return v;
}

void LivenessTable::on_round_trip(Duration rtt) {
  const double ms = std::chrono::duration<double, std::milli>(rtt).count();
  if (srtt_ms_ < 0) {
    srtt_ms_ = ms;
    rttvar_ms_ = ms / 2;
  } else {
    rttvar_ms_ = 0.75 * rttvar_ms_ + 0.25 * std::abs(srtt_ms_ - ms);
    srtt_ms_ = 0.875 * srtt_ms_ + 0.125 * ms;
  }
}

Duration LivenessTable::hop_allowance() const {
  if (srtt_ms_ < 0) return min_hop_allowance_;
  const Duration measured = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double, std::milli>((srtt_ms_ + 4 * rttvar_ms_) / 2));
  return std::max(min_hop_allowance_, measured);
}

}  // namespace ds::cluster
