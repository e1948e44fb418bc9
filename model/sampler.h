// model/sampler.h: picks the next token from logits.
//
// Pipeline (llama.cpp's default order): repetition / frequency / presence penalties
// over the last penalty_last_n tokens -> top-k -> top-p -> min-p -> temperature ->
// draw. temperature <= 0 is greedy (argmax after penalties, lowest id on ties).
//
// Randomness is counter-based: the draw for generated token i uses
// u = hash(seed, i), so SamplerState is just {seed, counter}. It serializes to a
// short string, and a stream resumed elsewhere from prompt + generated tokens with
// the same state continues exactly as if it had never stopped.
//
// Thread-safety: pure functions; SamplerState is a value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/status.h"

namespace ds {

struct SamplingParams {
  float temperature = 0.0f;  // <= 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repeat_penalty = 1.0f;     // 1: off
  float frequency_penalty = 0.0f;  // 0: off
  float presence_penalty = 0.0f;   // 0: off
  int penalty_last_n = 64;
  uint64_t seed = 0;
  int max_tokens = 128;
  std::vector<std::string> stop;
  bool ignore_eos = false;
};

// InvalidArgument naming the field when a value is out of range.
Status validate(const SamplingParams& p);

struct SamplerState {
  uint64_t seed = 0;
  uint64_t counter = 0;  // draws made so far (= tokens generated)
  std::string serialize() const;  // "ds-sampler/1:<seed>:<counter>"
  static std::optional<SamplerState> parse(const std::string& s);
  bool operator==(const SamplerState&) const = default;
};

// Samples one token and advances st.counter. history: the sequence so far (prompt +
// generated), for penalties. logits is modified (penalties applied).
int32_t sample_token(std::vector<float>& logits, const SamplingParams& p, const std::vector<int32_t>& history,
                     SamplerState* st);

// Uniform double in [0, 1) for (seed, counter): the draw the sampler makes.
double sampler_uniform(uint64_t seed, uint64_t counter);

// The pieces of sample_token, for sampling whose first half runs on a backend
// (Backend::sample_candidates: penalties and the best candidates on the device, only
// those downloaded; Engine uses it on GPUs).

// The penalty stage's (token, count) entries for history: the distinct tokens of the last
// penalty_last_n (in [0, n)), sorted by token; empty when no penalty is set. sample_token
// applies penalize_logit (kernels/sampling.h) to each.
std::vector<std::pair<int32_t, int32_t>> penalty_entries(const SamplingParams& p, const std::vector<int32_t>& history,
                                                         int32_t n);
// sample_token after its penalty stage, for draw number `draw` (logits already penalized;
// NaN logits become -inf).
int32_t sample_penalized(std::vector<float>& logits, const SamplingParams& p, uint64_t seed, uint64_t draw);

struct SampleCandidate {
  float logit;  // penalties applied
  int32_t id;
};
// How many candidates (SampleRow::m) a backend should return for p over n logits: 1 when
// greedy, top_k when 0 < top_k <= max_candidates, else max_candidates; at most n.
int32_t sample_candidates_wanted(const SamplingParams& p, int32_t n, int32_t max_candidates);
// Whether sample_from_candidates may need the row's softmax sums (SampleRow::want_sums).
bool sample_sums_wanted(const SamplingParams& p, int32_t n, int32_t m);
// The token sample_penalized would pick from a row of n penalized logits, given only the
// row's m best candidates c (in the sampler's order: logit descending, id ascending) and,
// when sample_sums_wanted, sums = {sum exp(l - c[0]), sum exp((l - c[0]) / temperature)}
// over the whole row. -1 when the m candidates cannot tell (the nucleus or the min-p set
// reaches past them, or the draw lands beyond them with nothing truncated): then sample the
// whole row with sample_penalized. Identical to sample_penalized whenever every kept
// candidate is among the m (greedy, top_k <= m); otherwise the row's sums come from the
// backend, summed in another order (double precision: a different token needs a
// cumulative probability within ~1e-15 of top_p or of the draw).
int32_t sample_from_candidates(const SampleCandidate* c, size_t m, int32_t n, const SamplingParams& p,
                               const double* sums, uint64_t seed, uint64_t draw);

}  // namespace ds
