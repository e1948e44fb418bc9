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

}  // namespace ds
