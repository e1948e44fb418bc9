// ds-bench load against a real ds-node: the closed loop finishes every request and
// reports its figures; bad flags and an unreachable node give the documented exit codes;
// ds-bench engine --backend cuda runs on a GPU or says why not.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "node_process.h"

namespace {

const std::string kBench = std::string(DS_BUILD_DIR) + "/ds-bench";
const std::string kModel = std::string(DS_SHARED_MODELS) + "/stories260K.gguf";

class BenchLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (std::filesystem::temp_directory_path() / "ds-bench-load-XXXXXX").string();
    dir_ = mkdtemp(t.data());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs ds-bench with `args` (bounded by timeout_s); returns the exit code, stdout in *out.
  int bench(const std::string& args, std::string* out, int timeout_s = 120) {
    const std::string o = dir_ + "/bench.out", e = dir_ + "/bench.err";
    const std::string cmd = "timeout " + std::to_string(timeout_s) + " " + kBench + " " + args + " >" + o + " 2>" + e;
    const int st = std::system(cmd.c_str());
    *out = ds::test::slurp_file(o);
    err_ = ds::test::slurp_file(e);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }

  std::string dir_, err_;
};

TEST_F(BenchLoad, ClosedLoopCompletesEveryRequestAndReportsFigures) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "no " << kModel;
  ds::test::Node node(dir_, {"--model", kModel, "--max-batch", "4"});
  ASSERT_TRUE(node.ready()) << node.process().err();
  std::string out;
  const int rc = bench("load --connect " + node.address() +
                           " --concurrency 4 --requests 8 --prompt-tokens 8 --max-tokens 16 --json",
                       &out);
  ASSERT_EQ(rc, 0) << err_ << out;
  const auto j = nlohmann::json::parse(out);
  for (const char* k : {"connect", "concurrency", "requests", "prompt_tokens", "max_tokens", "completed", "errors",
                        "wall_s", "requests_per_s", "gen_tok_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99"}) {
    EXPECT_TRUE(j.contains(k)) << k << " missing in " << out;
  }
  EXPECT_EQ(j["connect"], node.address());
  EXPECT_EQ(j["concurrency"], 4);
  EXPECT_EQ(j["requests"], 8);
  EXPECT_EQ(j["completed"], 8);
  EXPECT_EQ(j["errors"], 0);
  EXPECT_GT(j["gen_tok_s"].get<double>(), 0);
  EXPECT_GT(j["requests_per_s"].get<double>(), 0);
  EXPECT_GT(j["wall_s"].get<double>(), 0);
  EXPECT_GT(j["gen_tokens"].get<int64_t>(), 0);
  EXPECT_LE(j["gen_tokens"].get<int64_t>(), 8 * 16);
  EXPECT_LE(j["ttft_ms_p50"].get<double>(), j["ttft_ms_p99"].get<double>());
  EXPECT_LE(j["itl_ms_p50"].get<double>(), j["itl_ms_p99"].get<double>());

  // The human table names the same figures.
  ASSERT_EQ(bench("load --connect " + node.address() + " --concurrency 2 --requests 2 --prompt-tokens 4 --max-tokens 4", &out), 0)
      << err_;
  EXPECT_NE(out.find("generated tok/s"), std::string::npos) << out;
  EXPECT_NE(out.find("TTFT p99 ms"), std::string::npos) << out;
  EXPECT_NE(out.find("2 completed, 0 errors"), std::string::npos) << out;
}

TEST_F(BenchLoad, PromptIdsOutsideTheVocabularyAreCountedAsRejections) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "no " << kModel;
  ds::test::Node node(dir_, {"--model", kModel});
  ASSERT_TRUE(node.ready()) << node.process().err();
  std::string out;
  // stories260K has 512 tokens: ids up to 1e6 are refused by the router.
  const int rc = bench("load --connect " + node.address() + " --concurrency 2 --requests 4 --prompt-tokens 16 --vocab 1000000 --json", &out);
  EXPECT_EQ(rc, 4) << err_ << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["completed"], 0);
  EXPECT_EQ(j["errors"], 4);
  EXPECT_EQ(j["rejected"], 4);
  EXPECT_NE(j["first_error"].get<std::string>().find("vocabulary"), std::string::npos) << out;
}

TEST_F(BenchLoad, BadFlagsExit2) {
  std::string out;
  EXPECT_EQ(bench("load --concurrency 4", &out), 2) << "no --connect";
  EXPECT_EQ(bench("load --connect 127.0.0.1:1 --concurrency 0", &out), 2);
  EXPECT_EQ(bench("load --connect 127.0.0.1:1 --requests x", &out), 2);
  EXPECT_EQ(bench("load --connect 127.0.0.1:1 --no-such-flag", &out), 2);
  EXPECT_EQ(bench("load --connect not-a-host-port", &out), 2);
  EXPECT_NE(err_.find("HOST:PORT"), std::string::npos) << err_;
  EXPECT_EQ(bench("load --help", &out), 0);
  EXPECT_NE(out.find("--concurrency"), std::string::npos) << out;
  EXPECT_NE(out.find("--compare-engine"), std::string::npos) << out;
}

TEST_F(BenchLoad, UnreachableNodeExits3) {
  std::string out;
  const uint16_t port = ds::test::free_port();  // bound and released: nothing listens there
  EXPECT_EQ(bench("load --connect 127.0.0.1:" + std::to_string(port) + " --requests 1 --json", &out, 60), 3) << err_;
  EXPECT_TRUE(out.empty()) << out;
  EXPECT_NE(err_.find("cannot connect"), std::string::npos) << err_;
}

// ds-bench engine --backend cuda: a clear error and exit 1 where there is no usable GPU (here);
// on a GPU machine, the same table as the CPU run.
TEST_F(BenchLoad, EngineOnTheGpuOrAClearError) {
  if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "no " << kModel;
  std::string out;
  EXPECT_EQ(bench("engine --model " + kModel + " --backend tpu", &out), 2);
  const int rc = bench("engine --model " + kModel + " --backend cuda --repeats 1 --gen 4 --prompt 8 --json -q", &out);
  if (rc == 0) {
    const auto j = nlohmann::json::parse(out);
    EXPECT_EQ(j["backend"], "cuda");
    EXPECT_GT(j["decode_tok_s"].get<double>(), 0);
    return;
  }
  EXPECT_EQ(rc, 1) << err_;
  EXPECT_NE(err_.find("no CUDA backend on GPU 0"), std::string::npos) << err_;
  EXPECT_TRUE(out.empty()) << out;
}

}  // namespace
