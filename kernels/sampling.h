// kernels/sampling.h: the arithmetic that the host sampler (model/sampler.cc) and the
// backends' sample_candidates share, so that sampling on a backend picks the same tokens
// as sampling on the host from the same logits.
//
// sampling.cc is compiled with -ffp-contract=off (and the CUDA kernel uses explicitly
// rounded operations): a fused multiply-add would round differently.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace ds {

// A logit after the repetition / frequency / presence penalties for a token seen `count`
// (>= 1) times in the penalty window: l / rp when l > 0 else l * rp (when rp != 1), then
// l - (count * fp + pp), every step rounded to float.
float penalize_logit(float l, int32_t count, float repeat_penalty, float frequency_penalty, float presence_penalty);

// The sampler's total order on logits as an unsigned key (larger key = ranks first):
// NaN ranks as -inf and -0 as +0, so "a before b" is key(a) > key(b) || (== and id a < id b).
inline uint32_t sample_order_key(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) u = 0xff800000u;  // NaN -> -inf
  if (u == 0x80000000u) u = 0;                            // -0 -> +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A candidate word of SampleArgs::out.
inline uint64_t sample_pack(float logit, int32_t id) {
  uint32_t u;
  __builtin_memcpy(&u, &logit, 4);
  return (static_cast<uint64_t>(static_cast<uint32_t>(id)) << 32) | u;
}
inline float sample_logit(uint64_t word) {
  const uint32_t u = static_cast<uint32_t>(word);
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline int32_t sample_id(uint64_t word) { return static_cast<int32_t>(word >> 32); }

// Merges the words of one logits row that was sampled in vocabulary slices (tensor
// parallelism: Backend::sample_candidates on each rank's slice of the row, with penalties
// for that slice's ids and the row's want_sums) into the words sample_candidates gives for
// the whole row: slice r's words (2 + slice_m[r]: sums, then candidates with ids local to
// the slice, which starts at id id_begin[r]) -> out (2 + m words). The candidates are the
// row's m best in the sampler's order, exactly; the sums are the slices' rescaled to the
// row's best logit (s1 += s1_r * exp(max_r - max), s2 += s2_r * exp((max_r - max) / T)), in
// double: they equal the whole row's up to summation order. A slice whose best logit is
// -inf adds nothing (unless every slice's is). REQUIRES: m <= sum of slice_m, each slice's
// candidates in the sampler's order.
void merge_sampled_slices(const std::vector<const uint64_t*>& slices, const std::vector<int32_t>& slice_m,
                          const std::vector<int64_t>& id_begin, int32_t m, bool want_sums, float temperature,
                          uint64_t* out);

namespace ref {
// Backend::sample_candidates on host memory: penalties, NaN -> -inf, a stable sort of the
// row's ids by the sampler's order for the m best, and s1/s2 summed in id order.
void sample_candidates(const SampleArgs& a);
}  // namespace ref

}  // namespace ds
