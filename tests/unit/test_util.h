// tests/unit/test_util.h: helpers shared by the unit tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/mkmodel.h"
#include "model/model.h"

namespace ds::test {

inline std::string shared_models() { return DS_SHARED_MODELS; }

// Skips the calling test when the shared models folder is absent (outside this team).
#define DS_REQUIRE_SHARED_MODELS()                                                   \
  do {                                                                               \
    if (!std::filesystem::exists(::ds::test::shared_models())) GTEST_SKIP() << "no " << ::ds::test::shared_models(); \
  } while (0)

// A random model that splits over 1, 2 and 4 tensor-parallel ranks: heads 8 / kv-heads 4
// (GQA), head_dim 16, ffn 256, whole q8_0 blocks (32 columns) in every rank's wo and down
// columns; vocab 322 is not a multiple of 4 (ranks get 80 or 81 rows).
inline ModelSpec tp_spec(const std::string& arch, DType type, uint64_t seed) {
  ModelSpec s;
  s.arch = arch;
  s.dim = 128;
  s.layers = 2;
  s.heads = 8;
  s.kv_heads = 4;
  s.ffn = 256;
  s.vocab = 322;
  s.type = type;
  s.seed = seed;
  return s;
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A Backend that forwards every op to an inner one (by default a one-thread CPU backend);
// a test derives from it and overrides only the ops it watches or breaks. The fused ops keep
// Backend's defaults, so they reach the derived class's overrides of the plain ops.
class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> inner = make_cpu_backend({1})) : inner_(std::move(inner)) {}
  const char* name() const override { return inner_->name(); }
  std::string failure() const override { return inner_->failure(); }
  bool host_memory() const override { return inner_->host_memory(); }
  bool supports(DType t) const override { return inner_->supports(t); }
  void* alloc(size_t bytes) override { return inner_->alloc(bytes); }
  void free(void* p) override { inner_->free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { inner_->upload(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { inner_->download(dst, src, bytes); }
  void matmul(const WeightRef& w, const float* x, int64_t n, float* y) override { inner_->matmul(w, x, n, y); }
  void get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out) override { inner_->get_rows(w, ids, n, out); }
  void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) override {
    inner_->rmsnorm(x, weight, n, dim, eps, out);
  }
  void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p) override {
    inner_->rope(x, n, n_heads, head_dim, pos, p);
  }
  void swiglu(const float* gate, const float* up, int64_t count, float* out) override { inner_->swiglu(gate, up, count, out); }
  void add(float* x, const float* y, int64_t count) override { inner_->add(x, y, count); }
  void add_bias(float* x, const float* bias, int64_t n, int64_t dim) override { inner_->add_bias(x, bias, n, dim); }
  void store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim,
                const KvLayer& cache) override {
    inner_->store_kv(k, v, n, slots, kv_dim, cache);
  }
  void attention(const AttentionArgs& a) override { inner_->attention(a); }
  size_t attention_workspace_floats(int64_t max_tokens, int n_heads, int head_dim, int max_kv) const override {
    return inner_->attention_workspace_floats(max_tokens, n_heads, head_dim, max_kv);
  }

 private:
  std::unique_ptr<Backend> inner_;
};

inline std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A fresh temporary directory, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ds-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A random model of spec written into dir (named after its arch and type) and loaded.
inline std::shared_ptr<const Model> make_model(const TempDir& dir, const ModelSpec& spec) {
  const std::string path = dir.file(spec.arch + "-" + dtype_name(spec.type) + ".gguf");
  Status s = write_random_model(spec, path);
  EXPECT_TRUE(s.ok()) << s.ToString();
  auto m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::shared_ptr<const Model>(*m) : nullptr;
}

}  // namespace ds::test
