#include "model/backend_sampler.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/sampling.h"

namespace ds {

void SampleStep::add(const SamplingParams& p, const std::vector<int32_t>& history, int32_t n_vocab,
                     int32_t max_candidates, uint64_t seed, uint64_t draw) {
  SampleRow r;
  r.m = sample_candidates_wanted(p, n_vocab, max_candidates);
  r.want_sums = sample_sums_wanted(p, n_vocab, r.m);
  r.temperature = p.temperature;
  r.repeat_penalty = p.repeat_penalty;
  r.frequency_penalty = p.frequency_penalty;
  r.presence_penalty = p.presence_penalty;
  r.pen_begin = static_cast<int32_t>(pen_tokens.size());
  for (const auto& [tok, count] : penalty_entries(p, history, n_vocab)) {
    pen_tokens.push_back(tok);
    pen_counts.push_back(count);
  }
  r.pen_count = static_cast<int32_t>(pen_tokens.size()) - r.pen_begin;
  r.out = words;
  words += 2 + r.m;
  rows.push_back(r);
  params.push_back(p);
  seeds.push_back(seed);
  draws.push_back(draw);
}

int32_t pick_token(const SampleStep& s, size_t j, int32_t n_vocab, const uint64_t* words) {
  const SampleRow& r = s.rows[j];
  const uint64_t* w = words + r.out;
  double sums[2];
  std::memcpy(sums, w, sizeof sums);
  std::vector<SampleCandidate> cands(r.m);
  for (int32_t i = 0; i < r.m; ++i) cands[i] = {sample_logit(w[2 + i]), sample_id(w[2 + i])};
  return sample_from_candidates(cands.data(), cands.size(), n_vocab, s.params[j], r.want_sums ? sums : nullptr,
                                s.seeds[j], s.draws[j]);
}

BackendSampler::~BackendSampler() {
  for (Buf* b : {&rows_, &pen_tokens_, &pen_counts_, &out_, &gather_})
    if (b->p) be_.free(b->p);
}

bool BackendSampler::grow(Buf& b, size_t bytes) {
  if (b.bytes >= bytes) return true;
  if (b.p) be_.free(b.p);
  const size_t want = std::max(bytes, b.bytes * 2);
  b.p = be_.alloc(want);
  b.bytes = b.p ? want : 0;
  return b.p != nullptr;
}

float* BackendSampler::gather_buffer(size_t floats) {
  return grow(gather_, floats * sizeof(float)) ? static_cast<float*>(gather_.p) : nullptr;
}

Status BackendSampler::run(float* logits, int64_t n_vocab, const std::vector<SampleRow>& rows,
                           const std::vector<int32_t>& pen_tokens, const std::vector<int32_t>& pen_counts,
                           int64_t n_words) {
  if (rows.empty()) return Status::Ok();
  const size_t n_pen = std::max<size_t>(pen_tokens.size(), 1);
  if (!grow(rows_, rows.size() * sizeof(SampleRow)) || !grow(pen_tokens_, n_pen * sizeof(int32_t)) ||
      !grow(pen_counts_, n_pen * sizeof(int32_t)) || !grow(out_, n_words * sizeof(uint64_t))) {
    return Status::ResourceExhausted("out of " + std::string(be_.name()) + " memory for sampling buffers");
  }
  be_.upload(rows_.p, rows.data(), rows.size() * sizeof(SampleRow));
  if (!pen_tokens.empty()) {
    be_.upload(pen_tokens_.p, pen_tokens.data(), pen_tokens.size() * sizeof(int32_t));
    be_.upload(pen_counts_.p, pen_counts.data(), pen_counts.size() * sizeof(int32_t));
  }
  SampleArgs a;
  a.logits = logits;
  a.n_rows = static_cast<int64_t>(rows.size());
  a.n_vocab = n_vocab;
  a.rows = static_cast<const SampleRow*>(rows_.p);
  a.pen_tokens = static_cast<const int32_t*>(pen_tokens_.p);
  a.pen_counts = static_cast<const int32_t*>(pen_counts_.p);
  a.out = words();
  be_.sample_candidates(a);
  return Status::Ok();
}

}  // namespace ds
