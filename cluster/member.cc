#include "cluster/member.h"

#include <algorithm>
#include <tuple>

namespace ds::cluster {

const char* member_state_name(MemberState s) {
  switch (s) {
    case MemberState::kJoining: return "joining";
    case MemberState::kUp: return "up";
    case MemberState::kLeaving: return "leaving";
    case MemberState::kDown: return "down";
    case MemberState::kRemoved: return "removed";
  }
  return "unknown";
}

double WorkerSummary::load() const {
  return static_cast<double>(queued + in_flight) / static_cast<double>(std::max<uint32_t>(capacity, 1));
}

const std::shared_ptr<const MemberDetails>& empty_details() {
  static const std::shared_ptr<const MemberDetails> kEmpty = std::make_shared<const MemberDetails>();
  return kEmpty;
}

namespace {

// Larger tuple = newer. up_number is negated so that, all else equal, the smaller one wins: two
// leaders that promoted the same member concurrently settle on one number everywhere.
auto order_key(uint64_t incarnation, MemberState state, uint64_t version, uint64_t up_number) {
  return std::make_tuple(incarnation, static_cast<int>(state), version, ~up_number);
}

uint64_t mix64(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

bool supersedes(const MemberEntry& a, const MemberEntry& b) {
  return order_key(a.incarnation, a.state, a.version, a.up_number) >
         order_key(b.incarnation, b.state, b.version, b.up_number);
}

EntryHeader header_of(const MemberEntry& e) { return {e.node_id, e.incarnation, e.state, e.version, e.up_number}; }

bool differs(const MemberEntry& e, const EntryHeader& h) {
  return e.incarnation != h.incarnation || e.state != h.state || e.version != h.version || e.up_number != h.up_number;
}

bool header_supersedes(const EntryHeader& h, const MemberEntry& e) {
  return order_key(h.incarnation, h.state, h.version, h.up_number) >
         order_key(e.incarnation, e.state, e.version, e.up_number);
}

uint64_t node_hash(std::string_view node_id) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : node_id) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return mix64(h);
}

uint64_t entry_hash(const MemberEntry& e) {
  return mix64(node_hash(e.node_id) ^ mix64(e.incarnation) ^ mix64(0x51ed27ULL + static_cast<uint64_t>(e.state)) ^
               mix64(~e.up_number) ^ mix64(e.version * 0x2545f4914f6cdd1dULL));
}

}  // namespace ds::cluster
