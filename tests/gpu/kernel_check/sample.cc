// tests/gpu/kernel_check/sample.cc: gpu_kernel_check's sampling group (sample_candidates).
#include "tests/gpu/kernel_check/check.h"

namespace ds::kernel_check {

// sample_candidates: penalties, NaN -> -inf, the m best in the sampler's order and the
// softmax sums, against ref::sample_candidates on the same rows. Rows carry ties (values
// rounded to a coarse grid), NaN, +-0, +-inf, and penalty entries. The penalized logits and
// the candidate words must be bit-identical; the sums (another summation order) within 1e-12.
void check_sample(CudaBackend& b, Rng& rng, bool quick) {
  std::vector<int64_t> vocabs = {300, 32000};
  if (!quick) vocabs.push_back(151936);
  for (int64_t V : vocabs) {
    const int ms[] = {1, 40, ds::kSampleMaxCandidates, 7};
    const int n_rows = 4;
    std::vector<float> logits(static_cast<size_t>(n_rows) * V);
    for (int r = 0; r < n_rows; ++r) {
      float* l = logits.data() + r * V;
      for (int64_t i = 0; i < V; ++i) {
        float x = rng.uniform(-8, 8);
        if (r % 2 == 1) x = std::round(x * 2) / 2;  // many ties
        l[i] = x;
      }
      l[rng.below(static_cast<int>(V))] = NAN;
      l[rng.below(static_cast<int>(V))] = -0.0f;
      l[rng.below(static_cast<int>(V))] = 0.0f;
      l[rng.below(static_cast<int>(V))] = -INFINITY;
      if (r == 3) l[rng.below(static_cast<int>(V))] = INFINITY;
    }
    std::vector<ds::SampleRow> rows(n_rows);
    std::vector<int32_t> pen_tokens, pen_counts;
    int64_t words = 0;
    for (int r = 0; r < n_rows; ++r) {
      ds::SampleRow& row = rows[r];
      row.m = static_cast<int32_t>(std::min<int64_t>(ms[r], V));
      row.out = words;
      words += 2 + row.m;
      row.want_sums = r != 0;
      row.temperature = r == 3 ? 1.0f : 0.7f;
      row.repeat_penalty = r == 2 ? 1.0f : 1.3f;
      row.frequency_penalty = r == 1 ? 0.25f : 0.0f;
      row.presence_penalty = r >= 2 ? 0.5f : 0.0f;
      row.pen_begin = static_cast<int32_t>(pen_tokens.size());
      for (int i = 0; i < 64 && i < V; ++i) {  // distinct ids
        pen_tokens.push_back(static_cast<int32_t>((i * 37 + r) % V));
        pen_counts.push_back(1 + rng.below(5));
      }
      // 64 * 37 < 32000 keeps them distinct; for V = 300 drop repeats.
      std::vector<bool> seen(V, false);
      size_t keep = row.pen_begin;
      for (size_t i = row.pen_begin; i < pen_tokens.size(); ++i)
        if (!seen[pen_tokens[i]]) {
          seen[pen_tokens[i]] = true;
          pen_tokens[keep] = pen_tokens[i];
          pen_counts[keep++] = pen_counts[i];
        }
      pen_tokens.resize(keep);
      pen_counts.resize(keep);
      row.pen_count = static_cast<int32_t>(keep) - row.pen_begin;
    }
    // Reference on host copies.
    std::vector<float> ref_logits = logits;
    std::vector<uint64_t> ref_out(words);
    ds::SampleArgs ra;
    ra.logits = ref_logits.data();
    ra.n_rows = n_rows;
    ra.n_vocab = V;
    ra.rows = rows.data();
    ra.pen_tokens = pen_tokens.data();
    ra.pen_counts = pen_counts.data();
    ra.out = ref_out.data();
    ds::ref::sample_candidates(ra);

    Buf dl(b, logits), drows(b, rows), dpt(b, pen_tokens), dpc(b, pen_counts), dout(b, words * 8);
    ds::SampleArgs a = ra;
    a.logits = dl.as();
    a.rows = drows.as<ds::SampleRow>();
    a.pen_tokens = dpt.as<int32_t>();
    a.pen_counts = dpc.as<int32_t>();
    a.out = dout.as<uint64_t>();
    b.sample_candidates(a);
    require_ok(b, "sample_candidates");
    const std::vector<uint64_t> got = dout.read<uint64_t>(words);
    const std::vector<float> got_logits = dl.read<float>(logits.size());
    const std::string vs = " V=" + std::to_string(V);
    expect("sample_candidates penalized logits" + vs, same_bits(got_logits.data(), ref_logits.data(), logits.size()));
    for (int r = 0; r < n_rows; ++r) {
      const int64_t o = rows[r].out;
      int64_t first_bad = -1;
      for (int j = 0; j < rows[r].m && first_bad < 0; ++j)
        if (got[o + 2 + j] != ref_out[o + 2 + j]) first_bad = j;
      std::string detail;
      if (first_bad >= 0) {
        const uint64_t g = got[o + 2 + first_bad], w = ref_out[o + 2 + first_bad];
        detail = "candidate " + std::to_string(first_bad) + ": got id " + std::to_string(ds::sample_id(g)) + " (" +
                 std::to_string(ds::sample_logit(g)) + "), want id " + std::to_string(ds::sample_id(w)) + " (" +
                 std::to_string(ds::sample_logit(w)) + ")";
      }
      expect("sample_candidates m=" + std::to_string(rows[r].m) + vs + " row " + std::to_string(r), first_bad < 0, detail);
      if (rows[r].want_sums) {
        double gs[2], ws[2];
        std::memcpy(gs, &got[o], 16);
        std::memcpy(ws, &ref_out[o], 16);
        auto rel = [](double g, double w) { return std::isnan(g) && std::isnan(w) ? 0.0 : std::fabs(g - w) / w; };
        const double e0 = rel(gs[0], ws[0]), e1 = rel(gs[1], ws[1]);  // +inf in the row: both NaN
        const bool ok = e0 <= 1e-12 && e1 <= 1e-12;
        record("sample_candidates sums" + vs + " row " + std::to_string(r), ok, std::max(e0 * ws[0], e1 * ws[1]),
               std::max(e0, e1), "1e-12*|ref|", ok ? "" : "  s1 " + std::to_string(gs[0]) + " vs " + std::to_string(ws[0]));
      }
    }
  }
}

}  // namespace ds::kernel_check
