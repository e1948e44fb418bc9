// Forward's plumbing of the split-K attention fields (AttentionArgs::max_kv, workspace):
// a spy backend around the CPU backend asks for a workspace and records what attention()
// receives. The CPU kernels ignore the fields; the CUDA kernels are checked by
// tests/gpu/gpu_kernel_check.cc.
#include <memory>
#include <vector>

#include "kernels/comm.h"
#include "model/forward.h"
#include "model/mkmodel.h"
#include "model/tensor_parallel.h"
#include "test_util.h"

namespace ds {
namespace {

// The CPU backend plus a workspace request of kFloatsPerHead floats per (token, head).
class SpyBackend final : public test::ForwardingBackend {
 public:
  static constexpr size_t kFloatsPerHead = 3;
  struct Request {
    int64_t max_tokens;
    int n_heads, head_dim, max_kv;
  };

  const char* name() const override { return "spy"; }
  void* alloc(size_t bytes) override {
    void* p = ForwardingBackend::alloc(bytes);
    allocs.emplace_back(p, bytes);
    return p;
  }
  void attention(const AttentionArgs& a) override {
    seen.push_back(a);
    ForwardingBackend::attention(a);
  }
  size_t attention_workspace_floats(int64_t max_tokens, int n_heads, int head_dim, int max_kv) const override {
    requests.push_back({max_tokens, n_heads, head_dim, max_kv});
    return static_cast<size_t>(max_tokens) * n_heads * kFloatsPerHead;
  }

  mutable std::vector<Request> requests;
  std::vector<std::pair<void*, size_t>> allocs;
  std::vector<AttentionArgs> seen;
};

using test::make_model;

// Every attention() call of a run got max_kv and the workspace Init allocated.
void expect_attention_fields(const SpyBackend& be, int max_kv, size_t floats) {
  ASSERT_FALSE(be.seen.empty());
  bool allocated = false;
  for (const auto& [p, bytes] : be.allocs) allocated = allocated || (p == be.seen[0].workspace && bytes == floats * sizeof(float));
  EXPECT_TRUE(allocated) << "the workspace is not one allocation of " << floats << " floats";
  for (const AttentionArgs& a : be.seen) {
    EXPECT_EQ(a.max_kv, max_kv);
    EXPECT_NE(a.workspace, nullptr);
    EXPECT_EQ(a.workspace_floats, floats);
  }
}

TEST(ForwardAttentionWorkspace, MaxKvDefaultsToTheCachePositionsAndWorkspaceComesFromInit) {
  test::TempDir dir;
  const ModelSpec spec = test::tp_spec("llama", DType::kF32, 5);
  const auto model = make_model(dir, spec);
  ASSERT_TRUE(model);
  for (int max_seq_positions : {0, 24}) {
    SpyBackend be;
    auto kv = KvCache::Create(be, spec.layers, model->config().kv_dim(), 4, 10);  // 40 positions
    ASSERT_TRUE(kv.ok());
    auto f = Forward::Create(model, be, **kv, 6, {}, max_seq_positions);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    const int max_kv = max_seq_positions > 0 ? max_seq_positions : 40;
    ASSERT_EQ(be.requests.size(), 1u);
    EXPECT_EQ(be.requests[0].max_tokens, 6);
    EXPECT_EQ(be.requests[0].n_heads, spec.heads);
    EXPECT_EQ(be.requests[0].head_dim, spec.dim / spec.heads);
    EXPECT_EQ(be.requests[0].max_kv, max_kv);
    std::vector<int32_t> blocks;
    ASSERT_TRUE((*kv)->blocks().allocate(2, &blocks));
    std::vector<ForwardToken> toks;
    for (int32_t p = 0; p < 5; ++p) toks.push_back({1 + p, p, &blocks, p == 4});
    std::vector<float> logits;
    ASSERT_TRUE((*f)->run(toks, &logits).ok());
    expect_attention_fields(be, max_kv, 6 * spec.heads * SpyBackend::kFloatsPerHead);
  }
}

TEST(ForwardAttentionWorkspace, ShardAsksForItsOwnHeads) {
  test::TempDir dir;
  const ModelSpec spec = test::tp_spec("llama", DType::kF32, 6);
  const auto model = make_model(dir, spec);
  ASSERT_TRUE(model);
  auto shard = shard_model(model, 1, 2);
  ASSERT_TRUE(shard.ok());
  auto comms = make_cpu_comm_group(2);
  SpyBackend be;
  auto kv = KvCache::Create(be, spec.layers, (*shard)->config.kv_dim(), 4, 8);
  ASSERT_TRUE(kv.ok());
  auto f = Forward::CreateShard(*shard, be, *comms[1], **kv, 3, {}, 16);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(be.requests.size(), 1u);
  EXPECT_EQ(be.requests[0].max_tokens, 3);
  EXPECT_EQ(be.requests[0].n_heads, spec.heads / 2);
  EXPECT_EQ(be.requests[0].max_kv, 16);
}

// AttentionArgs::tiles: a prompt chunk's tokens in runs of at most kAttentionTileTokens,
// a new tile at every change of sequence; a decode step (one token per sequence) has none.
TEST(ForwardAttentionTiles, PromptRunsBecomeTilesDecodeStepsHaveNone) {
  test::TempDir dir;
  const ModelSpec spec = test::tp_spec("llama", DType::kF32, 5);
  const auto model = make_model(dir, spec);
  ASSERT_TRUE(model);
  SpyBackend be;
  auto kv = KvCache::Create(be, spec.layers, model->config().kv_dim(), 4, 10);
  ASSERT_TRUE(kv.ok());
  auto f = Forward::Create(model, be, **kv, 16);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::vector<int32_t> a_blocks, b_blocks;
  ASSERT_TRUE((*kv)->blocks().allocate(3, &a_blocks));
  ASSERT_TRUE((*kv)->blocks().allocate(1, &b_blocks));
  // B's first token, then A's prompt of 11 tokens: tiles [0, 1) [1, 9) [9, 12).
  std::vector<ForwardToken> toks = {{7, 0, &b_blocks, true}};
  for (int32_t p = 0; p < 11; ++p) toks.push_back({1 + p, p, &a_blocks, p == 10});
  std::vector<float> logits;
  ASSERT_TRUE((*f)->run(toks, &logits).ok());
  ASSERT_EQ(be.seen.size(), static_cast<size_t>(spec.layers));
  const AttentionArgs& a = be.seen.back();
  ASSERT_EQ(a.n_tiles, 3);
  ASSERT_NE(a.tiles, nullptr);
  EXPECT_EQ(std::vector<int32_t>(a.tiles, a.tiles + 4), (std::vector<int32_t>{0, 1, 9, 12}));
  // A decode step: one token per sequence, no tiles.
  be.seen.clear();
  toks = {{3, 11, &a_blocks, true}, {4, 1, &b_blocks, true}};
  ASSERT_TRUE((*f)->run(toks, &logits).ok());
  ASSERT_FALSE(be.seen.empty());
  EXPECT_EQ(be.seen.back().n_tiles, 0);
  EXPECT_EQ(be.seen.back().tiles, nullptr);
}

}  // namespace
}  // namespace ds
