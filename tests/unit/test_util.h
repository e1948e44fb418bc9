// tests/unit/test_util.h: helpers shared by the unit tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "model/mkmodel.h"

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

}  // namespace ds::test
