// model/tensor_parallel.h: one rank's slice of a model for tensor parallelism
// (Megatron-style), run by Forward::CreateShard over a Communicator (kernels/comm.h).
//
// Rank r of n holds, for every layer:
//   attention  heads [r*H/n, (r+1)*H/n) and KV heads [r*KV/n, (r+1)*KV/n): the rows of
//              wq, wk, wv (and of the qwen2 biases) for those heads (column-parallel),
//              and the matching columns of wo (row-parallel). GQA groups stay whole: query
//              head h reads KV head h / (H/KV) on its own rank.
//   FFN        rows [r*F/n, (r+1)*F/n) of gate and up, the same columns of down.
//   after wo and after down, each rank holds a partial sum of the [n_tokens, n_embd]
//   output: an all-reduce makes the residual stream identical on every rank.
// and once:
//   output     vocab rows [V*r/n, V*(r+1)/n) of the output matrix (vocab-parallel; sizes
//              differ by at most one row): logits are all-gathered (Forward::run), or each
//              rank samples its slice and only the candidates (greedy: the best
//              (value, id)) are gathered and merged (Forward::run_sampled).
//   replicated token embedding, norms (small, and every rank needs the whole residual).
//
// Row slices point into the model's mapped file, so any weight type splits by rows;
// column slices (wo, down) are copies and need whole quantization blocks per rank:
// (columns / n) % block_size == 0 (32 for q8_0/q4_0, 256 for the k-quants).
// check_tensor_parallel() says which constraint a rank count breaks.
//
// Thread-safety: a ModelShard is immutable after shard_model(); the Model it came from
// is kept alive by it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/status.h"

namespace ds {

struct ModelShard {
  int rank = 0;
  int n_ranks = 1;
  // This rank's view: n_head, n_head_kv and n_ff are the rank's (divided by n_ranks);
  // n_embd, head_dim and n_vocab are the model's; tied_output is false (the output
  // rows are this rank's slice even when the model ties them to the embedding).
  ModelConfig config;
  // This rank's weights, shapes as in model.h with the rank's dimensions; output is
  // [vocab_rows, n_embd], tok_embd the whole [n_vocab, n_embd].
  ModelWeights weights;
  int64_t vocab_begin = 0;  // first output row (token id) of this rank
  int64_t vocab_rows = 0;   // output rows of this rank

  std::shared_ptr<const Model> model;       // owns the mapped file the row slices point into
  std::vector<std::shared_ptr<void>> owned;  // the column slices' copies (64-byte aligned)
};

// The first output row (token id) of rank `rank` when n_vocab rows split over n_ranks;
// vocab_shard_begin(V, n, n) == V.
int64_t vocab_shard_begin(int64_t n_vocab, int rank, int n_ranks);

// OK when the model splits over n_ranks; otherwise InvalidArgument naming the first
// dimension or tensor that does not split, and the rank counts (up to 16) that do.
Status check_tensor_parallel(const Model& model, int n_ranks);

// Rank `rank`'s slice of model. InvalidArgument as check_tensor_parallel(), or for a
// rank outside [0, n_ranks).
Result<std::shared_ptr<const ModelShard>> shard_model(std::shared_ptr<const Model> model, int rank, int n_ranks);

}  // namespace ds
