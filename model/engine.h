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
// Tensor parallelism: CreateTensorParallel runs one replica split over N ranks (GPUs, or
// CPU rank threads) as a ShardGroup (model/shard_group.h). Scheduling, block tables and
// the sampler stay here, once, in the caller's thread (rank 0); every step all ranks run
// the same tokens on their shards in lockstep and the sampler sees the gathered logits,
// so sampling, seeds and resume behave as in a single-rank engine. A failed rank fails
// the group as one unit: step() returns a Status naming the rank, every sequence gets a
// kError event, and the engine refuses all later work (drop it and build a new one).
// So does a rank that hangs, when opts.shard_step_timeout_ms sets a step deadline.
//
// Thread-safety: none. One thread (the worker's) owns an Engine; a tensor-parallel
// engine's rank threads are internal and joined by its destructor.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/comm.h"
#include "model/forward.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

namespace ds {

// Where the sampler's first half runs (EngineOptions::backend_sampling). On the backend,
// Backend::sample_candidates applies the penalties and finds each row's best candidates
// (and softmax sums) in backend memory; only those are downloaded, and the host finishes
// the draw (sample_from_candidates, model/sampler.h), falling back to the whole row when
// the candidates cannot tell. Tokens are those of host sampling (exactly for greedy and
// top-k <= the candidate count; otherwise up to the order of a double sum). Tensor-parallel,
// each rank samples its vocabulary slice and only the candidates are gathered
// (Forward::run_sampled), instead of every rank's logits.
enum class BackendSampling {
  kAuto,  // on the backend for GPUs (memory not host memory) and for every tensor-parallel engine
  kOff,   // on the host, from the whole downloaded (tensor-parallel: gathered) logits
  kOn,    // on the backend even when it is host memory (for tests)
};

struct EngineOptions {
  int max_batch = 8;             // running sequences
  int max_step_tokens = 256;     // tokens per forward pass (prefill chunk budget)
  int kv_block_size = 16;        // positions per KV block
  int kv_cache_tokens = 0;       // KV capacity in positions; 0: max_batch * n_ctx, within 4 GiB of cache on
                                 // the CPU and within memory_percent of the device's memory on GPUs
  int memory_percent = 90;       // GPUs: weights, working buffers and KV cache stay within this percent of
                                 // the device's memory and within what is free at start (plan_kv_memory);
                                 // 0: no fitting (the capacity as on the CPU; allocation failures still
                                 // give clean errors)
  std::optional<DType> kv_type;  // KV cache elements: kF32 or kF16 (half the memory); unset: F16 on
                                 // GPUs (backends whose memory is not host memory), F32 on the CPU
  int n_ctx = 0;                 // max positions per sequence; 0: the model's training context
  BackendSampling backend_sampling = BackendSampling::kAuto;
  int backend_sample_candidates = kSampleMaxCandidates;  // candidates per row, in [1, kSampleMaxCandidates]
  int shard_step_timeout_ms = 0;  // tensor-parallel only: a step's deadline, then the group fails as hung
                                  // (ShardGroup's Hang; the first step gets 10x); 0: none
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
  DType kv_type = DType::kF32;  // the KV cache's elements
  size_t kv_bytes = 0;          // the KV cache's memory (tensor-parallel: each rank's share)
  uint64_t tokens_generated = 0;
  uint64_t steps = 0;
  uint64_t backend_samples = 0;           // tokens sampled from backend-side candidates
  uint64_t backend_sample_fallbacks = 0;  // of those, how many needed the whole row downloaded
};

// How an engine on a GPU fits into its device's memory (plan_kv_memory).
struct KvMemoryPlan {
  size_t budget = 0;        // min(free, memory_percent of total)
  size_t weights = 0;       // model weights (one rank's share)
  size_t working = 0;       // activation buffers, attention workspace, GEMM scratch, a margin
  size_t per_position = 0;  // KV-cache bytes of one token position (all layers, K and V)
  int kv_tokens = 0;        // the capacity chosen (whole blocks)
  bool reduced = false;     // an automatic capacity was cut to fit
  std::string note;         // what was decided, in words (for the worker's log)
};

// The KV capacity for an engine with these (normalized) options on a device with `free` of
// `total` bytes, whose weights take `weights` bytes and per-position cache `per_position`:
// the requested capacity when it fits; an automatic one (requested_tokens 0) cut to what
// fits; ResourceExhausted, naming the figures and what to change, when not even one
// sequence of n_ctx positions fits, or an explicit kv_cache_tokens does not.
Result<KvMemoryPlan> plan_kv_memory(const EngineOptions& normalized, int requested_tokens,
                                    size_t weights, size_t working, size_t per_position, size_t free, size_t total);

class ShardGroup;

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model, std::unique_ptr<Backend> backend,
                                                const EngineOptions& opts);

  // A tensor-parallel engine over backends.size() ranks: rank r runs on backends[r] and
  // comms[r] (one group, comms[r]->rank() == r, working on that backend's memory: a CPU
  // group for CPU backends, NCCL for CUDA ones). rank_health, when not empty, has one
  // check per rank (an empty function: none), called after each of that rank's steps; a
  // non-OK check fails the rank. Each rank holds a KV cache of opts' size for its own KV
  // heads (the 4 GiB default cap applies per rank). InvalidArgument when the model does
  // not split over that many ranks (check_tensor_parallel's message names the dimension
  // and the rank counts that fit), the vectors' sizes or ranks disagree, or
  // opts.shard_step_timeout_ms is negative.
  static Result<std::unique_ptr<Engine>> CreateTensorParallel(std::shared_ptr<const Model> model,
                                                              std::vector<std::unique_ptr<Backend>> backends,
                                                              std::vector<std::unique_ptr<Communicator>> comms,
                                                              const EngineOptions& opts,
                                                              std::vector<std::function<Status()>> rank_health = {});
  // CreateTensorParallel over n_ranks CPU backends of threads_per_rank threads each
  // (0: all cores, each) and a CPU communicator group (ranks are threads of this process).
  // interleave_quant: CpuBackendOptions::interleave_quant of every rank.
  static Result<std::unique_ptr<Engine>> CreateCpuTensorParallel(std::shared_ptr<const Model> model, int n_ranks,
                                                                 int threads_per_rank, const EngineOptions& opts,
                                                                 bool interleave_quant = true);
  // CreateTensorParallel over one CUDA backend per GPU in gpu_ids (rank r on gpu_ids[r])
  // and an NCCL group; each rank's health check is its backend's sticky error. NotSupported
  // when this build has no CUDA backend or no NCCL; InvalidArgument for an empty or
  // repeated GPU list; Internal naming the GPU when a backend or NCCL fails to start.
  // (model/engine_cuda.cc)
  static Result<std::unique_ptr<Engine>> CreateCudaTensorParallel(std::shared_ptr<const Model> model,
                                                                  const std::vector<int>& gpu_ids, const EngineOptions& opts);
  ~Engine();

  // Validates and queues a sequence. InvalidArgument for bad ids, sampling values,
  // empty prompt, or prompt + max_tokens beyond n_ctx / the whole KV cache; the group's
  // failure after a tensor-parallel rank failed.
  Status add(SequenceRequest req);
  // Cancels a running or waiting sequence; its kCancelled event comes from the next step().
  void cancel(uint64_t id);
  // One forward pass; appends this step's events. Non-OK only for backend failures
  // (Backend::failure() non-empty after the step, or a failed allocation; then every running
  // sequence has received a kError event). Tensor-parallel: a rank's
  // failure (naming the rank) also ends every waiting sequence with kError, and every
  // later step() returns it again.
  Status step(std::vector<TokenEvent>* events);
  bool idle() const { return running_.empty() && waiting_.empty() && cancelled_.empty(); }
  EngineStats stats() const;
  // How the KV cache was fitted into the device's memory ("" on the CPU): the worker logs it.
  const std::string& memory_note() const { return memory_plan_.note; }
  // How one-token steps run where that is a choice ("" when it is not: the CPU, tensor
  // parallel, a backend without a fused decode op): the worker logs it.
  std::string decode_note() const;
  // What the backend's start-up self-check switched off (Backend::self_check_note; rank 0's
  // when tensor-parallel, whose ranks run the same kernels), "" when nothing.
  std::string backend_note();
  // The plan behind it (all zero on the CPU).
  const KvMemoryPlan& memory_plan() const { return memory_plan_; }
  const Model& model() const { return *model_; }
  const EngineOptions& options() const { return opts_; }
  // The backend (tensor-parallel: rank 0's).
  Backend& backend();
  // Ranks of the tensor-parallel group (1 for a single-backend engine).
  int ranks() const;

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

  Engine(std::shared_ptr<const Model> m, std::unique_ptr<Backend> b, const EngineOptions& o);
  KvCache& kv() const;  // whose BlockAllocator keeps the block tables (tensor-parallel: rank 0's)
  void admit();
  void finish(Seq& s, FinishReason r, std::vector<TokenEvent>* events, std::string error = {});
  // Fails every running sequence (and, tensor-parallel, every waiting one) with st.
  Status fail_step(const Status& st, std::vector<TokenEvent>* events);
  // Runs the sampled token through detokenizer and stop strings; returns true when done.
  bool emit_token(Seq& s, int32_t tok, std::vector<TokenEvent>* events);

  std::shared_ptr<const Model> model_;
  std::unique_ptr<Backend> backend_;  // single-rank (null when tensor-parallel)
  EngineOptions opts_;
  std::unique_ptr<KvCache> kv_;       // single-rank
  std::unique_ptr<Forward> fwd_;      // single-rank
  std::unique_ptr<ShardGroup> group_;  // tensor-parallel (null when single-rank)
  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;
  std::vector<uint64_t> cancelled_;
  std::vector<float> logits_;
  bool sample_on_backend_ = false;
  KvMemoryPlan memory_plan_;
  uint64_t backend_samples_ = 0, backend_sample_fallbacks_ = 0;
  uint64_t tokens_generated_ = 0;
  uint64_t steps_ = 0;
};

}  // namespace ds
