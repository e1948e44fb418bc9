#include "model/sampler.h"

#include <map>

#include "model/kv_cache.h"
#include "test_util.h"

namespace ds {
namespace {

std::vector<float> logits_of(std::initializer_list<float> v) { return std::vector<float>(v); }

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  SamplingParams p;
  SamplerState st;
  auto l = logits_of({0.1f, 2.0f, 2.0f, -1.0f});
  EXPECT_EQ(sample_token(l, p, {}, &st), 1);
  EXPECT_EQ(st.counter, 1u);
}

TEST(Sampler, TopKOneIsGreedyAtAnyTemperature) {
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 1;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    SamplerState st{seed, 0};
    auto l = logits_of({0.1f, 0.3f, 0.2f});
    EXPECT_EQ(sample_token(l, p, {}, &st), 1);
  }
}

TEST(Sampler, DrawsFollowTheDistribution) {
  SamplingParams p;
  p.temperature = 1.0f;
  std::map<int32_t, int> count;
  SamplerState st{42, 0};
  for (int i = 0; i < 20000; ++i) {
    auto l = logits_of({0.0f, std::log(3.0f)});  // probabilities 1/4, 3/4
    ++count[sample_token(l, p, {}, &st)];
  }
  EXPECT_NEAR(count[1] / 20000.0, 0.75, 0.02);
}

TEST(Sampler, TopPAndMinPCutTheTail) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;  // only the 0.6-probability token survives
  SamplerState st{1, 0};
  for (int i = 0; i < 200; ++i) {
    auto l = logits_of({std::log(0.6f), std::log(0.3f), std::log(0.1f)});
    EXPECT_EQ(sample_token(l, p, {}, &st), 0);
  }
  p.top_p = 1.0f;
  p.min_p = 0.4f;  // keeps tokens with p >= 0.24: ids 0 and 1
  std::map<int32_t, int> count;
  for (int i = 0; i < 2000; ++i) {
    auto l = logits_of({std::log(0.6f), std::log(0.3f), std::log(0.1f)});
    ++count[sample_token(l, p, {}, &st)];
  }
  EXPECT_EQ(count[2], 0);
  EXPECT_GT(count[1], 0);
}

TEST(Sampler, PenaltiesDiscourageRepeats) {
  SamplingParams p;
  p.repeat_penalty = 2.0f;
  SamplerState st;
  auto l = logits_of({1.0f, 0.8f});
  EXPECT_EQ(sample_token(l, p, {0, 0}, &st), 1);  // 1.0 / 2 < 0.8
  p.repeat_penalty = 1.0f;
  p.frequency_penalty = 0.15f;
  l = logits_of({1.0f, 0.8f});
  EXPECT_EQ(sample_token(l, p, {0, 0}, &st), 1);  // 1.0 - 2 * 0.15 < 0.8
  p.frequency_penalty = 0;
  p.presence_penalty = 0.1f;
  l = logits_of({1.0f, 0.95f});
  EXPECT_EQ(sample_token(l, p, {0, 0, 0}, &st), 1);  // 1.0 - 0.1 < 0.95
}

TEST(Sampler, StateSerializesAndResumesTheSameDraws) {
  SamplingParams p;
  p.temperature = 1.0f;
  SamplerState a{123456789, 0};
  std::vector<int32_t> first;
  for (int i = 0; i < 30; ++i) {
    std::vector<float> l(50, 0.0f);
    first.push_back(sample_token(l, p, {}, &a));
  }
  SamplerState b{123456789, 0};
  for (int i = 0; i < 10; ++i) {
    std::vector<float> l(50, 0.0f);
    sample_token(l, p, {}, &b);
  }
  auto c = SamplerState::parse(b.serialize());
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(*c, b);
  for (int i = 10; i < 30; ++i) {
    std::vector<float> l(50, 0.0f);
    EXPECT_EQ(sample_token(l, p, {}, &*c), first[i]);
  }
  EXPECT_FALSE(SamplerState::parse("garbage").has_value());
  EXPECT_FALSE(SamplerState::parse("ds-sampler/1:12x:3").has_value());
}

TEST(Sampler, ValidateNamesTheField) {
  SamplingParams p;
  p.min_p = 2;
  EXPECT_NE(validate(p).message().find("min_p"), std::string::npos);
  p = SamplingParams();
  p.stop = {""};
  EXPECT_NE(validate(p).message().find("stop"), std::string::npos);
}

TEST(BlockAllocator, AllocatesAllOrNothingAndReleases) {
  BlockAllocator a(10);
  std::vector<int32_t> t1, t2;
  EXPECT_TRUE(a.allocate(6, &t1));
  EXPECT_FALSE(a.allocate(5, &t2));
  EXPECT_TRUE(t2.empty());
  EXPECT_EQ(a.n_free(), 4);
  EXPECT_TRUE(a.allocate(4, &t2));
  std::vector<int32_t> all = t1;
  all.insert(all.end(), t2.begin(), t2.end());
  std::sort(all.begin(), all.end());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(all[i], i);
  a.release(&t1);
  EXPECT_TRUE(t1.empty());
  EXPECT_EQ(a.n_free(), 6);
}

}  // namespace
}  // namespace ds
