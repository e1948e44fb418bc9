// The command-line tools as a user runs them: real processes, real files.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kernels/cpu/variants.h"

namespace {

const std::string kBuild = DS_BUILD_DIR;
const std::string kModels = DS_SHARED_MODELS;

struct Proc {
  int rc = -1;
  std::string out, err;
};

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string t = (std::filesystem::temp_directory_path() / "ds-cli-XXXXXX").string();
    dir_ = mkdtemp(t.data());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs a shell command line (bounded by `timeout`), capturing stdout and stderr.
  Proc run(const std::string& cmd, int timeout_s = 120) {
    const std::string o = dir_ + "/out", e = dir_ + "/err";
    const std::string full = "timeout " + std::to_string(timeout_s) + " " + cmd + " >" + o + " 2>" + e;
    const int st = std::system(full.c_str());
    Proc r;
    r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.out = slurp(o);
    r.err = slurp(e);
    return r;
  }
  std::string tool(const char* name) { return kBuild + "/" + name; }
  bool have_models() { return std::filesystem::exists(kModels + "/stories260K.gguf"); }

  std::string dir_;
};

TEST_F(Cli, GenerateJsonMatchesGolden) {
  if (!have_models()) GTEST_SKIP();
  std::ifstream golden(kModels + "/stories260K-golden.jsonl");
  std::string line;
  std::getline(golden, line);
  const auto g = nlohmann::json::parse(line);
  Proc r = run(tool("ds-client") + " -q --model " + kModels + "/stories260K.gguf generate --max-tokens 64 --json '" +
              g["prompt"].get<std::string>() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_tokens"], g["prompt_ids"]);
  EXPECT_EQ(j["tokens"], g["gen_ids"]);
  EXPECT_EQ(j["text"], g["text"]);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["usage"]["completion_tokens"], 64);
  EXPECT_GE(j["timing"]["total_ms"].get<double>(), j["timing"]["ttft_ms"].get<double>());
}

TEST_F(Cli, StreamPrintsTheSameTextAndStdinPromptWorks) {
  if (!have_models()) GTEST_SKIP();
  const std::string m = kModels + "/stories260K.gguf";
  Proc a = run(tool("ds-client") + " -q --model " + m + " generate --max-tokens 30 'The little dog'");
  Proc b = run(tool("ds-client") + " -q --model " + m + " generate --max-tokens 30 --stream 'The little dog'");
  Proc c = run("sh -c \"printf 'The little dog' | " + tool("ds-client") + " -q --model " + m + " generate --max-tokens 30 -\"");
  ASSERT_EQ(a.rc, 0);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.out, c.out);
  EXPECT_GT(a.out.size(), 20u);
}

TEST_F(Cli, SeededSamplingIsReproducible) {
  if (!have_models()) GTEST_SKIP();
  const std::string cmd = tool("ds-client") + " -q --model " + kModels + "/stories260K.gguf generate --max-tokens 40 --temperature 0.9 --top-k 40 --top-p 0.9 --min-p 0.05 --seed 11 --json 'Once'";
  Proc a = run(cmd), b = run(cmd);
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(nlohmann::json::parse(a.out)["tokens"], nlohmann::json::parse(b.out)["tokens"]);
}

TEST_F(Cli, TokenizeVocabOnlyFile) {
  if (!have_models()) GTEST_SKIP();
  Proc r = run(tool("ds-client") + " --model " + kModels + "/vocab/ggml-vocab-llama-spm.gguf tokenize --json 'Hello world'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out), nlohmann::json::parse("[15043, 3186]"));
  r = run(tool("ds-client") + " --model " + kModels + "/vocab/ggml-vocab-llama-spm.gguf tokenize --add-special 'Hello world'");
  EXPECT_EQ(r.out, "1 15043 3186\n");
}

TEST_F(Cli, ExitCodesMeanWhatTheReadmeSays) {
  // usage errors: 2
  EXPECT_EQ(run(tool("ds-client") + " --bogus").rc, 2);
  EXPECT_EQ(run(tool("ds-client") + " --model /nonexistent.gguf generate hi").rc, 2);
  EXPECT_EQ(run(tool("ds-mkmodel") + " --preset nope --type f32 -o " + dir_ + "/x.gguf").rc, 2);
  EXPECT_EQ(run(tool("ds-mkmodel") + " --preset tiny --type q9 -o " + dir_ + "/x.gguf").rc, 2);
  EXPECT_EQ(run(tool("ds-bench") + " engine").rc, 2);
  // --help: 0
  for (const char* t : {"ds-client", "ds-mkmodel", "ds-bench"}) {
    Proc h = run(tool(t) + " --help");
    EXPECT_EQ(h.rc, 0) << t;
    EXPECT_NE(h.out.find("Usage"), std::string::npos) << t;
  }
  // a corrupt model: 1, with the reason
  std::ofstream(dir_ + "/bad.gguf") << "GGUF\x03garbage that is not a model at all, but long enough to read";
  Proc r = run(tool("ds-client") + " --model " + dir_ + "/bad.gguf generate hi");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("Corruption"), std::string::npos) << r.err;
  if (!have_models()) return;
  // a prompt longer than the context: rejected, 4
  r = run(tool("ds-client") + " -q --model " + kModels + "/stories260K.gguf --ctx 8 generate 'Once upon a time there was a dog'");
  EXPECT_EQ(r.rc, 4) << r.err;
  EXPECT_NE(r.err.find("context"), std::string::npos) << r.err;
}

TEST_F(Cli, MkmodelIsDeterministicAndLoadable) {
  const std::string a = dir_ + "/a.gguf", b = dir_ + "/b.gguf", c = dir_ + "/c.gguf";
  for (const char* type : {"f32", "f16", "bf16", "q8_0", "q4_0"}) {
    ASSERT_EQ(run(tool("ds-mkmodel") + " -q --preset tiny-qwen2 --type " + type + " --seed 3 -o " + a).rc, 0);
    ASSERT_EQ(run(tool("ds-mkmodel") + " -q --preset tiny-qwen2 --type " + type + " --seed 3 -o " + b).rc, 0);
    ASSERT_EQ(run(tool("ds-mkmodel") + " -q --preset tiny-qwen2 --type " + type + " --seed 4 -o " + c).rc, 0);
    EXPECT_EQ(slurp(a), slurp(b)) << type;
    EXPECT_NE(slurp(a), slurp(c)) << type;
    Proc g = run(tool("ds-client") + " -q --model " + a + " generate --max-tokens 8 --json hello");
    ASSERT_EQ(g.rc, 0) << g.err;
    EXPECT_EQ(nlohmann::json::parse(g.out)["tokens"].size(), 8u) << type;
  }
  Proc bad = run(tool("ds-mkmodel") + " --arch llama --dim 48 --layers 1 --heads 4 --kv-heads 2 --ffn 64 --vocab 400 --type q8_0 -o " + a);
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("multiples of 32"), std::string::npos) << bad.err;
}

TEST_F(Cli, BenchJsonHasTheContractFields) {
  const std::string m = dir_ + "/m.gguf";
  ASSERT_EQ(run(tool("ds-mkmodel") + " -q --preset tiny --type q8_0 -o " + m).rc, 0);
  Proc r = run(tool("ds-bench") + " engine --model " + m + " --prompt 16 --gen 8 --batch 1,4 --repeats 1 --json", 300);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"model", "threads", "prefill_tok_s", "decode_tok_s", "batches"}) EXPECT_TRUE(j.contains(k)) << k;
  ASSERT_EQ(j["batches"].size(), 2u);
  EXPECT_EQ(j["batches"][1]["batch"], 4);
  EXPECT_GT(j["batches"][1]["decode_tok_s"].get<double>(), 0);
  // What a batch-1 step reads: less than every weight byte (tiny's untied embedding table is
  // read one row a token), and decode_gb_s is that times decode_tok_s.
  const double step = j["decode_bytes_per_token"].get<double>(), all = j["weight_bytes"].get<double>();
  EXPECT_GT(step, 0);
  EXPECT_LT(step, all);
  EXPECT_NEAR(j["decode_gb_s"].get<double>(), step * j["decode_tok_s"].get<double>() / 1e9, 1e-6);
  // The CPU kernels' variant: the best this CPU runs by default; --cpu-kernels picks another
  // (generic runs everywhere); a name no build has is a usage error (exit 2) naming the choices.
  EXPECT_FALSE(j["cpu_kernels"].get<std::string>().empty());
  Proc g = run(tool("ds-bench") + " engine --model " + m + " --prompt 8 --gen 4 --batch 1 --repeats 1 --json --cpu-kernels " +
                   ds::cpu::compiled_variants().back().variant->name, 300);
  ASSERT_EQ(g.rc, 0) << g.err;
  EXPECT_EQ(nlohmann::json::parse(g.out)["cpu_kernels"], ds::cpu::compiled_variants().back().variant->name);
  Proc bad = run(tool("ds-bench") + " engine --model " + m + " --cpu-kernels avx1024 --json", 60);
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("no such variant of the CPU kernels in this build (it has: auto, "), std::string::npos) << bad.err;
}

}  // namespace
