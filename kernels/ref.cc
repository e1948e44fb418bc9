#include "kernels/ref.h"

#include <cmath>
#include <vector>

namespace ds::ref {

void matmul(const WeightRef& w, const float* x, int64_t n, float* y) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t i = 0; i < w.rows; ++i) {
    dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + i * w.row_stride(), row.data(), w.cols);
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < w.cols; ++k) s += static_cast<double>(row[k]) * x[j * w.cols + k];
      y[j * w.rows + i] = static_cast<float>(s);
    }
  }
}

void get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i)
    dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + ids[i] * w.row_stride(), out + i * w.cols, w.cols);
}

void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t k = 0; k < dim; ++k) ss += static_cast<double>(x[i * dim + k]) * x[i * dim + k];
    const double scale = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t k = 0; k < dim; ++k) out[i * dim + k] = static_cast<float>(x[i * dim + k] * scale * weight[k]);
  }
}

void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p) {
  for (int64_t i = 0; i < n; ++i) {
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (i * n_heads + h) * head_dim;
      for (int d = 0; d < p.n_rot; d += 2) {
        const double theta = pos[i] * p.freq_scale * std::pow(static_cast<double>(p.freq_base), -static_cast<double>(d) / p.n_rot);
        const double c = std::cos(theta), s = std::sin(theta);
        const int a = p.style == RopeStyle::kNormal ? d : d / 2;
        const int b = p.style == RopeStyle::kNormal ? d + 1 : d / 2 + p.n_rot / 2;
        const double x0 = v[a], x1 = v[b];
        v[a] = static_cast<float>(x0 * c - x1 * s);
        v[b] = static_cast<float>(x0 * s + x1 * c);
      }
    }
  }
}

void swiglu(const float* gate, const float* up, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(gate[i] / (1.0 + std::exp(-static_cast<double>(gate[i]))) * up[i]);
}

// Element i of a KV cache of type t, as a float (exact).
static float kv_at(const void* c, DType t, int64_t i) {
  return t == DType::kF16 ? fp16_to_fp32_ref(static_cast<const uint16_t*>(c)[i]) : static_cast<const float*>(c)[i];
}

void attention(const AttentionArgs& a) {
  const int group = a.n_heads / a.n_kv_heads;
  const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * a.head_dim;
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const AttentionToken& tok = a.tokens[t];
    for (int h = 0; h < a.n_heads; ++h) {
      const float* q = a.q + (t * a.n_heads + h) * a.head_dim;
      const int kvh = h / group;
      std::vector<double> score(static_cast<size_t>(tok.n_kv));
      double mx = -INFINITY;
      for (int p = 0; p < tok.n_kv; ++p) {
        const int64_t row = static_cast<int64_t>(tok.block_table[p / a.block_size]) * a.block_size + p % a.block_size;
        const int64_t k = row * kv_dim + kvh * a.head_dim;
        double s = 0;
        for (int d = 0; d < a.head_dim; ++d) s += static_cast<double>(q[d]) * kv_at(a.k_cache, a.kv_type, k + d);
        score[p] = s * a.scale;
        mx = std::max(mx, score[p]);
      }
      double sum = 0;
      for (auto& s : score) sum += (s = std::exp(s - mx));
      float* out = a.out + (t * a.n_heads + h) * a.head_dim;
      for (int d = 0; d < a.head_dim; ++d) {
        double acc = 0;
        for (int p = 0; p < tok.n_kv; ++p) {
          const int64_t row = static_cast<int64_t>(tok.block_table[p / a.block_size]) * a.block_size + p % a.block_size;
          acc += score[p] / sum * kv_at(a.v_cache, a.kv_type, row * kv_dim + kvh * a.head_dim + d);
        }
        out[d] = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace ds::ref
