// tests/gpu/kernel_check/device.cc: gpu_kernel_check's launch and device groups: programmatic dependent
// launch, the persistent kernel's grid barrier, CUDA-graph recording, error reporting, NCCL.
#include "tests/gpu/kernel_check/check.h"

namespace ds::kernel_check {

void check_pdl(int device, Rng& rng) {
  std::string error;
  CudaBackendOptions o;
  o.device = device;
  o.record_graphs = false;
  o.self_check = false;
  auto b = CudaBackend::create(o, &error);
  if (!b) return record("pdl/backend", false, 0, 0, "-", "  " + error);
  for (DType t : {DType::kQ8_0, DType::kF16}) {
    for (int n : {1, 3}) {
      DecodeChain c(*b, rng, t, 512, 128, 1408, 6, n, /*split=*/true);
      const auto x0 = c.x.read(n * c.dim);
      std::vector<float> out[4];  // [pdl + 2 fused_norm]
      for (int v = 0; v < 4; ++v) {
        b->upload(c.x.as(), x0.data(), x0.size() * 4);
        b->set_pdl(v % 2 == 1);
        c.run(*b, n, 0, v >= 2);
        out[v] = c.x.read(n * c.dim);
      }
      b->set_pdl(true);
      require_ok(*b, "pdl chain");
      const std::string tag = std::string(ds::dtype_name(t)) + " n=" + std::to_string(n);
      expect("determinism/pdl-chain " + tag, same_bits(out[0].data(), out[1].data(), out[0].size()),
             "programmatic dependent launch changed the result");
      // The norms fused into the residual adds (with and without PDL): the same chain, bit for bit.
      expect("determinism/pdl-chain-fused-norm " + tag,
             same_bits(out[0].data(), out[2].data(), out[0].size()) && same_bits(out[0].data(), out[3].data(), out[0].size()),
             "matmul_add_rmsnorm changed the chain's result");
      // L2 prefetch of the next op's weights (CudaBackendOptions::l2_prefetch): the first run
      // learns the order of the weights, the second asks L2 for them; the same bits.
      b->set_l2_prefetch(true);
      for (int v : {0, 2}) {
        std::vector<float> got;
        for (int pass = 0; pass < 2; ++pass) {
          b->upload(c.x.as(), x0.data(), x0.size() * 4);
          c.run(*b, n, 0, v == 2);
          got = c.x.read(n * c.dim);
        }
        require_ok(*b, "l2 prefetch chain");
        expect("determinism/l2-prefetch-chain " + tag + (v == 2 ? " fused-norm" : ""),
               same_bits(out[v].data(), got.data(), got.size()), "prefetching into L2 changed the chain's result");
      }
      b->set_l2_prefetch(false);
      // The streamed GEMV (gemv version 5) under matmul_add(_rmsnorm) and matmul_swiglu: the
      // same bits (n = 1; for n > 1 it is v3).
      b->set_gemv_stream(true);
      for (int v : {0, 2}) {
        b->upload(c.x.as(), x0.data(), x0.size() * 4);
        c.run(*b, n, 0, v == 2);
        const auto got = c.x.read(n * c.dim);
        require_ok(*b, "streamed chain");
        expect("determinism/stream-chain " + tag + (v == 2 ? " fused-norm" : ""),
               same_bits(out[v].data(), got.data(), got.size()), "the streamed GEMV changed the chain's result");
      }
      b->set_gemv_stream(false);
      // What it learned: each op's first matrix is followed by the next op's matrices, whole
      // (Q/K/V -> O -> gate, up -> down -> the next layer's Q, K, V).
      const int layers = static_cast<int>(c.refs.size() / 7);
      bool order = true;
      std::string first_wrong;
      auto range_of = [&](int l, int m) {
        const WeightRef& w = c.refs[7 * l + m];
        return std::make_pair(static_cast<const void*>(w.data), static_cast<uint64_t>(ds::row_bytes(t, w.cols) * w.rows) / 16 * 16);
      };
      for (int l = 0; l + 1 < layers && order; ++l) {
        const std::vector<std::vector<std::pair<const void*, uint64_t>>> want = {
            {range_of(l, 3)}, {range_of(l, 4), range_of(l, 5)}, {range_of(l, 6)},
            {range_of(l + 1, 0), range_of(l + 1, 1), range_of(l + 1, 2)}};
        const int firsts[4] = {0, 3, 4, 6};
        for (int k = 0; k < 4 && order; ++k) {
          const auto got = b->l2_prefetch_after(c.refs[7 * l + firsts[k]].data);
          if (got != want[k]) order = false, first_wrong = "layer " + std::to_string(l) + " op " + std::to_string(k);
        }
      }
      expect("l2-prefetch/learned-order " + tag, order, "the learned order differs at " + first_wrong);
    }
  }
  // The tensor-core small-batch GEMM (Q8_0 at n = 8) asking L2 for the next matrix: the same bits.
  {
    const int64_t rows = 256, cols = 512;
    const auto ha = make_weights(rng, DType::kQ8_0, rows, cols), hb = make_weights(rng, DType::kQ8_0, rows, cols);
    Buf wa(*b, ha), wb(*b, hb), x(*b, rng.floats(8 * cols)), y(*b, 8 * rows * 4);
    const WeightRef A{DType::kQ8_0, wa.as<void>(), rows, cols}, B{DType::kQ8_0, wb.as<void>(), rows, cols};
    auto pass = [&]() {
      b->matmul(A, x.as(), 8, y.as());
      auto out = y.read(8 * rows);
      b->matmul(B, x.as(), 8, y.as());
      const auto yb = y.read(8 * rows);
      out.insert(out.end(), yb.begin(), yb.end());
      return out;
    };
    const auto plain = pass();
    b->set_l2_prefetch(true);
    pass();  // learns B after A
    const auto pf = pass();
    b->set_l2_prefetch(false);
    require_ok(*b, "tensor-core GEMM with the L2 prefetch");
    const bool learned = b->l2_prefetch_after(A.data).size() == 1 && b->l2_prefetch_after(A.data)[0].first == B.data;
    expect("determinism/l2-prefetch-tc-gemm q8_0 n=8",
           learned && b->tc_gemm_applies(A, 8) && same_bits(plain.data(), pf.data(), pf.size()),
           learned ? "the tensor-core GEMM asking L2 for the next matrix changed its result" : "B was not learned after A");
  }
}

// ops.cuh's l2_prefetch_pieces: over the blocks of a launch, the pieces cover every range
// exactly once, each 16-byte aligned and at most kL2PrefetchPiece bytes (host arithmetic, the
// same function the kernels call).
void check_l2_prefetch_pieces(Rng& rng) {
  int configs = 0;
  bool ok = true;
  std::string why;
  alignas(16) static char arena[1 << 21];
  for (int trial = 0; trial < 200 && ok; ++trial) {
    cuda::L2Prefetch pf;
    const int ranges = 1 + trial % cuda::kL2PrefetchRanges;
    size_t at = 0;
    for (int i = 0; i < ranges; ++i) {
      const uint64_t bytes = 16 * (1 + static_cast<uint64_t>(rng.below(trial % 7 == 0 ? 30000 : 3000)));
      at += 16 * static_cast<size_t>(rng.below(8));  // gaps between the ranges
      if (at + bytes > sizeof arena) break;
      pf.ptr[i] = arena + at;
      pf.bytes[i] = bytes;
      at += bytes;
    }
    for (uint32_t grid : {1u, 2u, 3u, 7u, 132u, 396u, 1408u, 5000u}) {
      std::vector<uint8_t> hits(at, 0);
      for (uint32_t blk = 0; blk < grid; ++blk)
        cuda::l2_prefetch_pieces(pf, blk, grid, [&](const void* p, uint32_t bytes) {
          const size_t off = static_cast<size_t>(static_cast<const char*>(p) - arena);
          if (off % 16 || bytes % 16 || bytes == 0 || bytes > cuda::kL2PrefetchPiece || off + bytes > at) {
            ok = false, why = "a piece misaligned, too big or outside the ranges";
            return;
          }
          for (size_t k = off; k < off + bytes; ++k) ++hits[k];
        });
      for (int i = 0; i < cuda::kL2PrefetchRanges && ok; ++i) {
        const size_t off = pf.bytes[i] ? static_cast<size_t>(static_cast<const char*>(pf.ptr[i]) - arena) : 0;
        for (size_t k = off; k < off + pf.bytes[i] && ok; ++k)
          if (hits[k] != 1)
            ok = false, why = "byte " + std::to_string(k - off) + " of range " + std::to_string(i) + " asked " +
                              std::to_string(hits[k]) + " times (grid " + std::to_string(grid) + ")";
      }
      ++configs;
    }
  }
  expect("l2-prefetch/pieces-cover-each-byte-once (" + std::to_string(configs) + " range sets x grids)", ok, why);
}

// The grid-wide barrier of the persistent decode kernel (common.cuh's grid_sync): every block
// writes, the grid meets, every block must read every block's write (64 rounds), on grids of
// 1, 2 and 3 blocks (the emulation runs them all at once) or 1 and 3 an SM on a GPU.
// The start-up self-check (CudaBackendOptions::self_check, kernels/cuda/self_check.cc): with
// every path as it is, nothing disagrees (its note is printed: on a GPU, what it switched off
// is the news); with each path's result perturbed on purpose, it switches exactly those off and
// says so, and a later backend on the device gets the same verdict without running it again.
void check_self_check(int device) {
  std::string error;
  CudaBackendOptions o;
  o.device = device;
  auto b = CudaBackend::create(o, &error);
  if (!b) return expect("self-check/create", false, error);
  std::printf("self-check on this device: %s\n", b->self_check_note().empty() ? "every path agreed" : b->self_check_note().c_str());
  const CudaBackendOptions& s = b->options();
  expect("self-check/nothing-off", b->self_check_note().empty() && s.tc_attention && s.tc_attention_padded &&
                                       s.tc_attention_mma && s.q8_0_split && s.fuse_decode,
         b->self_check_note());
  for (int brk : {1, 2, 4, 8, 15}) {
    o.self_check_break_for_testing = brk;
    for (int again = 0; again < 2; ++again) {  // the second one: the kept verdict
      auto x = CudaBackend::create(o, &error);
      const std::string tag = "self-check/break-" + std::to_string(brk) + (again ? " (kept verdict)" : "");
      if (!x) {
        expect(tag, false, error);
        continue;
      }
      const CudaBackendOptions& v = x->options();
      const std::string& note = x->self_check_note();
      const bool right = v.tc_attention && v.tc_attention_padded == !(brk & 1) && v.tc_attention_mma == !(brk & 2) &&
                         v.q8_0_split == !(brk & 4) && v.fuse_decode == !(brk & 8) &&
                         (note.find("tc_attention_padded") != std::string::npos) == ((brk & 1) != 0) &&
                         (note.find("tc_attention_mma") != std::string::npos) == ((brk & 2) != 0) &&
                         (note.find("q8_0_split") != std::string::npos) == ((brk & 4) != 0) &&
                         (note.find("fuse_decode") != std::string::npos) == ((brk & 8) != 0);
      expect(tag, right, note);
    }
  }
  // A path that fails with an error the device survives goes off like one that disagrees (the
  // note has the error); after one that leaves the device unusable (bit 256) create() refuses it.
  for (int fails : {16, 32, 64, 128, 16 | 128}) {
    o.self_check_break_for_testing = fails;
    const std::string tag = "self-check/fail-" + std::to_string(fails);
    auto x = CudaBackend::create(o, &error);
    if (!x) {
      expect(tag, false, error);
      continue;
    }
    const CudaBackendOptions& v = x->options();
    const std::string& note = x->self_check_note();
    const bool right = v.tc_attention && v.tc_attention_padded == !(fails & 16) && v.tc_attention_mma == !(fails & 32) &&
                       v.q8_0_split == !(fails & 64) && v.fuse_decode == !(fails & 128) && x->ok() &&
                       note.find("failed on this device") != std::string::npos &&
                       note.find("injected for testing") != std::string::npos &&
                       (note.find("tc_attention_padded") != std::string::npos) == ((fails & 16) != 0) &&
                       (note.find("tc_attention_mma") != std::string::npos) == ((fails & 32) != 0) &&
                       (note.find("q8_0_split") != std::string::npos) == ((fails & 64) != 0) &&
                       (note.find("fuse_decode") != std::string::npos) == ((fails & 128) != 0);
    if (fails == (16 | 128)) std::printf("  its note: %s\n", note.c_str());
    expect(tag, right, note);
  }
  o.self_check_break_for_testing = 32 | 256;
  error.clear();
  auto lost = CudaBackend::create(o, &error);
  expect("self-check/lost-device-refused", !lost && error.find("self-check") != std::string::npos &&
                                               error.find("injected for testing") != std::string::npos,
         lost ? "create() gave a backend" : error);
  std::printf("  its refusal: %s\n", error.c_str());
}

void check_grid_sync(CudaBackend& b) {
#ifdef DS_CUDA_EMULATION
  const std::vector<int> per_sm = {1, 2, 3};
#else
  const std::vector<int> per_sm = {1, 3};
#endif
  for (int bps : per_sm) {
    const int blocks = ds::cuda::grid_sync_blocks(bps);
    if (blocks <= 0) return record("grid_sync/cooperative", false, 0, 0, "-", "  the device cannot launch cooperatively");
    auto* mem = static_cast<unsigned*>(b.alloc((blocks + 2) * sizeof(unsigned)));  // bar, errors, data
    const int rounds = 64;
    const cudaError_t e = ds::cuda::grid_sync_check(blocks, rounds, mem, mem + 2, mem + 1,
                                                    static_cast<cudaStream_t>(b.stream()));
    unsigned out[2] = {0, 0};
    b.download(out, mem, sizeof out);
    require_ok(b, "grid_sync");
    b.free(mem);
    // After 2 * rounds barriers the counter's top bit is back where it started (0), the rest too.
    expect("grid_sync/visibility grid=" + std::to_string(blocks), e == cudaSuccess && out[1] == 0 && out[0] == 0,
           std::string(cudaGetErrorString(e)) + ", " + std::to_string(out[1]) + " wrong sums, counter " +
               std::to_string(out[0]));
  }
}

void check_recording(int device, Rng& rng) {
#ifdef DS_CUDA_EMULATION
  std::printf("SKIP graph: the CPU emulation records nothing (CudaBackend::record_begin refuses)\n");
  return;
#endif
  std::string error;
  CudaBackendOptions o;
  o.device = device;
  o.self_check = false;
  auto bp = CudaBackend::create(o, &error);
  if (!bp) {
    expect("graph/create", false, error);
    return;
  }
  CudaBackend& b = *bp;
  const int64_t rows = 384, cols = 512;
  const auto w = make_weights(rng, DType::kQ8_0, rows, cols);
  const auto norm = rng.floats(cols, 0.5, 1.5);
  Buf dw(b, w), dn(b, norm), dx(b, 4 * cols * 4), dxn(b, 4 * cols * 4), dy(b, 64 * rows * 4), dacc(b, 4 * rows * 4);
  const WeightRef gw{DType::kQ8_0, dw.as<void>(), rows, cols};
  auto ops = [&](int n) {
    b.rmsnorm(dx.as(), dn.as(), n, cols, 1e-5f, dxn.as());
    b.matmul(gw, dxn.as(), n, dy.as());
    b.add(dacc.as(), dy.as(), n * rows);
  };
  bool same = true;
  for (int step = 0; step < 3; ++step) {
    const auto x = rng.floats(4 * cols);
    const auto acc0 = rng.floats(4 * rows);
    b.upload(dx.as(), x.data(), x.size() * 4);
    b.upload(dacc.as(), acc0.data(), acc0.size() * 4);
    ops(4);
    const auto eager = dacc.read(4 * rows);
    b.upload(dacc.as(), acc0.data(), acc0.size() * 4);
    const uint64_t key = 4;
    if (!b.replay(key)) {
      if (!b.record_begin(key)) {
        expect("graph/record-begin", false, "record_begin refused");
        return;
      }
      ops(4);
      expect("graph/record-end", b.record_end(), "recording failed: " + b.last_error());
      expect("graph/replay-after-record", b.replay(key), "no replay");
    }
    same = same && same_bits(dacc.read(4 * rows).data(), eager.data(), 4 * rows);
  }
  expect("graph/replay-same-bits", same && b.replays() == 3 && b.recordings() == 1,
         "replayed ops differ from eager ops, or not every step replayed");
  // The fused decode ops (QKV with biases, gate/up + SwiGLU) record and replay as well.
  {
    const int64_t qr = 256, kr = 64, ff = 320, n = 2;
    const auto wq = make_weights(rng, DType::kQ8_0, qr, cols), wk = make_weights(rng, DType::kQ8_0, kr, cols),
               wv = make_weights(rng, DType::kQ8_0, kr, cols), wg = make_weights(rng, DType::kQ8_0, ff, cols),
               wu = make_weights(rng, DType::kQ8_0, ff, cols);
    Buf dwq(b, wq), dwk(b, wk), dwv(b, wv), dwg(b, wg), dwu(b, wu), dbq(b, rng.floats(qr)), dbk(b, rng.floats(kr)),
        dbv(b, rng.floats(kr)), dq(b, n * qr * 4), dk(b, n * kr * 4), dv(b, n * kr * 4), dout(b, n * ff * 4),
        dup(b, n * ff * 4);
    const WeightRef q{DType::kQ8_0, dwq.as<void>(), qr, cols}, k{DType::kQ8_0, dwk.as<void>(), kr, cols},
        v{DType::kQ8_0, dwv.as<void>(), kr, cols}, g{DType::kQ8_0, dwg.as<void>(), ff, cols},
        u{DType::kQ8_0, dwu.as<void>(), ff, cols};
    auto fused = [&] {
      b.matmul_qkv(q, k, v, dbq.as(), dbk.as(), dbv.as(), dxn.as(), n, dq.as(), dk.as(), dv.as());
      b.matmul_swiglu(g, u, dxn.as(), n, dout.as(), dup.as());
    };
    auto outputs = [&] {
      auto all = dq.read(n * qr);
      for (const auto& part : {dk.read(n * kr), dv.read(n * kr), dout.read(n * ff)}) all.insert(all.end(), part.begin(), part.end());
      return all;
    };
    const int64_t replays0 = b.replays();
    bool fused_same = true;
    for (int step = 0; step < 2; ++step) {
      const auto xn = rng.floats(n * cols);
      b.upload(dxn.as(), xn.data(), xn.size() * 4);
      fused();
      const auto eager = outputs();
      const std::vector<float> zeros(n * ff, 0.0f);
      b.upload(dout.as(), zeros.data(), zeros.size() * 4);
      const uint64_t key = 5;
      if (!b.replay(key)) {
        if (!b.record_begin(key)) {
          expect("graph/fused-record-begin", false, "record_begin refused");
          break;
        }
        fused();
        expect("graph/fused-record-end", b.record_end(), "recording failed: " + b.last_error());
        expect("graph/fused-replay-after-record", b.replay(key), "no replay");
      }
      const auto replayed = outputs();
      fused_same = fused_same && same_bits(replayed.data(), eager.data(), eager.size());
    }
    expect("graph/fused-replay-same-bits", fused_same && b.replays() == replays0 + 2,
           "replayed fused ops differ from eager ones, or not every step replayed");
  }
  // Split-K attention records once and replays while each token's n_kv changes on the device
  // (the grid is fixed by max_kv): every replay gives the eager bits.
  {
    const int heads = 4, kv_heads = 2, hd = 64, bs = 16, max_kv = 1024, n = 2;
    const int blocks = max_kv / bs;
    std::vector<int32_t> table(n * blocks);
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(table.size() - 1 - i);
    Buf dtable(b, table), dkc(b, rng.floats(table.size() * bs * kv_heads * hd)),
        dvc(b, rng.floats(table.size() * bs * kv_heads * hd)), dq(b, rng.floats(n * heads * hd)),
        dout(b, n * heads * hd * 4), dtok(b, n * sizeof(AttentionToken));
    const size_t ws_floats = b.attention_workspace_floats(n, heads, hd, max_kv);
    Buf ws(b, ws_floats * 4);
    AttentionArgs a = attention_args(dq, dout, dkc, dvc, dtok, n, heads, kv_heads, hd, bs);  // scale 1/8
    a.max_kv = max_kv;
    a.workspace = ws.as();
    a.workspace_floats = ws_floats;
    const int64_t replays0 = b.replays();
    bool att_same = true;
    const int n_kvs[3][2] = {{5, 300}, {700, 1}, {1024, 257}};
    for (const auto& step : n_kvs) {
      const std::vector<AttentionToken> toks = {{dtable.as<int32_t>(), step[0]}, {dtable.as<int32_t>() + blocks, step[1]}};
      b.upload(dtok.as<void>(), toks.data(), toks.size() * sizeof(AttentionToken));
      b.attention(a);
      const auto eager = dout.read(n * heads * hd);
      const std::vector<float> zeros(eager.size(), 0.0f);
      b.upload(dout.as(), zeros.data(), zeros.size() * 4);
      const uint64_t key = 6;
      if (!b.replay(key)) {
        if (!b.record_begin(key)) {
          expect("graph/attention-record-begin", false, "record_begin refused");
          break;
        }
        b.attention(a);
        expect("graph/attention-record-end", b.record_end(), "recording failed: " + b.last_error());
        expect("graph/attention-replay-after-record", b.replay(key), "no replay");
      }
      att_same = att_same && same_bits(dout.read(eager.size()).data(), eager.data(), eager.size());
    }
    expect("graph/attention-v2-replay-same-bits", att_same && b.replays() == replays0 + 3,
           "replayed split-K attention differs from eager, or not every step replayed");
  }
  // The cuBLAS path (n = 64) and the tensor-core kernel (n = 16) record too. A recording that
  // needs the scratch buffer to grow fails and runs nothing, but only for now: once an eager run
  // grew it, the same key records and replays the eager bits.
  for (int n : {64, 16}) {
    Buf dxn_big(b, rng.floats(n * cols));
    const uint64_t key = 90 + n;
    const std::string sn = " n=" + std::to_string(n) + (n > 32 ? " (cuBLAS)" : " (tensor cores)");
    b.matmul(gw, dxn_big.as(), n, dy.as());
    const auto eager = dy.read(n * rows);
    const std::vector<float> zeros(eager.size(), 0.0f);
    b.upload(dy.as(), zeros.data(), zeros.size() * 4);
    bool recorded = b.record_begin(key);
    b.matmul(gw, dxn_big.as(), n, dy.as());
    recorded = recorded && b.record_end() && b.replay(key);
    expect("graph/matmul-records" + sn, recorded && same_bits(dy.read(n * rows).data(), eager.data(), eager.size()) && b.ok(),
           "the matmul did not record, or its replay differs from the eager run: " + b.last_error());
  }
  {  // More scratch needed inside a recording (a larger n): it fails and runs nothing, for now.
    const int n = 32;
    const size_t scratch0 = b.scratch_bytes();
    b.forget_recordings();
    Buf big_w(b, make_weights(rng, DType::kQ8_0, 2 * rows, 8 * cols)), big_x(b, rng.floats(n * 8 * cols)),
        big_y(b, 2 * rows * n * 4);
    const WeightRef bw{DType::kQ8_0, big_w.as<void>(), 2 * rows, 8 * cols};
    const std::vector<float> zeros(2 * rows * n, 0.0f);
    b.upload(big_y.as(), zeros.data(), zeros.size() * 4);
    bool failed = b.record_begin(98);
    b.matmul(bw, big_x.as(), n, big_y.as());
    failed = failed && !b.record_end() && b.scratch_bytes() == scratch0;
    const bool ran_nothing = same_bits(big_y.read(zeros.size()).data(), zeros.data(), zeros.size());
    b.matmul(bw, big_x.as(), n, big_y.as());  // eager: grows the scratch
    const auto eager = big_y.read(zeros.size());
    b.upload(big_y.as(), zeros.data(), zeros.size() * 4);
    bool again = b.scratch_bytes() > scratch0 && b.record_begin(98);
    b.matmul(bw, big_x.as(), n, big_y.as());
    again = again && b.record_end() && b.replay(98);
    expect("graph/scratch-growth-retries", failed && ran_nothing && again &&
                                               same_bits(big_y.read(zeros.size()).data(), eager.data(), eager.size()),
           "a recording that needed more scratch did not fail cleanly, or the key did not record once it had grown");
  }
  // A wait inside a recording fails it for good: no second try.
  bool refused = b.record_begin(99);
  b.synchronize();
  refused = refused && !b.record_end() && !b.record_begin(99);
  expect("graph/unrecordable-fails", refused && b.ok(), "a wait inside a recording did not fail it cleanly");
  require_ok(b, "recording");
}

void check_errors(CudaBackend& b) {
  std::vector<uint8_t> host(64);
  Buf w(b, host), x(b, 64), y(b, 64);
  b.clear_error();
  b.matmul(WeightRef{DType::kQ4_1, w.as<void>(), 1, 32}, x.as(), 1, y.as());
  expect("errors/unsupported-type", !b.ok() && b.last_error().find("not supported") != std::string::npos,
         "last_error: '" + b.last_error() + "'");
  std::printf("      (message: %s)\n", b.last_error().c_str());
  b.clear_error();
  AttentionArgs a;
  a.n_tokens = 1;
  a.n_heads = a.n_kv_heads = 1;
  a.head_dim = 2048;
  a.block_size = 16;
  b.attention(a);
  expect("errors/attention-head-dim", !b.ok(), "no error for head_dim 2048");
  b.clear_error();
  void* huge = b.alloc(size_t{1} << 50);
  expect("errors/alloc-oom-returns-null", huge == nullptr && b.ok(), "alloc(1 PiB) did not give a clean nullptr");
  if (huge) b.free(huge);
  b.clear_error();
  require_ok(b, "error checks");
}

// NCCL (kernels/cuda/nccl_comm.h): one rank per visible GPU (up to 4; one rank on a
// one-GPU machine), each driven by its own thread on its own backend. Checks the three
// collectives, then a row-parallel matmul: rank r multiplies its slice of W's columns
// and an all-reduce sums the partial products into the whole y = W x, compared with
// ref::matmul (float rounding only: the sum runs in another order). Skipped (not
// failed) where the build has no NCCL.
void check_nccl(int first_device) {
  std::string version, error;
  if (!ds::nccl_available(&version)) {
    std::string why;
    ds::make_nccl_comm_group({}, &why);
    std::printf("SKIP nccl: %s\n", why.c_str());
    return;
  }
  int n_devices = 0;
  cudaGetDeviceCount(&n_devices);
  const int R = std::max(1, std::min(4, n_devices - first_device));
  std::vector<std::unique_ptr<CudaBackend>> backends;
  std::vector<CudaBackend*> raw;
  for (int r = 0; r < R; ++r) {
    CudaBackendOptions o;
    o.device = first_device + r;
    o.self_check = false;
    backends.push_back(CudaBackend::create(o, &error));
    if (!backends.back()) return expect("nccl/setup", false, error);
    raw.push_back(backends.back().get());
  }
  auto comms = ds::make_nccl_comm_group(raw, &error);
  expect("nccl/group " + std::to_string(R) + "ranks", comms.size() == static_cast<size_t>(R), error);
  if (comms.empty()) return;
  std::printf("      (NCCL %s, %d rank%s)\n", version.c_str(), R, R > 1 ? "s" : "");

  const int64_t rows = 300, cols = 512 * R, n = 3, cols_r = cols / R;
  Rng rng(77);
  const std::vector<float> w = rng.floats(rows * cols), x = rng.floats(n * cols);
  std::vector<float> want(n * rows);
  ds::ref::matmul(WeightRef{DType::kF32, w.data(), rows, cols}, x.data(), n, want.data());
  std::vector<std::vector<float>> reduced(R), gathered(R), bcast(R), y(R);
  std::vector<std::string> errors(R);
  std::vector<std::thread> threads;
  for (int r = 0; r < R; ++r) {
    threads.emplace_back([&, r] {
      CudaBackend& b = *backends[r];
      ds::Communicator& c = *comms[r];
      auto ok = [&](bool done) {
        if (!done && errors[r].empty()) errors[r] = c.last_error();
        return done;
      };
      // all_reduce_sum of rank-specific integers: exact.
      std::vector<float> v(1000);
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i * (r + 1));
      Buf rv(b, v);
      if (ok(c.all_reduce_sum(rv.as(), v.size()))) reduced[r] = rv.read(v.size());
      // all_gather: rank r sends 100 copies of r.
      Buf send(b, std::vector<float>(100, static_cast<float>(r))), recv(b, 100 * R * sizeof(float));
      if (ok(c.all_gather(send.as(), 100, recv.as()))) gathered[r] = recv.read(100 * R);
      // broadcast from the last rank.
      Buf bb(b, std::vector<float>(64, static_cast<float>(10 + r)));
      if (ok(c.broadcast(bb.as(), 64, R - 1))) bcast[r] = bb.read(64);
      // Row-parallel matmul: columns [r * cols_r, (r + 1) * cols_r) of W and of each x row.
      std::vector<float> w_r(rows * cols_r), x_r(n * cols_r);
      for (int64_t i = 0; i < rows; ++i) std::copy_n(&w[i * cols + r * cols_r], cols_r, &w_r[i * cols_r]);
      for (int64_t t = 0; t < n; ++t) std::copy_n(&x[t * cols + r * cols_r], cols_r, &x_r[t * cols_r]);
      Buf dw(b, w_r), dx(b, x_r), dy(b, n * rows * sizeof(float));
      b.matmul(WeightRef{DType::kF32, dw.as<void>(), rows, cols_r}, dx.as(), n, dy.as());
      if (ok(c.all_reduce_sum(dy.as(), n * rows))) y[r] = dy.read(n * rows);
      if (!b.synchronize() && errors[r].empty()) errors[r] = b.last_error();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < R; ++r) {
    const std::string rank = " rank" + std::to_string(r);
    expect("nccl/errors" + rank, errors[r].empty(), errors[r]);
    if (!errors[r].empty()) continue;
    std::vector<float> want_sum(1000), want_gather(100 * R), want_bcast(64, static_cast<float>(10 + R - 1));
    for (size_t i = 0; i < want_sum.size(); ++i) want_sum[i] = static_cast<float>(i * R * (R + 1) / 2);
    for (int q = 0; q < R; ++q) std::fill_n(&want_gather[q * 100], 100, static_cast<float>(q));
    expect("nccl/all_reduce_sum" + rank, reduced[r] == want_sum, "wrong sums");
    expect("nccl/all_gather" + rank, gathered[r] == want_gather, "wrong slots");
    expect("nccl/broadcast" + rank, bcast[r] == want_bcast, "wrong values");
    compare("nccl/row-parallel-matmul" + rank + " " + shape(rows, cols), y[r], want, 1e-4, 1e-4);
  }
  comms.clear();  // before the backends whose streams they use
}

}  // namespace ds::kernel_check
