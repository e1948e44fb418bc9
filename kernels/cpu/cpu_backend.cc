// kernels/cpu/cpu_backend.cc: the CPU implementation of Backend (SIMD + thread pool).
#include <sys/mman.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_tiles.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/variants.h"

DS_CPU_BEGIN
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, bool interleave_quant) : pool_(threads), interleave_quant_(interleave_quant) {}
  const char* name() const override { return "cpu"; }

  bool host_memory() const override { return true; }
  // Zeroed memory. Large blocks (the KV cache: ~1 GiB for a 110M model's 16k positions) are
  // mapped with MAP_POPULATE: zero pages committed by the kernel in bulk, ~0.2 s a GiB here,
  // where faulting them in one by one with memset took 3.4 s and kept a new node's worker
  // from serving for that long.
  void* alloc(size_t bytes) override {
    const size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded >= kMapBytes) {
      void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      std::lock_guard<std::mutex> lock(mapped_mu_);
      mapped_[p] = rounded;
      return p;
    }
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    if (p) std::memset(p, 0, rounded);
    return p;
  }
  void free(void* p) override {
    if (p == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mapped_mu_);
      if (auto it = mapped_.find(p); it != mapped_.end()) {
        munmap(p, it->second);
        mapped_.erase(it);
        return;
      }
    }
    std::free(p);
  }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }

  void matmul(const WeightRef& w, const float* x, int64_t n, float* y) override {
    cpu::matmul(pool_, w, x, n, y, &scratch_);
  }

  // Q8_0 / Q4_0 / Q4_K / Q6_K matrices interleaved by 16 rows where their kernels are built (x86
  // with AVX2 or AVX-512: cpu::preferred_layout; 1.3-3.5x the GGUF-layout kernels' products per
  // second, depending on the type and the instruction set).
  bool relayouts(const WeightRef& w) const override { return interleave_quant_ && cpu::preferred_layout(w) != w.layout; }
  WeightRef upload_weight(const WeightRef& w, void* dst) override {
    if (relayouts(w)) return cpu::repack(w, dst, &pool_);
    return Backend::upload_weight(w, dst);
  }

  void get_rows(const WeightRef& w, const int32_t* ids, int64_t n, float* out) override {
    for (int64_t i = 0; i < n; ++i) cpu::dequantize_row_any(w, ids[i], out + i * w.cols);
  }

  void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) override {
    for_rows(n, [&](int64_t i) {
      const float* xi = x + i * dim;
      const float ss = cpu::dot_row(xi, xi, dim);
      const float scale = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
      float* oi = out + i * dim;
      for (int64_t k = 0; k < dim; ++k) oi[k] = xi[k] * scale * weight[k];
    });
  }

  void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, const RopeParams& p) override {
    const int half = p.n_rot / 2;
    inv_freq_.resize(half);
    for (int d = 0; d < half; ++d) inv_freq_[d] = std::pow(static_cast<double>(p.freq_base), -2.0 * d / p.n_rot);
    for_rows(n, [&](int64_t i) {
      float cs[512], sn[512];  // n_rot/2 <= 512 (head_dim <= 1024, checked at load)
      for (int d = 0; d < half; ++d) {
        const double theta = static_cast<double>(pos[i]) * p.freq_scale * inv_freq_[d];
        cs[d] = static_cast<float>(std::cos(theta));
        sn[d] = static_cast<float>(std::sin(theta));
      }
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (i * n_heads + h) * head_dim;
        for (int d = 0; d < half; ++d) {
          const int a = p.style == RopeStyle::kNormal ? 2 * d : d;
          const int b = p.style == RopeStyle::kNormal ? 2 * d + 1 : d + half;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * cs[d] - x1 * sn[d];
          v[b] = x0 * sn[d] + x1 * cs[d];
        }
      }
    });
  }

  void swiglu(const float* gate, const float* up, int64_t count, float* out) override {
    pool_.run([&](int ith, int nth) {
      int64_t b, e;
      ThreadPool::split(count, ith, nth, &b, &e);
      cpu::swiglu_f32(gate + b, up + b, out + b, e - b);
    });
  }

  void add(float* x, const float* y, int64_t count) override {
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
  }

  void add_bias(float* x, const float* bias, int64_t n, int64_t dim) override {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < dim; ++k) x[i * dim + k] += bias[k];
  }

  void store_kv(const float* k, const float* v, int64_t n, const int32_t* slots, int64_t kv_dim,
                const KvLayer& cache) override {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t dst = static_cast<int64_t>(slots[i]) * kv_dim;
      if (cache.type == DType::kF16) {
        auto* kc = static_cast<uint16_t*>(cache.k) + dst;
        auto* vc = static_cast<uint16_t*>(cache.v) + dst;
        for (int64_t c = 0; c < kv_dim; ++c) {
          kc[c] = fp32_to_fp16_ref(k[i * kv_dim + c]);
          vc[c] = fp32_to_fp16_ref(v[i * kv_dim + c]);
        }
      } else {
        std::memcpy(static_cast<float*>(cache.k) + dst, k + i * kv_dim, kv_dim * sizeof(float));
        std::memcpy(static_cast<float*>(cache.v) + dst, v + i * kv_dim, kv_dim * sizeof(float));
      }
    }
  }

  static constexpr int kMaxHeadsPerRun = 64;

  // F16 caches: K and V rows are widened to floats in registers (exact) by dot / axpy kernels
  // that do the F32 ones' operations in the same order, so the result is F32 attention over
  // the rounded rows, bit for bit.
  void attention(const AttentionArgs& a) override {
    const int group = a.n_heads / a.n_kv_heads;
    const int64_t kv_dim = static_cast<int64_t>(a.n_kv_heads) * a.head_dim;
    const int64_t pairs = a.n_tokens * a.n_heads;
    const bool f16 = a.kv_type == DType::kF16;
    pool_.run([&](int ith, int nth) {
      int64_t b, e;
      ThreadPool::split(pairs, ith, nth, &b, &e);
      std::vector<float>& score = score_[ith];
      // The scores of `rows` consecutive cached rows from k_cache offset off (one row is
      // dot_row; 8 at a time, dot8_rows: the same bits).
      auto scores = [&](const float* q, int64_t off, int rows, float* out) {
        int r = 0;
        if (a.head_dim % 8 == 0)
          for (; r + 8 <= rows; r += 8) {
            if (f16) cpu::dot8_rows(q, static_cast<const uint16_t*>(a.k_cache) + off + r * kv_dim, kv_dim, a.head_dim, out + r);
            else cpu::dot8_rows(q, static_cast<const float*>(a.k_cache) + off + r * kv_dim, kv_dim, a.head_dim, out + r);
          }
        for (; r < rows; ++r)
          out[r] = f16 ? cpu::dot_row(q, static_cast<const uint16_t*>(a.k_cache) + off + r * kv_dim, a.head_dim)
                       : cpu::dot_row(q, static_cast<const float*>(a.k_cache) + off + r * kv_dim, a.head_dim);
        for (r = 0; r < rows; ++r) out[r] *= a.scale;
      };
      // This thread's (token, head) pairs, one token's run of heads at a time: each cached row
      // (for the values: each block of rows) is then read once for all of the run's heads
      // (one contiguous stretch of the row instead of one head's slice per pass: decode at
      // long contexts streams the cache from memory). Every head's operations are those of a
      // pass of its own, in the same order: the same bits whatever the split.
      const int bs = a.block_size;
      for (int64_t pi0 = b; pi0 < e;) {
        const int64_t t = pi0 / a.n_heads;
        const int h0 = static_cast<int>(pi0 % a.n_heads);
        const int nh = static_cast<int>(std::min<int64_t>(e - pi0, a.n_heads - h0));  // heads h0 .. h0 + nh - 1
        const AttentionToken& tok = a.tokens[t];
        const int64_t n_kv = tok.n_kv;
        if (score.size() < static_cast<size_t>(nh * n_kv)) score.resize(static_cast<size_t>(nh * n_kv));
        float mx[kMaxHeadsPerRun], inv[kMaxHeadsPerRun];
        for (int hb = 0; hb < nh; hb += kMaxHeadsPerRun) {  // runs of at most kMaxHeadsPerRun heads
          const int hn = std::min(kMaxHeadsPerRun, nh - hb);
          auto head_off = [&](int j) { return static_cast<int64_t>((h0 + hb + j) / group) * a.head_dim; };
          auto q_of = [&](int j) { return a.q + (pi0 + hb + j) * a.head_dim; };
          float* sc = score.data() + static_cast<size_t>(hb) * n_kv;  // head j's scores: sc[j * n_kv + p]
          // Positions block by block (no division per position): p = blk * bs + o.
          for (int p0 = 0, blk = 0; p0 < n_kv; p0 += bs, ++blk) {
            const int64_t base = static_cast<int64_t>(tok.block_table[blk]) * bs * kv_dim;
            const int end = static_cast<int>(std::min<int64_t>(bs, n_kv - p0));
            for (int j = 0; j < hn; ++j) scores(q_of(j), base + head_off(j), end, sc + j * n_kv + p0);
          }
          for (int j = 0; j < hn; ++j) {
            // The largest score after the fact, in vectors (a running max per position was a
            // compare and an unpredictable branch each: a fifth of attention's time).
            mx[j] = cpu::max_of(sc + j * n_kv, n_kv);
            inv[j] = 1.0f / cpu::exp_sub_sum(sc + j * n_kv, n_kv, mx[j]);
            std::memset(a.out + (pi0 + hb + j) * a.head_dim, 0, a.head_dim * sizeof(float));
          }
          // A block's rows for every head of the run (read while in cache), each head's output
          // held in registers over the block's positions: the fmas of one axpy per position,
          // in the same order.
          for (int p0 = 0, blk = 0; p0 < n_kv; p0 += bs, ++blk) {
            const int64_t base = static_cast<int64_t>(tok.block_table[blk]) * bs * kv_dim;
            const int end = static_cast<int>(std::min<int64_t>(bs, n_kv - p0));
            for (int j = 0; j < hn; ++j) {
              float* out = a.out + (pi0 + hb + j) * a.head_dim;
              const float* w = sc + j * n_kv + p0;
              if (f16) cpu::axpy_rows(out, w, inv[j], static_cast<const uint16_t*>(a.v_cache) + base + head_off(j), kv_dim, end, a.head_dim);
              else cpu::axpy_rows(out, w, inv[j], static_cast<const float*>(a.v_cache) + base + head_off(j), kv_dim, end, a.head_dim);
            }
          }
        }
        pi0 += nh;
      }
    });
  }

 private:
  template <class F>
  void for_rows(int64_t n, F&& f) {
    if (n == 1) return f(0);
    pool_.run([&](int ith, int nth) {
      int64_t b, e;
      ThreadPool::split(n, ith, nth, &b, &e);
      for (int64_t i = b; i < e; ++i) f(i);
    });
  }

  static constexpr size_t kMapBytes = size_t{1} << 20;  // alloc(): mapped from this size up
  ThreadPool pool_;
  bool interleave_quant_;
  std::vector<uint8_t> scratch_;
  std::mutex mapped_mu_;
  std::unordered_map<void*, size_t> mapped_;  // alloc()'s mappings and their sizes
  std::vector<double> inv_freq_;
  std::vector<float> score_[256];
};

std::unique_ptr<Backend> make_backend(int threads, bool interleave_quant) {
  return std::make_unique<CpuBackend>(threads, interleave_quant);
}

float dot_row_f32(const float* q, const float* k, int64_t n) { return dot_row(q, k, n); }
float dot_row_f16(const float* q, const uint16_t* k, int64_t n) { return dot_row(q, k, n); }
void dot8_rows_f32(const float* q, const float* k, int64_t stride, int64_t n, float* out) {
  dot8_rows(q, k, stride, n, out);
}
void dot8_rows_f16(const float* q, const uint16_t* k, int64_t stride, int64_t n, float* out) {
  dot8_rows(q, k, stride, n, out);
}

}  // namespace

// This compile's entry (kernels/cpu/variants.h), found by kernels/cpu/dispatch.cc.
extern const Variant kVariant;
const Variant kVariant = {
    DS_CPU_STR(DS_CPU_VARIANT),
#if defined(DS_SIMD_VNNI) && defined(DS_CPU_AVX512)
    "avx512+vnni",
#elif defined(DS_CPU_AVX512)
    "avx512",
#elif defined(DS_SIMD_VNNI)
    "avx2+vnni",
#elif defined(DS_SIMD_AVX2)
    "avx2",
#else
    "scalar",
#endif
#ifdef DS_INTERLEAVED
    true,
#else
    false,
#endif
    make_backend,
    quantize_row_q8a,
    quantize_row_q8k,
    exp_scalar,
    exp_sub_sum,
    swiglu_f32,
    dot_row_f32,
    dot_row_f16,
    dot8_rows_f32,
    dot8_rows_f16,
};

DS_CPU_END
