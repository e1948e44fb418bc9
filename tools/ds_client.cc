// ds-client: generate text and tokenize with a GGUF model.
//
//   ds-client --model FILE generate [options] PROMPT     (PROMPT '-' reads stdin)
//   ds-client --model FILE tokenize [--add-special] [--json] TEXT
//
// With --model the engine runs in this process (no node). Exit codes: 0 ok,
// 1 failure (model cannot be loaded), 2 usage error, 4 request rejected (invalid),
// 5 request failed while running.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <random>

#include "model/engine.h"
#include "model/model.h"
#include "tools/common/cli_util.h"

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void on_sigint(int) { g_interrupted = 1; }

struct GenerateArgs {
  std::string prompt;
  ds::SamplingParams params;
  bool seed_set = false;
  bool stream = false;
  bool json = false;
  bool no_bos = false;
  bool parse_special = false;
};

std::string read_prompt(const std::string& p) {
  if (p != "-") return p;
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

int run_generate(const std::shared_ptr<ds::Model>& model, GenerateArgs& a, int threads, int ctx) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const std::string prompt = read_prompt(a.prompt);
  std::vector<int32_t> ids = model->tokenizer().encode(prompt, !a.no_bos, a.parse_special);
  if (!a.seed_set) a.params.seed = std::random_device{}() | (static_cast<uint64_t>(std::random_device{}()) << 32);

  ds::EngineOptions eo;
  eo.max_batch = 1;
  eo.n_ctx = ctx;
  eo.kv_cache_tokens = 0;
  auto engine = ds::Engine::Create(model, ds::make_cpu_backend({threads}), eo);
  if (!engine.ok()) {
    std::cerr << "ds-client: " << engine.status().ToString() << "\n";
    return ds::cli::kExitFailure;
  }
  ds::SequenceRequest req;
  req.id = 1;
  req.prompt = ids;
  req.params = a.params;
  if (ds::Status s = (*engine)->add(req); !s.ok()) {
    std::cerr << "ds-client: request rejected: " << s.message() << "\n";
    return ds::cli::kExitRejected;
  }
  std::signal(SIGINT, on_sigint);
  std::vector<int32_t> out;
  std::string text;
  ds::FinishReason finish = ds::FinishReason::kNone;
  std::string error;
  double ttft_ms = -1;
  bool cancel_sent = false;
  while (finish == ds::FinishReason::kNone) {
    if (g_interrupted && !cancel_sent) {
      (*engine)->cancel(1);
      cancel_sent = true;
    }
    std::vector<ds::TokenEvent> events;
    ds::Status s = (*engine)->step(&events);
    for (const ds::TokenEvent& ev : events) {
      if (ev.token >= 0) {
        out.push_back(ev.token);
        if (ttft_ms < 0) ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      }
      text += ev.text;
      if (a.stream && !a.json && !ev.text.empty()) {
        std::fwrite(ev.text.data(), 1, ev.text.size(), stdout);
        std::fflush(stdout);
      }
      if (ev.finish != ds::FinishReason::kNone) {
        finish = ev.finish;
        error = ev.error;
      }
    }
    if (!s.ok() && finish == ds::FinishReason::kNone) {
      finish = ds::FinishReason::kError;
      error = s.ToString();
    }
  }
  const double total_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (a.json) {
    nlohmann::json j;
    j["prompt_tokens"] = ids;
    j["tokens"] = out;
    j["text"] = text;
    j["finish_reason"] = ds::finish_reason_name(finish);
    j["usage"] = {{"prompt_tokens", ids.size()}, {"completion_tokens", out.size()}};
    j["timing"] = {{"ttft_ms", ttft_ms < 0 ? 0 : ttft_ms}, {"total_ms", total_ms}};
    j["seed"] = a.params.seed;
    if (!error.empty()) j["error"] = error;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    if (!a.stream) std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  }
  if (finish == ds::FinishReason::kError) {
    std::cerr << "ds-client: generation failed: " << error << "\n";
    return ds::cli::kExitRequestFailed;
  }
  return ds::cli::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds-client: generate text with a GGUF model (in-process engine with --model)"};
  app.set_help_all_flag("--help-all", "Show help for all subcommands");
  app.require_subcommand(1);
  std::string model_path;
  int threads = 0, ctx = 0;
  bool quiet = false;
  app.add_option("--model", model_path, "GGUF model file to run in this process")->required()->check(CLI::ExistingFile);
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 256));
  app.add_option("--ctx", ctx, "Context length in tokens (default: the model's)")->check(CLI::Range(0, 1 << 20));
  app.add_flag("-q,--quiet", quiet, "No progress output on stderr");

  GenerateArgs g;
  CLI::App* gen = app.add_subcommand("generate", "Generate a continuation of PROMPT");
  gen->add_option("PROMPT", g.prompt, "Prompt text, or - to read stdin")->required();
  gen->add_option("--max-tokens", g.params.max_tokens, "Most tokens to generate")->check(CLI::Range(1, 1 << 20));
  gen->add_option("--temperature", g.params.temperature, "Sampling temperature; 0 is greedy")->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-k", g.params.top_k, "Keep the K most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", g.params.top_p, "Nucleus sampling mass (1: off)")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--min-p", g.params.min_p, "Drop tokens below P x the top probability (0: off)")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--repeat-penalty", g.params.repeat_penalty, "Repetition penalty (1: off)");
  gen->add_option("--frequency-penalty", g.params.frequency_penalty, "Frequency penalty (0: off)");
  gen->add_option("--presence-penalty", g.params.presence_penalty, "Presence penalty (0: off)");
  gen->add_option("--seed", g.params.seed, "Random seed (same seed, same tokens)")->each([&](const std::string&) { g.seed_set = true; });
  gen->add_option("--stop", g.params.stop, "Stop when this text appears (repeatable)");
  gen->add_flag("--stream", g.stream, "Print tokens as they are generated");
  gen->add_flag("--json", g.json, "Print one JSON object with ids, text, finish reason, usage and timing");
  gen->add_flag("--no-bos", g.no_bos, "Do not add the BOS token");
  gen->add_flag("--parse-special", g.parse_special, "Treat special-token text in the prompt as control tokens");

  std::string text;
  bool add_special = false, tok_json = false, tok_parse_special = false;
  CLI::App* tok = app.add_subcommand("tokenize", "Print the token ids of TEXT");
  tok->add_option("TEXT", text, "Text, or - to read stdin")->required();
  tok->add_flag("--add-special", add_special, "Add BOS/EOS as the model does");
  tok->add_flag("--parse-special", tok_parse_special, "Treat special-token text as control tokens");
  tok->add_flag("--json", tok_json, "Print a JSON array");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : ds::cli::kExitUsage;
  }

  ds::LoadOptions lo;
  lo.vocab_only = tok->parsed();
  ds::cli::Progress progress("loading " + model_path, !quiet && !lo.vocab_only);
  lo.progress = [&](size_t d, size_t t) { progress.update(d, t); };
  auto model = ds::Model::Load(model_path, lo);
  if (!model.ok()) {
    std::cerr << "ds-client: cannot load model: " << model.status().ToString() << "\n";
    return ds::cli::kExitFailure;
  }
  if (tok->parsed()) {
    std::vector<int32_t> ids = (*model)->tokenizer().encode(read_prompt(text), add_special, tok_parse_special);
    if (tok_json) {
      std::cout << nlohmann::json(ids).dump() << "\n";
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
    }
    return ds::cli::kExitOk;
  }
  return run_generate(*model, g, threads, ctx);
}
