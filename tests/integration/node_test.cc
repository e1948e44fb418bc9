// ds-node as users run it: real processes on 127.0.0.1, the real client library and CLIs.
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "actors/client.h"
#include "kernels/cpu/variants.h"
#include "model/engine.h"
#include "node_process.h"

namespace ds {
namespace {

using namespace std::chrono_literals;
const std::string kModels = DS_SHARED_MODELS;
const std::string kStories = kModels + "/stories260K.gguf";

class NodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kStories)) GTEST_SKIP() << "no shared models";
    std::string t = (std::filesystem::temp_directory_path() / "ds-node-XXXXXX").string();
    dir_ = mkdtemp(t.data());
  }
  void TearDown() override {
    nodes_.clear();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  test::Node& start(std::vector<std::string> extra = {}) {
    nodes_.push_back(std::make_unique<test::Node>(dir_, std::move(extra)));
    EXPECT_TRUE(nodes_.back()->ready()) << nodes_.back()->process().err();
    return *nodes_.back();
  }
  std::unique_ptr<Client> connect(const test::Node& n) { return test::connect_client(n); }
  // The first worker's status as n reports it (empty id when n does not answer).
  WorkerStatus first_worker(const test::Node& n) {
    auto c = connect(n);
    if (!c) return {};
    auto st = c->status();
    return st.ok() && !st->workers.empty() ? st->workers.at(0) : WorkerStatus{};
  }
  // Greedy tokens of prompt computed in this process, the reference for remote runs.
  std::vector<int32_t> local_tokens(const std::string& prompt, int n) {
    auto m = Model::Load(kStories);
    EngineOptions o;
    o.n_ctx = 512;
    o.max_batch = 1;
    auto e = Engine::Create(*m, make_cpu_backend({1}), o);
    SequenceRequest r;
    r.id = 1;
    r.prompt = (*m)->tokenizer().encode(prompt, true);
    r.params.max_tokens = n;
    EXPECT_TRUE((*e)->add(r).ok());
    std::vector<int32_t> out;
    while (!(*e)->idle()) {
      std::vector<TokenEvent> evs;
      EXPECT_TRUE((*e)->step(&evs).ok());
      for (auto& ev : evs)
        if (ev.token >= 0) out.push_back(ev.token);
    }
    return out;
  }
  int run_cli(const std::string& cmd, std::string* out = nullptr, std::string* err = nullptr) {
    const std::string o = dir_ + "/cli.out", e = dir_ + "/cli.err";
    const int st = std::system(("timeout 120 " + cmd + " >" + o + " 2>" + e).c_str());
    if (out) *out = test::slurp_file(o);
    if (err) *err = test::slurp_file(e);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  std::string tool(const char* t) { return std::string(DS_BUILD_DIR) + "/" + t; }
  // ds-client --json against n reproduces every golden case (tokens, prompt ids, text).
  void expect_golden(const test::Node& n) {
    std::ifstream golden(kModels + "/stories260K-golden.jsonl");
    std::string line;
    while (std::getline(golden, line)) {
      const auto g = nlohmann::json::parse(line);
      std::string out, err;
      ASSERT_EQ(run_cli(tool("ds-client") + " --connect " + n.address() + " generate --max-tokens 64 --json '" +
                            g["prompt"].get<std::string>() + "'",
                        &out, &err),
                0)
          << err;
      const auto j = nlohmann::json::parse(out);
      EXPECT_EQ(j["tokens"], g["gen_ids"]);
      EXPECT_EQ(j["prompt_tokens"], g["prompt_ids"]);
      EXPECT_EQ(j["text"], g["text"]);
      EXPECT_FALSE(j["id"].get<std::string>().empty());
    }
  }

  std::string dir_;
  std::vector<std::unique_ptr<test::Node>> nodes_;
};

TEST_F(NodeTest, GreedyOverTheNodeMatchesGolden) {
  test::Node& n = start({"--model", kStories, "--ctx", "512"});
  expect_golden(n);
}

TEST_F(NodeTest, AnF16KvCacheServesTheGoldenTokensAndStatusSaysSo) {
  test::Node& n = start({"--model", kStories, "--ctx", "512", "--kv-type", "f16"});
  expect_golden(n);
  const WorkerStatus w = first_worker(n);
  EXPECT_EQ(w.kv_type, "f16");
  EXPECT_GT(w.kv_bytes, 0);
}

TEST_F(NodeTest, TensorParallelWorkerServesTheGoldenTokens) {
  // One worker whose model is split over 2 CPU rank threads (the GPU path splits the same way
  // over --gpus with NCCL): same tokens as the single-rank engine.
  test::Node& n = start({"--model", kStories, "--ctx", "512", "--tensor-parallel", "2"});
  EXPECT_NE(n.process().err().find("2 tensor-parallel ranks"), std::string::npos) << n.process().err();
  expect_golden(n);
  EXPECT_EQ(first_worker(n).backend, "cpu-tp2");
  // --gpus needs a CUDA backend.
  std::string err;
  EXPECT_EQ(run_cli(tool("ds-node") + " --model " + kStories + " --backend cpu --gpus 0,1 --port 1", nullptr, &err), 2);
  EXPECT_NE(err.find("needs backend cuda or auto"), std::string::npos) << err;
}

TEST_F(NodeTest, SixteenConcurrentStreamsEachGetTheirOwnTokens) {
  test::Node& n = start({"--model", kStories, "--ctx", "512", "--max-batch", "8"});
  auto client = connect(n);
  ASSERT_TRUE(client);
  const int kClients = 16, kTokens = 40;
  std::vector<std::string> prompts;
  for (int i = 0; i < kClients; ++i) prompts.push_back(i % 2 ? "The little dog " + std::to_string(i) : "Once upon a time " + std::to_string(i));
  std::vector<Result<GenerateResult>> results(kClients, Status::Internal("not run"));
  std::vector<std::vector<uint32_t>> seqs(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      GenerateRequest r;
      r.prompt = prompts[i];
      r.max_tokens = kTokens;
      results[i] = client->generate(r, [&, i](const TokenChunk& c) { seqs[i].push_back(c.seq); });
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status().ToString();
    EXPECT_EQ(results[i]->finish_reason, "length");
    EXPECT_EQ(results[i]->tokens, local_tokens(prompts[i], kTokens)) << "client " << i;
    for (size_t k = 0; k < seqs[i].size(); ++k) ASSERT_EQ(seqs[i][k], k) << "client " << i;
  }
}

TEST_F(NodeTest, WorkerCrashIsRestartedAndRequestsResume) {
  test::Node& n = start({"--model", kStories, "--ctx", "512", "--fault-worker-crash-after-steps", "12"});
  auto client = connect(n);
  ASSERT_TRUE(client);
  std::vector<Result<GenerateResult>> results(4, Status::Internal("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      GenerateRequest r;
      r.prompt = "Once upon a time";
      r.max_tokens = 40 + i;
      results[i] = client->generate(r);
    });
  }
  for (auto& t : threads) t.join();
  const auto want = local_tokens("Once upon a time", 43);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status().ToString();
    EXPECT_EQ(results[i]->finish_reason, "length") << results[i]->error;
    EXPECT_EQ(results[i]->tokens, std::vector<int32_t>(want.begin(), want.begin() + 40 + i));
  }
  auto st = client->status();
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->workers.size(), 1u);
  EXPECT_EQ(st->workers[0].restarts, 1);
  EXPECT_NE(n.process().err().find("restart"), std::string::npos);
}

TEST_F(NodeTest, StuckEngineStepExitsTheNodeSoTheClusterCanFailOver) {
  // Step 3 never returns (a wedged GPU kernel, simulated): the node still answers heartbeats,
  // so without the watch its requests would wait forever. With --stuck-step-exit-ms it logs the
  // step and exits with status 6 (kExitStuckStep); the cluster tests show kill -9 failover.
  test::Node& n = start({"--model", kStories, "--ctx", "512", "--fault-worker-hang-after-steps", "3",
                         "--stuck-step-exit-ms", "400"});
  std::string out, err;
  const auto t0 = std::chrono::steady_clock::now();
  // The request dies with the node: a non-zero status (the connection is lost), not a hang.
  EXPECT_NE(run_cli(tool("ds-client") + " --connect " + n.address() + " generate --max-tokens 20 hi", &out, &err), 0);
  EXPECT_EQ(n.process().wait_exit(std::chrono::seconds(30)), 6) << n.process().err();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  const std::string log = n.process().err();
  EXPECT_NE(log.find("injected hang in step 3"), std::string::npos) << log;
  EXPECT_NE(log.find("an engine step has run for"), std::string::npos) << log;
  EXPECT_NE(log.find("limit 400 ms"), std::string::npos) << log;
}

TEST_F(NodeTest, WorkerThatKeepsFailingIsTakenOutNotRestartedForever) {
  test::Node& n = start({"--model", kStories, "--ctx", "512", "--fault-worker-crash-after-steps", "1",
                         "--fault-worker-crash-count", "1000"});
  auto client = connect(n);
  ASSERT_TRUE(client);
  GenerateRequest r;
  r.prompt = "Once upon a time";
  r.max_tokens = 20;
  auto res = client->generate(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->finish_reason, "error");
  EXPECT_NE(res->error.find("taken out of service"), std::string::npos) << res->error;
  auto st = client->status();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->workers[0].state, "failed");
  EXPECT_EQ(st->workers[0].restarts, 6);  // 5 restarts allowed, the 6th failure takes it out
  // New requests are refused quickly with a clear error.
  std::string out, err;
  EXPECT_EQ(run_cli(tool("ds-client") + " --connect " + n.address() + " generate --max-tokens 5 hi", &out, &err), 4);
  EXPECT_NE(err.find("no_worker"), std::string::npos) << err;
  EXPECT_NE(n.process().err().find("taken out of service"), std::string::npos);
}

TEST_F(NodeTest, WorkerWhoseEngineCannotStartIsRetriedThenTakenOut) {
  // The demo model (2 KV heads) cannot be split over 4 ranks: the engine never starts. The
  // worker fails like a crash, the supervisor retries with backoff, then takes it out; the node
  // stays up and refuses requests with no_worker instead of accepting work it cannot run.
  test::Node& n = start({"--tensor-parallel", "4"});
  auto client = connect(n);
  ASSERT_TRUE(client);
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  Result<NodeStatus> st = Status::Internal("no status");
  while (std::chrono::steady_clock::now() < end) {
    st = client->status();
    if (st.ok() && !st->workers.empty() && st->workers[0].state == "failed") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->workers.at(0).state, "failed");
  EXPECT_NE(n.process().err().find("cannot start its engine"), std::string::npos) << n.process().err();
  EXPECT_NE(n.process().err().find("not a multiple of 4"), std::string::npos) << n.process().err();
  std::string out, err;
  EXPECT_EQ(run_cli(tool("ds-client") + " --connect " + n.address() + " generate --max-tokens 5 hi", &out, &err), 4);
  EXPECT_NE(err.find("no_worker"), std::string::npos) << err;
}

TEST_F(NodeTest, KilledClientHasItsSequenceCancelled) {
  // A model slow enough that 3000 tokens take seconds: the kill lands mid-stream.
  const std::string model = dir_ + "/slow.gguf";
  ASSERT_EQ(run_cli(tool("ds-mkmodel") + " -q --dim 256 --layers 6 --heads 4 --kv-heads 4 --ffn 1024 --vocab 4000 --ctx 4096 --type f32 -o " + model), 0);
  test::Node& n = start({"--model", model, "--max-tokens-limit", "4000"});
  test::Process cli({tool("ds-client"), "--connect", n.address(), "generate", "--stream", "--max-tokens", "3000",
                     "--temperature", "0.9", "--seed", "1", "Once upon a time"},
                    dir_ + "/victim");
  auto client = connect(n);
  ASSERT_TRUE(client);
  bool active = false;
  for (int i = 0; i < 200 && !active; ++i) {
    auto st = client->status();
    active = st.ok() && st->workers[0].active == 1;
    if (!active) std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(active) << "the victim's request never ran";
  cli.kill_now();
  bool gone = false;
  for (int i = 0; i < 300 && !gone; ++i) {
    auto st = client->status();
    gone = st.ok() && st->workers[0].active == 0 && st->in_flight == 0;
    if (!gone) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(gone) << "the dead client's sequence still runs";
  EXPECT_NE(n.process().err().find("client gone, cancelling"), std::string::npos) << n.process().err();
}

TEST_F(NodeTest, SigtermDrainsInFlightRequestsThenExitsZero) {
  const std::string model = dir_ + "/slow.gguf";
  ASSERT_EQ(run_cli(tool("ds-mkmodel") + " -q --dim 256 --layers 6 --heads 4 --kv-heads 4 --ffn 1024 --vocab 4000 --ctx 4096 --type f32 -o " + model), 0);
  test::Node& n = start({"--model", model, "--max-batch", "4"});
  auto client = connect(n);
  ASSERT_TRUE(client);
  std::vector<Result<GenerateResult>> results(3, Status::Internal("not run"));
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      GenerateRequest r;
      r.prompt = "The little dog";
      r.max_tokens = 600;
      results[i] = client->generate(r, [&](const TokenChunk& c) {
        if (c.seq == 0) ++started;
      });
    });
  }
  // Bounded waits: a failure is reported, not waited on until ctest's timeout.
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (started.load() < 3 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(started.load(), 3) << "the three requests did not all start streaming";
  n.process().signal(SIGTERM);
  while (n.process().err().find("draining") == std::string::npos && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  EXPECT_NE(n.process().err().find("draining"), std::string::npos) << "no drain logged after SIGTERM";
  // New work is refused while the old finishes.
  std::string out, err;
  EXPECT_EQ(run_cli(tool("ds-client") + " --connect " + n.address() + " generate --max-tokens 5 hi", &out, &err), 4) << err;
  EXPECT_NE(err.find("draining"), std::string::npos) << err;
  for (auto& t : threads) t.join();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status().ToString();
    EXPECT_EQ(results[i]->finish_reason, "length");
    EXPECT_EQ(results[i]->tokens.size(), 600u);
  }
  EXPECT_EQ(n.process().wait_exit(30s), 0) << n.process().err();
  EXPECT_NE(n.process().err().find("drained"), std::string::npos) << n.process().err();
}

TEST_F(NodeTest, CtrlCInTheClientCancelsTheRemoteSequence) {
  const std::string model = dir_ + "/slow.gguf";
  ASSERT_EQ(run_cli(tool("ds-mkmodel") + " -q --dim 256 --layers 6 --heads 4 --kv-heads 4 --ffn 1024 --vocab 4000 --ctx 4096 --type f32 -o " + model), 0);
  test::Node& n = start({"--model", model, "--max-tokens-limit", "4000"});
  test::Process cli({tool("ds-client"), "--connect", n.address(), "generate", "--json", "--max-tokens", "3000", "hello"}, dir_ + "/ctrlc");
  while (n.process().err().find("accepted") == std::string::npos) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(100ms);
  cli.signal(SIGINT);
  EXPECT_EQ(cli.wait_exit(5s), 130) << cli.err();  // promptly, not when the 3000 tokens are done
  const auto j = nlohmann::json::parse(cli.out());
  EXPECT_EQ(j["finish_reason"], "cancelled");
  EXPECT_LT(j["tokens"].size(), 3000u);
  EXPECT_NE(n.process().err().find("finished: cancelled"), std::string::npos) << n.process().err();
}

TEST_F(NodeTest, BadRequestsGetTheirDocumentedErrors) {
  test::Node& n = start({"--model", kStories, "--ctx", "64"});
  const std::string base = tool("ds-client") + " --connect " + n.address() + " generate ";
  std::string out, err;
  EXPECT_EQ(run_cli(base + "--max-tokens 0 hi", &out, &err), 2);  // CLI range check
  EXPECT_EQ(run_cli(base + "--max-tokens 100000 hi", &out, &err), 4) << err;
  EXPECT_NE(err.find("max_tokens"), std::string::npos) << err;
  EXPECT_EQ(run_cli(base + "--max-tokens 5 '" + std::string(400, 'x') + "'", &out, &err), 4) << err;
  EXPECT_NE(err.find("context"), std::string::npos) << err;
  EXPECT_EQ(run_cli(base + "--max-tokens 5 --repeat-penalty 50 hi", &out, &err), 4) << err;
  EXPECT_NE(err.find("repeat_penalty"), std::string::npos) << err;
  EXPECT_EQ(run_cli(base + "--max-tokens 5 --id 'bad id!' hi", &out, &err), 4) << err;
  EXPECT_EQ(run_cli(tool("ds-client") + " --connect 127.0.0.1:1 generate hi", &out, &err), 3) << err;
  EXPECT_EQ(run_cli(tool("ds-admin") + " --connect 127.0.0.1:1 cluster status", &out, &err), 3) << err;
  // The node still serves after all that.
  EXPECT_EQ(run_cli(base + "--max-tokens 5 hi", &out, &err), 0) << err;
}

TEST_F(NodeTest, BadFlagsAndConfigAreRefusedAtStart) {
  std::string out, err;
  EXPECT_EQ(run_cli(tool("ds-node") + " --no-such-flag", &out, &err), 2);
  EXPECT_EQ(run_cli(tool("ds-node") + " --port 0", &out, &err), 2);
  EXPECT_EQ(run_cli(tool("ds-node") + " --model /nonexistent.gguf", &out, &err), 2);
  EXPECT_NE(err.find("nonexistent"), std::string::npos) << err;
  std::ofstream(dir_ + "/bad.toml") << "[node]\nprot = 1\n";
  EXPECT_EQ(run_cli(tool("ds-node") + " --config " + dir_ + "/bad.toml", &out, &err), 2);
  EXPECT_NE(err.find("prot"), std::string::npos) << err;
  EXPECT_EQ(run_cli("env DS_MAX_BATCH=zero " + tool("ds-node"), &out, &err), 2);
  EXPECT_NE(err.find("DS_MAX_BATCH"), std::string::npos) << err;
  // A corrupt model: start-up failure, exit 1, the reason logged.
  std::ofstream(dir_ + "/bad.gguf") << "GGUF not really";
  EXPECT_EQ(run_cli(tool("ds-node") + " --port " + std::to_string(test::free_port()) + " --data-dir " + dir_ + "/d --model " + dir_ + "/bad.gguf", &out, &err), 1);
  EXPECT_NE(err.find("Corruption"), std::string::npos) << err;
}

TEST_F(NodeTest, StatusShowsNodeAndWorkerAsTableAndJson) {
  test::Node& n = start({"--max-batch", "4", "--log-format", "json"});  // built-in demo model
  EXPECT_NE(n.process().err().find("RANDOM"), std::string::npos);
  // JSON lines: every line parses and names the node.
  std::istringstream lines(n.process().err());
  std::string line;
  int parsed = 0;
  while (std::getline(lines, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["node"], std::string("n") + std::to_string(n.port()));
    EXPECT_TRUE(j.contains("level") && j.contains("msg") && j.contains("ts"));
    ++parsed;
  }
  EXPECT_GE(parsed, 2);
  std::string out, err;
  ASSERT_EQ(run_cli(tool("ds-admin") + " --connect " + n.address() + " cluster status --json", &out, &err), 0) << err;
  const auto j = nlohmann::json::parse(out);
  ASSERT_EQ(j["nodes"].size(), 1u);
  EXPECT_EQ(j["nodes"][0]["state"], "up");
  EXPECT_EQ(j["nodes"][0]["workers"][0]["backend"], "cpu");
  EXPECT_EQ(j["nodes"][0]["workers"][0]["state"], "running");
  EXPECT_GT(j["nodes"][0]["workers"][0]["kv_blocks_total"].get<int>(), 0);
  EXPECT_EQ(j["nodes"][0]["workers"][0]["kv_type"], "f32");  // --kv-type auto on the CPU
  EXPECT_GT(j["nodes"][0]["workers"][0]["kv_bytes"].get<int64_t>(), 0);
  // The node picks the CPU kernels this test process would (same CPU, no cpu-kernels set).
  std::string no_error;
  const cpu::Variant* best = cpu::find_variant("auto", &no_error);
  ASSERT_NE(best, nullptr) << no_error;
  EXPECT_EQ(j["nodes"][0]["workers"][0]["cpu_kernels"], best->name);
  ASSERT_EQ(run_cli(tool("ds-admin") + " --connect " + n.address() + " cluster status", &out, &err), 0) << err;
  EXPECT_NE(out.find("WORKER"), std::string::npos);
  EXPECT_NE(out.find(" " + std::string(best->name) + " "), std::string::npos) << out;
}

}  // namespace
}  // namespace ds
