// Tensor parallelism on the CPU: the host-memory Communicator (kernels/comm.h), the
// weight split (model/tensor_parallel.h) and the sharded forward pass, whose logits must
// match an unsharded Forward's over a prefill and a few decode steps.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <thread>

#include "kernels/comm.h"
#include "model/forward.h"
#include "model/mkmodel.h"
#include "model/sampler.h"
#include "model/tensor_parallel.h"
#include "test_util.h"

namespace ds {
namespace {

// Runs fn(rank, comm) in one thread per rank of a fresh CPU group and returns each
// rank's Status. A rank that fails aborts the group, so the others cannot hang in a
// collective waiting for it.
std::vector<Status> run_ranks(int n_ranks, const std::function<Status(int, Communicator&)>& fn) {
  std::vector<std::unique_ptr<Communicator>> comms = make_cpu_comm_group(n_ranks);
  std::vector<Status> results(n_ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < n_ranks; ++r) {
    threads.emplace_back([&, r] {
      results[r] = fn(r, *comms[r]);
      if (!results[r].ok()) comms[r]->abort();
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

void expect_all_ok(const std::vector<Status>& results) {
  for (size_t r = 0; r < results.size(); ++r) EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].ToString();
}

Status fail(Communicator& c) { return Status::Internal(c.last_error()); }

// ---- Communicator -------------------------------------------------------------------

class CpuComm : public ::testing::TestWithParam<int> {};

TEST_P(CpuComm, AllReduceSumsInRankOrderOnEveryRank) {
  const int R = GetParam();
  std::vector<std::vector<float>> in(R), out(R);
  for (int r = 0; r < R; ++r) in[r] = test::random_floats(1000, 100 + r, 10.0f);
  for (size_t n : {size_t{0}, size_t{1}, size_t{3}, size_t{1000}}) {  // fewer elements than ranks too
    expect_all_ok(run_ranks(R, [&](int r, Communicator& c) {
      out[r].assign(in[r].begin(), in[r].begin() + n);
      return c.all_reduce_sum(out[r].data(), n) ? Status::Ok() : fail(c);
    }));
    for (size_t i = 0; i < n; ++i) {
      float want = in[0][i];
      for (int r = 1; r < R; ++r) want += in[r][i];
      for (int r = 0; r < R; ++r) ASSERT_EQ(out[r][i], want) << "n " << n << " element " << i << " rank " << r;  // bit-exact
    }
  }
}

TEST_P(CpuComm, AllGatherConcatenatesInRankOrder) {
  const int R = GetParam();
  const size_t n = 37;
  std::vector<std::vector<float>> recv(R), inplace(R);
  expect_all_ok(run_ranks(R, [&](int r, Communicator& c) {
    std::vector<float> send(n);
    for (size_t i = 0; i < n; ++i) send[i] = static_cast<float>(1000 * r + i);
    recv[r].assign(R * n, -1.0f);
    if (!c.all_gather(send.data(), n, recv[r].data())) return fail(c);
    // In place: the rank's own part already sits in its slot.
    inplace[r].assign(R * n, -1.0f);
    std::copy(send.begin(), send.end(), inplace[r].begin() + r * n);
    return c.all_gather(inplace[r].data() + r * n, n, inplace[r].data()) ? Status::Ok() : fail(c);
  }));
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < R; ++q) {
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(recv[r][q * n + i], static_cast<float>(1000 * q + i)) << "rank " << r << " slot " << q;
        ASSERT_EQ(inplace[r][q * n + i], static_cast<float>(1000 * q + i)) << "in place, rank " << r << " slot " << q;
      }
    }
  }
}

TEST_P(CpuComm, BroadcastCopiesTheRootsBufferFromEveryRoot) {
  const int R = GetParam();
  for (int root = 0; root < R; ++root) {
    std::vector<std::vector<float>> buf(R);
    expect_all_ok(run_ranks(R, [&](int r, Communicator& c) {
      buf[r] = test::random_floats(50, 7 + r);
      return c.broadcast(buf[r].data(), buf[r].size(), root) ? Status::Ok() : fail(c);
    }));
    const std::vector<float> want = test::random_floats(50, 7 + root);
    for (int r = 0; r < R; ++r) EXPECT_EQ(buf[r], want) << "root " << root << " rank " << r;
  }
}

// Many collectives back to back, of changing kinds and sizes: the barriers must not let a
// fast rank overwrite what a slow one still reads.
TEST_P(CpuComm, ManyMixedCollectivesStayConsistent) {
  const int R = GetParam();
  std::vector<double> totals(R);
  expect_all_ok(run_ranks(R, [&](int r, Communicator& c) {
    double total = 0;
    for (int it = 0; it < 300; ++it) {
      const size_t n = 1 + (it * 7) % 23;
      std::vector<float> buf(n, static_cast<float>(r + it));
      if (!c.all_reduce_sum(buf.data(), n)) return fail(c);
      std::vector<float> all(R * n);
      if (!c.all_gather(buf.data(), n, all.data())) return fail(c);
      if (!c.broadcast(all.data(), all.size(), it % R)) return fail(c);
      for (float v : all) total += v;
    }
    totals[r] = total;
    return Status::Ok();
  }));
  for (int r = 1; r < R; ++r) EXPECT_EQ(totals[r], totals[0]);
}

TEST_P(CpuComm, ReportsRankAndSize) {
  const int R = GetParam();
  const auto comms = make_cpu_comm_group(R);
  ASSERT_EQ(static_cast<int>(comms.size()), R);
  for (int r = 0; r < R; ++r) {
    EXPECT_EQ(comms[r]->rank(), r);
    EXPECT_EQ(comms[r]->size(), R);
    EXPECT_STREQ(comms[r]->name(), "cpu");
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, CpuComm, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return std::to_string(info.param) + "ranks"; });

TEST(CpuCommErrors, RanksThatDisagreeAllFailWithTheDifference) {
  std::vector<std::string> errors(3);
  const auto results = run_ranks(3, [&](int r, Communicator& c) {
    std::vector<float> buf(10);
    if (c.all_reduce_sum(buf.data(), r == 2 ? 9 : 10)) return Status::Ok();
    errors[r] = c.last_error();
    return fail(c);
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_FALSE(results[r].ok());
    EXPECT_NE(errors[r].find("rank 0 called all_reduce_sum(n=10), rank 2 called all_reduce_sum(n=9)"), std::string::npos)
        << errors[r];
  }
}

TEST(CpuCommErrors, AbortReleasesRanksBlockedInACollective) {
  std::vector<std::string> errors(3);
  const auto results = run_ranks(3, [&](int r, Communicator& c) {
    if (r == 1) return Status::Internal("rank 1 gives up");  // run_ranks aborts the group
    std::vector<float> buf(4);
    if (c.all_reduce_sum(buf.data(), buf.size())) return Status::Ok();
    errors[r] = c.last_error();
    return fail(c);
  });
  for (int r : {0, 2}) {
    EXPECT_FALSE(results[r].ok());
    EXPECT_NE(errors[r].find("aborted"), std::string::npos) << errors[r];
  }
}

// ---- The weight split ---------------------------------------------------------------------

using test::make_model;

ModelSpec tp_spec(const std::string& arch, DType type) { return test::tp_spec(arch, type, 21); }

TEST(TensorParallelSplit, RefusesShapesThatDoNotSplitAndNamesWhatFits) {
  test::TempDir dir;
  ModelSpec spec = tp_spec("llama", DType::kF32);
  spec.kv_heads = 2;
  const auto m = make_model(dir, spec);
  ASSERT_TRUE(m);
  Status s = check_tensor_parallel(*m, 4);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_count_kv 2 is not a multiple of 4"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("rank counts that fit: 1, 2)"), std::string::npos) << s.message();
  s = check_tensor_parallel(*m, 3);
  EXPECT_NE(s.message().find("head_count 8 is not a multiple of 3"), std::string::npos) << s.message();
  EXPECT_TRUE(check_tensor_parallel(*m, 2).ok());

  auto shard = shard_model(m, 4, 4);  // the error of the split comes first
  EXPECT_FALSE(shard.ok());
  shard = shard_model(m, 2, 2);
  ASSERT_FALSE(shard.ok());
  EXPECT_NE(shard.status().message().find("rank 2 is outside [0, 2)"), std::string::npos) << shard.status().message();
  EXPECT_EQ(check_tensor_parallel(*m, 0).code(), StatusCode::kInvalidArgument);
}

TEST(TensorParallelSplit, RefusesQuantizedColumnSlicesOfPartialBlocks) {
  test::TempDir dir;
  ModelSpec spec = tp_spec("llama", DType::kQ8_0);
  spec.ffn = 96;  // 2 ranks: 48 columns of ffn_down each, not whole blocks of 32
  const auto m = make_model(dir, spec);
  ASSERT_TRUE(m);
  const Status s = check_tensor_parallel(*m, 2);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("blk.0.ffn_down.weight is q8_0 (blocks of 32 columns): each rank would get 48 of its 96 columns"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("(rank counts that fit: 1)"), std::string::npos) << s.message();
}

TEST(TensorParallelSplit, ShardShapesAndVocabRanges) {
  test::TempDir dir;
  const auto m = make_model(dir, tp_spec("qwen2", DType::kF16));
  ASSERT_TRUE(m);
  int64_t covered = 0;
  for (int r = 0; r < 4; ++r) {
    auto s = shard_model(m, r, 4);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    const ModelShard& sh = **s;
    EXPECT_EQ(sh.config.n_head, 2);
    EXPECT_EQ(sh.config.n_head_kv, 1);
    EXPECT_EQ(sh.config.n_ff, 64);
    EXPECT_EQ(sh.vocab_begin, covered);
    EXPECT_TRUE(sh.vocab_rows == 80 || sh.vocab_rows == 81) << sh.vocab_rows;
    covered += sh.vocab_rows;
    const LayerWeights& L = sh.weights.layers[1];
    EXPECT_EQ(L.wq.rows, 32);
    EXPECT_EQ(L.wk.rows, 16);
    EXPECT_EQ(L.wo.rows, 128);
    EXPECT_EQ(L.wo.cols, 32);
    EXPECT_EQ(L.w_down.cols, 64);
    EXPECT_EQ(L.bq.size(), 32u);
    EXPECT_EQ(L.bv.size(), 16u);
    EXPECT_EQ(sh.weights.output.rows, sh.vocab_rows);
    // Column slices hold the model's values: wo's column 0 of this rank is the model's
    // column 32 * r.
    std::vector<float> mine(32), full(256);
    dequantize_row(L.wo.type, L.wo.data, mine.data(), 32);
    const WeightRef& wo = m->weights().layers[1].wo;
    dequantize_row(wo.type, wo.data, full.data(), 256);
    EXPECT_EQ(mine[0], full[32 * r]);
    EXPECT_EQ(mine[31], full[32 * r + 31]);
  }
  EXPECT_EQ(covered, 322);
}

// ---- The sharded forward pass ---------------------------------------------------------------

struct Case {
  const char* arch;
  DType type;
  int ranks;
  bool tied;
};

std::string case_name(const Case& c) {
  return std::string(c.arch) + "_" + dtype_name(c.type) + "_" + std::to_string(c.ranks) + "ranks" + (c.tied ? "_tied" : "");
}
void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

// Tolerances (max |sharded - unsharded| / max |unsharded| over a position's logits):
//  1 rank: the same arithmetic, bit-identical (0).
//  f32, f16: the all-reduce adds per-rank partial dot products, a different order than one
//    long dot product: float rounding only, ~1e-7 per op; 1e-5 leaves room for 2 layers.
//  q8_0: the CPU kernels quantize activations to 8-bit blocks on the fly; an activation
//    that differs in its last bit can round to the neighbouring 8-bit step, which the
//    next layers amplify a little: 1e-3.
constexpr double kTpTolFloat = 1e-5;
constexpr double kTpTolQ8_0 = 1e-3;

class TensorParallelForward : public ::testing::TestWithParam<Case> {};

// Prefill 6 tokens in one pass (logits for all), then decode 4 one at a time, unsharded
// and sharded; also the gathered greedy token of each position.
TEST_P(TensorParallelForward, ShardedLogitsMatchUnsharded) {
  const Case c = GetParam();
  test::TempDir dir;
  ModelSpec spec = tp_spec(c.arch, c.type);
  spec.tied_output = c.tied;
  const auto model = make_model(dir, spec);
  ASSERT_TRUE(model);
  const std::vector<int32_t> tokens = {1, 300, 17, 250, 321, 5, 42, 42, 9, 200};
  const int kBlockSize = 4, kBlocks = 3, kPrefill = 6;
  const int64_t V = spec.vocab;

  // A sampled request with penalties: its token at position t (history tokens[0..t]) is
  // drawn with draw number t.
  SamplingParams sp;
  sp.temperature = 0.9f;
  sp.top_p = 0.95f;
  sp.repeat_penalty = 1.3f;
  sp.presence_penalty = 0.5f;
  // Runs the schedule on one Forward: logits, greedy ids and sampled ids per position.
  auto schedule = [&](Forward& f, std::vector<int32_t>& blocks, std::vector<std::vector<float>>* logits,
                      std::vector<int32_t>* greedy, std::vector<int32_t>* sampled) -> Status {
    auto step = [&](size_t from, size_t to) -> Status {
      std::vector<ForwardToken> batch;
      for (size_t t = from; t < to; ++t) batch.push_back({tokens[t], static_cast<int32_t>(t), &blocks, true});
      std::vector<float> l;
      DS_RETURN_IF_ERROR(f.run(batch, &l));
      for (size_t i = 0; i < batch.size(); ++i) logits->emplace_back(l.begin() + i * V, l.begin() + (i + 1) * V);
      // The sampling paths recompute the same positions (rewriting the same KV rows).
      SampleStep g, smp;
      for (size_t t = from; t < to; ++t) {
        const std::vector<int32_t> history(tokens.begin(), tokens.begin() + t + 1);
        g.add(SamplingParams{}, history, static_cast<int32_t>(V), kSampleMaxCandidates, 0, t);
        smp.add(sp, history, static_cast<int32_t>(V), 16, 77, t);  // 16 candidates: some rows need the whole row
      }
      std::vector<int32_t> ids;
      int fallbacks = 0;
      DS_RETURN_IF_ERROR(f.run_sampled(batch, g, &ids, &fallbacks));
      greedy->insert(greedy->end(), ids.begin(), ids.end());
      DS_RETURN_IF_ERROR(f.run_sampled(batch, smp, &ids, &fallbacks));
      sampled->insert(sampled->end(), ids.begin(), ids.end());
      return Status::Ok();
    };
    DS_RETURN_IF_ERROR(step(0, kPrefill));
    for (size_t t = kPrefill; t < tokens.size(); ++t) DS_RETURN_IF_ERROR(step(t, t + 1));
    return Status::Ok();
  };

  std::vector<std::vector<float>> want;
  std::vector<int32_t> want_greedy, want_sampled;
  {
    auto be = make_cpu_backend({1});
    auto kv = KvCache::Create(*be, spec.layers, model->config().kv_dim(), kBlockSize, kBlocks);
    ASSERT_TRUE(kv.ok());
    auto f = Forward::Create(model, *be, **kv, 16);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    std::vector<int32_t> blocks;
    ASSERT_TRUE((*kv)->blocks().allocate(kBlocks, &blocks));
    const Status s = schedule(**f, blocks, &want, &want_greedy, &want_sampled);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  std::vector<std::vector<std::vector<float>>> got(c.ranks);
  std::vector<std::vector<int32_t>> got_greedy(c.ranks), got_sampled(c.ranks);
  expect_all_ok(run_ranks(c.ranks, [&](int r, Communicator& comm) -> Status {
    Result<std::shared_ptr<const ModelShard>> shard = shard_model(model, r, c.ranks);
    if (!shard.ok()) return shard.status();
    auto be = make_cpu_backend({1});
    Result<std::unique_ptr<KvCache>> kv = KvCache::Create(*be, spec.layers, (*shard)->config.kv_dim(), kBlockSize, kBlocks);
    if (!kv.ok()) return kv.status();
    Result<std::unique_ptr<Forward>> f = Forward::CreateShard(*shard, *be, comm, **kv, 16);
    if (!f.ok()) return f.status();
    std::vector<int32_t> blocks;
    if (!(*kv)->blocks().allocate(kBlocks, &blocks)) return Status::Internal("no KV blocks");
    return schedule(**f, blocks, &got[r], &got_greedy[r], &got_sampled[r]);
  }));
  if (HasFailure()) return;

  const double tol = c.ranks == 1 ? 0.0 : c.type == DType::kQ8_0 ? kTpTolQ8_0 : kTpTolFloat;
  double worst = 0;
  ASSERT_EQ(want.size(), tokens.size());
  for (int r = 0; r < c.ranks; ++r) {
    ASSERT_EQ(got[r].size(), tokens.size());
    EXPECT_EQ(got[r], got[0]) << "rank " << r << " got other logits than rank 0";  // a gather copies
    EXPECT_EQ(got_greedy[r], got_greedy[0]) << "rank " << r;
    EXPECT_EQ(got_sampled[r], got_sampled[0]) << "rank " << r;
  }
  for (size_t t = 0; t < tokens.size(); ++t) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < V; ++i) {
      num = std::max(num, std::fabs(static_cast<double>(got[0][t][i]) - want[t][i]));
      den = std::max(den, std::fabs(static_cast<double>(want[t][i])));
    }
    worst = std::max(worst, num / den);
    // The gathered argmax is the argmax of the gathered logits, and the unsharded one
    // unless the top two unsharded logits are closer than the tolerance allows.
    const auto& l = got[0][t];
    EXPECT_EQ(got_greedy[0][t], std::max_element(l.begin(), l.end()) - l.begin()) << "position " << t;
    // The sampled token is host sampling's from the gathered logits (sharded: from the
    // slices' merged candidates; unsharded: from the backend's), for each Forward.
    for (const bool sharded : {true, false}) {
      std::vector<float> row = sharded ? got[0][t] : want[t];
      SamplerState st{77, t};
      const std::vector<int32_t> history(tokens.begin(), tokens.begin() + t + 1);
      EXPECT_EQ((sharded ? got_sampled[0] : want_sampled)[t], sample_token(row, sp, history, &st))
          << "position " << t << (sharded ? " sharded" : " unsharded");
    }
    std::vector<float> sorted = want[t];
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] > 2 * tol * den) {
      EXPECT_EQ(got_greedy[0][t], want_greedy[t]) << "position " << t;
    }
  }
  EXPECT_LE(worst, tol) << case_name(c);
  std::printf("[ info ] %s: max relative logit error sharded vs unsharded %.3g (tolerance %.0e)\n", case_name(c).c_str(),
              worst, tol);
}

INSTANTIATE_TEST_SUITE_P(
    ArchTypeRanks, TensorParallelForward,
    ::testing::Values(Case{"llama", DType::kF32, 1, false}, Case{"llama", DType::kF32, 2, false},
                      Case{"llama", DType::kF32, 4, false}, Case{"llama", DType::kF16, 2, false},
                      Case{"llama", DType::kF16, 4, true}, Case{"llama", DType::kQ8_0, 2, false},
                      Case{"llama", DType::kQ8_0, 4, false}, Case{"qwen2", DType::kF32, 1, false},
                      Case{"qwen2", DType::kF32, 2, false}, Case{"qwen2", DType::kF32, 4, false},
                      Case{"qwen2", DType::kF16, 2, true}, Case{"qwen2", DType::kF16, 4, false},
                      Case{"qwen2", DType::kQ8_0, 2, false}, Case{"qwen2", DType::kQ8_0, 4, false}),
    [](const auto& info) { return case_name(info.param); });

TEST(TensorParallelForwardErrors, ShardAndCommunicatorMustAgree) {
  test::TempDir dir;
  const auto model = make_model(dir, tp_spec("llama", DType::kF32));
  ASSERT_TRUE(model);
  auto shard = shard_model(model, 1, 2);
  ASSERT_TRUE(shard.ok());
  auto comms = make_cpu_comm_group(4);
  auto be = make_cpu_backend({1});
  auto kv = KvCache::Create(*be, 2, (*shard)->config.kv_dim(), 4, 2);
  ASSERT_TRUE(kv.ok());
  auto f = Forward::CreateShard(*shard, *be, *comms[1], **kv, 4);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("rank 1 of 2, its communicator rank 1 of 4"), std::string::npos) << f.status().message();
  // A KV cache sized for the whole model does not fit a shard.
  auto wide = KvCache::Create(*be, 2, model->config().kv_dim(), 4, 2);
  ASSERT_TRUE(wide.ok());
  auto comms2 = make_cpu_comm_group(2);
  f = Forward::CreateShard(*shard, *be, *comms2[1], **wide, 4);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ds
