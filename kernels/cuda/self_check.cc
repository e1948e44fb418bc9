// kernels/cuda/self_check.cc: CudaBackend::self_check(), run once per device and process by
// create() (CudaBackendOptions::self_check). The paths that are on by default but were written
// after the last GPU run (so they have only run under the CPU emulation) are each run once on a
// small problem and compared on the device with the path they replace, which has run on a GPU:
//   - tc_attention_mma (flash attention 2 on mma.sync) and tc_attention_padded (the WMMA
//     kernel's padded rows) against the CUDA-core attention kernel, within F16-operand error;
//   - q8_0_split (Q8_0 rows stored quants-then-scales) against the GGUF blocks, bit for bit,
//     through the GEMV, the tensor-core kernel and cuBLAS (n = 1, 8, 40);
//   - fuse_decode (one launch for matmul + residual add + RMSNorm, and for Q/K/V + RoPE + cache
//     write) against the separate ops, bit for bit.
// A path that disagrees is switched off for this backend and every later one on the device, and
// the note says so. So is a path whose kernel fails with a CUDA error after which the device
// still works (a non-sticky error: a launch refused for its configuration or resources, an
// invalid argument; a round trip through the stream then gives back what went in): the error
// is cleared and the note has it. After a sticky error (an illegal address, a trap: the context
// is lost) the error stays set and create() refuses the device. Plain C++ over the backend's own
// API.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/dtype.h"

namespace ds {
namespace {

struct Rng {  // splitmix64
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() >> 40) / 16777216.0f; }
  std::vector<float> floats(size_t n, float lo = -1, float hi = 1) {
    std::vector<float> v(n);
    for (float& x : v) x = uniform(lo, hi);
    return v;
  }
};

// Device memory for the check's life.
class Dev {
 public:
  explicit Dev(CudaBackend& b) : b_(b) {}
  ~Dev() {
    for (void* p : owned_) b_.free(p);
  }
  template <class T = float>
  T* alloc(size_t count) {
    void* p = b_.alloc(count * sizeof(T));
    if (p) owned_.push_back(p);
    return static_cast<T*>(p);
  }
  template <class T>
  T* copy(const std::vector<T>& host) {
    T* p = alloc<T>(host.size());
    if (p) b_.upload(p, host.data(), host.size() * sizeof(T));
    return p;
  }
  std::vector<float> read(const float* p, size_t count) {
    std::vector<float> h(count);
    b_.download(h.data(), p, count * sizeof(float));
    return h;
  }

 private:
  CudaBackend& b_;
  std::vector<void*> owned_;
};

// The result of a path under CudaBackendOptions::self_check_break_for_testing's bit: one value off.
std::vector<float> broken(std::vector<float> v, bool on) {
  if (on && !v.empty()) v[v.size() / 2] += 1.0f;
  return v;
}

// Whether the backend still computes after an error was cleared: a buffer through upload, add
// and download comes back doubled. broken: CudaBackendOptions::self_check_break_for_testing's
// bit 256, the error injected by the other bits taken for a sticky one.
bool device_works(CudaBackend& b, bool broken) {
  constexpr size_t kCount = 64;
  std::vector<float> in(kCount), out(kCount, 0.0f);
  for (size_t i = 0; i < kCount; ++i) in[i] = static_cast<float>(i) - 20.5f;
  auto* p = static_cast<float*>(b.alloc(kCount * sizeof(float)));
  if (!p) return false;
  b.upload(p, in.data(), kCount * sizeof(float));
  b.add(p, p, static_cast<int64_t>(kCount));
  b.download(out.data(), p, kCount * sizeof(float));
  b.free(p);
  for (size_t i = 0; i < kCount; ++i)
    if (out[i] != 2 * in[i]) return false;
  return b.ok() && !broken;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Within F16-operand error of the reference (scores, probabilities and values rounded to F16:
// ~1e-3 of outputs of magnitude ~1); a wrong fragment layout or index is off by O(1).
bool close(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i)
    if (!std::isfinite(got[i]) || std::fabs(got[i] - want[i]) > 2e-2f + 2e-2f * std::fabs(want[i])) return false;
  return true;
}

// Prefill attention of one sequence (40 tokens, causal) over an F16 cache in 3 scattered
// blocks, with the tiles a prefill chunk has.
AttentionArgs make_attention(Dev& d, Rng& rng, int head_dim) {
  constexpr int kHeads = 4, kKvHeads = 2, kBlock = 16, kTokens = 40;
  const int kv_dim = kKvHeads * head_dim;
  const std::vector<int32_t> table = {2, 0, 1};
  std::vector<uint16_t> kc(3 * kBlock * kv_dim), vc(kc.size());
  for (uint16_t& h : kc) h = fp32_to_fp16_ref(rng.uniform(-1, 1));
  for (uint16_t& h : vc) h = fp32_to_fp16_ref(rng.uniform(-1, 1));
  const int32_t* dtable = d.copy(table);
  std::vector<AttentionToken> tokens(kTokens);
  for (int t = 0; t < kTokens; ++t) tokens[t] = AttentionToken{dtable, t + 1};
  std::vector<int32_t> tiles;
  for (int t = 0; t <= kTokens; t += kAttentionTileTokens) tiles.push_back(t);
  AttentionArgs a;
  a.q = d.copy(rng.floats(static_cast<size_t>(kTokens) * kHeads * head_dim, -2, 2));
  a.out = d.alloc(static_cast<size_t>(kTokens) * kHeads * head_dim);
  a.k_cache = d.copy(kc);
  a.v_cache = d.copy(vc);
  a.kv_type = DType::kF16;
  a.tokens = d.copy(tokens);
  a.n_tokens = kTokens;
  a.n_heads = kHeads;
  a.n_kv_heads = kKvHeads;
  a.head_dim = head_dim;
  a.block_size = kBlock;
  a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  a.tiles = d.copy(tiles);
  a.n_tiles = static_cast<int64_t>(tiles.size()) - 1;
  return a;
}

// Random Q8_0 rows: int8 quants, small positive F16 scales.
std::vector<uint8_t> q8_0_rows(Rng& rng, int64_t rows, int64_t cols) {
  std::vector<uint8_t> w(static_cast<size_t>(rows) * row_bytes(DType::kQ8_0, cols));
  for (size_t off = 0; off < w.size(); off += sizeof(BlockQ8_0)) {
    const uint16_t dh = fp32_to_fp16_ref(rng.uniform(0.002f, 0.02f));
    std::memcpy(&w[off], &dh, 2);
    for (int i = 0; i < 32; ++i) w[off + 2 + i] = static_cast<uint8_t>(rng.next());
  }
  return w;
}

std::vector<uint8_t> f16_rows(Rng& rng, size_t count) {
  std::vector<uint8_t> w(count * 2);
  for (size_t i = 0; i < count; ++i) {
    const uint16_t h = fp32_to_fp16_ref(rng.uniform(-0.1f, 0.1f));
    std::memcpy(&w[2 * i], &h, 2);
  }
  return w;
}

}  // namespace

std::string CudaBackend::self_check() {
  std::vector<std::string> off;
  Rng rng{0x5e1fc0ffeeull};
  Dev d(*this);
  const CudaBackendOptions want = options_;
  const int brk = want.self_check_break_for_testing;

  // After a path under check ran: kRan, or kFailed (it failed with a CUDA error, since cleared,
  // and the device still works: *what has the error) or kLost (the device does not work after
  // it: the error stays set). fail_bit: the break-for-testing bit that injects an error here.
  enum class Ran { kRan, kFailed, kLost };
  auto ran = [&](int fail_bit, std::string* what) {
    if (brk & fail_bit) fail("self-check", "an error injected for testing (self_check_break_for_testing)", __FILE__, __LINE__);
    if (ok()) return Ran::kRan;
    *what = error_;
    clear_error();
    if (device_works(*this, (brk & 256) != 0)) return Ran::kFailed;
    error_ = *what;
    return Ran::kLost;
  };
  std::string what;

  // ---- prefill attention: the tensor-core kernels against the CUDA-core one ----
  constexpr const char* kAttentionStage =
      "while checking the prefill attention kernels (tc_attention, tc_attention_padded, tc_attention_mma)";
  if (want.tc_attention && !want.batch_invariant) {
    bool tc_ok = true, padded_ok = want.tc_attention_padded, mma_ok = want.tc_attention_mma;
    auto run = [&](const AttentionArgs& a) {
      attention(a);
      return d.read(a.out, static_cast<size_t>(a.n_tokens) * a.n_heads * a.head_dim);
    };
    // The verdict on one kernel's result: "" (it agreed), or why it goes off.
    auto judge = [&](const char* kernel, int head_dim, Ran r, const std::vector<float>& got, const std::vector<float>& ref) {
      const std::string at = " at head_dim " + std::to_string(head_dim) + ")";
      if (r == Ran::kFailed) return std::string(kernel) + " failed on this device" + at + ": " + what;
      return close(got, ref) ? std::string() : std::string(kernel) + " disagrees with the CUDA-core kernel" + at;
    };
    for (int head_dim : {64, 128}) {
      const AttentionArgs a = make_attention(d, rng, head_dim);
      if (!ok()) return kAttentionStage;
      set_tc_attention(false);
      const std::vector<float> ref = run(a);
      if (!ok()) return kAttentionStage;
      set_tc_attention(true);
      if (!tc_attention_applies(a)) continue;
      set_tc_attention_mma(false);
      set_tc_attention_padded(padded_ok);
      if (padded_ok) {
        const std::vector<float> got = broken(run(a), brk & 1);
        const Ran r = ran(16, &what);
        if (r == Ran::kLost) return kAttentionStage;
        if (std::string why = judge("tc_attention_padded (the WMMA prefill attention kernel with padded rows", head_dim, r, got, ref);
            !why.empty()) {
          padded_ok = false;
          set_tc_attention_padded(false);
          off.push_back(std::move(why));
        }
      }
      {
        const std::vector<float> got = run(a);
        const Ran r = ran(0, &what);
        if (r == Ran::kLost) return kAttentionStage;
        if (std::string why = judge("tc_attention (the WMMA prefill attention kernel", head_dim, r, got, ref); !why.empty()) {
          tc_ok = false;
          off.push_back(std::move(why));
          break;
        }
      }
      set_tc_attention_mma(true);
      if (mma_ok) {
        const std::vector<float> got = broken(run(a), brk & 2);
        const Ran r = ran(32, &what);
        if (r == Ran::kLost) return kAttentionStage;
        if (std::string why = judge("tc_attention_mma (flash attention 2 on mma.sync", head_dim, r, got, ref); !why.empty()) {
          mma_ok = false;
          off.push_back(std::move(why));
        }
      }
    }
    set_tc_attention(tc_ok);
    set_tc_attention_padded(padded_ok);
    set_tc_attention_mma(mma_ok);
  }
  if (!ok()) return kAttentionStage;

  // ---- Q8_0 split rows against the GGUF blocks, bit for bit ----
  constexpr const char* kSplitStage = "while checking Q8_0 split rows (q8_0_split)";
  if (want.q8_0_split) {
    constexpr int64_t kRows = 72, kCols = 256, kMaxN = 40;
    const std::vector<uint8_t> w = q8_0_rows(rng, kRows, kCols);
    const WeightRef host{DType::kQ8_0, w.data(), kRows, kCols};
    uint8_t* blocks = d.alloc<uint8_t>(w.size());
    uint8_t* split = d.alloc<uint8_t>(w.size());
    float* x = d.copy(rng.floats(kMaxN * kCols));
    float* y1 = d.alloc(kMaxN * kRows);
    float* y2 = d.alloc(kMaxN * kRows);
    if (!blocks || !split || !x || !y1 || !y2) return "";
    set_q8_0_split(false);
    const WeightRef wb = upload_weight(host, blocks);
    set_q8_0_split(true);
    const WeightRef ws = upload_weight(host, split);
    if (!ok()) return kSplitStage;
    for (int64_t n : {int64_t{1}, int64_t{8}, kMaxN}) {
      matmul(wb, x, n, y1);
      const std::vector<float> want_y = d.read(y1, n * kRows);
      if (!ok()) return kSplitStage;
      matmul(ws, x, n, y2);
      const std::vector<float> got = broken(d.read(y2, n * kRows), brk & 4);
      const Ran r = ran(64, &what);
      if (r == Ran::kLost) return kSplitStage;
      const std::string at = " at n = " + std::to_string(n) + ")";
      if (r == Ran::kFailed || !same_bits(want_y, got)) {
        set_q8_0_split(false);
        off.push_back(r == Ran::kFailed ? "q8_0_split (Q8_0 rows split into quants and scales failed on this device" + at + ": " + what
                                        : "q8_0_split (Q8_0 rows split into quants and scales give other bits than the GGUF blocks" + at);
        break;
      }
    }
  }
  if (!ok()) return kSplitStage;

  // ---- one-launch decode ops against the separate ops, bit for bit ----
  constexpr const char* kFuseStage = "while checking the one-launch decode ops (fuse_decode)";
  if (want.fuse_decode) {
    constexpr int kHeads = 4, kKvHeads = 2, kHeadDim = 64, kDim = kHeads * kHeadDim, kKvDim = kKvHeads * kHeadDim;
    const std::vector<uint8_t> wq = f16_rows(rng, static_cast<size_t>(kDim) * kDim);
    const std::vector<uint8_t> wk = f16_rows(rng, static_cast<size_t>(kKvDim) * kDim);
    const std::vector<uint8_t> wv = f16_rows(rng, static_cast<size_t>(kKvDim) * kDim);
    const WeightRef q_w{DType::kF16, d.copy(wq), kDim, kDim}, k_w{DType::kF16, d.copy(wk), kKvDim, kDim},
        v_w{DType::kF16, d.copy(wv), kKvDim, kDim};
    const std::vector<float> res = rng.floats(kDim, -4, 4);
    float* x = d.copy(rng.floats(kDim));
    float* norm_w = d.copy(rng.floats(kDim, 0.5f, 1.5f));
    float* y[2] = {d.alloc(kDim), d.alloc(kDim)};
    float* xn[2] = {d.alloc(kDim), d.alloc(kDim)};
    float* tmp = d.alloc(kDim);
    float* q[2] = {d.alloc(kDim), d.alloc(kDim)};
    float* k[2] = {d.alloc(kKvDim), d.alloc(kKvDim)};
    float* v[2] = {d.alloc(kKvDim), d.alloc(kKvDim)};
    void* cache[2][2] = {{d.alloc(16 * kKvDim), d.alloc(16 * kKvDim)}, {d.alloc(16 * kKvDim), d.alloc(16 * kKvDim)}};
    const int32_t* pos = d.copy(std::vector<int32_t>{5});
    const int32_t* slot = d.copy(std::vector<int32_t>{11});
    if (!ok()) return "while setting up the check of the one-launch decode ops";
    if (!x || !tmp) return "";
    std::vector<float> out[2];
    for (int way = 1; way >= 0; --way) {  // 1: separate ops (the reference), 0: fused
      set_fuse_decode(way == 0);
      upload(y[way], res.data(), res.size() * sizeof(float));
      matmul_add_rmsnorm(q_w, x, 1, y[way], tmp, norm_w, 1e-5f, xn[way]);
      RopeStore r{kHeads, kKvHeads, kHeadDim, pos, RopeParams{RopeStyle::kNormal, kHeadDim, 10000, 1}, slot,
                  KvLayer{cache[way][0], cache[way][1], DType::kF32}};
      matmul_qkv_rope_store_kv(q_w, k_w, v_w, nullptr, nullptr, nullptr, xn[way], 1, q[way], k[way], v[way], r);
      for (const float* p : {static_cast<const float*>(y[way]), static_cast<const float*>(xn[way]), static_cast<const float*>(q[way]),
                             static_cast<const float*>(k[way])}) {
        const std::vector<float> h = d.read(p, p == k[way] ? kKvDim : kDim);
        out[way].insert(out[way].end(), h.begin(), h.end());
      }
      for (void* c : cache[way]) {
        const std::vector<float> h = d.read(static_cast<const float*>(c), 16 * kKvDim);
        out[way].insert(out[way].end(), h.begin(), h.end());
      }
      if (way == 1 && !ok()) return kFuseStage;
    }
    const Ran fused_ran = ran(128, &what);
    if (fused_ran == Ran::kLost) return kFuseStage;
    set_fuse_decode(true);
    if (fused_ran == Ran::kFailed) {
      set_fuse_decode(false);
      off.push_back("fuse_decode (the one-launch decode ops failed on this device: " + what + ")");
    } else if (!same_bits(broken(out[0], brk & 8), out[1])) {
      set_fuse_decode(false);
      off.push_back("fuse_decode (the one-launch decode ops give other bits than the separate ops)");
    }
  }
  if (!ok()) return kFuseStage;

  std::string note;
  for (const std::string& s : off) {
    if (!note.empty()) note += "; ";
    note += s;
  }
  return note;
}

std::string CudaBackend::apply_self_check() {
  // Once per device and set of paths asked for: the verdict holds for every later backend of
  // this process on the device (a disagreeing kernel does not start agreeing).
  struct Verdict {
    bool tc_attention, tc_attention_padded, tc_attention_mma, q8_0_split, fuse_decode;
    std::string note;
  };
  static std::mutex mu;
  static std::map<std::pair<int, int>, Verdict> verdicts;
  const CudaBackendOptions& o = options_;
  const int asked = (o.tc_attention ? 1 : 0) | (o.tc_attention_padded ? 2 : 0) | (o.tc_attention_mma ? 4 : 0) |
                    (o.q8_0_split ? 8 : 0) | (o.fuse_decode ? 16 : 0) | (o.batch_invariant ? 32 : 0) |
                    (o.self_check_break_for_testing << 6);
  std::lock_guard<std::mutex> lock(mu);
  auto it = verdicts.find({o.device, asked});
  if (it == verdicts.end()) {
    const int device = o.device;
    std::string note = self_check();
    if (!ok()) {
      std::string why = "cuda: the start-up self-check of the kernels failed ";  // (+= : GCC 12's -Wrestrict)
      why += note;
      why += ": ";
      why += last_error();
      return why;
    }
    it = verdicts.emplace(std::make_pair(device, asked), Verdict{o.tc_attention, o.tc_attention_padded,
                                                                 o.tc_attention_mma, o.q8_0_split, o.fuse_decode,
                                                                 std::move(note)})
             .first;
  }
  const Verdict& v = it->second;
  set_tc_attention(v.tc_attention);
  set_tc_attention_padded(v.tc_attention_padded);
  set_tc_attention_mma(v.tc_attention_mma);
  set_q8_0_split(v.q8_0_split);
  set_fuse_decode(v.fuse_decode);
  self_check_note_ = v.note;
  return "";
}

}  // namespace ds
