// ds-client: generate text and tokenize with a GGUF model.
//
//   ds-client --model FILE generate [options] PROMPT     (PROMPT '-' reads stdin)
//   ds-client --connect HOST:PORT generate [options] PROMPT
//   ds-client --model FILE tokenize [--add-special] [--json] TEXT
//
// With --model the engine runs in this process (no node); with --connect the request
// goes to a ds-node through the ds::Client library (Ctrl-C cancels it there).
// Exit codes: 0 ok, 1 failure (model cannot be loaded), 2 usage error, 3 cannot
// connect, 4 request rejected (invalid, draining, no worker), 5 request failed while running,
// 130 cancelled with Ctrl-C (the partial result is still printed).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <random>

#include "actors/client.h"
#include "kernels/cpu/variants.h"
#include "model/engine.h"
#include "model/model.h"
#include "tools/common/cli_util.h"
#include "tools/common/tls_flags.h"

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
std::atomic<bool> g_cancel{false};
void on_sigint(int) {
  g_interrupted = 1;
  g_cancel.store(true);
}

struct GenerateArgs {
  std::string prompt;
  ds::SamplingParams params;
  bool seed_set = false;
  bool stream = false;
  bool json = false;
  bool no_bos = false;
  bool parse_special = false;
  std::string id;
};

std::string read_prompt(const std::string& p) {
  if (p != "-") return p;
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

void print_result(const GenerateArgs& a, const std::string& id, const std::vector<int32_t>& prompt_ids,
                  const std::vector<int32_t>& out, const std::string& text, const std::string& finish, double ttft_ms,
                  double total_ms, const std::string& error);

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
  if (std::string error; ds::cpu::select_variant(&error) == nullptr) {  // DS_CPU_KERNELS names a variant that cannot run
    std::cerr << "ds-client: " << error << "\n";
    return ds::cli::kExitUsage;
  }
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
  print_result(a, "", ids, out, text, ds::finish_reason_name(finish), ttft_ms < 0 ? 0 : ttft_ms, total_ms, error);
  if (finish == ds::FinishReason::kError) {
    std::cerr << "ds-client: generation failed: " << error << "\n";
    return ds::cli::kExitRequestFailed;
  }
  return finish == ds::FinishReason::kCancelled ? ds::cli::kExitInterrupted : ds::cli::kExitOk;
}

void print_result(const GenerateArgs& a, const std::string& id, const std::vector<int32_t>& prompt_ids,
                  const std::vector<int32_t>& out, const std::string& text, const std::string& finish, double ttft_ms,
                  double total_ms, const std::string& error) {
  if (a.json) {
    nlohmann::json j;
    if (!id.empty()) j["id"] = id;
    j["prompt_tokens"] = prompt_ids;
    j["tokens"] = out;
    j["text"] = text;
    j["finish_reason"] = finish;
    j["usage"] = {{"prompt_tokens", prompt_ids.size()}, {"completion_tokens", out.size()}};
    j["timing"] = {{"ttft_ms", ttft_ms}, {"total_ms", total_ms}};
    j["seed"] = a.params.seed;
    if (!error.empty()) j["error"] = error;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    if (!a.stream) std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  }
}

int run_remote(const std::string& target, const ds::TlsOptions& tls, GenerateArgs& a) {
  ds::ClientOptions co;
  co.tls = tls;
  if (!ds::parse_node_list(target, &co)) {
    std::cerr << "ds-client: --connect wants HOST:PORT[,HOST:PORT...], got '" << target << "'\n";
    return ds::cli::kExitUsage;
  }
  int rc = 0;
  auto client = ds::cli::connect_or_report(co, "ds-client", &rc);
  if (!client) return rc;
  if (!a.seed_set) a.params.seed = std::random_device{}() | (static_cast<uint64_t>(std::random_device{}()) << 32);
  ds::GenerateRequest req;
  req.id = a.id;
  req.prompt = read_prompt(a.prompt);
  req.add_bos = !a.no_bos;
  req.max_tokens = a.params.max_tokens;
  req.temperature = a.params.temperature;
  req.top_k = a.params.top_k;
  req.top_p = a.params.top_p;
  req.min_p = a.params.min_p;
  req.repeat_penalty = a.params.repeat_penalty;
  req.frequency_penalty = a.params.frequency_penalty;
  req.presence_penalty = a.params.presence_penalty;
  req.seed = a.params.seed;
  req.stop = a.params.stop;
  req.stream = a.stream;
  std::signal(SIGINT, on_sigint);
  auto on_chunk = [&](const ds::TokenChunk& c) {
    if (a.stream && !a.json && !c.text.empty()) {
      std::fwrite(c.text.data(), 1, c.text.size(), stdout);
      std::fflush(stdout);
    }
  };
  auto r = client->generate(req, on_chunk, &g_cancel);
  if (!r.ok()) {
    std::cerr << "ds-client: " << r.status().message() << "\n";
    if (r.status().code() == ds::StatusCode::kInvalidArgument) return ds::cli::kExitRejected;
    if (r.status().code() == ds::StatusCode::kIOError && r.status().message().find("lost") == std::string::npos) return ds::cli::kExitConnect;
    return ds::cli::kExitRequestFailed;
  }
  print_result(a, r->id, r->prompt_tokens, r->tokens, r->text, r->finish_reason, r->ttft_ms, r->total_ms, r->error);
  if (r->finish_reason == "error") {
    std::cerr << "ds-client: request " << r->id << " failed: " << r->error << "\n";
    return ds::cli::kExitRequestFailed;
  }
  return r->finish_reason == "cancelled" && g_interrupted ? ds::cli::kExitInterrupted : ds::cli::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds-client: generate text with a GGUF model (in-process engine with --model)"};
  app.set_help_all_flag("--help-all", "Show help for all subcommands");
  app.require_subcommand(1);
  std::string model_path, connect;
  int threads = 0, ctx = 0;
  bool quiet = false;
  auto* model_opt = app.add_option("--model", model_path, "GGUF model file to run in this process")->check(CLI::ExistingFile);
  app.add_option("--connect", connect, "HOST:PORT[,HOST:PORT...] of ds-nodes: the first that answers takes the request")->excludes(model_opt);
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 256));
  app.add_option("--ctx", ctx, "Context length in tokens (default: the model's)")->check(CLI::Range(0, 1 << 20));
  app.add_flag("-q,--quiet", quiet, "No progress output on stderr");
  ds::TlsOptions tls;
  ds::cli::add_tls_flags(app, &tls);

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
  gen->add_option("--id", g.id, "Request id (--connect; default: the node assigns one)");

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

  if (model_path.empty() && connect.empty()) {
    std::cerr << "ds-client: give --model FILE (run locally) or --connect HOST:PORT (send to a node)\n";
    return ds::cli::kExitUsage;
  }
  if (!connect.empty()) {
    if (tok->parsed()) {
      std::cerr << "ds-client: tokenize needs --model FILE\n";
      return ds::cli::kExitUsage;
    }
    return run_remote(connect, tls, g);
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
