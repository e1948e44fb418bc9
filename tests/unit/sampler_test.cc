#include "model/sampler.h"

#include <cmath>
#include <cstring>
#include <map>

#include "kernels/sampling.h"
#include "model/backend_sampler.h"

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

// ---- backend-side sampling: candidates + finishing == sample_token ---------------------

// The ways a request can sample, from greedy to untruncated sampling with penalties.
std::vector<SamplingParams> sampling_variants() {
  std::vector<SamplingParams> v;
  auto add = [&](float temp, int top_k, float top_p, float min_p, float rp, float fp, float pp) {
    SamplingParams p;
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repeat_penalty = rp;
    p.frequency_penalty = fp;
    p.presence_penalty = pp;
    v.push_back(p);
  };
  add(0, 0, 1, 0, 1, 0, 0);          // greedy
  add(0, 0, 1, 0, 1.3f, 0.2f, 0.1f);  // greedy with penalties
  add(0.8f, 40, 0.95f, 0, 1, 0, 0);   // the usual top-k + top-p
  add(0.7f, 0, 0.9f, 0, 1, 0, 0);     // OpenAI-style: top-p only
  add(1.0f, 0, 1, 0, 1, 0, 0);        // nothing truncated
  add(1.5f, 0, 1, 0.05f, 1.1f, 0, 0); // min-p
  add(0.9f, 2000, 0.5f, 0, 1, 0.5f, 0.3f);  // top-k beyond the candidates
  return v;
}

// Candidates as a backend returns them (ref::sample_candidates on a copy of the row), then the
// engine's last stage (pick_token, else the whole penalized row).
int32_t sample_via_candidates(std::vector<float> logits, const SamplingParams& p, const std::vector<int32_t>& history,
                              uint64_t seed, uint64_t draw, int32_t max_candidates, bool* fell_back) {
  const int32_t V = static_cast<int32_t>(logits.size());
  SampleStep step;
  step.add(p, history, V, max_candidates, seed, draw);
  std::vector<uint64_t> out(step.words);
  SampleArgs a;
  a.logits = logits.data();
  a.n_rows = 1;
  a.n_vocab = V;
  a.rows = step.rows.data();
  a.pen_tokens = step.pen_tokens.data();
  a.pen_counts = step.pen_counts.data();
  a.out = out.data();
  ref::sample_candidates(a);
  const int32_t tok = pick_token(step, 0, V, out.data());
  *fell_back = tok < 0;
  return tok >= 0 ? tok : sample_penalized(logits, p, seed, draw);  // logits: penalized by the "backend"
}

TEST(BackendSampling, CandidatesGiveSampleTokensChoice) {
  const int32_t V = 3000;
  std::vector<int32_t> history;
  for (int i = 0; i < 100; ++i) history.push_back((i * 131) % V);
  int fallbacks = 0, total = 0;
  for (int32_t max_candidates : {kSampleMaxCandidates, 64, 8}) {
    for (const SamplingParams& p : sampling_variants()) {
      for (uint64_t seed = 0; seed < 40; ++seed) {
        std::vector<float> logits = test::random_floats(V, static_cast<uint32_t>(seed * 7 + 1), 6.0f);
        if (seed % 3 == 0)
          for (auto& x : logits) x = std::round(x * 4) / 4;  // ties
        if (seed % 5 == 0) logits[seed % V] = NAN;
        SamplerState st{seed, seed * 3};
        std::vector<float> host = logits;
        const int32_t want = sample_token(host, p, history, &st);
        bool fell_back = false;
        const int32_t got = sample_via_candidates(logits, p, history, seed, seed * 3, max_candidates, &fell_back);
        EXPECT_EQ(got, want) << "temp " << p.temperature << " top_k " << p.top_k << " top_p " << p.top_p
                             << " min_p " << p.min_p << " seed " << seed << " m " << max_candidates;
        const bool exact = p.temperature <= 0 || (p.top_k > 0 && p.top_k <= max_candidates);
        if (exact) {
          EXPECT_FALSE(fell_back) << "greedy and top-k within the candidates never need the whole row";
        }
        fallbacks += fell_back;
        ++total;
      }
    }
  }
  // With 8 candidates the nucleus of a flat random row reaches past them: the fallback ran.
  EXPECT_GT(fallbacks, 0);
  EXPECT_LT(fallbacks, total);
}

// Tensor parallelism: each rank's slice of a row sampled on its own (penalties of its ids
// only), the slices' words merged: exactly the whole row's candidates, and its sums up to
// summation order. Ties across slice boundaries, NaN, slices all -inf.
TEST(BackendSampling, SlicesMergeIntoTheWholeRowsCandidates) {
  const int32_t V = 3001;
  std::vector<int32_t> pen_tokens, pen_counts;
  for (int i = 0; i < 60; ++i) {
    pen_tokens.push_back(i * 50);  // distinct, sorted, spread over every slice
    pen_counts.push_back(1 + i % 3);
  }
  auto candidates = [&](std::vector<float> l, SampleRow row, const std::vector<int32_t>& toks,
                        const std::vector<int32_t>& counts) {
    row.pen_begin = 0;
    row.pen_count = static_cast<int32_t>(toks.size());
    row.out = 0;
    std::vector<uint64_t> out(2 + row.m);
    SampleArgs a;
    a.logits = l.data();
    a.n_rows = 1;
    a.n_vocab = static_cast<int64_t>(l.size());
    a.rows = &row;
    a.pen_tokens = toks.data();
    a.pen_counts = counts.data();
    a.out = out.data();
    ref::sample_candidates(a);
    return out;
  };
  int checked = 0;
  for (int R : {2, 3, 4}) {
    std::vector<int64_t> begin(R + 1);
    for (int r = 0; r <= R; ++r) begin[r] = static_cast<int64_t>(V) * r / R;
    for (int32_t m : {1, 40, 1024}) {
      for (uint32_t seed = 0; seed < 12; ++seed) {
        std::vector<float> l = test::random_floats(V, seed * 13 + R, 5.0f);
        if (seed % 2 == 0)
          for (auto& x : l) x = std::round(x * 2) / 2;  // many ties, across slices too
        if (seed % 3 == 0) l[seed * 7] = NAN;
        if (seed % 4 == 1)  // one slice with nothing but -inf
          std::fill(l.begin() + begin[seed % R], l.begin() + begin[seed % R + 1], -INFINITY);
        SampleRow row;
        row.m = m;
        row.want_sums = 1;
        row.temperature = 0.7f;
        row.repeat_penalty = 1.3f;
        row.frequency_penalty = 0.2f;
        row.presence_penalty = 0.4f;
        const std::vector<uint64_t> whole = candidates(l, row, pen_tokens, pen_counts);
        std::vector<std::vector<uint64_t>> slice_words(R);
        std::vector<const uint64_t*> slices(R);
        std::vector<int32_t> slice_m(R);
        for (int r = 0; r < R; ++r) {
          std::vector<int32_t> toks, counts;
          for (size_t i = 0; i < pen_tokens.size(); ++i) {
            if (pen_tokens[i] >= begin[r] && pen_tokens[i] < begin[r + 1]) {
              toks.push_back(static_cast<int32_t>(pen_tokens[i] - begin[r]));
              counts.push_back(pen_counts[i]);
            }
          }
          SampleRow local = row;
          local.m = static_cast<int32_t>(std::min<int64_t>(m, begin[r + 1] - begin[r]));
          slice_m[r] = local.m;
          slice_words[r] = candidates(std::vector<float>(l.begin() + begin[r], l.begin() + begin[r + 1]), local, toks, counts);
          slices[r] = slice_words[r].data();
        }
        std::vector<uint64_t> merged(2 + m);
        merge_sampled_slices(slices, slice_m, begin, m, true, row.temperature, merged.data());
        const std::string where = std::to_string(R) + " ranks, m " + std::to_string(m) + ", seed " + std::to_string(seed);
        for (int32_t i = 0; i < m; ++i) {
          ASSERT_EQ(sample_id(merged[2 + i]), sample_id(whole[2 + i])) << where << ", candidate " << i;
          ASSERT_EQ(sample_order_key(sample_logit(merged[2 + i])), sample_order_key(sample_logit(whole[2 + i]))) << where;
        }
        for (int k = 0; k < 2; ++k) {
          double a, b;
          std::memcpy(&a, &merged[k], 8);
          std::memcpy(&b, &whole[k], 8);
          EXPECT_NEAR(a, b, 1e-12 * b) << where << ", sum " << k;
          EXPECT_GE(a, 1.0) << where;  // the best candidate itself adds exp(0)
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 3 * 3 * 12);
}

TEST(BackendSampling, CandidateCountsAndSums) {
  SamplingParams greedy;
  EXPECT_EQ(sample_candidates_wanted(greedy, 32000, 1024), 1);
  EXPECT_FALSE(sample_sums_wanted(greedy, 32000, 1));
  SamplingParams topk;
  topk.temperature = 0.8f;
  topk.top_k = 40;
  EXPECT_EQ(sample_candidates_wanted(topk, 32000, 1024), 40);
  EXPECT_FALSE(sample_sums_wanted(topk, 32000, 40));
  SamplingParams topp;
  topp.temperature = 0.8f;
  topp.top_p = 0.9f;
  EXPECT_EQ(sample_candidates_wanted(topp, 32000, 1024), 1024);
  EXPECT_TRUE(sample_sums_wanted(topp, 32000, 1024));
  EXPECT_EQ(sample_candidates_wanted(topp, 300, 1024), 300);  // the whole row: exact, no sums
  EXPECT_FALSE(sample_sums_wanted(topp, 300, 300));
}

TEST(BackendSampling, PenaltyEntriesAreDistinctSortedAndWindowed) {
  SamplingParams p;
  p.repeat_penalty = 1.2f;
  p.penalty_last_n = 4;
  const auto e = penalty_entries(p, {9, 1, 5, 1, 7, -3, 99}, 50);  // window: 1, 7, -3, 99 -> 1, 7
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0], std::make_pair(1, 1));
  EXPECT_EQ(e[1], std::make_pair(7, 1));
  EXPECT_TRUE(penalty_entries(SamplingParams(), {1, 2, 3}, 50).empty());
}

TEST(Sampler, NanLogitsNeverWin) {
  SamplingParams p;
  SamplerState st;
  auto l = logits_of({NAN, 0.5f, 2.0f, NAN});
  EXPECT_EQ(sample_token(l, p, {}, &st), 2);
  p.temperature = 1.0f;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    SamplerState s2{seed, 0};
    auto l2 = logits_of({NAN, 0.5f, 2.0f, NAN});
    const int32_t t = sample_token(l2, p, {}, &s2);
    EXPECT_TRUE(t == 1 || t == 2) << t;
  }
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
