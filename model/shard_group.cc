#include "model/shard_group.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <utility>

#include "model/tensor_parallel.h"

namespace ds {
namespace {

// s with its message prefixed (and suffixed), same code.
Status prefixed(const Status& s, const std::string& prefix, const std::string& suffix = "") {
  std::string m = prefix + s.message() + suffix;
  switch (s.code()) {
    case StatusCode::kOk: return s;
    case StatusCode::kInvalidArgument: return Status::InvalidArgument(std::move(m));
    case StatusCode::kNotFound: return Status::NotFound(std::move(m));
    case StatusCode::kCorruption: return Status::Corruption(std::move(m));
    case StatusCode::kNotSupported: return Status::NotSupported(std::move(m));
    case StatusCode::kIOError: return Status::IOError(std::move(m));
    case StatusCode::kResourceExhausted: return Status::ResourceExhausted(std::move(m));
    case StatusCode::kInternal: return Status::Internal(std::move(m));
  }
  return Status::Internal(std::move(m));
}

std::string rank_name(int rank, int n) {
  return "tensor-parallel rank " + std::to_string(rank) + " of " + std::to_string(n);
}

// "rank 1" / "ranks 1, 3".
std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

using Clock = std::chrono::steady_clock;

// How long run() waits for the ranks after the watchdog's abort, and the destructor for
// an abandoned rank's thread: ranks blocked in a collective come back at once (CPU) or
// once NCCL's kernels see the abort (well under a second); longer means stuck elsewhere.
std::chrono::milliseconds abort_grace(std::chrono::milliseconds step_timeout) {
  return std::min<std::chrono::milliseconds>(step_timeout, std::chrono::seconds(5));
}

// first_failed when the watchdog, not a rank, aborted the group.
constexpr int kWatchdog = -2;

}  // namespace

struct ShardGroup::Shared {
  explicit Shared(int n) : done(n, 1), exited(n, 1) {}

  std::mutex mu;
  std::condition_variable start_cv;  // ranks > 0: a new step, or stop
  std::condition_variable done_cv;   // run(): the last rank > 0 finished, or the watchdog fired
  std::condition_variable watch_cv;  // the watchdog: a step began or ended, or stop
  std::condition_variable exit_cv;   // the destructor: a rank thread left its loop
  uint64_t step = 0;                 // guarded by mu; bumped per run()
  bool stop = false;                 // guarded by mu
  int pending = 0;                   // guarded by mu; ranks > 0 still running the step
  std::vector<char> done;            // guarded by mu; per rank: finished the current step
  std::vector<char> exited;          // guarded by mu; per rank > 0: its thread left rank_loop (or never ran)
  // The step's tokens as ranks > 0 read them (set under mu before the step is published,
  // unchanged until every rank is done or the group failed for good): the caller's, or
  // with a watchdog the copy below, whose blocks point into tables.
  const std::vector<ForwardToken>* tokens = nullptr;
  const SampleStep* sampling = nullptr;  // run_sampled's step (copied with a watchdog), else null
  std::vector<ForwardToken> token_copy;
  SampleStep sampling_copy;
  std::vector<std::vector<int32_t>> tables;
  std::vector<const std::vector<int32_t>*> table_from;  // scratch: the caller's table of tables[i]
  std::vector<int> table_of;                            // scratch: per token, its index in tables or -1
  // The watchdog's view of the step.
  bool running = false;        // guarded by mu; published and run() has not returned yet
  Clock::time_point deadline;  // guarded by mu; of the running step
  bool fired = false;          // guarded by mu; the watchdog aborted the group (sticky)
  Clock::time_point fired_at;  // guarded by mu
  std::vector<int> late;       // guarded by mu; ranks unfinished when it fired
  std::atomic<int> first_failed{-1};  // the rank whose failure aborted the group, or kWatchdog

  // Copies tokens and the block tables they point to into token_copy / tables (one copy
  // per distinct table; a sequence's tokens are adjacent in a step). REQUIRES: mu held.
  void copy_tokens(const std::vector<ForwardToken>& in) {
    token_copy.assign(in.begin(), in.end());
    table_from.clear();
    table_of.assign(in.size(), -1);
    for (size_t i = 0; i < in.size(); ++i) {
      const std::vector<int32_t>* b = in[i].blocks;
      if (!b) continue;
      size_t t = table_from.size();
      if (t > 0 && table_from[t - 1] == b) t = t - 1;
      else t = std::find(table_from.begin(), table_from.end(), b) - table_from.begin();
      if (t == table_from.size()) table_from.push_back(b);
      table_of[i] = static_cast<int>(t);
    }
    if (tables.size() < table_from.size()) tables.resize(table_from.size());
    for (size_t t = 0; t < table_from.size(); ++t) tables[t].assign(table_from[t]->begin(), table_from[t]->end());
    for (size_t i = 0; i < in.size(); ++i) token_copy[i].blocks = table_of[i] < 0 ? nullptr : &tables[table_of[i]];
  }
};

Result<std::unique_ptr<ShardGroup>> ShardGroup::Create(std::shared_ptr<const Model> model, std::vector<ShardRank> ranks,
                                                       int block_size, int n_blocks, int max_tokens,
                                                       std::chrono::milliseconds step_timeout, int max_seq_positions,
                                                       DType kv_type) {
  const int n = static_cast<int>(ranks.size());
  if (n < 1) return Status::InvalidArgument("a tensor-parallel group needs at least one rank");
  if (step_timeout.count() < 0) {
    return Status::InvalidArgument("the tensor-parallel step timeout must be >= 0 ms (0: none), got " +
                                   std::to_string(step_timeout.count()));
  }
  DS_RETURN_IF_ERROR(check_tensor_parallel(*model, n));
  for (int r = 0; r < n; ++r) {
    const ShardRank& sr = ranks[r];
    if (!sr.backend) return Status::InvalidArgument(rank_name(r, n) + " has no backend");
    if (!sr.comm) return Status::InvalidArgument(rank_name(r, n) + " has no communicator");
    if (sr.comm->rank() != r || sr.comm->size() != n) {
      return Status::InvalidArgument(rank_name(r, n) + " was given the communicator of rank " + std::to_string(sr.comm->rank()) +
                                     " of " + std::to_string(sr.comm->size()) + " (pass the group's communicators in rank order)");
    }
  }

  std::unique_ptr<ShardGroup> g(new ShardGroup());
  g->shared_ = std::make_shared<Shared>(n);
  g->step_timeout_ = step_timeout;
  for (int r = 0; r < n; ++r) {
    auto rank = std::make_shared<Rank>();
    rank->index = r;
    rank->backend = std::move(ranks[r].backend);
    rank->comm = std::move(ranks[r].comm);
    rank->health = std::move(ranks[r].health);
    Result<std::shared_ptr<const ModelShard>> shard = shard_model(model, r, n);
    if (!shard.ok()) return shard.status();
    const ModelConfig& c = (*shard)->config;
    Result<std::unique_ptr<KvCache>> kv = KvCache::Create(*rank->backend, c.n_layer, c.kv_dim(), block_size, n_blocks, kv_type);
    if (!kv.ok()) return prefixed(kv.status(), rank_name(r, n) + ": ");
    rank->kv = std::move(kv).value();
    Result<std::unique_ptr<Forward>> f = Forward::CreateShard(*shard, *rank->backend, *rank->comm, *rank->kv, max_tokens, {},
                                                                max_seq_positions);
    if (!f.ok()) return prefixed(f.status(), rank_name(r, n) + ": ");
    rank->fwd = std::move(f).value();
    g->ranks_.push_back(std::move(rank));
  }
  for (int r = 1; r < n; ++r) {
    g->shared_->exited[r] = 0;  // no thread runs yet: no lock needed
    g->ranks_[r]->thread = std::thread(&ShardGroup::rank_loop, g->shared_, g->ranks_[r]);
  }
  if (step_timeout.count() > 0 && n > 1) g->watchdog_ = std::thread([g = g.get()] { g->watch(); });
  return g;
}

ShardGroup::~ShardGroup() {
  Shared& sh = *shared_;
  std::unique_lock<std::mutex> lock(sh.mu);
  sh.stop = true;
  sh.start_cv.notify_all();
  sh.watch_cv.notify_all();
  lock.unlock();
  if (watchdog_.joinable()) watchdog_.join();
  lock.lock();
  // Idle rank threads leave at once. One still in a step that run() gave up on gets a grace
  // period; then it is abandoned (see Hang in the header).
  const bool abandoned = std::find(sh.done.begin(), sh.done.end(), 0) != sh.done.end();
  auto all_exited = [&] { return std::count(sh.exited.begin() + 1, sh.exited.end(), 0) == 0; };
  if (abandoned) sh.exit_cv.wait_for(lock, abort_grace(step_timeout_), all_exited);
  else sh.exit_cv.wait(lock, all_exited);
  std::vector<char> exited = sh.exited;
  lock.unlock();
  for (int r = 1; r < size(); ++r) {
    std::thread& t = ranks_[r]->thread;
    if (!t.joinable()) continue;  // Create failed before starting it
    if (exited[r]) {
      t.join();
    } else {
      // Its Rank and the Shared state stay alive through the thread's own references.
      std::fprintf(stderr, "ds: %s did not return from a hung step; its thread is detached and its backend, "
                   "communicator and KV cache are leaked until it does\n", rank_name(r, size()).c_str());
      t.detach();
    }
  }
  // Each remaining Rank then frees its Forward, cache, communicator and backend, in that order.
}

void ShardGroup::rank_loop(std::shared_ptr<Shared> sh, std::shared_ptr<Rank> r) {
  uint64_t seen = 0;
  for (;;) {
    const std::vector<ForwardToken>* tokens = nullptr;
    const SampleStep* sampling = nullptr;
    {
      std::unique_lock<std::mutex> lock(sh->mu);
      sh->start_cv.wait(lock, [&] { return sh->stop || sh->step != seen; });
      if (sh->stop) break;
      seen = sh->step;
      tokens = sh->tokens;
      sampling = sh->sampling;
    }
    r->status = run_rank(*sh, *r, *tokens, sampling, &r->logits, &r->picked, &r->fallbacks);
    {
      std::lock_guard<std::mutex> lock(sh->mu);
      sh->done[r->index] = 1;
      if (--sh->pending == 0) sh->done_cv.notify_all();
    }
  }
  std::lock_guard<std::mutex> lock(sh->mu);
  sh->exited[r->index] = 1;
  sh->exit_cv.notify_all();
}

Status ShardGroup::run_rank(Shared& sh, Rank& r, const std::vector<ForwardToken>& tokens, const SampleStep* sampling,
                            std::vector<float>* logits, std::vector<int32_t>* picked, int* fallbacks) {
  Status s = sampling ? r.fwd->run_sampled(tokens, *sampling, picked, fallbacks) : r.fwd->run(tokens, logits);
  if (s.ok() && r.health) s = r.health();
  if (!s.ok()) {
    // Claim "first" before aborting: ranks that fail because of the abort come later.
    int none = -1;
    sh.first_failed.compare_exchange_strong(none, r.index);
    r.comm->abort();
  }
  return s;
}

void ShardGroup::watch() {
  Shared& sh = *shared_;
  std::unique_lock<std::mutex> lock(sh.mu);
  for (;;) {
    sh.watch_cv.wait(lock, [&] { return sh.stop || (sh.running && !sh.fired); });
    if (sh.stop) return;
    const uint64_t step = sh.step;
    if (sh.watch_cv.wait_until(lock, sh.deadline, [&] { return sh.stop || !sh.running || sh.step != step; })) continue;
    // The deadline passed with the step unfinished: abort, so that every rank blocked in a
    // collective (rank 0 in run() included) returns.
    sh.late.clear();
    for (int r = 0; r < size(); ++r) {
      if (!sh.done[r]) sh.late.push_back(r);
    }
    sh.fired = true;
    sh.fired_at = Clock::now();
    int none = -1;
    sh.first_failed.compare_exchange_strong(none, kWatchdog);
    lock.unlock();
    for (auto& r : ranks_) r->comm->abort();  // idempotent; one rank's may not reach the others' (NCCL across processes)
    lock.lock();
    sh.done_cv.notify_all();
  }
}

Status ShardGroup::hang_status(uint64_t step, const std::vector<int>& hung, const std::vector<int>& released) const {
  std::string m = "tensor-parallel " + rank_list(hung) + " of " + std::to_string(size()) + " did not finish step " +
                  std::to_string(step) + " within " +
                  std::to_string((step == 1 ? kFirstStepTimeoutFactor : 1) * step_timeout_.count()) +
                  " ms (hung); group aborted";
  if (!released.empty()) m += "; " + rank_list(released) + " returned after the abort";
  return Status::Internal(std::move(m));
}

Status ShardGroup::run(const std::vector<ForwardToken>& tokens, std::vector<float>* logits) {
  return run_step(tokens, nullptr, logits, nullptr, nullptr);
}

Status ShardGroup::run_sampled(const std::vector<ForwardToken>& tokens, const SampleStep& step,
                               std::vector<int32_t>* picked, int* fallbacks) {
  return run_step(tokens, &step, nullptr, picked, fallbacks);
}

Status ShardGroup::run_step(const std::vector<ForwardToken>& tokens, const SampleStep* sampling,
                            std::vector<float>* logits, std::vector<int32_t>* picked, int* fallbacks) {
  if (failed()) return failure_;
  Shared& sh = *shared_;
  const bool watched = watchdog_.joinable();
  uint64_t step = 0;
  {
    std::lock_guard<std::mutex> lock(sh.mu);
    if (watched) sh.copy_tokens(tokens);  // a rank run() gives up on must not read the caller's
    sh.tokens = watched ? &sh.token_copy : &tokens;
    if (watched && sampling) sh.sampling_copy = *sampling;
    sh.sampling = !sampling ? nullptr : watched ? &sh.sampling_copy : sampling;
    std::fill(sh.done.begin(), sh.done.end(), 0);
    sh.pending = size() - 1;
    step = ++sh.step;
    sh.running = true;
    sh.deadline = Clock::now() + (step == 1 ? kFirstStepTimeoutFactor : 1) * step_timeout_;
  }
  sh.start_cv.notify_all();
  sh.watch_cv.notify_all();
  std::vector<float> unused_logits;
  std::vector<int32_t> unused_picked;
  int unused_fallbacks = 0;
  ranks_[0]->status = run_rank(sh, *ranks_[0], tokens, sampling, logits ? logits : &unused_logits,
                               picked ? picked : &unused_picked, fallbacks ? fallbacks : &unused_fallbacks);
  std::unique_lock<std::mutex> lock(sh.mu);
  sh.done[0] = 1;
  sh.done_cv.wait(lock, [&] { return sh.pending == 0 || sh.fired; });
  if (sh.fired) sh.done_cv.wait_until(lock, sh.fired_at + abort_grace(step_timeout_), [&] { return sh.pending == 0; });
  sh.running = false;
  sh.watch_cv.notify_all();
  const int first = sh.first_failed.load();
  if (first == -1) return Status::Ok();
  std::vector<int> hung, released;  // of the ranks late at the deadline: still out, back
  for (int r : sh.late) (sh.done[r] ? released : hung).push_back(r);
  if (first == kWatchdog) {
    failure_ = hung.empty() ? hang_status(step, sh.late, {}) : hang_status(step, hung, released);
  } else if (!sh.done[first]) {  // its Status is still being written
    failure_ = Status::Internal(rank_name(first, size()) + " failed (the group is aborted) and has not returned");
  } else {
    const std::string also = hung.empty() ? "" : "; " + rank_list(hung) + " did not return after the abort (hung)";
    failure_ = prefixed(ranks_[first]->status, rank_name(first, size()) + " failed (the group is aborted): ", also);
  }
  return failure_;
}

}  // namespace ds
