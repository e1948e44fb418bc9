// model/engine.h: continuous batching over one model replica.
//
// Sequences are added at any time; each step() runs ONE forward pass over every
// running sequence: decode tokens first (one per sequence), then prompt chunks with
// the rest of the per-step token budget. A sequence whose KV blocks (prompt +
// max_tokens, reserved up front so it can never run out mid-stream) do not fit waits
// in FIFO order until blocks are free. Finished or cancelled sequences leave at once.
//
// Resume: a request may carry tokens already generated (and streamed) elsewhere; they
// are prefilled after the prompt, the sampler continues at draw number
// generated.size(), and events continue with that index, so the stream goes on as if
// nothing had happened.
//
// Thread-safety: none. One thread (the worker's) owns an Engine.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/forward.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

namespace ds {

struct EngineOptions {
  int max_batch = 8;             // running sequences
  int max_step_tokens = 256;     // tokens per forward pass (prefill chunk budget)
  int kv_block_size = 16;        // positions per KV block
  int kv_cache_tokens = 0;       // KV capacity in positions; 0: max_batch * n_ctx (capped at 1 GiB... see .cc)
  int n_ctx = 0;                 // max positions per sequence; 0: the model's training context
};

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
const char* finish_reason_name(FinishReason r);

struct SequenceRequest {
  uint64_t id = 0;
  std::vector<int32_t> prompt;     // token ids (BOS included when wanted)
  std::vector<int32_t> generated;  // resume: tokens already produced and delivered
  SamplingParams params;
};

struct TokenEvent {
  uint64_t id = 0;
  int32_t index = -1;        // index of the generated token (0-based); -1 when none (finish only)
  int32_t token = -1;
  std::string text;          // new valid-UTF-8 text (held back while it may start a stop string)
  FinishReason finish = FinishReason::kNone;
  std::string error;         // for kError
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int kv_blocks_total = 0;
  int kv_blocks_used = 0;
  uint64_t tokens_generated = 0;
  uint64_t steps = 0;
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model, std::unique_ptr<Backend> backend,
                                                const EngineOptions& opts);
  ~Engine();

  // Validates and queues a sequence. InvalidArgument for bad ids, sampling values,
  // empty prompt, or prompt + max_tokens beyond n_ctx / the whole KV cache.
  Status add(SequenceRequest req);
  // Cancels a running or waiting sequence; its kCancelled event comes from the next step().
  void cancel(uint64_t id);
  // One forward pass; appends this step's events. Non-OK only for backend failures
  // (then every running sequence has received a kError event).
  Status step(std::vector<TokenEvent>* events);
  bool idle() const { return running_.empty() && waiting_.empty() && cancelled_.empty(); }
  EngineStats stats() const;
  const Model& model() const { return *model_; }
  const EngineOptions& options() const { return opts_; }
  Backend& backend() { return *backend_; }

 private:
  struct Seq {
    SequenceRequest req;
    std::vector<int32_t> tokens;   // prompt + generated (the input so far)
    int32_t n_done = 0;            // positions already in the KV cache
    int32_t n_generated = 0;
    std::vector<int32_t> blocks;
    SamplerState sampler;
    std::unique_ptr<IncrementalDecoder> decoder;
    std::string held;              // text held back (possible stop-string prefix)
    std::string tail;              // recent emitted text, to find stop strings across pieces
  };

  Engine(std::shared_ptr<const Model> m, std::unique_ptr<Backend> b, const EngineOptions& o)
      : model_(std::move(m)), backend_(std::move(b)), opts_(o) {}
  void admit();
  void finish(Seq& s, FinishReason r, std::vector<TokenEvent>* events, std::string error = {});
  // Runs the sampled token through detokenizer and stop strings; returns true when done.
  bool emit_token(Seq& s, int32_t tok, std::vector<TokenEvent>* events);

  std::shared_ptr<const Model> model_;
  std::unique_ptr<Backend> backend_;
  EngineOptions opts_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<Forward> fwd_;
  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;
  std::vector<uint64_t> cancelled_;
  std::vector<float> logits_;
  uint64_t tokens_generated_ = 0;
  uint64_t steps_ = 0;
};

}  // namespace ds
