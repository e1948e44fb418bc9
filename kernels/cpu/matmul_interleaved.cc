// kernels/cpu/matmul_interleaved.cc: the CPU backend's quantized matrices with rows interleaved
// by 16 (kernels/backend.h: kLayoutQ8_0R16, kLayoutQ4_0R16, kLayoutQ4_KR16, kLayoutQ6_KR16): the
// rewrite at load (repack), its kernels (AVX-512 VNNI: 16 rows a register; AVX2, with or without
// AVX-VNNI: 8 rows, each half of a group's records), and rows read back (get_rows).

#include <algorithm>
#include <cstring>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_tiles.h"
#include "kernels/cpu/simd.h"

// The interleaved layouts have kernels where there are 256-bit integer vectors at least.
#if defined(DS_QUANT_PAIRS) || defined(DS_SIMD_AVX2)
#define DS_INTERLEAVED 1
#endif

namespace ds::cpu {
namespace {

#ifdef DS_QUANT_PAIRS
// Q8_0 / Q4_0 weights in kLayoutQ8_0R16 / kLayoutQ4_0R16 (rows interleaved by 16, see
// kernels/backend.h) x BlockQ8A activations. A tile is 16 weight rows x RN activation rows; per
// block and activation row, 8 VNNI dots (each 4 weights of all 16 rows against 4 broadcast
// activations) sum the block's 32 products of the 16 rows exactly in int32 lanes, then one
// convert and one FMA with the 16 rows' scales times the activation's scale: 14 instructions for
// 512 products where the GGUF-layout kernel takes 32 (its scales and sums are per row, so every
// (row, column) pair costs a dot, a convert, a product of scales and an FMA). Each output's
// sequence is acc = fma(float(block dot), d_w * d_a, acc) over its blocks in order, whatever
// the tile, batch or thread count.
template <DType T>
struct Quant16Kernel {
  static constexpr int kRows = 16;
  static constexpr int kRN = 8;
  static constexpr size_t kRecord = T == DType::kQ8_0 ? 544 : 288;  // one block of 16 rows
  static constexpr int32_t kOffset = T == DType::kQ8_0 ? 128 : 8;

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const uint8_t* g = t.w + i0 * t.w_stride;  // i0 % 16 == 0: group i0 / 16 starts here
    const BlockQ8A* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8A*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / 32;
    __m512 acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = g + b * kRecord;
      // A GEMV streams the records from DRAM: fetch the one 4 records on.
      if (RN <= 2 || j0 == 0)
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 4 * kRecord + off), _MM_HINT_T0);
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec)));
      __m512i w[8];
      if constexpr (T == DType::kQ8_0) {
        for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(rec + 32 + 64 * j);
      } else {
        const __m512i lo = _mm512_set1_epi8(0x0F);
        for (int j = 0; j < 4; ++j) {
          const __m512i q = _mm512_loadu_si512(rec + 32 + 64 * j);
          w[j] = _mm512_and_si512(q, lo);
          w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(q, 4), lo);
        }
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8A& ab = a[c][b];
        __m512i sum = _mm512_set1_epi32(-kOffset * ab.sum);
        for (int j = 0; j < 8; ++j) {
          int32_t four;
          std::memcpy(&four, ab.qs + 4 * j, 4);
          sum = _mm512_dpbusd_epi32(sum, w[j], _mm512_set1_epi32(four));
        }
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(ab.d)), acc[c]);
      }
    }
    for (int c = 0; c < RN; ++c) _mm512_storeu_ps(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }

};

// Q4_K weights in kLayoutQ4_KR16 x BlockQ8K activations, 16 rows a tile like Quant16Kernel.
// Per super-block and activation row: for each 32-weight sub-block s, 8 VNNI dots give the 16
// rows' exact sums, multiplied by their 6-bit scales (unpacked for all 16 rows at once from the
// record's three dword arrays) into one int32 per row; the mins' part is 8 products with the
// activation's sub-block sums; then the float part as the GGUF-layout kernel has it,
// acc += sumi * (d * da) - summ * (dmin * da): integers exact, so the two layouts differ by
// float rounding only, and each output's sequence depends on k alone.
struct Q4K16Kernel {
  static constexpr int kRows = 16;
  static constexpr int kRN = 8;
  static constexpr size_t kRecord = 16 * sizeof(BlockQ4_K);  // 32 d, 32 dmin, 3 x 64 scale dwords, 2048 quants

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const uint8_t* g = t.w + i0 * t.w_stride;
    const BlockQ8K* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8K*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / kQK_K;
    __m512 acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = _mm512_setzero_ps();
    const __m512i k6 = _mm512_set1_epi32(0x3f3f3f3f), k4 = _mm512_set1_epi32(0x0f0f0f0f), k2 = _mm512_set1_epi32(0x03030303);
    const __m512i byte = _mm512_set1_epi32(0xFF), nib = _mm512_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = g + b * kRecord;
      if (RN <= 2 || j0 == 0)
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 2 * kRecord + off), _MM_HINT_T0);
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec)));
      const __m512 dmw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec + 32)));
      const __m512i u0 = _mm512_loadu_si512(rec + 64), u1 = _mm512_loadu_si512(rec + 128), u2 = _mm512_loadu_si512(rec + 192);
      // Scales of sub-blocks 0-3 / 4-7 and mins 0-3 / 4-7, a byte each, per row lane (ggml's
      // get_scale_min_k4 for 16 rows).
      const __m512i sc03 = _mm512_and_si512(u0, k6);
      const __m512i sc47 = _mm512_or_si512(_mm512_and_si512(u2, k4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), k2), 4));
      const __m512i m03 = _mm512_and_si512(u1, k6);
      const __m512i m47 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), k4),
                                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), k2), 4));
      const uint8_t* quants = rec + 256;
      __m512i sumi[RN];
      for (int c = 0; c < RN; ++c) sumi[c] = _mm512_setzero_si512();
      for (int sb = 0; sb < 8; ++sb) {
        const __m512i scale = _mm512_and_si512(_mm512_srli_epi32(sb < 4 ? sc03 : sc47, 8 * (sb % 4)), byte);
        __m512i w[8];
        for (int j = 0; j < 8; ++j) {
          const __m512i q = _mm512_loadu_si512(quants + 64 * (8 * (sb / 2) + j));
          w[j] = _mm512_and_si512(sb % 2 ? _mm512_srli_epi16(q, 4) : q, nib);
        }
        for (int c = 0; c < RN; ++c) {
          const int8_t* aq = a[c][b].qs + 32 * sb;
          __m512i dot = _mm512_setzero_si512();
          for (int j = 0; j < 8; ++j) {
            int32_t four;
            std::memcpy(&four, aq + 4 * j, 4);
            dot = _mm512_dpbusd_epi32(dot, w[j], _mm512_set1_epi32(four));
          }
          sumi[c] = _mm512_add_epi32(sumi[c], _mm512_mullo_epi32(dot, scale));
        }
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8K& ab = a[c][b];
        __m512i summ = _mm512_setzero_si512();
        for (int sb = 0; sb < 8; ++sb) {
          const __m512i m = _mm512_and_si512(_mm512_srli_epi32(sb < 4 ? m03 : m47, 8 * (sb % 4)), byte);
          summ = _mm512_add_epi32(summ, _mm512_mullo_epi32(m, _mm512_set1_epi32(ab.bsums[2 * sb] + ab.bsums[2 * sb + 1])));
        }
        const __m512 da = _mm512_set1_ps(ab.d);
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[c]), _mm512_mul_ps(dw, da), acc[c]);
        acc[c] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(summ), _mm512_mul_ps(dmw, da), acc[c]);
      }
    }
    for (int c = 0; c < RN; ++c) _mm512_storeu_ps(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};

// Q6_K weights in kLayoutQ6_KR16 x BlockQ8K activations, 16 rows a tile. Per 16-weight
// sub-block s (Q6_K's scale granularity): the 4-weight groups' 6-bit values rebuilt from their
// nibble and 2-bit arrays, 4 VNNI dots from -32 * sum(a) (so the exact (q - 32) . a), one
// multiply by the 16 rows' int8 scales; then acc += sumi * (d * da), as the GGUF-layout kernel.
struct Q6K16Kernel {
  static constexpr int kRows = 16;
  static constexpr int kRN = 8;
  static constexpr size_t kRecord = 16 * sizeof(BlockQ6_K);  // 32 d, 256 scales, 2048 nibbles, 1024 high bits
  static constexpr size_t kNib = 288, kHigh = 288 + 2048;

  // Sub-blocks 4 F .. 4 F + 3 (their scales: sc, the record's scale dwords F): with F known at
  // compile time the groups' arrays, nibble halves and high-bit shifts are constants.
  template <int F, int RN>
  static inline void quarter(const uint8_t* rec, const BlockQ8K* const* a, int64_t b, __m512i sc, __m512i (&sumi)[RN]) {
    const __m512i nib = _mm512_set1_epi8(0x0F), bits45 = _mm512_set1_epi8(0x30);
    for (int s4 = 0; s4 < 4; ++s4) {
      const int sb = 4 * F + s4;
      // Sub-block sb's int8 scale of each row, sign-extended.
      const __m512i scale = _mm512_srai_epi32(_mm512_sllv_epi32(sc, _mm512_set1_epi32(24 - 8 * s4)), 24);
      __m512i w[4];
      for (int j = 0; j < 4; ++j) {
        // 4-weight group 4 sb + j: low 4 bits in nibble array (16 F + 4 s4 + j) % 32, the high
        // nibble from F = 2 on; top 2 bits in array 4 s4 + j, bits 2 F, 2 F + 1.
        const __m512i q = _mm512_loadu_si512(rec + kNib + 64 * ((16 * F + 4 * s4 + j) % 32));
        const __m512i lo = _mm512_and_si512(F >= 2 ? _mm512_srli_epi16(q, 4) : q, nib);
        const __m512i h = _mm512_loadu_si512(rec + kHigh + 64 * (4 * s4 + j));
        __m512i moved;  // bits 2 F, 2 F + 1 moved to 4, 5
        if constexpr (F == 0) moved = _mm512_slli_epi16(h, 4);
        else if constexpr (F == 1) moved = _mm512_slli_epi16(h, 2);
        else if constexpr (F == 2) moved = h;
        else moved = _mm512_srli_epi16(h, 2);
        w[j] = _mm512_ternarylogic_epi32(lo, moved, bits45, 0xF8);  // lo | (moved & 0x30)
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8K& ab = a[c][b];
        __m512i dot = _mm512_set1_epi32(-32 * ab.bsums[sb]);
        for (int j = 0; j < 4; ++j) {
          int32_t four;
          std::memcpy(&four, ab.qs + 16 * sb + 4 * j, 4);
          dot = _mm512_dpbusd_epi32(dot, w[j], _mm512_set1_epi32(four));
        }
        sumi[c] = _mm512_add_epi32(sumi[c], _mm512_mullo_epi32(dot, scale));
      }
    }
  }

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const uint8_t* g = t.w + i0 * t.w_stride;
    const BlockQ8K* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8K*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / kQK_K;
    __m512 acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = g + b * kRecord;
      if (RN <= 2 || j0 == 0)
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 2 * kRecord + off), _MM_HINT_T0);
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec)));
      __m512i sc4[4];
      for (int k = 0; k < 4; ++k) sc4[k] = _mm512_loadu_si512(rec + 32 + 64 * k);
      __m512i sumi[RN];
      for (int c = 0; c < RN; ++c) sumi[c] = _mm512_setzero_si512();
      quarter<0, RN>(rec, a, b, sc4[0], sumi);
      quarter<1, RN>(rec, a, b, sc4[1], sumi);
      quarter<2, RN>(rec, a, b, sc4[2], sumi);
      quarter<3, RN>(rec, a, b, sc4[3], sumi);
      for (int c = 0; c < RN; ++c)
        acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[c]), _mm512_mul_ps(dw, _mm512_set1_ps(a[c][b].d)), acc[c]);
    }
    for (int c = 0; c < RN; ++c) _mm512_storeu_ps(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};

#elif defined(DS_SIMD_AVX2)
// The same layouts with 256-bit vectors (AVX2; AVX-VNNI or AVX-512 VL VNNI where there): a
// tile is 8 weight rows, one half of each 64-byte group of a record (rows 0-7 in its first 32
// bytes, 8-15 in its second), by RN activation rows; a group's two halves run one after the
// other on one thread (the second pass finds the group's records in cache). Per output the
// float sequence is the AVX-512 kernels' own (acc = fma(float(exact integer sum), d_w * d_a,
// acc), blocks in order), so every instruction set gives the same bits; only the integer sums
// are formed differently:
//  - VNNI: dpbusd, 4 unsigned weight bytes x 4 signed activation bytes into int32 per row;
//  - AVX2 alone: maddubs (pairs of products into saturating int16) then madd (int16 pairs into
//    int32). Exact only while a lane's int16 sum stays below 2^15: Q4 weights (<= 15) sum 8
//    groups (8 x 2 x 15 x 127), Q6_K ones (<= 63) 2 groups; Q8_0 (unsigned q + 128 up to 255)
//    goes through the sign trick on q instead (|q| x sign(a, q)).

// The 8 rows' 4-byte groups j of a record's half h, and 4 activations broadcast.
inline __m256i half_group(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i bcast4(const int8_t* p) {
  int32_t four;
  std::memcpy(&four, p, 4);
  return _mm256_set1_epi32(four);
}

#ifdef DS_SIMD_VNNI
inline __m256i dpbusd(__m256i acc, __m256i u, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, a);
#else
  return _mm256_dpbusd_avx_epi32(acc, u, a);
#endif
}
#endif

// The int32 lanes (one per row) of init + sum over groups j < N of u_j . a(j), for unsigned
// weight bytes u <= kMax; a(j) the broadcast activations of group j.
template <int kMax, int N, class A>
inline __m256i dot_u(__m256i init, const __m256i (&u)[N], A a) {
#ifdef DS_SIMD_VNNI
  __m256i s0 = init, s1 = _mm256_setzero_si256();  // two chains: half the latency
  for (int j = 0; j < N; j += 2) {
    s0 = dpbusd(s0, u[j], a(j));
    if (j + 1 < N) s1 = dpbusd(s1, u[j + 1], a(j + 1));
  }
  return _mm256_add_epi32(s0, s1);
#else
  // Groups per int16 partial sum (each maddubs lane: 2 products of at most kMax * 127).
  constexpr int kPer = 32767 / (2 * kMax * 127);
  static_assert(kPer >= 1, "maddubs pairs would saturate");
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s = init;
  for (int j0 = 0; j0 < N; j0 += kPer) {
    __m256i p = _mm256_maddubs_epi16(u[j0], a(j0));
    for (int j = j0 + 1; j < j0 + kPer && j < N; ++j) p = _mm256_add_epi16(p, _mm256_maddubs_epi16(u[j], a(j)));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
  }
  return s;
#endif
}

// Q8_0 / Q4_0 (kLayoutQ8_0R16 / kLayoutQ4_0R16) x BlockQ8A, as Quant16Kernel above.
template <DType T>
struct Quant16Kernel {
  static constexpr int kRows = 8;
  static constexpr int kRN = 4;
  static constexpr size_t kRecord = T == DType::kQ8_0 ? 544 : 288;
  static constexpr int32_t kOffset = T == DType::kQ8_0 ? 128 : 8;

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const uint8_t* g = t.w + (i0 & ~int64_t{15}) * t.w_stride;
    const int h = static_cast<int>(i0 >> 3) & 1;
    const BlockQ8A* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8A*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / 32;
    __m256 acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = g + b * kRecord;
      if (h == 0 && (RN <= 2 || j0 == 0))
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 4 * kRecord + off), _MM_HINT_T0);
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 16 * h)));
      __m256i w[8];
      if constexpr (T == DType::kQ8_0) {
        for (int j = 0; j < 8; ++j) w[j] = half_group(rec + 32 + 64 * j + 32 * h);
      } else {
        const __m256i lo = _mm256_set1_epi8(0x0F);
        for (int j = 0; j < 4; ++j) {
          const __m256i q = half_group(rec + 32 + 64 * j + 32 * h);
          w[j] = _mm256_and_si256(q, lo);
          w[j + 4] = _mm256_and_si256(_mm256_srli_epi16(q, 4), lo);
        }
      }
#if !defined(DS_SIMD_VNNI)
      // Q8_0 without VNNI: signed q = (q + 128) ^ 0x80, |q| once, sign(a, q) per activation row.
      __m256i qs[8], qa[8];
      if constexpr (T == DType::kQ8_0) {
        for (int j = 0; j < 8; ++j) {
          qs[j] = _mm256_xor_si256(w[j], _mm256_set1_epi8(static_cast<char>(0x80)));
          qa[j] = _mm256_sign_epi8(qs[j], qs[j]);
        }
      }
#endif
      for (int c = 0; c < RN; ++c) {
        const BlockQ8A& ab = a[c][b];
        __m256i sum;
#if !defined(DS_SIMD_VNNI)
        if constexpr (T == DType::kQ8_0) {
          sum = dot_u<127>(_mm256_setzero_si256(), qa, [&](int j) { return _mm256_sign_epi8(bcast4(ab.qs + 4 * j), qs[j]); });
        } else
#endif
        {
          sum = dot_u<T == DType::kQ8_0 ? 255 : 15>(_mm256_set1_epi32(-kOffset * ab.sum), w, [&](int j) { return bcast4(ab.qs + 4 * j); });
        }
        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dw, _mm256_set1_ps(ab.d)), acc[c]);
      }
    }
    for (int c = 0; c < RN; ++c) _mm256_storeu_ps(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};

// Q4_K (kLayoutQ4_KR16) x BlockQ8K, as Q4K16Kernel above.
struct Q4K16Kernel {
  static constexpr int kRows = 8;
  static constexpr int kRN = 4;
  static constexpr size_t kRecord = 16 * sizeof(BlockQ4_K);

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const uint8_t* g = t.w + (i0 & ~int64_t{15}) * t.w_stride;
    const int h = static_cast<int>(i0 >> 3) & 1;
    const BlockQ8K* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8K*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / kQK_K;
    __m256 acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = _mm256_setzero_ps();
    const __m256i k6 = _mm256_set1_epi32(0x3f3f3f3f), k4 = _mm256_set1_epi32(0x0f0f0f0f), k2 = _mm256_set1_epi32(0x03030303);
    const __m256i byte = _mm256_set1_epi32(0xFF), nib = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = g + b * kRecord;
      if (h == 0 && (RN <= 2 || j0 == 0))
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 2 * kRecord + off), _MM_HINT_T0);
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 16 * h)));
      const __m256 dmw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 32 + 16 * h)));
      const __m256i u0 = half_group(rec + 64 + 32 * h), u1 = half_group(rec + 128 + 32 * h), u2 = half_group(rec + 192 + 32 * h);
      const __m256i sc03 = _mm256_and_si256(u0, k6);
      const __m256i sc47 = _mm256_or_si256(_mm256_and_si256(u2, k4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), k2), 4));
      const __m256i m03 = _mm256_and_si256(u1, k6);
      const __m256i m47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), k4),
                                          _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), k2), 4));
      const uint8_t* quants = rec + 256 + 32 * h;
      __m256i sumi[RN];
      for (int c = 0; c < RN; ++c) sumi[c] = _mm256_setzero_si256();
      for (int sb = 0; sb < 8; ++sb) {
        const __m256i scale = _mm256_and_si256(_mm256_srli_epi32(sb < 4 ? sc03 : sc47, 8 * (sb % 4)), byte);
        __m256i w[8];
        for (int j = 0; j < 8; ++j) {
          const __m256i q = half_group(quants + 64 * (8 * (sb / 2) + j));
          w[j] = _mm256_and_si256(sb % 2 ? _mm256_srli_epi16(q, 4) : q, nib);
        }
        for (int c = 0; c < RN; ++c) {
          const int8_t* aq = a[c][b].qs + 32 * sb;
          const __m256i dot = dot_u<15>(_mm256_setzero_si256(), w, [&](int j) { return bcast4(aq + 4 * j); });
          sumi[c] = _mm256_add_epi32(sumi[c], _mm256_mullo_epi32(dot, scale));
        }
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8K& ab = a[c][b];
        __m256i summ = _mm256_setzero_si256();
        for (int sb = 0; sb < 8; ++sb) {
          const __m256i m = _mm256_and_si256(_mm256_srli_epi32(sb < 4 ? m03 : m47, 8 * (sb % 4)), byte);
          summ = _mm256_add_epi32(summ, _mm256_mullo_epi32(m, _mm256_set1_epi32(ab.bsums[2 * sb] + ab.bsums[2 * sb + 1])));
        }
        const __m256 da = _mm256_set1_ps(ab.d);
        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[c]), _mm256_mul_ps(dw, da), acc[c]);
        acc[c] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ), _mm256_mul_ps(dmw, da), acc[c]);
      }
    }
    for (int c = 0; c < RN; ++c) _mm256_storeu_ps(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};

// Q6_K (kLayoutQ6_KR16) x BlockQ8K, as Q6K16Kernel above.
struct Q6K16Kernel {
  static constexpr int kRows = 8;
  static constexpr int kRN = 4;
  static constexpr size_t kRecord = 16 * sizeof(BlockQ6_K);
  static constexpr size_t kNib = 288, kHigh = 288 + 2048;

  template <int F, int RN>
  static inline void quarter(const uint8_t* rec, const BlockQ8K* const* a, int64_t b, __m256i sc, __m256i (&sumi)[RN]) {
    const __m256i nib = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
    for (int s4 = 0; s4 < 4; ++s4) {
      const int sb = 4 * F + s4;
      const __m256i scale = _mm256_srai_epi32(_mm256_slli_epi32(sc, 24 - 8 * s4), 24);
      __m256i w[4];
      for (int j = 0; j < 4; ++j) {
        const __m256i q = half_group(rec + kNib + 64 * ((16 * F + 4 * s4 + j) % 32));
        const __m256i lo = _mm256_and_si256(F >= 2 ? _mm256_srli_epi16(q, 4) : q, nib);
        const __m256i hb = half_group(rec + kHigh + 64 * (4 * s4 + j));
        __m256i moved;
        if constexpr (F == 0) moved = _mm256_slli_epi16(hb, 4);
        else if constexpr (F == 1) moved = _mm256_slli_epi16(hb, 2);
        else if constexpr (F == 2) moved = hb;
        else moved = _mm256_srli_epi16(hb, 2);
        w[j] = _mm256_or_si256(lo, _mm256_and_si256(moved, bits45));
      }
      for (int c = 0; c < RN; ++c) {
        const BlockQ8K& ab = a[c][b];
        const int8_t* aq = ab.qs + 16 * sb;
        const __m256i dot = dot_u<63>(_mm256_set1_epi32(-32 * ab.bsums[sb]), w, [&](int j) { return bcast4(aq + 4 * j); });
        sumi[c] = _mm256_add_epi32(sumi[c], _mm256_mullo_epi32(dot, scale));
      }
    }
  }

  template <int RN>
  static void tile(const TileArgs& t, int64_t i0, int64_t j0) {
    const uint8_t* g = t.w + (i0 & ~int64_t{15}) * t.w_stride;
    const int h = static_cast<int>(i0 >> 3) & 1;
    const BlockQ8K* a[RN];
    for (int c = 0; c < RN; ++c) a[c] = reinterpret_cast<const BlockQ8K*>(t.a + (j0 + c) * t.a_stride);
    const int64_t nb = t.k / kQK_K;
    __m256 acc[RN];
    for (int c = 0; c < RN; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* rec = g + b * kRecord;
      if (h == 0 && (RN <= 2 || j0 == 0))
        for (size_t off = 0; off < kRecord; off += 64) _mm_prefetch(reinterpret_cast<const char*>(rec + 2 * kRecord + off), _MM_HINT_T0);
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 16 * h)));
      const uint8_t* half = rec + 32 * h;  // every array's 64-byte groups, this half's 32 bytes
      __m256i sumi[RN];
      for (int c = 0; c < RN; ++c) sumi[c] = _mm256_setzero_si256();
      quarter<0, RN>(half, a, b, half_group(half + 32), sumi);
      quarter<1, RN>(half, a, b, half_group(half + 32 + 64), sumi);
      quarter<2, RN>(half, a, b, half_group(half + 32 + 128), sumi);
      quarter<3, RN>(half, a, b, half_group(half + 32 + 192), sumi);
      for (int c = 0; c < RN; ++c)
        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[c]), _mm256_mul_ps(dw, _mm256_set1_ps(a[c][b].d)), acc[c]);
    }
    for (int c = 0; c < RN; ++c) _mm256_storeu_ps(t.y + (j0 + c) * t.y_stride + i0, acc[c]);
  }
};
#endif

#ifdef DS_INTERLEAVED
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

}  // namespace ds::cpu

namespace ds {
bool cpu_interleaves_quant() {
#ifdef DS_INTERLEAVED
  return true;
#else
  return false;
#endif
}
}  // namespace ds

namespace ds::cpu {

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

}  // namespace ds::cpu
