// Forward's probe of a backend's fused decode op (Backend::fused_decode_probe; the CUDA
// backend's persistent kernel under --fused-decode auto): at Init it times one-token steps
// both ways and keeps the fused op only where its logits are the per-op path's bits and it is
// faster. Here the fused op is the CPU backend's own ops issued in Forward's order (so its
// bits are the per-op path's), made slower, faster (by slowing the per-op path's matmuls) or
// wrong on purpose; the real kernel is checked by tests/gpu/gpu_engine_check.cc.
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "model/engine.h"
#include "model/forward.h"
#include "model/mkmodel.h"
#include "test_util.h"

namespace ds {
namespace {

using namespace std::chrono_literals;

class FusedBackend final : public test::ForwardingBackend {
 public:
  bool probe = true;                  // fused_decode_probe()
  std::chrono::microseconds per_op_delay{0};  // added to each matmul of the per-op path
  std::chrono::microseconds fused_delay{0};   // added to each fused step
  bool wrong_logit = false;           // the fused op adds 1 to logit 0
  int fused_calls = 0;
  std::string refuse;                 // fused_decode_prepare refuses the model, for this reason

  const char* name() const override { return "fused-spy"; }
  bool fused_decode_probe() const override { return probe; }
  std::string fused_decode_refusal() const override { return refuse; }
  int fused_decode_prepare(const FusedDecodeModel& m) override {
    if (!refuse.empty()) return -1;
    m_ = m;
    xn_.resize(m.layers[0].wq.cols);
    o_.resize(m.layers[0].wq.cols);
    up_.resize(m.layers[0].w_gate.rows);
    return 0;
  }
  void matmul(const WeightRef& w, const float* x, int64_t n, float* y) override {
    if (!in_fused_ && per_op_delay.count() > 0) std::this_thread::sleep_for(per_op_delay);
    ForwardingBackend::matmul(w, x, n, y);
  }
  // Forward::enqueue_layers for one token, on this backend's scratch.
  void fused_decode(int /*id*/) override {
    ++fused_calls;
    in_fused_ = true;
    const int64_t D = static_cast<int64_t>(xn_.size());
    rmsnorm(m_.x, m_.layers[0].attn_norm, 1, D, m_.eps, xn_.data());
    for (size_t l = 0; l < m_.layers.size(); ++l) {
      const FusedDecodeLayer& L = m_.layers[l];
      RopeStore r = m_.rope;
      r.cache = L.cache;
      matmul_qkv_rope_store_kv(L.wq, L.wk, L.wv, L.bq, L.bk, L.bv, xn_.data(), 1, const_cast<float*>(m_.att.q), m_.k, m_.v, r);
      AttentionArgs a = m_.att;
      a.k_cache = L.cache.k;
      a.v_cache = L.cache.v;
      a.kv_type = L.cache.type;
      attention(a);
      matmul_add_rmsnorm(L.wo, a.out, 1, m_.x, o_.data(), L.ffn_norm, m_.eps, xn_.data());
      matmul_swiglu(L.w_gate, L.w_up, xn_.data(), 1, m_.ffn, up_.data());
      const float* next = l + 1 < m_.layers.size() ? m_.layers[l + 1].attn_norm : m_.output_norm;
      matmul_add_rmsnorm(L.w_down, m_.ffn, 1, m_.x, o_.data(), next, m_.eps, xn_.data());
    }
    matmul(m_.output, xn_.data(), 1, m_.logits);
    in_fused_ = false;
    if (wrong_logit) m_.logits[0] += 1.0f;
    if (fused_delay.count() > 0) std::this_thread::sleep_for(fused_delay);
  }

 private:
  FusedDecodeModel m_;
  std::vector<float> xn_, o_, up_;
  bool in_fused_ = false;
};

struct Made {
  std::unique_ptr<KvCache> kv;
  std::unique_ptr<Forward> f;
};

Made make(const std::shared_ptr<const Model>& model, FusedBackend& be) {
  Made m;
  auto kv = KvCache::Create(be, model->config().n_layer, model->config().kv_dim(), 4, 8);
  EXPECT_TRUE(kv.ok());
  if (!kv.ok()) return m;
  m.kv = std::move(kv).value();
  auto f = Forward::Create(model, be, *m.kv, 8);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (f.ok()) m.f = std::move(f).value();
  return m;
}

class FusedProbe : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = test::make_model(dir_, test::tp_spec("llama", DType::kF32, 5));
    ASSERT_TRUE(model_);
  }
  test::TempDir dir_;
  std::shared_ptr<const Model> model_;
};

TEST_F(FusedProbe, KeepsAFasterBitIdenticalFusedOpAndUsesItForOneTokenSteps) {
  FusedBackend be;
  be.per_op_delay = 300us;  // ~15 matmuls a step: the per-op path ~4.5 ms slower
  Made m = make(model_, be);
  ASSERT_TRUE(m.f);
  const Forward::FusedDecodeProbe& p = m.f->fused_decode_probe();
  EXPECT_TRUE(p.ran);
  EXPECT_TRUE(p.same);
  EXPECT_TRUE(p.why.empty()) << p.why;
  EXPECT_LT(p.fused_us, p.per_op_us);
  EXPECT_TRUE(m.f->fused_decode());
  EXPECT_EQ(be.fused_calls, Forward::kProbeSteps);
  // The probe gave its scratch blocks back, and a one-token step now takes the fused op with
  // the per-op path's logits (a two-token step keeps the ops).
  EXPECT_EQ(m.kv->blocks().n_free(), m.kv->blocks().n_blocks());
  std::vector<int32_t> blocks;
  ASSERT_TRUE(m.kv->blocks().allocate(1, &blocks));
  std::vector<float> two, one;
  ASSERT_TRUE(m.f->run({{5, 0, &blocks, false}, {9, 1, &blocks, true}}, &two).ok());
  EXPECT_EQ(be.fused_calls, Forward::kProbeSteps);
  ASSERT_TRUE(m.f->run({{9, 1, &blocks, true}}, &one).ok());
  EXPECT_EQ(be.fused_calls, Forward::kProbeSteps + 1);
  EXPECT_EQ(one, two);
}

TEST_F(FusedProbe, DropsASlowerFusedOp) {
  FusedBackend be;
  be.fused_delay = 5ms;
  Made m = make(model_, be);
  ASSERT_TRUE(m.f);
  const Forward::FusedDecodeProbe& p = m.f->fused_decode_probe();
  EXPECT_TRUE(p.ran);
  EXPECT_TRUE(p.same);
  EXPECT_GT(p.fused_us, p.per_op_us);
  EXPECT_NE(p.why.find("not faster"), std::string::npos) << p.why;
  EXPECT_FALSE(m.f->fused_decode());
  EXPECT_EQ(m.kv->blocks().n_free(), m.kv->blocks().n_blocks());
}

TEST_F(FusedProbe, DropsAFasterFusedOpWhoseLogitsDiffer) {
  FusedBackend be;
  be.per_op_delay = 300us;
  be.wrong_logit = true;
  Made m = make(model_, be);
  ASSERT_TRUE(m.f);
  const Forward::FusedDecodeProbe& p = m.f->fused_decode_probe();
  EXPECT_TRUE(p.ran);
  EXPECT_FALSE(p.same);
  EXPECT_NE(p.why.find("differ"), std::string::npos) << p.why;
  EXPECT_FALSE(m.f->fused_decode());
}

// A context shorter than the probe's steps (max_kv 4): positions go round within it.
TEST_F(FusedProbe, ShortContextsKeepTheProbeWithinThem) {
  FusedBackend be;
  be.per_op_delay = 300us;
  auto kv = KvCache::Create(be, model_->config().n_layer, model_->config().kv_dim(), 4, 8);
  ASSERT_TRUE(kv.ok());
  auto f = Forward::Create(model_, be, **kv, 8, {}, /*max_seq_positions=*/4);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE((*f)->fused_decode_probe().ran);
  EXPECT_TRUE((*f)->fused_decode_probe().same);
  EXPECT_TRUE((*f)->fused_decode());
  EXPECT_EQ((*kv)->blocks().n_free(), (*kv)->blocks().n_blocks());
}

TEST_F(FusedProbe, WithoutTheProbeThePreparedOpIsKeptUntimed) {
  FusedBackend be;
  be.probe = false;
  be.fused_delay = 5ms;
  Made m = make(model_, be);
  ASSERT_TRUE(m.f);
  EXPECT_FALSE(m.f->fused_decode_probe().ran);
  EXPECT_TRUE(m.f->fused_decode());
  EXPECT_EQ(be.fused_calls, 0);
}

// The engine's note (the worker logs it): the probe's figures and verdict.
TEST_F(FusedProbe, EngineNoteNamesTheChoice) {
  auto be = std::make_unique<FusedBackend>();
  be->fused_delay = 5ms;
  EngineOptions o;
  o.max_batch = 1;
  o.n_ctx = 16;
  o.kv_cache_tokens = 32;
  auto e = Engine::Create(model_, std::move(be), o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  const std::string note = (*e)->decode_note();
  EXPECT_NE(note.find("a kernel per op"), std::string::npos) << note;
  EXPECT_NE(note.find("not faster"), std::string::npos) << note;
  // A refused model: the reason.
  auto refusing = std::make_unique<FusedBackend>();
  refusing->refuse = "it takes f32, f16 and q8_0 matrices, not q4_k";
  auto r = Engine::Create(model_, std::move(refusing), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->decode_note(),
            "one-token steps run a kernel per op (the persistent decode kernel does not take this model: it takes f32, f16 "
            "and q8_0 matrices, not q4_k)");
  // The CPU backend makes no such choice.
  auto cpu = Engine::Create(model_, make_cpu_backend({1}), o);
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->decode_note(), "");
}

// The backend's start-up self-check verdict (the worker warns with it): named with the backend.
TEST_F(FusedProbe, EngineBackendNoteCarriesTheSelfCheckVerdict) {
  class Checked final : public test::ForwardingBackend {
   public:
    std::string self_check_note() const override { return "q8_0_split (it disagrees)"; }
  };
  EngineOptions o;
  o.max_batch = 1;
  o.n_ctx = 16;
  o.kv_cache_tokens = 32;
  auto e = Engine::Create(model_, std::make_unique<Checked>(), o);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ((*e)->backend_note(), "the cpu backend's self-check switched off: q8_0_split (it disagrees)");
  auto cpu = Engine::Create(model_, make_cpu_backend({1}), o);
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->backend_note(), "");
}

}  // namespace
}  // namespace ds

namespace ds {
namespace {

// ModelWeights::decode_bytes (the bandwidth figures of ds-bench and the GPU check): a
// one-token step reads every matrix but the embedding table's other rows; tied, the table is
// the output projection and counts whole.
TEST(ModelWeights, DecodeBytesLeaveOutTheEmbeddingTableUnlessTied) {
  test::TempDir dir;
  for (bool tied : {false, true}) {
    ModelSpec spec = test::tp_spec("llama", DType::kQ8_0, 7);
    spec.tied_output = tied;
    const auto model = test::make_model(dir, spec);
    ASSERT_TRUE(model);
    const ModelWeights& w = model->weights();
    const size_t table = w.tok_embd.row_stride() * w.tok_embd.rows;
    EXPECT_EQ(w.decode_bytes(), tied ? w.bytes : w.bytes - table + w.tok_embd.row_stride()) << "tied " << tied;
    EXPECT_LT(w.decode_bytes(), w.bytes + (tied ? 1u : 0u));
  }
}

}  // namespace
}  // namespace ds
