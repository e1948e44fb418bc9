// model/backend_sampler.h: sampling whose first half runs on a backend
// (Backend::sample_candidates: penalties and each row's best candidates where the logits
// are, only those downloaded): a step's rows (SampleStep), the backend buffers that run
// them (BackendSampler), and the host's last stage from the downloaded words (pick_token).
// Forward::run_sampled puts them together, for one rank or for the vocabulary slices of a
// tensor-parallel group (kernels/sampling.h: merge_sampled_slices). The tokens are those
// of host sampling (model/sampler.h: sample_from_candidates says when exactly).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "model/sampler.h"
#include "model/status.h"

namespace ds {

// One step's sampling: a row per logits row, in order.
struct SampleStep {
  std::vector<SampleRow> rows;                  // row j's words start at rows[j].out
  std::vector<int32_t> pen_tokens, pen_counts;  // the rows' penalty entries (vocabulary ids)
  std::vector<SamplingParams> params;           // each row's request parameters
  std::vector<uint64_t> seeds, draws;           // each row's sampler seed and draw number
  int64_t words = 0;                            // sum over the rows of 2 + m

  // Appends the row of a sequence's draw number `draw`: history (prompt + generated) gives
  // the penalties; max_candidates the most candidates (EngineOptions::backend_sample_candidates).
  void add(const SamplingParams& p, const std::vector<int32_t>& history, int32_t n_vocab, int32_t max_candidates,
           uint64_t seed, uint64_t draw);
  size_t size() const { return rows.size(); }
};

// Row j's token from the step's words (Backend::sample_candidates' layout); -1 when the
// candidates cannot tell (then sample_penalized over the whole penalized row).
int32_t pick_token(const SampleStep& s, size_t j, int32_t n_vocab, const uint64_t* words);

// Backend memory for sampling, grown on demand, freed with the sampler.
class BackendSampler {
 public:
  explicit BackendSampler(Backend& be) : be_(be) {}
  ~BackendSampler();
  BackendSampler(const BackendSampler&) = delete;
  BackendSampler& operator=(const BackendSampler&) = delete;

  // Backend::sample_candidates over logits ([rows.size(), n_vocab], backend memory,
  // penalized in place) for rows and their penalty entries (ids in [0, n_vocab)); the
  // n_words words stay in backend memory at words(). ResourceExhausted when the buffers do
  // not fit.
  Status run(float* logits, int64_t n_vocab, const std::vector<SampleRow>& rows, const std::vector<int32_t>& pen_tokens,
             const std::vector<int32_t>& pen_counts, int64_t n_words);
  uint64_t* words() const { return static_cast<uint64_t*>(out_.p); }
  // Backend memory for floats floats (a gather of every rank's words); null when out of memory.
  float* gather_buffer(size_t floats);

 private:
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
  };
  bool grow(Buf& b, size_t bytes);
  Backend& be_;
  Buf rows_, pen_tokens_, pen_counts_, out_, gather_;
};

}  // namespace ds
