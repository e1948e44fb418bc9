// kernels/sampling.h: the arithmetic that the host sampler (model/sampler.cc) and the
// backends' sample_candidates share, so that sampling on a backend picks the same tokens
// as sampling on the host from the same logits.
//
// sampling.cc is compiled with -ffp-contract=off (and the CUDA kernel uses explicitly
// rounded operations): a fused multiply-add would round differently.
#pragma once

#include <cstdint>

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

namespace ref {
// Backend::sample_candidates on host memory: penalties, NaN -> -inf, a stable sort of the
// row's ids by the sampler's order for the m best, and s1/s2 summed in id order.
void sample_candidates(const SampleArgs& a);
}  // namespace ref

}  // namespace ds
