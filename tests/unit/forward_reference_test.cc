// The engine's forward pass against a plain float64 transformer written here from the
// math (on the dequantized weights), for both architectures and every weight type.
#include <cmath>

#include "model/forward.h"
#include "model/mkmodel.h"
#include "test_util.h"

namespace ds {
namespace {

using Mat = std::vector<double>;  // row-major

Mat dequant(const WeightRef& w) {
  Mat m(w.rows * w.cols);
  std::vector<float> row(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + r * w.row_stride(), row.data(), w.cols);
    for (int64_t k = 0; k < w.cols; ++k) m[r * w.cols + k] = row[k];
  }
  return m;
}

// y = W x for W [rows, cols]
std::vector<double> mv(const Mat& W, int64_t rows, int64_t cols, const std::vector<double>& x) {
  std::vector<double> y(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) y[r] += W[r * cols + k] * x[k];
  return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<float>& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double s = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[i];
  return y;
}

void rope(std::vector<double>& v, int heads, int hd, int pos, const RopeParams& p) {
  for (int h = 0; h < heads; ++h)
    for (int d = 0; d < hd; d += 2) {
      const double theta = pos * static_cast<double>(p.freq_scale) * std::pow(static_cast<double>(p.freq_base), -static_cast<double>(d) / hd);
      const int a = p.style == RopeStyle::kNormal ? h * hd + d : h * hd + d / 2;
      const int b = p.style == RopeStyle::kNormal ? h * hd + d + 1 : h * hd + d / 2 + hd / 2;
      const double x0 = v[a], x1 = v[b];
      v[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
      v[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
    }
}

// Logits at every position of tokens.
std::vector<std::vector<double>> reference_forward(const Model& m, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  const int hd = c.head_dim, qd = c.n_head * hd, kvd = c.kv_dim();
  const Mat emb = dequant(w.tok_embd), out = dequant(w.output);
  struct L { Mat q, k, v, o, g, u, d; };
  std::vector<L> Ls;
  for (const auto& lw : w.layers) Ls.push_back({dequant(lw.wq), dequant(lw.wk), dequant(lw.wv), dequant(lw.wo), dequant(lw.w_gate), dequant(lw.w_up), dequant(lw.w_down)});
  std::vector<std::vector<std::vector<double>>> K(c.n_layer), V(c.n_layer);
  std::vector<std::vector<double>> logits;
  for (size_t t = 0; t < tokens.size(); ++t) {
    std::vector<double> x(emb.begin() + tokens[t] * c.n_embd, emb.begin() + (tokens[t] + 1) * c.n_embd);
    for (int l = 0; l < c.n_layer; ++l) {
      const LayerWeights& lw = w.layers[l];
      auto xn = rmsnorm(x, lw.attn_norm, c.rms_eps);
      auto q = mv(Ls[l].q, qd, c.n_embd, xn), k = mv(Ls[l].k, kvd, c.n_embd, xn), v = mv(Ls[l].v, kvd, c.n_embd, xn);
      if (c.qkv_bias) {
        for (int i = 0; i < qd; ++i) q[i] += lw.bq[i];
        for (int i = 0; i < kvd; ++i) k[i] += lw.bk[i], v[i] += lw.bv[i];
      }
      rope(q, c.n_head, hd, static_cast<int>(t), c.rope);
      rope(k, c.n_head_kv, hd, static_cast<int>(t), c.rope);
      K[l].push_back(k);
      V[l].push_back(v);
      std::vector<double> att(qd, 0.0);
      for (int h = 0; h < c.n_head; ++h) {
        const int kh = h / (c.n_head / c.n_head_kv);
        std::vector<double> sc(t + 1);
        double mx = -1e300, sum = 0;
        for (size_t p = 0; p <= t; ++p) {
          double s = 0;
          for (int d = 0; d < hd; ++d) s += q[h * hd + d] * K[l][p][kh * hd + d];
          sc[p] = s / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, sc[p]);
        }
        for (auto& s : sc) sum += (s = std::exp(s - mx));
        for (size_t p = 0; p <= t; ++p)
          for (int d = 0; d < hd; ++d) att[h * hd + d] += sc[p] / sum * V[l][p][kh * hd + d];
      }
      const auto o = mv(Ls[l].o, c.n_embd, qd, att);
      for (int i = 0; i < c.n_embd; ++i) x[i] += o[i];
      xn = rmsnorm(x, lw.ffn_norm, c.rms_eps);
      auto g = mv(Ls[l].g, c.n_ff, c.n_embd, xn);
      const auto u = mv(Ls[l].u, c.n_ff, c.n_embd, xn);
      for (int i = 0; i < c.n_ff; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const auto d = mv(Ls[l].d, c.n_embd, c.n_ff, g);
      for (int i = 0; i < c.n_embd; ++i) x[i] += d[i];
    }
    logits.push_back(mv(out, c.n_vocab, c.n_embd, rmsnorm(x, w.output_norm, c.rms_eps)));
  }
  return logits;
}

struct Case {
  const char* arch;
  DType type;
  double tol;
};

class ForwardReference : public ::testing::TestWithParam<Case> {};

// Tolerances (max |engine - reference| / max |reference| over the logits of a position):
//  f32, f16, bf16: the reference uses the same (exactly dequantized) weights, so only f32
//    accumulation and f32 activations differ from float64: 1e-4 leaves room for 2 layers.
//  q8_0, q4_0: the CPU kernels quantize activations to 8-bit blocks (llama.cpp does the
//    same), a ~0.4% error per dot product that compounds over the layers: 5e-2.
//  q4_k, q6_k: activations go to 8-bit super-blocks of 256 (one scale per 256, as
//    llama.cpp's q8_K): the same kind of error, 5e-2. These need rows of whole
//    super-blocks, so they run at dim 256, ffn 512 (the others at dim 64, ffn 96).
TEST_P(ForwardReference, LogitsMatchFloat64Reference) {
  const Case c = GetParam();
  test::TempDir dir;
  ModelSpec spec;
  spec.arch = c.arch;
  const bool kquant = dtype_traits(c.type).block_size == 256;
  spec.dim = kquant ? 256 : 64;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.ffn = kquant ? 512 : 96;
  spec.vocab = 320;
  spec.type = c.type;
  spec.seed = 9;
  ASSERT_TRUE(write_random_model(spec, dir.file("m.gguf")).ok());
  auto m = Model::Load(dir.file("m.gguf"));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const std::vector<int32_t> tokens = {1, 300, 17, 250, 319, 5, 42, 42, 9, 200};
  const auto ref = reference_forward(**m, tokens);

  // The CPU backend computes quantized matrices in its interleaved layout where it has their
  // kernels (x86 with AVX2 or AVX-512: Backend::relayouts); the file's layout is the other run. Both must match the
  // reference, and each other up to float rounding (the integer dots are exact in both).
  std::vector<std::vector<float>> by_layout[2];
  for (bool interleave : {true, false}) {
    auto be = make_cpu_backend({2, interleave});
    auto kv = KvCache::Create(*be, spec.layers, spec.kv_heads * (spec.dim / spec.heads), 4, 8);
    ASSERT_TRUE(kv.ok());
    auto fwd = Forward::Create(*m, *be, **kv, 16);
    ASSERT_TRUE(fwd.ok());
    std::vector<int32_t> blocks;
    ASSERT_TRUE((*kv)->blocks().allocate(3, &blocks));
    // Prefill the first 6 tokens in one pass, then decode the rest one at a time.
    std::vector<std::vector<float>>& got = by_layout[interleave ? 0 : 1];
    auto run = [&](size_t from, size_t to) {
      std::vector<ForwardToken> batch;
      for (size_t t = from; t < to; ++t) batch.push_back({tokens[t], static_cast<int32_t>(t), &blocks, true});
      std::vector<float> logits;
      ASSERT_TRUE((*fwd)->run(batch, &logits).ok());
      for (size_t i = 0; i < batch.size(); ++i) got.emplace_back(logits.begin() + i * spec.vocab, logits.begin() + (i + 1) * spec.vocab);
    };
    run(0, 6);
    for (size_t t = 6; t < tokens.size(); ++t) run(t, t + 1);
    ASSERT_EQ(got.size(), tokens.size());
  }
  // Max over positions of max |a - b| / max |b| over the logits.
  auto rel = [&](const auto& a, const auto& b) {
    double worst = 0;
    for (size_t t = 0; t < tokens.size(); ++t) {
      double num = 0, den = 0;
      for (int i = 0; i < spec.vocab; ++i) {
        num = std::max(num, std::fabs(static_cast<double>(a[t][i]) - static_cast<double>(b[t][i])));
        den = std::max(den, std::fabs(static_cast<double>(b[t][i])));
      }
      worst = std::max(worst, num / den);
    }
    return worst;
  };
  const std::vector<std::vector<float>>& got = by_layout[0];
  // The file layout's run meets the reference too. The two runs differ by float rounding in the
  // matmuls only, but each layer's output is quantized again to 8 bits for the next matmul, so a
  // value on a rounding boundary can step by one quantum: between the layouts, no closer than
  // to the reference.
  const double gguf_err = rel(by_layout[1], ref), apart = rel(got, by_layout[1]);
  EXPECT_LE(gguf_err, c.tol) << "file layout, " << c.arch << " " << dtype_name(c.type);
  EXPECT_LE(apart, c.tol) << "interleaved and file layouts, " << c.arch << " " << dtype_name(c.type);
  const double worst = rel(got, ref);
  RecordProperty("max_rel_err", std::to_string(worst));
  EXPECT_LE(worst, c.tol) << c.arch << " " << dtype_name(c.type);
  std::printf("[ info ] %s %s max relative logit error %.3g (file layout %.3g, tolerance %.0e); layouts apart %.3g\n",
              c.arch, dtype_name(c.type), worst, gguf_err, c.tol, apart);
}

INSTANTIATE_TEST_SUITE_P(
    ArchAndType, ForwardReference,
    ::testing::Values(Case{"llama", DType::kF32, 1e-4}, Case{"llama", DType::kF16, 1e-4}, Case{"llama", DType::kBF16, 1e-4},
                      Case{"llama", DType::kQ8_0, 5e-2}, Case{"llama", DType::kQ4_0, 5e-2}, Case{"qwen2", DType::kF32, 1e-4},
                      Case{"qwen2", DType::kF16, 1e-4}, Case{"qwen2", DType::kBF16, 1e-4}, Case{"qwen2", DType::kQ8_0, 5e-2},
                      Case{"qwen2", DType::kQ4_0, 5e-2}, Case{"llama", DType::kQ4_K, 5e-2}, Case{"llama", DType::kQ6_K, 5e-2},
                      Case{"qwen2", DType::kQ4_K, 5e-2}, Case{"qwen2", DType::kQ6_K, 5e-2}),
    [](const auto& info) { return std::string(info.param.arch) + "_" + dtype_name(info.param.type); });

}  // namespace
}  // namespace ds
