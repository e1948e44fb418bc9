#include "model/shard_group.h"

#include <string>
#include <utility>

#include "model/tensor_parallel.h"

namespace ds {
namespace {

// s with its message prefixed, same code.
Status prefixed(const Status& s, const std::string& prefix) {
  std::string m = prefix + s.message();
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

}  // namespace

Result<std::unique_ptr<ShardGroup>> ShardGroup::Create(std::shared_ptr<const Model> model, std::vector<ShardRank> ranks,
                                                       int block_size, int n_blocks, int max_tokens) {
  const int n = static_cast<int>(ranks.size());
  if (n < 1) return Status::InvalidArgument("a tensor-parallel group needs at least one rank");
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
  for (int r = 0; r < n; ++r) {
    auto rank = std::make_unique<Rank>();
    rank->index = r;
    rank->backend = std::move(ranks[r].backend);
    rank->comm = std::move(ranks[r].comm);
    rank->health = std::move(ranks[r].health);
    Result<std::shared_ptr<const ModelShard>> shard = shard_model(model, r, n);
    if (!shard.ok()) return shard.status();
    const ModelConfig& c = (*shard)->config;
    Result<std::unique_ptr<KvCache>> kv = KvCache::Create(*rank->backend, c.n_layer, c.kv_dim(), block_size, n_blocks);
    if (!kv.ok()) return prefixed(kv.status(), rank_name(r, n) + ": ");
    rank->kv = std::move(kv).value();
    Result<std::unique_ptr<Forward>> f = Forward::CreateShard(*shard, *rank->backend, *rank->comm, *rank->kv, max_tokens);
    if (!f.ok()) return prefixed(f.status(), rank_name(r, n) + ": ");
    rank->fwd = std::move(f).value();
    g->ranks_.push_back(std::move(rank));
  }
  for (int r = 1; r < n; ++r) {
    Rank* rank = g->ranks_[r].get();
    rank->thread = std::thread([g = g.get(), rank] { g->rank_loop(*rank); });
  }
  return g;
}

ShardGroup::~ShardGroup() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& r : ranks_) {
    if (r->thread.joinable()) r->thread.join();
  }
  // Each Rank then frees its Forward, cache, communicator and backend, in that order.
}

void ShardGroup::rank_loop(Rank& r) {
  uint64_t seen = 0;
  for (;;) {
    const std::vector<ForwardToken>* tokens = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || step_ != seen; });
      if (stop_) return;
      seen = step_;
      tokens = tokens_;
    }
    r.status = run_rank(r, *tokens, &r.logits);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
}

Status ShardGroup::run_rank(Rank& r, const std::vector<ForwardToken>& tokens, std::vector<float>* logits) {
  Status s = r.fwd->run(tokens, logits);
  if (s.ok() && r.health) s = r.health();
  if (!s.ok()) {
    // Claim "first" before aborting: ranks that fail because of the abort come later.
    int none = -1;
    first_failed_.compare_exchange_strong(none, r.index);
    r.comm->abort();
  }
  return s;
}

Status ShardGroup::run(const std::vector<ForwardToken>& tokens, std::vector<float>* logits) {
  if (failed()) return failure_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_ = &tokens;
    pending_ = size() - 1;
    ++step_;
  }
  start_cv_.notify_all();
  ranks_[0]->status = run_rank(*ranks_[0], tokens, logits);
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return pending_ == 0; });
    tokens_ = nullptr;
  }
  const int first = first_failed_.load();
  if (first < 0) return Status::Ok();
  failure_ = prefixed(ranks_[first]->status, rank_name(first, size()) + " failed (the group is aborted): ");
  return failure_;
}

}  // namespace ds
