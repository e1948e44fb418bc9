#include "model/gguf.h"

#include "test_util.h"

namespace ds {
namespace {

TEST(GgufReader, OpensStories260K) {
  DS_REQUIRE_SHARED_MODELS();
  auto f = GgufFile::Open(test::shared_models() + "/stories260K.gguf");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::string arch;
  ASSERT_TRUE((*f)->get_string("general.architecture", &arch).ok());
  EXPECT_EQ(arch, "llama");
  const GgufTensor* emb = (*f)->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->ne[0], 64);
  EXPECT_EQ(emb->ne[1], 512);
}

TEST(GgufReader, MissingFileIsIOError) {
  auto f = GgufFile::Open("/nonexistent/model.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kIOError);
}

TEST(GgufReader, BadMagic) {
  std::vector<uint8_t> buf(64, 0);
  auto f = GgufFile::FromMemory(buf.data(), buf.size());
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("magic"), std::string::npos);
}

}  // namespace
}  // namespace ds
