// tests/gpu/kernel_check/layers.cc: gpu_kernel_check's per-layer ops: rmsnorm, RoPE, the elementwise ops,
// attention (decode, split-K, tiled, tensor-core prefill), the fused residual / norm / RoPE launches.
#include "tests/gpu/kernel_check/check.h"

namespace ds::kernel_check {

void check_rmsnorm(CudaBackend& b, Rng& rng) {
  for (int64_t dim : {64, 2048, 5000}) {
    for (int64_t n : {1, 5, 64}) {
      const auto x = rng.floats(n * dim, -3, 3);
      const auto w = rng.floats(dim, 0.5, 1.5);
      std::vector<float> want(x.size());
      ds::ref::rmsnorm(x.data(), w.data(), n, dim, 1e-5f, want.data());
      Buf dx(b, x), dw(b, w), dout(b, x.size() * 4);
      b.rmsnorm(dx.as(), dw.as(), n, dim, 1e-5f, dout.as());
      const std::string name = "rmsnorm " + shape(n, dim);
      compare(name, dout.read(x.size()), want, 1e-6, 1e-5);
      b.rmsnorm(dx.as(), dw.as(), n, dim, 1e-5f, dx.as());  // in place
      compare("rmsnorm-inplace " + shape(n, dim), dx.read(x.size()), want, 1e-6, 1e-5);
    }
  }
  require_ok(b, "rmsnorm");
}

void check_rope(CudaBackend& b, Rng& rng) {
  struct Case { RopeStyle style; int head_dim, n_rot; float base, scale; int max_pos; };
  const Case cases[] = {
      {RopeStyle::kNormal, 64, 64, 10000, 1, 4096},   {RopeStyle::kNeox, 64, 64, 10000, 1, 4096},
      {RopeStyle::kNormal, 128, 128, 500000, 1, 32768}, {RopeStyle::kNeox, 128, 128, 1000000, 1, 32768},
      {RopeStyle::kNeox, 128, 64, 10000, 0.25f, 8192}, {RopeStyle::kNormal, 80, 80, 10000, 1, 2048},
  };
  for (const Case& c : cases) {
    const int n_heads = 6;
    for (int64_t n : {1, 7, 100}) {
      auto x = rng.floats(n * n_heads * c.head_dim);
      std::vector<int32_t> pos(n);
      for (auto& p : pos) p = rng.below(c.max_pos);
      pos[0] = c.max_pos - 1;
      RopeParams p;
      p.style = c.style;
      p.n_rot = c.n_rot;
      p.freq_base = c.base;
      p.freq_scale = c.scale;
      Buf dx(b, x), dpos(b, pos);
      ds::ref::rope(x.data(), n, n_heads, c.head_dim, pos.data(), p);
      b.rope(dx.as(), n, n_heads, c.head_dim, dpos.as<int32_t>(), p);
      char name[128];
      std::snprintf(name, sizeof name, "rope/%s hd=%d rot=%d base=%g scale=%g n=%" PRId64,
                    c.style == RopeStyle::kNeox ? "neox" : "normal", c.head_dim, c.n_rot, c.base, c.scale, n);
      compare(name, dx.read(x.size()), x, 1e-6, 1e-5);
    }
  }
  require_ok(b, "rope");
}

void check_elementwise(CudaBackend& b, Rng& rng) {
  for (int64_t count : {int64_t{1}, int64_t{1000}, int64_t{1} << 20}) {
    const auto g = rng.floats(count, -12, 12), u = rng.floats(count, -3, 3);
    std::vector<float> want(count);
    ds::ref::swiglu(g.data(), u.data(), count, want.data());
    Buf dg(b, g), du(b, u), dout(b, count * 4);
    b.swiglu(dg.as(), du.as(), count, dout.as());
    compare("swiglu n=" + std::to_string(count), dout.read(count), want, 1e-7, 1e-5);
    if (count >= 1000) {  // the 4-wide kernel (count % 4 == 0) against the scalar one (count - 1): same bits
      Buf dout1(b, count * 4);
      b.swiglu(dg.as(), du.as(), count - 1, dout1.as());
      expect("determinism/swiglu-vec-scalar n=" + std::to_string(count),
             same_bits(dout.read(count - 1).data(), dout1.read(count - 1).data(), count - 1));
    }

    std::vector<float> sum(count);
    for (int64_t i = 0; i < count; ++i) sum[i] = g[i] + u[i];
    b.add(dg.as(), du.as(), count);
    compare("add n=" + std::to_string(count), dg.read(count), sum, 0, 0);
  }
  for (int64_t dim : {1, 96, 4096}) {
    const int64_t n = 13;
    const auto x = rng.floats(n * dim), bias = rng.floats(dim);
    std::vector<float> want(x);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < dim; ++k) want[i * dim + k] += bias[k];
    Buf dx(b, x), dbias(b, bias);
    b.add_bias(dx.as(), dbias.as(), n, dim);
    compare("add_bias " + shape(n, dim), dx.read(x.size()), want, 0, 0);
  }
  // store_kv: n rows into distinct random slots of a [n_slots, kv_dim] cache; the rest stays 0.
  for (int64_t kv_dim : {64, 1024}) {
    const int64_t n = 37, n_slots = 256;
    const auto k = rng.floats(n * kv_dim), v = rng.floats(n * kv_dim);
    std::vector<int32_t> perm(n_slots);
    for (int32_t i = 0; i < n_slots; ++i) perm[i] = i;
    for (int64_t i = n_slots - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(static_cast<int>(i + 1))]);
    const std::vector<int32_t> slots(perm.begin(), perm.begin() + n);
    std::vector<float> want_k(n_slots * kv_dim, 0.0f), want_v(n_slots * kv_dim, 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(k.data() + i * kv_dim, kv_dim, want_k.data() + slots[i] * kv_dim);
      std::copy_n(v.data() + i * kv_dim, kv_dim, want_v.data() + slots[i] * kv_dim);
    }
    Buf dk(b, k), dv(b, v), dslots(b, slots), kc(b, want_k.size() * 4), vc(b, want_v.size() * 4);
    b.store_kv(dk.as(), dv.as(), n, dslots.as<int32_t>(), kv_dim, KvLayer{kc.as(), vc.as(), DType::kF32});
    compare("store_kv/k kv_dim=" + std::to_string(kv_dim), kc.read(want_k.size()), want_k, 0, 0);
    compare("store_kv/v kv_dim=" + std::to_string(kv_dim), vc.read(want_v.size()), want_v, 0, 0);
    // F16 cache: the halves rounded to nearest even (dtype.h's reference), bit for bit.
    Buf hk(b, want_k.size() * 2), hv(b, want_v.size() * 2);
    b.store_kv(dk.as(), dv.as(), n, dslots.as<int32_t>(), kv_dim, KvLayer{hk.as(), hv.as(), DType::kF16});
    expect("store_kv/f16 kv_dim=" + std::to_string(kv_dim),
           hk.read<uint16_t>(want_k.size()) == to_f16(want_k) && hv.read<uint16_t>(want_v.size()) == to_f16(want_v),
           "the F16 cache differs from fp32_to_fp16_ref of the rows");
  }
  require_ok(b, "elementwise");
}

// Attention: each case runs version 1 (no workspace) and, when max_kv > 0, version 2
// (split-K over chunks set by max_kv), both against ref::attention. Version 2 must also give
// every token the bits it gets when attended alone, the bits of version 1 for tokens of one
// chunk (n_kv <= 256, the smallest chunk), and fall back to version 1 (same bits) when the
// workspace is missing or too small.
// AttentionArgs over device buffers: q and out [n, heads * hd], the caches, n tokens; scale
// 1 / sqrt(hd), no split-K workspace, no tiles.
AttentionArgs attention_args(const Buf& q, const Buf& out, const Buf& kc, const Buf& vc, const Buf& toks, int64_t n,
                             int heads, int kv_heads, int hd, int bs) {
  AttentionArgs a;
  a.q = q.as();
  a.out = out.as();
  a.k_cache = kc.as();
  a.v_cache = vc.as();
  a.tokens = toks.as<AttentionToken>();
  a.n_tokens = n;
  a.n_heads = heads;
  a.n_kv_heads = kv_heads;
  a.head_dim = hd;
  a.block_size = bs;
  a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  return a;
}

void check_attention(CudaBackend& b, Rng& rng) {
  struct Case {
    int n_heads, n_kv_heads, head_dim, block_size;
    std::vector<int> n_kv;  // per token
    bool one_sequence;      // all tokens share one block table (prefill); else one sequence each
    int max_kv;             // > 0: also run version 2 with this bound
    int seq_len = 0;        // > 0 (and !one_sequence): sequences of seq_len consecutive tokens
  };
  const std::vector<Case> cases = {
      {4, 4, 64, 16, {1, 2, 5, 17, 64, 300}, false, 300},
      {8, 2, 128, 32, {1, 100, 1000, 2049}, false, 2049},  // GQA; 2049: chunks of 256, the last has 1
      {2, 1, 80, 16, {3, 77, 0}, false, 77},               // head_dim % 32 != 0; n_kv = 0 gives zeros
      {4, 2, 256, 16, {50, 129}, false, 0},
      {2, 2, 1024, 8, {9, 40}, false, 0},                  // the largest head_dim
      {8, 8, 64, 16, {96, 97, 98, 99, 100}, true, 0},      // prefill: consecutive positions
      // Version 2: chunks of 256 (max_kv 1024: 4 of them); n_kv 0, 1, < C, C, C + 1, several
      // chunks, all of max_kv, beyond max_kv (the last chunk stretches); GQA.
      {4, 2, 64, 16, {0, 1, 100, 256, 257, 700, 1024, 1100}, false, 1024},
      // max_kv 20000: 32 chunks of 640 (625 rounded up to 16s); head_dim % 32 != 0.
      {2, 1, 96, 16, {639, 640, 641, 1300}, false, 20000},
      // prefill of one sequence across a chunk boundary, chunks of 256.
      {4, 1, 64, 32, {250, 255, 256, 257, 260, 513}, true, 4096},
      {2, 2, 1024, 8, {40, 300}, false, 512},              // the largest head_dim, 2 chunks
      // Prefill tiles (<= 8 tokens of one sequence): 20 tokens of one sequence (tiles 8, 8, 4),
      // n_kv not monotonic; three sequences of 5 (tiles 5, 5, 5); GQA; head_dim 80 and 128.
      {4, 2, 64, 16, {5, 9, 1, 33, 64, 65, 31, 32, 100, 99, 7, 0, 2, 48, 49, 50, 17, 16, 15, 120}, true, 0},
      {2, 1, 80, 16, {1, 2, 3, 4, 5, 30, 31, 32, 33, 34, 60, 61, 62, 63, 64}, false, 0, 5},
      {8, 2, 128, 32, {300, 301, 302, 303, 304, 305, 306, 307, 308, 257}, true, 1024},
      {4, 4, 64, 16, {250, 255, 256, 257, 260, 513, 700, 1, 3}, false, 2048, 3},
      // For the tensor-core prefill kernel (also checked bit for bit as above, with it off):
      // bench-1b's heads (8 a KV head: 64 rows a tile), 16 tokens from position 200; 16 heads a
      // KV head (128 rows: 2 row chunks) at the first positions (rows masked down to 1
      // position); head_dim 128 with 8 heads a KV head (64 rows: 2 chunks of 32), ~300 positions.
      {32, 4, 64, 16, {201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216}, true, 0},
      {16, 1, 64, 16, {1, 2, 3, 4, 5, 6, 7, 8}, true, 0},
      {8, 1, 128, 32, {301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312}, true, 1024},
  };
  b.set_tc_attention(false);  // the CUDA-core kernels' bits below; the tensor-core kernel where noted
  int tc_checked = 0, fa_checked = 0;
  int case_no = 0;
  for (const Case& c : cases) {
    const int64_t n_tokens = static_cast<int64_t>(c.n_kv.size());
    const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
    // Block tables: a random permutation of the cache's blocks.
    auto seq_of = [&](int64_t t) -> int64_t { return c.one_sequence ? 0 : c.seq_len > 0 ? t / c.seq_len : t; };
    std::vector<std::vector<int32_t>> tables;
    int total_blocks = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
      if (seq_of(t) < static_cast<int64_t>(tables.size())) continue;  // its sequence has its table
      int len = 0;
      for (int64_t u = t; u < n_tokens; ++u)
        if (seq_of(u) == seq_of(t)) len = std::max(len, c.n_kv[u]);
      tables.emplace_back(std::max(1, (len + c.block_size - 1) / c.block_size));
      total_blocks += static_cast<int>(tables.back().size());
    }
    total_blocks += 3;  // unused blocks
    std::vector<int32_t> perm(total_blocks);
    for (int i = 0; i < total_blocks; ++i) perm[i] = i;
    for (int i = total_blocks - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(i + 1)]);
    std::vector<int32_t> flat;
    for (auto& tb : tables)
      for (auto& e : tb) {
        e = perm[flat.size()];
        flat.push_back(e);
      }
    const auto kc = rng.floats(static_cast<size_t>(total_blocks) * c.block_size * kv_dim);
    const auto vc = rng.floats(kc.size());
    const auto q = rng.floats(n_tokens * c.n_heads * c.head_dim, -2, 2);

    // Each case with an F32 cache, then an F16 one (the reference gets the rounded values).
    for (DType kvt : {DType::kF32, DType::kF16}) {
      const bool f16 = kvt == DType::kF16;
      const char* tag = f16 ? " f16" : "";
      const std::vector<float> kc_ref = f16 ? f16_rounded(kc) : kc, vc_ref = f16 ? f16_rounded(vc) : vc;
      std::vector<AttentionToken> host_tokens(n_tokens);
      for (int64_t t = 0; t < n_tokens; ++t) host_tokens[t] = {tables[seq_of(t)].data(), c.n_kv[t]};
      std::vector<float> want(q.size());
      AttentionArgs a;
      a.q = q.data();
      a.out = want.data();
      a.k_cache = kc_ref.data();
      a.v_cache = vc_ref.data();
      a.tokens = host_tokens.data();
      a.n_tokens = n_tokens;
      a.n_heads = c.n_heads;
      a.n_kv_heads = c.n_kv_heads;
      a.head_dim = c.head_dim;
      a.block_size = c.block_size;
      a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      ds::ref::attention(a);

      Buf dflat(b, flat), dq(b, q), dout(b, q.size() * 4);
      Buf dkc = f16 ? Buf(b, to_f16(kc)) : Buf(b, kc), dvc = f16 ? Buf(b, to_f16(vc)) : Buf(b, vc);
      std::vector<AttentionToken> dev_tokens(n_tokens);
      for (int64_t t = 0; t < n_tokens; ++t) {
        const int64_t table = seq_of(t);
        int64_t start = 0;  // tables are concatenated in flat
        for (int64_t i = 0; i < table; ++i) start += static_cast<int64_t>(tables[i].size());
        dev_tokens[t] = {dflat.as<int32_t>() + start, c.n_kv[t]};
      }
      Buf dtok(b, dev_tokens);
      AttentionArgs d = attention_args(dq, dout, dkc, dvc, dtok, n_tokens, c.n_heads, c.n_kv_heads, c.head_dim,
                                       c.block_size);
      d.kv_type = kvt;
      b.attention(d);
      const auto got = dout.read(q.size());
      if (f16) {
        // The F16 cache gives the bits of an F32 cache holding the rounded values.
        Buf rkc(b, kc_ref), rvc(b, vc_ref), rout(b, q.size() * 4);
        AttentionArgs r = d;
        r.k_cache = rkc.as();
        r.v_cache = rvc.as();
        r.kv_type = DType::kF32;
        r.out = rout.as();
        b.attention(r);
        expect("attention-f16/same-bits-as-rounded-f32 #" + std::to_string(case_no),
               same_bits(rout.read(q.size()).data(), got.data(), q.size()), "differs from F32 over the rounded rows");
      }
      char name[128];
      std::snprintf(name, sizeof name, "attention%s heads=%d/%d hd=%d bs=%d tokens=%" PRId64 " #%d", tag, c.n_heads,
                    c.n_kv_heads, c.head_dim, c.block_size, n_tokens, case_no);
      compare(name, got, want, 1e-5, 1e-4);

      // The token attended alone gets the bits it got in the batch.
      const int64_t width = static_cast<int64_t>(c.n_heads) * c.head_dim;
      Buf one(b, width * 4);
      auto alone_matches = [&](const AttentionArgs& batch, const std::vector<float>& batch_out, int64_t t) {
        AttentionArgs s = batch;
        s.q = dq.as() + t * width;
        s.out = one.as();
        s.tokens = dtok.as<AttentionToken>() + t;
        s.n_tokens = 1;
        b.attention(s);
        const auto alone = one.read(width);
        return same_bits(alone.data(), batch_out.data() + t * width, width);
      };
      expect("determinism/attention-alone" + std::string(tag) + " #" + std::to_string(case_no), alone_matches(d, got, n_tokens - 1),
             "the last token alone differs from the batch");
      // Prefill tiles (runs of <= kAttentionTileTokens tokens of one sequence): the same bits.
      std::vector<int32_t> tiles = {0};
      for (int64_t t = 1; t <= n_tokens; ++t)
        if (t == n_tokens || seq_of(t) != seq_of(t - 1) || t - tiles.back() == ds::kAttentionTileTokens)
          tiles.push_back(static_cast<int32_t>(t));
      Buf dtiles(b, tiles);
      auto tiled_matches = [&](AttentionArgs s, const std::vector<float>& untiled) {
        Buf tout(b, q.size() * 4);
        s.out = tout.as();
        s.tiles = dtiles.as<int32_t>();
        s.n_tiles = static_cast<int64_t>(tiles.size()) - 1;
        b.attention(s);
        return same_bits(tout.read(q.size()).data(), untiled.data(), q.size());
      };
      expect("attention-tiled/same-bits" + std::string(tag) + " #" + std::to_string(case_no) + " (" + std::to_string(tiles.size() - 1) + " tiles)",
             tiled_matches(d, got), "tiled output differs from version 1");
      // The tensor-core prefill kernel, where it takes the tiles (they average >= 4 tokens,
      // head_dim 64 or 128): against the reference with F16 operands' error (scores from F16
      // queries and keys, probabilities and values rounded to F16).
      {
        b.set_tc_attention(true);
        AttentionArgs s = d;
        Buf tout(b, q.size() * 4);
        s.out = tout.as();
        s.tiles = dtiles.as<int32_t>();
        s.n_tiles = static_cast<int64_t>(tiles.size()) - 1;
        const bool applies = b.tc_attention_applies(s);
        const bool expected = (c.head_dim == 64 || c.head_dim == 128) && n_tokens >= 4 * s.n_tiles;
        expect("attention-tc/applies #" + std::to_string(case_no), applies == expected,
               applies ? "took tiles it should not" : "refused tiles it should take");
        std::vector<float> unpadded, padded_out;
        b.set_tc_attention_mma(false);  // the WMMA kernel first
        for (bool padded : {false, true}) {  // shared-memory rows as the H200 run timed them, then padded
          if (!applies) break;
          b.set_tc_attention_padded(padded);
          b.attention(s);
          const auto got_tc = tout.read(q.size());
          std::snprintf(name, sizeof name, "attention-tc%s%s heads=%d/%d hd=%d tokens=%" PRId64 " #%d",
                        padded ? "-padded" : "", tag, c.n_heads, c.n_kv_heads, c.head_dim, n_tokens, case_no);
          compare(name, got_tc, want, 1e-3, 5e-3);
          if (padded) {
            expect("determinism/attention-tc-padded-same-bits" + std::string(tag) + " #" + std::to_string(case_no),
                   same_bits(got_tc.data(), unpadded.data(), q.size()), "the padded layout changed the arithmetic");
            padded_out = got_tc;
          } else {
            unpadded = got_tc;
          }
          ++tc_checked;
        }
        // Flash attention 2 on mma.sync (F16 caches; an F32 cache keeps the padded WMMA kernel).
        b.set_tc_attention_mma(true);
        if (applies) {
          b.attention(s);
          const auto got_fa = tout.read(q.size());
          if (s.kv_type == DType::kF16) {
            std::snprintf(name, sizeof name, "attention-fa%s heads=%d/%d hd=%d tokens=%" PRId64 " #%d", tag, c.n_heads,
                          c.n_kv_heads, c.head_dim, n_tokens, case_no);
            compare(name, got_fa, want, 1e-3, 5e-3);
            ++fa_checked;
          } else {
            expect("attention-fa/f32-cache-is-padded-wmma #" + std::to_string(case_no),
                   padded_out.size() == got_fa.size() && same_bits(got_fa.data(), padded_out.data(), q.size()));
          }
        }
        b.set_tc_attention_padded(true);
        b.set_tc_attention(false);
      }

      if (c.max_kv > 0) {
        const size_t ws_floats = b.attention_workspace_floats(n_tokens, c.n_heads, c.head_dim, c.max_kv);
        expect("attention-v2/workspace-size" + std::string(tag) + " #" + std::to_string(case_no), ws_floats > 0, "no workspace for split-K");
        Buf ws(b, ws_floats * 4), dout2(b, q.size() * 4);
        AttentionArgs d2 = d;
        d2.out = dout2.as();
        d2.max_kv = c.max_kv;
        d2.workspace = ws.as();
        d2.workspace_floats = ws_floats;
  #ifdef DS_CUDA_EMULATION
        const int64_t launches0 = emu::launches();
  #endif
        b.attention(d2);
  #ifdef DS_CUDA_EMULATION
        // One launch whatever the chunks: the last block of a pair's chunks merges them.
        const int64_t launched = emu::launches() - launches0;
        expect("attention-v2/launches" + std::string(tag) + " #" + std::to_string(case_no), launched == 1,
               std::to_string(launched) + " launches");
  #endif
        const auto got2 = dout2.read(q.size());
        std::snprintf(name, sizeof name, "attention-v2%s heads=%d/%d hd=%d bs=%d tokens=%" PRId64 " max_kv=%d #%d",
                      tag, c.n_heads, c.n_kv_heads, c.head_dim, c.block_size, n_tokens, c.max_kv, case_no);
        compare(name, got2, want, 1e-5, 1e-4);
        int64_t differ = -1, not_v1 = -1;
        for (int64_t t = 0; t < n_tokens; ++t) {
          if (differ < 0 && !alone_matches(d2, got2, t)) differ = t;
          if (not_v1 < 0 && c.n_kv[t] <= 256 && !same_bits(got.data() + t * width, got2.data() + t * width, width))
            not_v1 = t;
        }
        expect("determinism/attention-v2-alone" + std::string(tag) + " #" + std::to_string(case_no), differ < 0,
               "token " + std::to_string(differ) + " alone differs from the batch");
        expect("attention-tiled/v2-same-bits" + std::string(tag) + " #" + std::to_string(case_no), tiled_matches(d2, got2),
               "tiled output differs from version 2");
        expect("attention-v2/one-chunk-is-v1" + std::string(tag) + " #" + std::to_string(case_no), not_v1 < 0,
               "token " + std::to_string(not_v1) + " (one chunk) differs from version 1");
        // Fallbacks: no workspace, or one float short of it, run version 1.
        for (int variant = 0; variant < 2; ++variant) {
          AttentionArgs f = d2;
          if (variant == 0) f.workspace = nullptr;
          else f.workspace_floats = ws_floats - 1;
          b.attention(f);
          expect(std::string("attention-v2/fallback-") + (variant == 0 ? "no-workspace" : "small-workspace") + tag + " #" +
                     std::to_string(case_no),
                 same_bits(dout2.read(q.size()).data(), got.data(), q.size()), "output differs from version 1");
        }
      }
    }
    ++case_no;
  }
  expect("attention-tc/cases", tc_checked >= 24, std::to_string(tc_checked) + " cases took the tensor-core kernel");
  expect("attention-fa/cases", fa_checked >= 6, std::to_string(fa_checked) + " cases took the mma.sync kernel");
  b.set_tc_attention(true);
  require_ok(b, "attention");
}

// Bad arguments become errors a worker can report, not aborts.
// Recording (CUDA graphs): a recorded rmsnorm + GEMV + add sequence (and a fused QKV + gate/up
// pair) replays to the same bits as the eager ops, sees new inputs uploaded between replays,
// and a recording that meets an op it cannot record (the cuBLAS path) reports failure and
// runs nothing.
// matmul_add (one GEMV v3 launch with the residual add) and rope_store_kv (one launch):
// against the reference and bit for bit against the separate ops (fuse_decode off).
void check_fused_residual_rope(CudaBackend& b, Rng& rng, bool quick) {
  struct Shape { int64_t rows, cols; };
  for (DType t : kAllTypes) {
    const std::string tn = ds::dtype_name(t);
    for (Shape sh : {Shape{64, 96}, Shape{256, 512}, Shape{2048, 5632}}) {
      if ((quick && sh.rows > 256) || !fits(t, sh.cols)) continue;
      const int64_t max_n = 40;
      const auto w = make_weights(rng, t, sh.rows, sh.cols);
      const auto x = rng.floats(max_n * sh.cols);
      const auto res = rng.floats(max_n * sh.rows, -4, 4);
      std::vector<float> want;
      std::vector<double> scale;
      ref_matmul_scaled(t, w, sh.rows, sh.cols, x, max_n, &want, &scale);
      Buf dw(b, w), dx(b, x), dy(b, res), dy2(b, res), tmp(b, max_n * sh.rows * 4);
      const WeightRef gw{t, dw.as<void>(), sh.rows, sh.cols};
      for (int64_t n : {1, 3, 8, 9}) {
        const std::string suffix = " " + shape(sh.rows, sh.cols) + " n=" + std::to_string(n) + (n > 8 ? " invariant" : "");
        b.upload(dy.as(), res.data(), res.size() * 4);
        b.upload(dy2.as(), res.data(), res.size() * 4);
        if (n > 8) b.set_batch_invariant(true);
        b.matmul_add(gw, dx.as(), n, dy.as(), tmp.as());
        b.set_fuse_decode(false);
        b.matmul_add(gw, dx.as(), n, dy2.as(), tmp.as());
        b.set_fuse_decode(true);
        b.set_batch_invariant(false);
        check_residual_add("fused-add/" + tn + suffix, "determinism/fused-add-bits " + tn + suffix,
                           dy.read(n * sh.rows), dy2.read(n * sh.rows), res, want, scale, n * sh.rows, 1e-6, 2e-5);
      }
      // matmul_add_rmsnorm: the residual add and the next RMSNorm in one launch (the last block
      // normalizes), bit for bit as matmul_add then rmsnorm; twice (the arrival counter resets).
      {
        const auto nw = rng.floats(sh.rows, 0.5f, 1.5f);
        Buf dnw(b, nw), xn1(b, max_n * sh.rows * 4), xn2(b, max_n * sh.rows * 4);
        for (int64_t n : {1, 3, 8, 9}) {
          const std::string suffix = " " + shape(sh.rows, sh.cols) + " n=" + std::to_string(n);
          bool same = true;
          for (int rep = 0; rep < 2; ++rep) {
            b.upload(dy.as(), res.data(), res.size() * 4);
            b.upload(dy2.as(), res.data(), res.size() * 4);
            b.matmul_add_rmsnorm(gw, dx.as(), n, dy.as(), tmp.as(), dnw.as(), 1e-5f, xn1.as());
            b.matmul_add(gw, dx.as(), n, dy2.as(), tmp.as());
            b.rmsnorm(dy2.as(), dnw.as(), n, sh.rows, 1e-5f, xn2.as());
            const size_t cnt = static_cast<size_t>(n * sh.rows);
            same = same && same_bits(dy.read(cnt).data(), dy2.read(cnt).data(), cnt) &&
                   same_bits(xn1.read(cnt).data(), xn2.read(cnt).data(), cnt);
          }
          expect("determinism/fused-add-rmsnorm-bits " + tn + suffix, same, "differs from matmul_add + rmsnorm");
        }
      }
      // n = 40 (past the tensor-core kernel): cuBLAS with the add as its beta = 1, within the
      // cuBLAS path's tolerance (F16 operands unless F32 weights; BF16 2^-8).
      {
        const int64_t n = max_n;
        b.upload(dy.as(), res.data(), res.size() * 4);
        b.matmul_add(gw, dx.as(), n, dy.as(), tmp.as());
        const auto got = dy.read(n * sh.rows);
        std::vector<float> wn(n * sh.rows);
        std::vector<double> sn(n * sh.rows);
        for (int64_t i = 0; i < n * sh.rows; ++i) {
          wn[i] = res[i] + want[i];
          sn[i] = scale[i] + std::fabs(res[i]);
        }
        compare("fused-add-cublas/" + tn + " " + shape(sh.rows, sh.cols) + " n=40", got, wn, 1e-5,
                t == DType::kBF16 ? 8e-3 : t == DType::kF32 ? 2e-5 : 1.5e-3, &sn);
      }
    }
  }
  // rope_store_kv: both styles, GQA, partial rotation, scattered cache slots.
  struct Rope { int n_heads, n_kv_heads, head_dim, n_rot; RopeStyle style; };
  for (Rope rp : {Rope{4, 2, 16, 16, RopeStyle::kNormal}, Rope{4, 4, 32, 32, RopeStyle::kNeox},
                  Rope{32, 4, 64, 64, RopeStyle::kNormal}, Rope{6, 2, 24, 16, RopeStyle::kNeox},
                  Rope{6, 3, 24, 8, RopeStyle::kNormal}}) {
    for (int64_t n : {1, 5, 17}) {
      const int64_t qd = static_cast<int64_t>(rp.n_heads) * rp.head_dim, kvd = static_cast<int64_t>(rp.n_kv_heads) * rp.head_dim;
      const auto q = rng.floats(n * qd), k = rng.floats(n * kvd), v = rng.floats(n * kvd);
      std::vector<int32_t> pos(n), slots(n);
      for (int64_t i = 0; i < n; ++i) {
        pos[i] = static_cast<int32_t>(rng.below(4000));
        slots[i] = static_cast<int32_t>((i * 7 + 3) % 64);  // distinct for n <= 64
      }
      const int64_t cache = 64 * kvd;
      RopeParams p;
      p.style = rp.style;
      p.n_rot = rp.n_rot;
      p.freq_base = 10000;
      Buf dpos(b, pos), dslots(b, slots), dv(b, v);
      Buf q1(b, q), k1(b, k), kc1(b, cache * 4), vc1(b, cache * 4);
      Buf q2(b, q), k2(b, k), kc2(b, cache * 4), vc2(b, cache * 4);
      const std::string suffix = " h" + std::to_string(rp.n_heads) + "/" + std::to_string(rp.n_kv_heads) + " hd" +
                                 std::to_string(rp.head_dim) + " rot" + std::to_string(rp.n_rot) +
                                 (rp.style == RopeStyle::kNeox ? " neox" : " normal") + " n=" + std::to_string(n);
      // F16 caches (on copies of q and k): the fused launch writes the separate ops' halves.
      {
        Buf qh1(b, q), kh1(b, k), qh2(b, q), kh2(b, k);
        Buf hk1(b, cache * 2), hv1(b, cache * 2), hk2(b, cache * 2), hv2(b, cache * 2);
        b.rope_store_kv(qh1.as(), kh1.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                        dslots.as<int32_t>(), KvLayer{hk1.as(), hv1.as(), DType::kF16});
        b.set_fuse_decode(false);
        b.rope_store_kv(qh2.as(), kh2.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                        dslots.as<int32_t>(), KvLayer{hk2.as(), hv2.as(), DType::kF16});
        b.set_fuse_decode(true);
        expect("determinism/fused-rope-store-f16-bits" + suffix,
               hk1.read<uint16_t>(cache) == hk2.read<uint16_t>(cache) &&
                   hv1.read<uint16_t>(cache) == hv2.read<uint16_t>(cache),
               "the F16 cache differs from rope, rope, store_kv's");
      }
      b.rope_store_kv(q1.as(), k1.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                      dslots.as<int32_t>(), KvLayer{kc1.as(), vc1.as(), DType::kF32});
      b.set_fuse_decode(false);
      b.rope_store_kv(q2.as(), k2.as(), dv.as(), n, rp.n_heads, rp.n_kv_heads, rp.head_dim, dpos.as<int32_t>(), p,
                      dslots.as<int32_t>(), KvLayer{kc2.as(), vc2.as(), DType::kF32});
      b.set_fuse_decode(true);
      bool same = true;
      for (auto* pair : {&q1, &k1, &kc1, &vc1}) {
        const Buf& other = pair == &q1 ? q2 : pair == &k1 ? k2 : pair == &kc1 ? kc2 : vc2;
        const size_t count = pair == &q1 ? n * qd : pair == &k1 ? n * kvd : cache;
        same = same && same_bits(pair->read(count).data(), other.read(count).data(), count);
      }
      expect("determinism/fused-rope-store-bits" + suffix, same, "differs from rope, rope, store_kv");
      // And the reference: ref::rope on the host copies, then the cache rows.
      std::vector<float> rq = q, rk = k;
      ds::ref::rope(rq.data(), n, rp.n_heads, rp.head_dim, pos.data(), p);
      ds::ref::rope(rk.data(), n, rp.n_kv_heads, rp.head_dim, pos.data(), p);
      compare("fused-rope-store/q" + suffix, q1.read(n * qd), rq, 1e-6, 1e-5);
      const auto kc = kc1.read(cache), vc = vc1.read(cache);
      std::vector<float> gk, gv, wk, wv;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < kvd; ++c) {
          gk.push_back(kc[slots[i] * kvd + c]);
          gv.push_back(vc[slots[i] * kvd + c]);
          wk.push_back(rk[i * kvd + c]);
          wv.push_back(v[i * kvd + c]);
        }
      compare("fused-rope-store/k-cache" + suffix, gk, wk, 1e-6, 1e-5);
      compare("fused-rope-store/v-cache" + suffix, gv, wv, 0, 0);
    }
  }
  // matmul_qkv_rope_store_kv (decode: Q/K/V GEMV, RoPE and the cache write in one launch):
  // every output (q, k, v, both caches) bit for bit as matmul_qkv then rope_store_kv, for
  // both styles, partial rotation, GQA, biases (qwen2), F32 and F16 caches, the GEMV's n range,
  // split Q8_0 rows; and where it does not apply (n past the GEMV) the same default path.
  {
    struct QR { int n_heads, n_kv_heads, head_dim, n_rot; RopeStyle style; int64_t cols; DType t; bool bias; };
    const std::vector<QR> qrs = {
        {4, 2, 16, 16, RopeStyle::kNormal, 64, DType::kF32, false},
        {4, 4, 32, 32, RopeStyle::kNeox, 96, DType::kF16, true},
        {8, 2, 64, 64, RopeStyle::kNormal, 128, DType::kQ8_0, false},
        {6, 2, 24, 16, RopeStyle::kNeox, 64, DType::kQ8_0, true},
        {6, 3, 24, 8, RopeStyle::kNormal, 256, DType::kQ4_K, false},
        {4, 1, 64, 64, RopeStyle::kNeox, 512, DType::kBF16, false},
    };
    for (const QR& c : qrs) {
      const int64_t qd = static_cast<int64_t>(c.n_heads) * c.head_dim, kvd = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
      const int64_t max_n = 12, cache_rows = 64;
      const auto x = rng.floats(max_n * c.cols);
      const int64_t rows[3] = {qd, kvd, kvd};
      std::vector<std::vector<uint8_t>> hw;
      std::vector<Buf> dw, db;
      WeightRef w[3];
      for (int m = 0; m < 3; ++m) {
        hw.push_back(make_weights(rng, c.t, rows[m], c.cols));
        dw.emplace_back(b, hw[m].size());
        w[m] = b.upload_weight(WeightRef{c.t, hw[m].data(), rows[m], c.cols}, dw[m].as<void>());  // Q8_0: split rows
        db.emplace_back(b, rng.floats(rows[m]));
      }
      std::vector<int32_t> pos(max_n), slots(max_n);
      for (int64_t i = 0; i < max_n; ++i) {
        pos[i] = static_cast<int32_t>(rng.below(4000));
        slots[i] = static_cast<int32_t>((i * 11 + 5) % cache_rows);
      }
      Buf dx(b, x), dpos(b, pos), dslots(b, slots);
      RopeParams p;
      p.style = c.style;
      p.n_rot = c.n_rot;
      p.freq_base = 10000;
      const std::string tag = std::string(" ") + ds::dtype_name(c.t) + " h" + std::to_string(c.n_heads) + "/" +
                              std::to_string(c.n_kv_heads) + " hd" + std::to_string(c.head_dim) + " rot" +
                              std::to_string(c.n_rot) + (c.style == RopeStyle::kNeox ? " neox" : " normal") +
                              (c.bias ? " bias" : "");
      for (DType kvt : {DType::kF32, DType::kF16}) {
        const size_t eb = ds::kv_elem_bytes(kvt);
        for (int64_t n : {1, 2, 5, 8, 12}) {
          std::vector<uint8_t> outs[3][5];  // separate ops, fused, fused and streamed (gemv_stream)
          for (int fused = 0; fused < 3; ++fused) {
            Buf q(b, max_n * qd * 4), k(b, max_n * kvd * 4), v(b, max_n * kvd * 4);
            Buf kc(b, cache_rows * kvd * eb), vc(b, cache_rows * kvd * eb);
            const ds::Backend::RopeStore rs{c.n_heads, c.n_kv_heads, c.head_dim, dpos.as<int32_t>(), p, dslots.as<int32_t>(),
                                        KvLayer{kc.as(), vc.as(), kvt}};
            const float* bq = c.bias ? db[0].as() : nullptr;
            const float* bk = c.bias ? db[1].as() : nullptr;
            const float* bv = c.bias ? db[2].as() : nullptr;
            if (fused) {
              b.set_gemv_stream(fused == 2);
              b.matmul_qkv_rope_store_kv(w[0], w[1], w[2], bq, bk, bv, dx.as(), n, q.as(), k.as(), v.as(), rs);
              b.set_gemv_stream(false);
            } else {
              b.matmul_qkv(w[0], w[1], w[2], bq, bk, bv, dx.as(), n, q.as(), k.as(), v.as());
              b.rope_store_kv(q.as(), k.as(), v.as(), n, c.n_heads, c.n_kv_heads, c.head_dim, dpos.as<int32_t>(), p,
                              dslots.as<int32_t>(), rs.cache);
            }
            outs[fused][0] = q.read<uint8_t>(n * qd * 4);
            outs[fused][1] = k.read<uint8_t>(n * kvd * 4);
            outs[fused][2] = v.read<uint8_t>(n * kvd * 4);
            outs[fused][3] = kc.read<uint8_t>(cache_rows * kvd * eb);
            outs[fused][4] = vc.read<uint8_t>(cache_rows * kvd * eb);
          }
          bool same = true, streamed = true;
          for (int o = 0; o < 5; ++o) same = same && outs[0][o] == outs[1][o], streamed = streamed && outs[0][o] == outs[2][o];
          expect("determinism/fused-qkv-rope-bits" + tag + " kv " + ds::dtype_name(kvt) + " n=" + std::to_string(n), same,
                 "differs from matmul_qkv + rope_store_kv");
          expect("determinism/fused-qkv-rope-streamed-bits" + tag + " kv " + ds::dtype_name(kvt) + " n=" + std::to_string(n),
                 streamed, "the streamed GEMV's result differs from matmul_qkv + rope_store_kv");
        }
      }
    }
  }
  require_ok(b, "fused residual / rope");
}

}  // namespace ds::kernel_check
