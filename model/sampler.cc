#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "kernels/sampling.h"

namespace ds {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

double sampler_uniform(uint64_t seed, uint64_t counter) {
  const uint64_t r = splitmix64(splitmix64(seed) ^ splitmix64(counter + 0x632be59bd9b4e019ull));
  return static_cast<double>(r >> 11) * 0x1.0p-53;
}

Status validate(const SamplingParams& p) {
  auto bad = [](const std::string& what) { return Status::InvalidArgument(what); };
  if (!(p.temperature >= 0 && p.temperature <= 100)) return bad("temperature must be in [0, 100]");
  if (p.top_k < 0) return bad("top_k must be >= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) return bad("top_p must be in (0, 1]");
  if (!(p.min_p >= 0 && p.min_p <= 1)) return bad("min_p must be in [0, 1]");
  if (!(p.repeat_penalty > 0 && p.repeat_penalty <= 10)) return bad("repeat_penalty must be in (0, 10]");
  if (!(std::fabs(p.frequency_penalty) <= 2)) return bad("frequency_penalty must be in [-2, 2]");
  if (!(std::fabs(p.presence_penalty) <= 2)) return bad("presence_penalty must be in [-2, 2]");
  if (p.penalty_last_n < 0) return bad("penalty_last_n must be >= 0");
  if (p.max_tokens <= 0) return bad("max_tokens must be > 0");
  for (const auto& s : p.stop)
    if (s.empty()) return bad("stop strings must not be empty");
  return Status::Ok();
}

std::string SamplerState::serialize() const {
  return "ds-sampler/1:" + std::to_string(seed) + ":" + std::to_string(counter);
}

std::optional<SamplerState> SamplerState::parse(const std::string& s) {
  const std::string prefix = "ds-sampler/1:";
  if (s.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const size_t colon = s.find(':', prefix.size());
  if (colon == std::string::npos) return std::nullopt;
  try {
    size_t used = 0;
    SamplerState st;
    const std::string a = s.substr(prefix.size(), colon - prefix.size()), b = s.substr(colon + 1);
    st.seed = std::stoull(a, &used);
    if (used != a.size()) return std::nullopt;
    st.counter = std::stoull(b, &used);
    if (used != b.size()) return std::nullopt;
    return st;
  } catch (...) {
    return std::nullopt;
  }
}

std::vector<std::pair<int32_t, int32_t>> penalty_entries(const SamplingParams& p, const std::vector<int32_t>& history,
                                                         int32_t n) {
  std::vector<std::pair<int32_t, int32_t>> out;
  if ((p.repeat_penalty == 1.0f && p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f) || p.penalty_last_n <= 0)
    return out;
  std::map<int32_t, int32_t> count;
  const size_t start = history.size() > static_cast<size_t>(p.penalty_last_n) ? history.size() - p.penalty_last_n : 0;
  for (size_t i = start; i < history.size(); ++i)
    if (history[i] >= 0 && history[i] < n) ++count[history[i]];
  out.assign(count.begin(), count.end());
  return out;
}

int32_t sample_token(std::vector<float>& logits, const SamplingParams& p, const std::vector<int32_t>& history,
                     SamplerState* st) {
  const uint64_t draw = st->counter++;
  for (const auto& [tok, c] : penalty_entries(p, history, static_cast<int32_t>(logits.size())))
    logits[tok] = penalize_logit(logits[tok], c, p.repeat_penalty, p.frequency_penalty, p.presence_penalty);
  return sample_penalized(logits, p, st->seed, draw);
}

int32_t sample_penalized(std::vector<float>& logits, const SamplingParams& p, uint64_t seed, uint64_t draw) {
  const int32_t n = static_cast<int32_t>(logits.size());
  for (float& l : logits)
    if (std::isnan(l)) l = -INFINITY;
  if (p.temperature <= 0) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  // Candidates sorted by logit (descending, id ascending on ties: deterministic).
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  size_t keep = n;
  if (p.top_k > 0 && p.top_k < n) {
    keep = p.top_k;
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), by_logit);
  } else {
    std::sort(idx.begin(), idx.end(), by_logit);
  }
  std::vector<SampleCandidate> c(keep);
  for (size_t i = 0; i < keep; ++i) c[i] = {logits[idx[i]], idx[i]};
  return sample_from_candidates(c.data(), keep, n, p, nullptr, seed, draw);
}

int32_t sample_candidates_wanted(const SamplingParams& p, int32_t n, int32_t max_candidates) {
  int32_t m = max_candidates;
  if (p.temperature <= 0) m = 1;
  else if (p.top_k > 0 && p.top_k <= max_candidates) m = p.top_k;
  return std::max(1, std::min(m, n));
}

bool sample_sums_wanted(const SamplingParams& p, int32_t n, int32_t m) {
  return p.temperature > 0 && (p.top_k <= 0 || p.top_k >= n) && m < n;
}

int32_t sample_from_candidates(const SampleCandidate* c, size_t m, int32_t n, const SamplingParams& p,
                               const double* sums, uint64_t seed, uint64_t draw) {
  if (p.temperature <= 0) return c[0].id;
  size_t keep = p.top_k > 0 && p.top_k < n ? static_cast<size_t>(p.top_k) : static_cast<size_t>(n);
  const bool all = m >= keep;  // every kept candidate is here: the sums are this function's own
  if (!all && (keep < static_cast<size_t>(n) || sums == nullptr)) return -1;
  const size_t avail = all ? keep : m;

  // Softmax (at temperature 1) for top-p and min-p.
  std::vector<double> prob(avail);
  const double mx = c[0].logit;
  double sum = 0;
  for (size_t i = 0; i < avail; ++i) sum += (prob[i] = std::exp(static_cast<double>(c[i].logit) - mx));
  if (!all) sum = sums[0];
  for (auto& q : prob) q /= sum;
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t k = 0;
    bool reached = false;
    while (k < avail) {
      cum += prob[k++];
      if (cum >= p.top_p) {
        reached = true;
        break;
      }
    }
    if (!reached && !all) return -1;  // the nucleus goes past the candidates
    keep = std::max<size_t>(k, 1);
  }
  if (p.min_p > 0) {
    size_t k = 1;
    while (k < keep) {
      if (k >= avail) return -1;
      if (!(prob[k] >= p.min_p * prob[0])) break;
      ++k;
    }
    keep = k;
  }

  // Temperature, then draw.
  const double u01 = sampler_uniform(seed, draw);
  if (keep > avail) {  // nothing truncated the whole row: its sum came with the candidates
    const double u = u01 * sums[1];
    double acc = 0;
    for (size_t i = 0; i < avail; ++i) {
      acc += std::exp((static_cast<double>(c[i].logit) - mx) / p.temperature);
      if (u < acc) return c[i].id;
    }
    return -1;
  }
  std::vector<double> w(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += (w[i] = std::exp((static_cast<double>(c[i].logit) - mx) / p.temperature));
  const double u = u01 * total;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += w[i];
    if (u < acc) return c[i].id;
  }
  return c[keep - 1].id;
}

}  // namespace ds
