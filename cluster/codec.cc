#include "cluster/codec.h"

#include <cstring>

namespace ds::cluster {
namespace {

constexpr char kMagic = 'M';
static_assert(std::variant_size_v<ClusterMessage> == 7, "a new message kind needs a case in encode() and decode()");

class Writer {
 public:
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(uint16_t v) { fixed(v); }
  void u32(uint32_t v) { fixed(v); }
  void u64(uint64_t v) { fixed(v); }
  void text(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void sender(const Sender& s) {
    text(s.node_id);
    u64(s.incarnation);
    text(s.address);
  }
  void worker(const WorkerSummary& w) {
    text(w.worker_id);
    text(w.model);
    u32(w.queued);
    u32(w.in_flight);
    u32(w.capacity);
    u8(w.healthy ? 1 : 0);
  }
  void entry(const MemberEntry& e) {
    text(e.node_id);
    u64(e.incarnation);
    u8(static_cast<uint8_t>(e.state));
    u64(e.version);
    u64(e.up_number);
    const MemberDetails& d = e.info();
    text(d.cluster_address);
    text(d.http_address);
    u32(static_cast<uint32_t>(d.workers.size()));
    for (const WorkerSummary& w : d.workers) worker(w);
    u32(static_cast<uint32_t>(d.unreachable.size()));
    for (const NodeRef& r : d.unreachable) {
      text(r.node_id);
      u64(r.incarnation);
    }
  }
  void entries(const std::vector<MemberEntry>& v) {
    u32(static_cast<uint32_t>(v.size()));
    for (const MemberEntry& e : v) entry(e);
  }
  void liveness(const LivenessVector& v) {
    u32(static_cast<uint32_t>(v.size()));
    for (const LivenessStamp& s : v) {
      u16(s.counter);
      u16(s.age_10ms);
    }
  }
  std::string take() { return std::move(out_); }

 private:
  template <class T>
  void fixed(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
  std::string out_;
};

// Reads fields; the first problem sticks (error_) and every later read returns zero values.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  size_t left() const { return in_.size() - pos_; }
  void fail(std::string why) {
    if (error_.empty()) error_ = std::move(why) + " (at byte " + std::to_string(pos_) + ")";
  }

  uint8_t u8() { return fixed<uint8_t>(); }
  uint16_t u16() { return fixed<uint16_t>(); }
  uint32_t u32() { return fixed<uint32_t>(); }
  uint64_t u64() { return fixed<uint64_t>(); }
  bool flag() {
    const uint8_t v = u8();
    if (v > 1) fail("a boolean is " + std::to_string(v));
    return v == 1;
  }
  std::string text() {
    const uint32_t n = u32();
    if (!ok()) return {};
    if (n > kMaxText) {
      fail("a string of " + std::to_string(n) + " bytes is over the limit of " + std::to_string(kMaxText));
      return {};
    }
    if (n > left()) {
      fail("a string of " + std::to_string(n) + " bytes runs past the end");
      return {};
    }
    std::string s(in_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  // A count of elements that take at least min_bytes each: bounded by the bytes left.
  uint32_t count(size_t min_bytes) {
    const uint32_t n = u32();
    if (ok() && static_cast<uint64_t>(n) * min_bytes > left()) {
      fail("a count of " + std::to_string(n) + " elements is more than the message holds");
      return 0;
    }
    return ok() ? n : 0;
  }
  MemberState state() {
    const uint8_t v = u8();
    if (v > static_cast<uint8_t>(MemberState::kRemoved)) fail("unknown member state " + std::to_string(v));
    return ok() ? static_cast<MemberState>(v) : MemberState::kJoining;
  }
  Sender sender() {
    Sender s;
    s.node_id = text();
    s.incarnation = u64();
    s.address = text();
    return s;
  }
  WorkerSummary worker() {
    WorkerSummary w;
    w.worker_id = text();
    w.model = text();
    w.queued = u32();
    w.in_flight = u32();
    w.capacity = u32();
    w.healthy = flag();
    if (ok() && w.capacity == 0) fail("worker '" + w.worker_id + "' has capacity 0");
    return w;
  }
  MemberEntry entry() {
    MemberEntry e;
    e.node_id = text();
    e.incarnation = u64();
    e.state = state();
    e.version = u64();
    e.up_number = u64();
    auto d = std::make_shared<MemberDetails>();
    d->cluster_address = text();
    d->http_address = text();
    const uint32_t nw = count(4 + 4 + 13);
    for (uint32_t i = 0; i < nw && ok(); ++i) d->workers.push_back(worker());
    const uint32_t nu = count(4 + 8);
    for (uint32_t i = 0; i < nu && ok(); ++i) {
      NodeRef r;
      r.node_id = text();
      r.incarnation = u64();
      d->unreachable.push_back(std::move(r));
    }
    e.details = std::move(d);
    if (ok() && e.node_id.empty()) fail("a member entry has an empty node id");
    return e;
  }
  std::vector<MemberEntry> entries() {
    std::vector<MemberEntry> v;
    const uint32_t n = count(4 + 8 + 1 + 8 + 8 + 4 + 4 + 4 + 4);
    for (uint32_t i = 0; i < n && ok(); ++i) v.push_back(entry());
    return v;
  }
  LivenessVector liveness() {
    LivenessVector v;
    const uint32_t n = count(4);
    v.reserve(n);
    for (uint32_t i = 0; i < n && ok(); ++i) {
      LivenessStamp s;
      s.counter = u16();
      s.age_10ms = u16();
      v.push_back(s);
    }
    return v;
  }

 private:
  template <class T>
  T fixed() {
    if (!ok()) return 0;
    if (left() < sizeof(T)) {
      fail("the message ends in the middle of a field");
      return 0;
    }
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(static_cast<uint8_t>(in_[pos_ + i])) << (8 * i));
    pos_ += sizeof(T);
    return v;
  }

  std::string_view in_;
  size_t pos_ = 0;
  std::string error_;
};

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

}  // namespace

std::string encode(const ClusterMessage& m) {
  Writer w;
  w.u8(static_cast<uint8_t>(kMagic));
  w.u8(kWireVersion);
  w.u8(static_cast<uint8_t>(m.index()));
  std::visit(Overloaded{
                 [&](const JoinRequest& x) {
                   w.text(x.cluster_name);
                   w.entry(x.joiner);
                 },
                 [&](const JoinReply& x) {
                   w.sender(x.from);
                   w.text(x.cluster_name);
                   w.u8(x.accepted);
                   w.u8(x.retriable);
                   w.text(x.reason);
                   w.u64(x.min_incarnation);
                   w.entries(x.members);
                   w.liveness(x.liveness);
                 },
                 [&](const Gossip& x) {
                   w.sender(x.from);
                   w.text(x.cluster_name);
                   w.entries(x.entries);
                   w.liveness(x.liveness);
                 },
                 [&](const SyncDigest& x) {
                   w.sender(x.from);
                   w.text(x.cluster_name);
                   w.u64(x.hash);
                   w.u8(x.full);
                   w.u32(static_cast<uint32_t>(x.headers.size()));
                   for (const EntryHeader& h : x.headers) {
                     w.text(h.node_id);
                     w.u64(h.incarnation);
                     w.u8(static_cast<uint8_t>(h.state));
                     w.u64(h.version);
                     w.u64(h.up_number);
                   }
                 },
                 [&](const SyncEntries& x) {
                   w.sender(x.from);
                   w.text(x.cluster_name);
                   w.entries(x.entries);
                   w.u32(static_cast<uint32_t>(x.wanted.size()));
                   for (const NodeId& id : x.wanted) w.text(id);
                 },
                 [&](const Heartbeat& x) {
                   w.sender(x.from);
                   w.u64(x.to_incarnation);
                   w.u64(x.seq);
                 },
                 [&](const HeartbeatAck& x) {
                   w.sender(x.from);
                   w.u64(x.seq);
                 },
             },
             m);
  return w.take();
}

Result<ClusterMessage> decode(std::string_view bytes) {
  Reader r(bytes);
  if (r.u8() != static_cast<uint8_t>(kMagic) || !r.ok()) return Status::Corruption("not a ds cluster message (bad magic)");
  const uint8_t version = r.u8();
  if (version != kWireVersion) {
    return Status::Corruption("cluster message wire version " + std::to_string(version) + ", this node speaks " +
                              std::to_string(kWireVersion) + " (mixed ds versions in one cluster?)");
  }
  const uint8_t kind = r.u8();
  ClusterMessage m;
  switch (kind) {
    case 0: {
      JoinRequest x;
      x.cluster_name = r.text();
      x.joiner = r.entry();
      m = std::move(x);
      break;
    }
    case 1: {
      JoinReply x;
      x.from = r.sender();
      x.cluster_name = r.text();
      x.accepted = r.flag();
      x.retriable = r.flag();
      x.reason = r.text();
      x.min_incarnation = r.u64();
      x.members = r.entries();
      x.liveness = r.liveness();
      m = std::move(x);
      break;
    }
    case 2: {
      Gossip x;
      x.from = r.sender();
      x.cluster_name = r.text();
      x.entries = r.entries();
      x.liveness = r.liveness();
      m = std::move(x);
      break;
    }
    case 3: {
      SyncDigest x;
      x.from = r.sender();
      x.cluster_name = r.text();
      x.hash = r.u64();
      x.full = r.flag();
      const uint32_t n = r.count(4 + 8 + 1 + 8 + 8);
      for (uint32_t i = 0; i < n && r.ok(); ++i) {
        EntryHeader h;
        h.node_id = r.text();
        h.incarnation = r.u64();
        h.state = r.state();
        h.version = r.u64();
        h.up_number = r.u64();
        x.headers.push_back(std::move(h));
      }
      m = std::move(x);
      break;
    }
    case 4: {
      SyncEntries x;
      x.from = r.sender();
      x.cluster_name = r.text();
      x.entries = r.entries();
      const uint32_t n = r.count(4);
      for (uint32_t i = 0; i < n && r.ok(); ++i) x.wanted.push_back(r.text());
      m = std::move(x);
      break;
    }
    case 5: {
      Heartbeat x;
      x.from = r.sender();
      x.to_incarnation = r.u64();
      x.seq = r.u64();
      m = std::move(x);
      break;
    }
    case 6: {
      HeartbeatAck x;
      x.from = r.sender();
      x.seq = r.u64();
      m = std::move(x);
      break;
    }
    default:
      return Status::Corruption("unknown cluster message kind " + std::to_string(kind));
  }
  if (!r.ok()) return Status::Corruption("malformed " + std::string(message_kind_name(m)) + " message: " + r.error());
  if (r.left() != 0) {
    return Status::Corruption("malformed " + std::string(message_kind_name(m)) + " message: " + std::to_string(r.left()) +
                              " bytes after the end");
  }
  return m;
}

}  // namespace ds::cluster
