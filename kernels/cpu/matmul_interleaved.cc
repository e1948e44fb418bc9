// kernels/cpu/matmul_interleaved.cc: the CPU backend's quantized matrices with rows interleaved
// by 16 (kernels/backend.h: kLayoutQ8_0R16, kLayoutQ4_0R16, kLayoutQ4_KR16, kLayoutQ6_KR16): the
// rewrite at load (repack), its kernels (AVX-512 VNNI: 16 rows a register; AVX2, with or without
// AVX-VNNI: 8 rows, each half of a group's records), and rows read back (get_rows).

#include <algorithm>
#include <cstring>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_tiles.h"
#include "kernels/cpu/simd.h"

DS_CPU_BEGIN
namespace {

#ifdef DS_INTERLEAVED
// The kernels are written once over `Vec`, this build's integer and float vectors: 512-bit with
// AVX-512 VNNI (a register holds a 64-byte array entry: all 16 rows of a group), else 256-bit
// (AVX2, with AVX-VNNI or AVX-512 VL VNNI where there): a register holds half an entry, rows
// 0-7 or 8-15, and a tile is those 8 rows; a group's two halves run one after the other on one
// thread (the second pass finds the group's records in cache). Per output the float sequence is
// the same in every build (acc = fma(float(exact integer sum), d_w * d_a, acc), blocks in
// order); only the integer sums are formed differently:
//  - VNNI: dpbusd, 4 unsigned weight bytes x 4 signed activation bytes into int32 per row;
//  - AVX2 alone: maddubs (pairs of products into saturating int16) then madd (int16 pairs into
//    int32). Exact only while a lane's int16 sum stays below 2^15: Q4 weights (<= 15) sum 8
//    groups (8 x 2 x 15 x 127), Q6_K ones (<= 63) 2 groups; Q8_0 (unsigned q + 128 up to 255)
//    goes through the sign trick on q instead (|q| x sign(a, q)).
#ifdef DS_QUANT_PAIRS
struct Vec {
  using I = __m512i;
  using F = __m512;
  static constexpr int kRows = 16;
  static I load(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static F scales(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static I set1_8(char v) { return _mm512_set1_epi8(v); }
  static I set1_32(int32_t v) { return _mm512_set1_epi32(v); }
  static I zero() { return _mm512_setzero_si512(); }
  static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  static I srli16(I a, int n) { return _mm512_srli_epi16(a, n); }
  static I slli16(I a, int n) { return _mm512_slli_epi16(a, n); }
  static I srli32(I a, int n) { return _mm512_srli_epi32(a, n); }
  static I slli32(I a, int n) { return _mm512_slli_epi32(a, n); }
  static I sext8_of32(I a, int byte) { return _mm512_srai_epi32(_mm512_sllv_epi32(a, _mm512_set1_epi32(24 - 8 * byte)), 24); }
  static I bits_or(I lo, I hi, I mask) { return _mm512_ternarylogic_epi32(lo, hi, mask, 0xF8); }  // lo | (hi & mask)
  static I add32(I a, I b) { return _mm512_add_epi32(a, b); }
  static I mullo32(I a, I b) { return _mm512_mullo_epi32(a, b); }
  static F fzero() { return _mm512_setzero_ps(); }
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static F set1_ps(float v) { return _mm512_set1_ps(v); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  // init + sum over groups j < N of u_j . a(j) per row (kMax: the weights' bound, for AVX2).
  template <int kMax, int N, class A>
  static I dot(I init, const I (&u)[N], A a) {
    for (int j = 0; j < N; ++j) init = _mm512_dpbusd_epi32(init, u[j], a(j));
    return init;
  }
};
#else
struct Vec {
  using I = __m256i;
  using F = __m256;
  static constexpr int kRows = 8;
  static I load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static F scales(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static I set1_8(char v) { return _mm256_set1_epi8(v); }
  static I set1_32(int32_t v) { return _mm256_set1_epi32(v); }
  static I zero() { return _mm256_setzero_si256(); }
  static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  static I srli16(I a, int n) { return _mm256_srli_epi16(a, n); }
  static I slli16(I a, int n) { return _mm256_slli_epi16(a, n); }
  static I srli32(I a, int n) { return _mm256_srli_epi32(a, n); }
  static I slli32(I a, int n) { return _mm256_slli_epi32(a, n); }
  static I sext8_of32(I a, int byte) { return _mm256_srai_epi32(_mm256_sllv_epi32(a, _mm256_set1_epi32(24 - 8 * byte)), 24); }
  static I bits_or(I lo, I hi, I mask) { return _mm256_or_si256(lo, _mm256_and_si256(hi, mask)); }
  static I add32(I a, I b) { return _mm256_add_epi32(a, b); }
  static I mullo32(I a, I b) { return _mm256_mullo_epi32(a, b); }
  static F fzero() { return _mm256_setzero_ps(); }
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static F set1_ps(float v) { return _mm256_set1_ps(v); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  template <int kMax, int N, class A>
  static I dot(I init, const I (&u)[N], A a) {
#ifdef DS_SIMD_VNNI
    I s0 = init, s1 = zero();  // two chains: half the latency
    for (int j = 0; j < N; j += 2) {
      s0 = dpbusd256(s0, u[j], a(j));
      if (j + 1 < N) s1 = dpbusd256(s1, u[j + 1], a(j + 1));
    }
    return _mm256_add_epi32(s0, s1);
#else
    // Groups per int16 partial sum (each maddubs lane: 2 products of at most kMax * 127).
    constexpr int kPer = 32767 / (2 * kMax * 127);
    static_assert(kPer >= 1, "maddubs pairs would saturate");
    const I ones = _mm256_set1_epi16(1);
    I s = init;
    for (int j0 = 0; j0 < N; j0 += kPer) {
      I p = _mm256_maddubs_epi16(u[j0], a(j0));
      for (int j = j0 + 1; j < j0 + kPer && j < N; ++j) p = _mm256_add_epi16(p, _mm256_maddubs_epi16(u[j], a(j)));
      s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
    }
    return s;
#endif
  }
};
#endif

// 4 activation bytes broadcast to every 32-bit lane.
inline Vec::I bcast4(const int8_t* p) {
  int32_t four;
  std::memcpy(&four, p, 4);
  return Vec::set1_32(four);
}

// Where tile rows i0 .. i0 + Vec::kRows - 1 lie in their group's records: the group's first
// byte, and the byte offset of these rows within each 64-byte array entry (0, or 32 for rows
// 8-15 of a 256-bit tile; their F16 scales then start off / 2 into a 32-byte scale array).
struct TileRows {
  const uint8_t* group;
  int off;
  TileRows(const TileArgs& t, int64_t i0) : group(t.w + (i0 & ~int64_t{15}) * t.w_stride), off(static_cast<int>(i0 & 15) * 4) {}
  // A GEMV streams the records from DRAM: the first pass over a group (off 0) fetches ahead.
  bool prefetches(int rn, int64_t j0) const { return off == 0 && (rn <= 2 || j0 == 0); }
};

// Q8_0 / Q4_0 weights in kLayoutQ8_0R16 / kLayoutQ4_0R16 x BlockQ8A activations. Per block and
// activation row, 8 dots (each 4 weights of the tile's rows against 4 broadcast activations)
// sum the block's 32 products exactly in int32 lanes, then one convert and one FMA with the
// rows' scales times the activation's scale: with 512-bit VNNI 14 instructions for 512 products
// where the GGUF-layout kernel takes 32 (its scales and sums are per row, so every (row,
// column) pair costs a dot, a convert, a product of scales and an FMA).
template <DType T>
struct Quant16Kernel {
  static constexpr int kRows = Vec::kRows;
  static constexpr int kRN = Vec::kRows == 16 ? 8 : 4;
  static constexpr size_t kRecord = T == DType::kQ8_0 ? 544 : 288;  // one block of 16 rows
  static constexpr int32_t kOffset = T == DType::kQ8_0 ? 128 : 8;

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const TileRows tr(t, i0);
    const BlockQ8A* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8A*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / 32;
    Vec::F acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = Vec::fzero();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = tr.group + b * kRecord;
      if (tr.prefetches(RN, j0))
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 4 * kRecord + off), _MM_HINT_T0);
      const Vec::F dw = Vec::scales(rec + tr.off / 2);
      Vec::I w[8];
      if constexpr (T == DType::kQ8_0) {
        for (int j = 0; j < 8; ++j) w[j] = Vec::load(rec + 32 + 64 * j + tr.off);
      } else {
        const Vec::I lo = Vec::set1_8(0x0F);
        for (int j = 0; j < 4; ++j) {
          const Vec::I q = Vec::load(rec + 32 + 64 * j + tr.off);
          w[j] = Vec::and_(q, lo);
          w[j + 4] = Vec::and_(Vec::srli16(q, 4), lo);
        }
      }
#if !defined(DS_SIMD_VNNI)
      // Q8_0 without VNNI: signed q = (q + 128) ^ 0x80, |q| once, sign(a, q) per activation row.
      Vec::I qs[8], qa[8];
      if constexpr (T == DType::kQ8_0) {
        for (int j = 0; j < 8; ++j) {
          qs[j] = _mm256_xor_si256(w[j], _mm256_set1_epi8(static_cast<char>(0x80)));
          qa[j] = _mm256_sign_epi8(qs[j], qs[j]);
        }
      }
#endif
      for (int c = 0; c < RN; ++c) {
        const BlockQ8A& ab = a[c][b];
        Vec::I sum;
#if !defined(DS_SIMD_VNNI)
        if constexpr (T == DType::kQ8_0) {
          sum = Vec::dot<127>(Vec::zero(), qa, [&](int j) { return _mm256_sign_epi8(bcast4(ab.qs + 4 * j), qs[j]); });
        } else
#endif
        {
          sum = Vec::dot<T == DType::kQ8_0 ? 255 : 15>(Vec::set1_32(-kOffset * ab.sum), w, [&](int j) { return bcast4(ab.qs + 4 * j); });
        }
        acc[c] = Vec::fmadd(Vec::cvt(sum), Vec::mul(dw, Vec::set1_ps(ab.d)), acc[c]);
      }
    }
    for (int c = 0; c < RN; ++c) Vec::store(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};

// Q4_K weights in kLayoutQ4_KR16 x BlockQ8K activations. Per super-block and activation row:
// for each 32-weight sub-block s, 8 dots give the rows' exact sums, multiplied by their 6-bit
// scales (unpacked for all the tile's rows at once from the record's three dword arrays) into
// one int32 per row; the mins' part is 8 products with the activation's sub-block sums; then the
// float part as the GGUF-layout kernel has it, acc += sumi * (d * da) - summ * (dmin * da):
// integers exact, so the two layouts differ by float rounding only.
struct Q4K16Kernel {
  static constexpr int kRows = Vec::kRows;
  static constexpr int kRN = Vec::kRows == 16 ? 8 : 4;
  static constexpr size_t kRecord = 16 * sizeof(BlockQ4_K);  // 32 d, 32 dmin, 3 x 64 scale dwords, 2048 quants

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const TileRows tr(t, i0);
    const BlockQ8K* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8K*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / kQK_K;
    Vec::F acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = Vec::fzero();
    const Vec::I k6 = Vec::set1_32(0x3f3f3f3f), k4 = Vec::set1_32(0x0f0f0f0f), k2 = Vec::set1_32(0x03030303);
    const Vec::I byte = Vec::set1_32(0xFF), nib = Vec::set1_8(0x0F);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = tr.group + b * kRecord;
      if (tr.prefetches(RN, j0))
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 2 * kRecord + off), _MM_HINT_T0);
      const Vec::F dw = Vec::scales(rec + tr.off / 2), dmw = Vec::scales(rec + 32 + tr.off / 2);
      const Vec::I u0 = Vec::load(rec + 64 + tr.off), u1 = Vec::load(rec + 128 + tr.off), u2 = Vec::load(rec + 192 + tr.off);
      // Scales of sub-blocks 0-3 / 4-7 and mins 0-3 / 4-7, a byte each, per row lane (ggml's
      // get_scale_min_k4 for all the rows at once).
      const Vec::I sc03 = Vec::and_(u0, k6);
      const Vec::I sc47 = Vec::or_(Vec::and_(u2, k4), Vec::slli32(Vec::and_(Vec::srli32(u0, 6), k2), 4));
      const Vec::I m03 = Vec::and_(u1, k6);
      const Vec::I m47 = Vec::or_(Vec::and_(Vec::srli32(u2, 4), k4), Vec::slli32(Vec::and_(Vec::srli32(u1, 6), k2), 4));
      const uint8_t* quants = rec + 256 + tr.off;
      Vec::I sumi[RN];
      for (int c = 0; c < RN; ++c) sumi[c] = Vec::zero();
      for (int sb = 0; sb < 8; ++sb) {
        const Vec::I scale = Vec::and_(Vec::srli32(sb < 4 ? sc03 : sc47, 8 * (sb % 4)), byte);
        Vec::I w[8];
        for (int j = 0; j < 8; ++j) {
          const Vec::I q = Vec::load(quants + 64 * (8 * (sb / 2) + j));
          w[j] = Vec::and_(sb % 2 ? Vec::srli16(q, 4) : q, nib);
        }
        for (int c = 0; c < RN; ++c) {
          const int8_t* aq = a[c][b].qs + 32 * sb;
          const Vec::I dot = Vec::dot<15>(Vec::zero(), w, [&](int j) { return bcast4(aq + 4 * j); });
          sumi[c] = Vec::add32(sumi[c], Vec::mullo32(dot, scale));
        }
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8K& ab = a[c][b];
        Vec::I summ = Vec::zero();
        for (int sb = 0; sb < 8; ++sb) {
          const Vec::I m = Vec::and_(Vec::srli32(sb < 4 ? m03 : m47, 8 * (sb % 4)), byte);
          summ = Vec::add32(summ, Vec::mullo32(m, Vec::set1_32(ab.bsums[2 * sb] + ab.bsums[2 * sb + 1])));
        }
        const Vec::F da = Vec::set1_ps(ab.d);
        acc[c] = Vec::fmadd(Vec::cvt(sumi[c]), Vec::mul(dw, da), acc[c]);
        acc[c] = Vec::fnmadd(Vec::cvt(summ), Vec::mul(dmw, da), acc[c]);
      }
    }
    for (int c = 0; c < RN; ++c) Vec::store(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};

// Q6_K weights in kLayoutQ6_KR16 x BlockQ8K activations. Per 16-weight sub-block s (Q6_K's
// scale granularity): the 4-weight groups' 6-bit values rebuilt from their nibble and 2-bit
// arrays, 4 dots from -32 * sum(a) (so the exact (q - 32) . a), one multiply by the rows' int8
// scales; then acc += sumi * (d * da), as the GGUF-layout kernel.
struct Q6K16Kernel {
  static constexpr int kRows = Vec::kRows;
  static constexpr int kRN = Vec::kRows == 16 ? 8 : 4;
  static constexpr size_t kRecord = 16 * sizeof(BlockQ6_K);  // 32 d, 256 scales, 2048 nibbles, 1024 high bits
  static constexpr size_t kNib = 288, kHigh = 288 + 2048;

  // Sub-blocks 4 F .. 4 F + 3 (their scales: sc, the record's scale dwords F): with F known at
  // compile time the groups' arrays, nibble halves and high-bit shifts are constants. rows: the
  // record plus the tile's offset within each array entry.
  template <int F, int RN>
  static inline void quarter(const uint8_t* rows, const BlockQ8K* const* a, int64_t b, Vec::I sc, Vec::I (&sumi)[RN]) {
    const Vec::I nib = Vec::set1_8(0x0F), bits45 = Vec::set1_8(0x30);
    for (int s4 = 0; s4 < 4; ++s4) {
      const int sb = 4 * F + s4;
      const Vec::I scale = Vec::sext8_of32(sc, s4);  // sub-block sb's int8 scale of each row
      Vec::I w[4];
      for (int j = 0; j < 4; ++j) {
        // 4-weight group 4 sb + j: low 4 bits in nibble array (16 F + 4 s4 + j) % 32, the high
        // nibble from F = 2 on; top 2 bits in array 4 s4 + j, bits 2 F, 2 F + 1.
        const Vec::I q = Vec::load(rows + kNib + 64 * ((16 * F + 4 * s4 + j) % 32));
        const Vec::I lo = Vec::and_(F >= 2 ? Vec::srli16(q, 4) : q, nib);
        const Vec::I h = Vec::load(rows + kHigh + 64 * (4 * s4 + j));
        Vec::I moved;  // bits 2 F, 2 F + 1 moved to 4, 5
        if constexpr (F == 0) moved = Vec::slli16(h, 4);
        else if constexpr (F == 1) moved = Vec::slli16(h, 2);
        else if constexpr (F == 2) moved = h;
        else moved = Vec::srli16(h, 2);
        w[j] = Vec::bits_or(lo, moved, bits45);
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8K& ab = a[c][b];
        const int8_t* aq = ab.qs + 16 * sb;
        const Vec::I dot = Vec::dot<63>(Vec::set1_32(-32 * ab.bsums[sb]), w, [&](int j) { return bcast4(aq + 4 * j); });
        sumi[c] = Vec::add32(sumi[c], Vec::mullo32(dot, scale));
      }
    }
  }

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const TileRows tr(t, i0);
    const BlockQ8K* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8K*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / kQK_K;
    Vec::F acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = Vec::fzero();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = tr.group + b * kRecord;
      if (tr.prefetches(RN, j0))
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 2 * kRecord + off), _MM_HINT_T0);
      const Vec::F dw = Vec::scales(rec + tr.off / 2);
      const uint8_t* rows = rec + tr.off;
      Vec::I sumi[RN];
      for (int c = 0; c < RN; ++c) sumi[c] = Vec::zero();
      quarter<0, RN>(rows, a, b, Vec::load(rows + 32), sumi);
      quarter<1, RN>(rows, a, b, Vec::load(rows + 32 + 64), sumi);
      quarter<2, RN>(rows, a, b, Vec::load(rows + 32 + 128), sumi);
      quarter<3, RN>(rows, a, b, Vec::load(rows + 32 + 192), sumi);
      for (int c = 0; c < RN; ++c) acc[c] = Vec::fmadd(Vec::cvt(sumi[c]), Vec::mul(dw, Vec::set1_ps(a[c][b].d)), acc[c]);
    }
    for (int c = 0; c < RN; ++c) Vec::store(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};

template <class K, int RN>
void tile16_rn(const TileArgs& t, int64_t i0, int64_t j0, int rn) {
  if constexpr (RN >= 1) {
    if (rn == RN) return K::template tile<RN>(t, i0, j0);
    tile16_rn<K, RN - 1>(t, i0, j0, rn);
  }
}

// The interleaved kernels over rows [0, rows) (rows % 16 == 0): whole groups of 16 rows split
// over the threads (K::kRows: 16 or 8 rows a tile).
template <class K>
void run16(ThreadPool& pool, const TileArgs& t, int64_t rows, int64_t n) {
  pool.run([&](int ith, int nth) {
    int64_t b, e;
    ThreadPool::split(rows / 16, ith, nth, &b, &e);
    for (int64_t i = b * 16; i < e * 16; i += K::kRows)
      for (int64_t j = 0; j < n; j += K::kRN) tile16_rn<K, K::kRN>(t, i, j, static_cast<int>(std::min<int64_t>(K::kRN, n - j)));
  });
}
#endif

}  // namespace

bool matmul_interleaved(ThreadPool& pool, const TileArgs& t, const WeightRef& w, int64_t n) {
#ifdef DS_INTERLEAVED
  switch (w.layout) {
    case kLayoutQ8_0R16: return run16<Quant16Kernel<DType::kQ8_0>>(pool, t, w.rows, n), true;
    case kLayoutQ4_0R16: return run16<Quant16Kernel<DType::kQ4_0>>(pool, t, w.rows, n), true;
    case kLayoutQ4_KR16: return run16<Q4K16Kernel>(pool, t, w.rows, n), true;
    case kLayoutQ6_KR16: return run16<Q6K16Kernel>(pool, t, w.rows, n), true;
    default: return false;
  }
#else
  (void)pool, (void)t, (void)w, (void)n;
  return false;
#endif
}

namespace {
// The 256 6-bit values (0..63, before the - 32) of a Q6_K block, in element order (ggml's
// dequantize_row_q6_K's indexing).
void q6_k_values(const BlockQ6_K& blk, uint8_t* q) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* ql = blk.ql + 64 * h;
      const uint8_t qh = blk.qh[32 * h + l];
      uint8_t* y = q + 128 * h;
      y[l] = static_cast<uint8_t>((ql[l] & 0xF) | ((qh & 3) << 4));
      y[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | (((qh >> 2) & 3) << 4));
      y[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh >> 4) & 3) << 4));
      y[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh >> 6) & 3) << 4));
    }
}
}  // namespace


uint32_t preferred_layout(const WeightRef& w) {
#ifdef DS_INTERLEAVED
  if (w.layout == kLayoutGguf && w.rows % 16 == 0 && w.cols % 32 == 0 && w.rows > 0) {
    if (w.type == DType::kQ8_0) return kLayoutQ8_0R16;
    if (w.type == DType::kQ4_0) return kLayoutQ4_0R16;
    if (w.type == DType::kQ4_K && w.cols % kQK_K == 0) return kLayoutQ4_KR16;
    if (w.type == DType::kQ6_K && w.cols % kQK_K == 0) return kLayoutQ6_KR16;
  }
#endif
  return w.layout;
}

WeightRef repack(const WeightRef& w, void* dst, ThreadPool* pool) {
  WeightRef out = w;
  out.data = dst;
  out.layout = preferred_layout(w);
  const size_t stride = w.row_stride(), bytes = stride * static_cast<size_t>(w.rows);
  const auto* src = static_cast<const uint8_t*>(w.data);
  auto* d = static_cast<uint8_t*>(dst);
  if (out.layout == w.layout) {
    std::memcpy(d, src, bytes);
    return out;
  }
  // Groups of 16 rows [g0, g1) rewritten; the groups are independent, so the pool's threads
  // take shares of them (a large model's load: the copy and the first touch of its pages).
  auto groups = [&](int64_t g0, int64_t g1) {
    if (out.layout == kLayoutQ4_KR16) {
      for (int64_t g = g0; g < g1; ++g) {
        uint8_t* rec = d + static_cast<size_t>(g) * 16 * stride;
        for (int64_t b = 0; b < w.cols / kQK_K; ++b, rec += 16 * sizeof(BlockQ4_K)) {
          for (int r = 0; r < 16; ++r) {
            const auto* blk = reinterpret_cast<const BlockQ4_K*>(src + (static_cast<size_t>(g) * 16 + r) * stride) + b;
            std::memcpy(rec + 2 * r, &blk->d, 2);
            std::memcpy(rec + 32 + 2 * r, &blk->dmin, 2);
            for (int k = 0; k < 3; ++k) std::memcpy(rec + 64 + 64 * k + 4 * r, blk->scales + 4 * k, 4);
            for (int j = 0; j < 32; ++j) std::memcpy(rec + 256 + 64 * j + 4 * r, blk->qs + 4 * j, 4);
          }
        }
      }
      return;
    }
    if (out.layout == kLayoutQ6_KR16) {
      for (int64_t g = g0; g < g1; ++g) {
        uint8_t* rec = d + static_cast<size_t>(g) * 16 * stride;
        for (int64_t b = 0; b < w.cols / kQK_K; ++b, rec += 16 * sizeof(BlockQ6_K)) {
          for (int r = 0; r < 16; ++r) {
            const auto* blk = reinterpret_cast<const BlockQ6_K*>(src + (static_cast<size_t>(g) * 16 + r) * stride) + b;
            uint8_t q[kQK_K];
            q6_k_values(*blk, q);
            std::memcpy(rec + 2 * r, &blk->d, 2);
            for (int k = 0; k < 4; ++k) std::memcpy(rec + 32 + 64 * k + 4 * r, blk->scales + 4 * k, 4);
            for (int grp = 0; grp < 32; ++grp)
              for (int i = 0; i < 4; ++i)
                rec[288 + 64 * grp + 4 * r + i] = static_cast<uint8_t>((q[4 * grp + i] & 0xF) | ((q[4 * (grp + 32) + i] & 0xF) << 4));
            for (int grp = 0; grp < 16; ++grp)
              for (int i = 0; i < 4; ++i) {
                uint8_t bits = 0;
                for (int f = 0; f < 4; ++f) bits |= static_cast<uint8_t>(((q[4 * (grp + 16 * f) + i] >> 4) & 3) << (2 * f));
                rec[288 + 2048 + 64 * grp + 4 * r + i] = bits;
              }
          }
        }
      }
      return;
    }
    const bool q8 = w.type == DType::kQ8_0;
    const size_t block = q8 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0), groups4 = q8 ? 8 : 4;
    const int64_t nb = w.cols / 32;
    for (int64_t g = g0; g < g1; ++g) {
      uint8_t* rec = d + static_cast<size_t>(g) * 16 * stride;
      for (int64_t b = 0; b < nb; ++b, rec += 16 * block) {
        for (int r = 0; r < 16; ++r) {
          const uint8_t* blk = src + (static_cast<size_t>(g) * 16 + r) * stride + static_cast<size_t>(b) * block;
          std::memcpy(rec + 2 * r, blk, 2);  // the F16 scale
          for (size_t j = 0; j < groups4; ++j) {
            uint32_t four;
            std::memcpy(&four, blk + 2 + 4 * j, 4);
            if (q8) four ^= 0x80808080u;  // int8 q as the unsigned byte q + 128
            std::memcpy(rec + 32 + 64 * j + 4 * r, &four, 4);
          }
        }
      }
    }
  };
  const int64_t n_groups = w.rows / 16;
  if (pool == nullptr) {
    groups(0, n_groups);
  } else {
    pool->run([&](int ith, int nth) {
      int64_t g0, g1;
      ThreadPool::split(n_groups, ith, nth, &g0, &g1);
      groups(g0, g1);
    });
  }
  return out;
}

void dequantize_row_any(const WeightRef& w, int64_t row, float* out) {
  const auto* base = static_cast<const uint8_t*>(w.data);
  if (w.layout == kLayoutQ4_KR16) {  // reassemble the row's GGUF blocks, then as the file's
    const int r = static_cast<int>(row % 16);
    const uint8_t* group = base + (row / 16) * 16 * w.row_stride();
    for (int64_t b = 0; b < w.cols / kQK_K; ++b) {
      const uint8_t* rec = group + b * 16 * sizeof(BlockQ4_K);
      BlockQ4_K blk;
      std::memcpy(&blk.d, rec + 2 * r, 2);
      std::memcpy(&blk.dmin, rec + 32 + 2 * r, 2);
      for (int k = 0; k < 3; ++k) std::memcpy(blk.scales + 4 * k, rec + 64 + 64 * k + 4 * r, 4);
      for (int j = 0; j < 32; ++j) std::memcpy(blk.qs + 4 * j, rec + 256 + 64 * j + 4 * r, 4);
      dequantize_row(DType::kQ4_K, &blk, out + b * kQK_K, kQK_K);
    }
    return;
  }
  if (w.layout == kLayoutQ6_KR16) {
    const int r = static_cast<int>(row % 16);
    const uint8_t* group = base + (row / 16) * 16 * w.row_stride();
    for (int64_t b = 0; b < w.cols / kQK_K; ++b) {
      const uint8_t* rec = group + b * 16 * sizeof(BlockQ6_K);
      uint16_t dh;
      std::memcpy(&dh, rec + 2 * r, 2);
      const float dd = fp16_to_fp32(dh);
      for (int e = 0; e < kQK_K; ++e) {
        const int grp = e / 4, i = e % 4;
        const uint8_t nb = rec[288 + 64 * (grp % 32) + 4 * r + i];
        const uint8_t hb = rec[288 + 2048 + 64 * (grp % 16) + 4 * r + i];
        const int q = ((grp >= 32 ? nb >> 4 : nb & 0xF) | (((hb >> (2 * (grp / 16))) & 3) << 4)) - 32;
        const auto sc = static_cast<int8_t>(rec[32 + 64 * (e / 64) + 4 * r + (e / 16) % 4]);
        out[b * kQK_K + e] = dd * sc * q;  // as dequantize_row: (d * scale) * (q - 32)
      }
    }
    return;
  }
  if (w.layout != kLayoutQ8_0R16 && w.layout != kLayoutQ4_0R16) {
    dequantize_row(w.type, base + row * w.row_stride(), out, w.cols);
    return;
  }
  const bool q8 = w.layout == kLayoutQ8_0R16;
  const size_t record = q8 ? 16 * sizeof(BlockQ8_0) : 16 * sizeof(BlockQ4_0);
  const int r = static_cast<int>(row % 16);
  const uint8_t* group = base + (row / 16) * 16 * w.row_stride();
  for (int64_t b = 0; b < w.cols / 32; ++b) {
    const uint8_t* rec = group + b * record;
    uint16_t dh;
    std::memcpy(&dh, rec + 2 * r, 2);
    const float d = fp16_to_fp32(dh);
    for (int k = 0; k < 32; ++k) {
      int q;
      if (q8) {
        q = static_cast<int8_t>(rec[32 + 64 * (k / 4) + 4 * r + k % 4] ^ 0x80);
      } else {
        const int kk = k % 16;
        const uint8_t byte = rec[32 + 64 * (kk / 4) + 4 * r + kk % 4];
        q = (k < 16 ? byte & 0xF : byte >> 4) - 8;
      }
      out[b * 32 + k] = d * static_cast<float>(q);
    }
  }
}

DS_CPU_END
