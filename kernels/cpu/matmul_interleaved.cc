// kernels/cpu/matmul_interleaved.cc: the CPU backend's quantized matrices with rows interleaved
// by 16 (kernels/backend.h: kLayoutQ8_0R16, kLayoutQ4_0R16, kLayoutQ4_KR16, kLayoutQ6_KR16): the
// rewrite at load (repack), its kernels (AVX-512 VNNI), and rows read back (get_rows).

#include <algorithm>
#include <cstring>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_tiles.h"
#include "kernels/cpu/simd.h"

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

template <class K, int RN>
void tile16_rn(const TileArgs& t, int64_t i0, int64_t j0, int rn) {
  if constexpr (RN >= 1) {
    if (rn == RN) return K::template tile<RN>(t, i0, j0);
    tile16_rn<K, RN - 1>(t, i0, j0, rn);
  }
}

// The 16-row kernels over rows [0, rows) (rows % 16 == 0), groups split over the threads.
template <class K>
void run16(ThreadPool& pool, const TileArgs& t, int64_t rows, int64_t n) {
  pool.run([&](int ith, int nth) {
    int64_t b, e;
    ThreadPool::split(rows / K::kRows, ith, nth, &b, &e);
    for (int64_t i = b * K::kRows; i < e * K::kRows; i += K::kRows)
      for (int64_t j = 0; j < n; j += K::kRN) tile16_rn<K, K::kRN>(t, i, j, static_cast<int>(std::min<int64_t>(K::kRN, n - j)));
  });
}
#endif

}  // namespace

bool matmul_interleaved(ThreadPool& pool, const TileArgs& t, const WeightRef& w, int64_t n) {
#ifdef DS_QUANT_PAIRS
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
#ifdef DS_QUANT_PAIRS
  return true;
#else
  return false;
#endif
}
}  // namespace ds

namespace ds::cpu {

uint32_t preferred_layout(const WeightRef& w) {
#ifdef DS_QUANT_PAIRS
  if (w.layout == kLayoutGguf && w.rows % 16 == 0 && w.cols % 32 == 0 && w.rows > 0) {
    if (w.type == DType::kQ8_0) return kLayoutQ8_0R16;
    if (w.type == DType::kQ4_0) return kLayoutQ4_0R16;
    if (w.type == DType::kQ4_K && w.cols % kQK_K == 0) return kLayoutQ4_KR16;
    if (w.type == DType::kQ6_K && w.cols % kQK_K == 0) return kLayoutQ6_KR16;
  }
#endif
  return w.layout;
}

WeightRef repack(const WeightRef& w, void* dst) {
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
  if (out.layout == kLayoutQ4_KR16) {
    for (int64_t g = 0; g < w.rows / 16; ++g) {
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
    return out;
  }
  if (out.layout == kLayoutQ6_KR16) {
    for (int64_t g = 0; g < w.rows / 16; ++g) {
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
    return out;
  }
  const bool q8 = w.type == DType::kQ8_0;
  const size_t block = q8 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0), groups4 = q8 ? 8 : 4;
  const int64_t nb = w.cols / 32;
  for (int64_t g = 0; g < w.rows / 16; ++g) {
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
