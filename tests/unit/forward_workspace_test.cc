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
class SpyBackend final : public Backend {
 public:
  static constexpr size_t kFloatsPerHead = 3;
  struct Request {
    int64_t max_tokens;
    int n_heads, head_dim, max_kv;
  };

  const char* name() const override { return "spy"; }
  bool host_memory() const override { return cpu_->host_memory(); }
  bool supports(DType t) const override { return cpu_->supports(t); }
  void* alloc(size_t bytes) override {
    void* p = cpu_->alloc(bytes);
    allocs.emplace_back(p, bytes);
    return p;
  }
  void free(void* p) override { cpu_->free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { cpu_->upload(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { cpu_->download(dst, src, bytes); }
  void matmul(const WeightRef& w, const float* x, int64_t n, float* y) override { cpu_->matmul(w, x, n, y); }
  void get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out) override { cpu_->get_rows(w, ids, n, out); }
  void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) override {
    cpu_->rmsnorm(x, weight, n, dim, eps, out);
  }
  void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p) override {
    cpu_->rope(x, n, n_heads, head_dim, pos, p);
  }
  void swiglu(const float* gate, const float* up, int64_t count, float* out) override { cpu_->swiglu(gate, up, count, out); }
  void add(float* x, const float* y, int64_t count) override { cpu_->add(x, y, count); }
  void add_bias(float* x, const float* bias, int64_t n, int64_t dim) override { cpu_->add_bias(x, bias, n, dim); }
  void store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim, float* k_cache,
                float* v_cache) override {
    cpu_->store_kv(k, v, n, slots, kv_dim, k_cache, v_cache);
  }
  void attention(const AttentionArgs& a) override {
    seen.push_back(a);
    cpu_->attention(a);
  }
  size_t attention_workspace_floats(int64_t max_tokens, int n_heads, int head_dim, int max_kv) const override {
    requests.push_back({max_tokens, n_heads, head_dim, max_kv});
    return static_cast<size_t>(max_tokens) * n_heads * kFloatsPerHead;
  }

  mutable std::vector<Request> requests;
  std::vector<std::pair<void*, size_t>> allocs;
  std::vector<AttentionArgs> seen;

 private:
  std::unique_ptr<Backend> cpu_ = make_cpu_backend({1});
};

std::shared_ptr<const Model> make_model(const test::TempDir& dir, const ModelSpec& spec) {
  const std::string path = dir.file(spec.arch + "-" + dtype_name(spec.type) + ".gguf");
  Status s = write_random_model(spec, path);
  EXPECT_TRUE(s.ok()) << s.ToString();
  auto m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::shared_ptr<const Model>(*m) : nullptr;
}

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

}  // namespace
}  // namespace ds
