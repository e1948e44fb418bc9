// The membership wire codec: every message kind round-trips; truncated, altered and hostile
// bytes are refused with a clear error (never a crash or a huge allocation).
#include <gtest/gtest.h>

#include <random>

#include "cluster/codec.h"

namespace ds::cluster {
namespace {

MemberEntry sample_entry(const std::string& id, MemberState state) {
  MemberEntry e;
  e.node_id = id;
  e.incarnation = 1764000000123;
  e.state = state;
  e.version = 42;
  e.up_number = 3;
  auto d = std::make_shared<MemberDetails>();
  d->cluster_address = "127.0.0.1:4242";
  d->http_address = "127.0.0.1:8080";
  d->workers.push_back(WorkerSummary{"w0", "stories260K", 2, 5, 8, true});
  d->workers.push_back(WorkerSummary{"w1", "qwen2 \xE2\x9C\x93", 0, 0, 1, false});
  d->unreachable.push_back(NodeRef{"n9", 77});
  e.details = d;
  return e;
}

Sender sample_sender() { return Sender{"n1", 1764000000001, "10.0.0.1:4242"}; }

std::vector<ClusterMessage> every_kind() {
  std::vector<ClusterMessage> v;
  v.push_back(JoinRequest{"ds", sample_entry("n2", MemberState::kJoining)});
  JoinReply r;
  r.from = sample_sender();
  r.cluster_name = "ds";
  r.accepted = true;
  r.retriable = true;
  r.reason = "stale incarnation";
  r.min_incarnation = 99;
  r.members = {sample_entry("n1", MemberState::kUp), sample_entry("n3", MemberState::kDown)};
  r.liveness = {LivenessStamp{1, 2}, LivenessStamp{65535, kUnknownAge}};
  v.push_back(r);
  v.push_back(Gossip{sample_sender(), "ds", {sample_entry("n4", MemberState::kLeaving)}, {LivenessStamp{7, 8}}});
  SyncDigest d;
  d.from = sample_sender();
  d.cluster_name = "prod";
  d.hash = 0xDEADBEEFCAFEF00DULL;
  d.full = true;
  d.headers = {header_of(sample_entry("n5", MemberState::kRemoved))};
  v.push_back(d);
  v.push_back(SyncEntries{sample_sender(), "ds", {sample_entry("n6", MemberState::kUp)}, {"n7", "n8"}});
  v.push_back(Heartbeat{sample_sender(), 12345, 678});
  v.push_back(HeartbeatAck{sample_sender(), 678});
  return v;
}

TEST(ClusterCodec, EveryKindRoundTrips) {
  for (const ClusterMessage& m : every_kind()) {
    const std::string bytes = encode(m);
    auto back = decode(bytes);
    ASSERT_TRUE(back.ok()) << message_kind_name(m) << ": " << back.status().ToString();
    EXPECT_EQ(back->index(), m.index());
    EXPECT_EQ(encode(*back), bytes) << message_kind_name(m);
    EXPECT_EQ(message_entry_count(*back), message_entry_count(m));
  }
  auto g = decode(encode(every_kind()[2]));
  const MemberEntry& e = std::get<Gossip>(*g).entries.at(0);
  EXPECT_EQ(e.node_id, "n4");
  EXPECT_EQ(e.state, MemberState::kLeaving);
  EXPECT_EQ(e.info().workers.at(1).model, "qwen2 \xE2\x9C\x93");
  EXPECT_FALSE(e.info().workers.at(1).healthy);
  EXPECT_EQ(e.info().unreachable.at(0).incarnation, 77u);
}

TEST(ClusterCodec, EveryTruncationIsRefused) {
  for (const ClusterMessage& m : every_kind()) {
    const std::string bytes = encode(m);
    for (size_t n = 0; n < bytes.size(); ++n) {
      auto r = decode(std::string_view(bytes).substr(0, n));
      EXPECT_FALSE(r.ok()) << message_kind_name(m) << " cut at " << n;
    }
    auto longer = decode(bytes + "x");
    ASSERT_FALSE(longer.ok());
    EXPECT_NE(longer.status().message().find("after the end"), std::string::npos) << longer.status().message();
  }
}

TEST(ClusterCodec, NamesTheProblem) {
  std::string bytes = encode(every_kind()[5]);
  std::string v2 = bytes;
  v2[1] = 2;
  EXPECT_NE(decode(v2).status().message().find("wire version 2"), std::string::npos);
  std::string kind = bytes;
  kind[2] = 9;
  EXPECT_NE(decode(kind).status().message().find("unknown cluster message kind 9"), std::string::npos);
  EXPECT_NE(decode("GET / HTTP/1.1").status().message().find("bad magic"), std::string::npos);
  // A count that claims 4 billion entries must not allocate them.
  std::string bomb = encode(Gossip{sample_sender(), "ds", {}, {}});
  const size_t count_at = bomb.size() - 8;  // entries count, then liveness count
  bomb[count_at] = bomb[count_at + 1] = bomb[count_at + 2] = bomb[count_at + 3] = '\xFF';
  auto r = decode(bomb);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("more than the message holds"), std::string::npos) << r.status().message();
  // Bad member state.
  std::string st = encode(JoinRequest{"ds", sample_entry("n2", MemberState::kJoining)});
  const size_t state_at = 3 + 4 + 2 + 4 + 2 + 8;  // magic..kind, "ds", "n2", incarnation
  ASSERT_EQ(st[state_at], 0);
  st[state_at] = 9;
  EXPECT_NE(decode(st).status().message().find("unknown member state 9"), std::string::npos);
}

TEST(ClusterCodec, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(7);
  const auto kinds = every_kind();
  int refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes = encode(kinds[i % kinds.size()]);
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    auto r = decode(bytes);
    if (!r.ok()) {
      ++refused;
      EXPECT_FALSE(r.status().message().empty());
    } else {
      EXPECT_EQ(decode(encode(*r)).ok(), true);  // whatever decodes, re-encodes
    }
  }
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace ds::cluster
