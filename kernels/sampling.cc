#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace ds {

float penalize_logit(float l, int32_t count, float repeat_penalty, float frequency_penalty, float presence_penalty) {
  if (repeat_penalty != 1.0f) l = l > 0 ? l / repeat_penalty : l * repeat_penalty;
  const float fc = static_cast<float>(count) * frequency_penalty;
  const float sub = fc + presence_penalty;
  return l - sub;
}

void merge_sampled_slices(const std::vector<const uint64_t*>& slices, const std::vector<int32_t>& slice_m,
                          const std::vector<int64_t>& id_begin, int32_t m, bool want_sums, float temperature,
                          uint64_t* out) {
  const size_t R = slices.size();
  // An R-way merge of lists already in the sampler's order (key descending, id ascending;
  // slices cover increasing id ranges, so on equal keys the lower slice's id is lower).
  std::vector<int32_t> at(R, 0);
  for (int32_t j = 0; j < m; ++j) {
    size_t best = R;
    uint32_t best_key = 0;
    for (size_t r = 0; r < R; ++r) {
      if (at[r] >= slice_m[r]) continue;
      const uint32_t k = sample_order_key(sample_logit(slices[r][2 + at[r]]));
      if (best == R || k > best_key) {
        best = r;
        best_key = k;
      }
    }
    if (best == R) break;  // fewer candidates than m (REQUIRES says this does not happen)
    const uint64_t w = slices[best][2 + at[best]++];
    out[2 + j] = sample_pack(sample_logit(w), static_cast<int32_t>(sample_id(w) + id_begin[best]));
  }
  double s1 = 0, s2 = 0;
  if (want_sums) {
    const double mx = sample_logit(out[2]);
    for (size_t r = 0; r < R; ++r) {
      if (slice_m[r] < 1) continue;
      const double mr = sample_logit(slices[r][2]);
      if (mr == -INFINITY && mx != -INFINITY) continue;  // exp(-inf) adds nothing; its own sums are NaN
      double a1, a2;
      std::memcpy(&a1, &slices[r][0], 8);
      std::memcpy(&a2, &slices[r][1], 8);
      s1 += a1 * std::exp(mr - mx);
      s2 += a2 * std::exp((mr - mx) / temperature);
    }
  }
  std::memcpy(&out[0], &s1, 8);
  std::memcpy(&out[1], &s2, 8);
}

namespace ref {

void sample_candidates(const SampleArgs& a) {
  const int64_t V = a.n_vocab;
  std::vector<int32_t> idx(V);
  for (int64_t r = 0; r < a.n_rows; ++r) {
    const SampleRow& row = a.rows[r];
    float* l = a.logits + r * V;
    for (int32_t i = row.pen_begin; i < row.pen_begin + row.pen_count; ++i) {
      float& x = l[a.pen_tokens[i]];
      x = penalize_logit(x, a.pen_counts[i], row.repeat_penalty, row.frequency_penalty, row.presence_penalty);
    }
    for (int64_t i = 0; i < V; ++i)
      if (std::isnan(l[i])) l[i] = -INFINITY;
    std::iota(idx.begin(), idx.end(), 0);
    const int64_t m = std::clamp<int64_t>(row.m, 1, std::min<int64_t>(V, kSampleMaxCandidates));
    std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), [&](int32_t x, int32_t y) {
      const uint32_t kx = sample_order_key(l[x]), ky = sample_order_key(l[y]);
      return kx > ky || (kx == ky && x < y);
    });
    uint64_t* out = a.out + row.out;
    double s1 = 0, s2 = 0;
    if (row.want_sums) {
      const double mx = l[idx[0]];
      for (int64_t i = 0; i < V; ++i) {
        s1 += std::exp(static_cast<double>(l[i]) - mx);
        s2 += std::exp((static_cast<double>(l[i]) - mx) / row.temperature);
      }
    }
    std::memcpy(&out[0], &s1, 8);
    std::memcpy(&out[1], &s2, 8);
    for (int64_t j = 0; j < m; ++j) out[2 + j] = sample_pack(l[idx[j]], idx[j]);
  }
}

}  // namespace ref

void Backend::sample_candidates(const SampleArgs& a) { ref::sample_candidates(a); }

}  // namespace ds
