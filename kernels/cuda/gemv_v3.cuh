// kernels/cuda/gemv_v3.cuh: the per-row dot products of decode GEMV version 3 (gemv_kernels.cuh's
// file comment), shared by gemv_kernels.cuh's launches and the persistent decode kernel
// (decode_fused.cu), so that both compute every row with the same instructions.
//
// Included by .cu files only.
#pragma once

#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace ds::cuda::v3 {

// ---- v3 -----------------------------------------------------------------------------

constexpr int kV3Warps = 4;   // rows per block, one warp each
constexpr int kV3Unroll = 8;  // chunks in flight per lane

// Exact int8 -> float for the 4 signed bytes of v: byte k, biased to unsigned (v ^ 0x80),
// becomes the low byte of the float 2^23 + u; subtracting 2^23 + 128 gives u - 128 = q.
__device__ __forceinline__ void i8x4_to_f32(uint32_t v, float* out) {
  const uint32_t u = v ^ 0x80808080u;
#pragma unroll
  for (int k = 0; k < 4; ++k) out[k] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7440u | k)) - 8388736.0f;
}

// Per type: the chunk a lane takes (kElems weights), its raw bits, and where its x values are.
template <DType T>
struct V3;

template <>
struct V3<DType::kF32> {
  static constexpr int kElems = 8;
  struct Raw {
    float w[8];
  };
  static __device__ __forceinline__ int64_t chunks(int64_t cols) { return (cols + 7) / 8; }
  static __device__ __forceinline__ void load(const uint8_t* row, int64_t c, int64_t cols, bool vec, Raw& r) {
    const float* p = reinterpret_cast<const float*>(row) + 8 * c;
    if (vec) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(p));
      const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
      r.w[0] = a.x, r.w[1] = a.y, r.w[2] = a.z, r.w[3] = a.w, r.w[4] = b.x, r.w[5] = b.y, r.w[6] = b.z, r.w[7] = b.w;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) r.w[i] = 8 * c + i < cols ? p[i] : 0.0f;
    }
  }
  static __device__ __forceinline__ float decode(const Raw& r, int64_t, float* w) {
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = r.w[i];
    return 1.0f;
  }
  static __device__ __forceinline__ int64_t x_first(int64_t c, int half) { return 8 * c; }
};

template <DType T>
struct V3Half {  // F16 and BF16
  static constexpr int kElems = 8;
  struct Raw {
    uint32_t u[4];
  };
  static __device__ __forceinline__ int64_t chunks(int64_t cols) { return (cols + 7) / 8; }
  static __device__ __forceinline__ void load(const uint8_t* row, int64_t c, int64_t cols, bool vec, Raw& r) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + 8 * c;
    if (vec) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
      r.u[0] = v.x, r.u[1] = v.y, r.u[2] = v.z, r.u[3] = v.w;
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t lo = 8 * c + 2 * i < cols ? p[2 * i] : 0u;
        const uint32_t hi = 8 * c + 2 * i + 1 < cols ? p[2 * i + 1] : 0u;
        r.u[i] = lo | (hi << 16);
      }
    }
  }
  static __device__ __forceinline__ float decode(const Raw& r, int64_t, float* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint16_t lo = static_cast<uint16_t>(r.u[i] & 0xffffu), hi = static_cast<uint16_t>(r.u[i] >> 16);
      w[2 * i] = T == DType::kF16 ? f16_to_f32(lo) : bf16_to_f32(lo);
      w[2 * i + 1] = T == DType::kF16 ? f16_to_f32(hi) : bf16_to_f32(hi);
    }
    return 1.0f;
  }
  static __device__ __forceinline__ int64_t x_first(int64_t c, int half) { return 8 * c; }
};
template <>
struct V3<DType::kF16> : V3Half<DType::kF16> {};
template <>
struct V3<DType::kBF16> : V3Half<DType::kBF16> {};

template <>
struct V3<DType::kQ8_0> {
  // Chunk c: quarter (c & 3) of block (c >> 2), quants [8q, 8q + 8).
  static constexpr int kElems = 8;
  struct Raw {
    uint32_t q[4];  // four 2-byte loads (blocks are only 2-byte aligned)
    uint32_t d;
  };
  static __device__ __forceinline__ int64_t chunks(int64_t cols) { return cols / 8; }
  static __device__ __forceinline__ void load(const uint8_t* row, int64_t c, int64_t, bool, Raw& r) {
    const uint8_t* b = row + (c >> 2) * kQ8_0Bytes;
    const uint16_t* q = reinterpret_cast<const uint16_t*>(b + 2 + (c & 3) * 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) r.q[i] = __ldg(q + i);
    r.d = __ldg(reinterpret_cast<const uint16_t*>(b));
  }
  static __device__ __forceinline__ float decode(const Raw& r, int64_t, float* w) {
    i8x4_to_f32(__byte_perm(r.q[0], r.q[1], 0x5410), w);
    i8x4_to_f32(__byte_perm(r.q[2], r.q[3], 0x5410), w + 4);
    return f16_to_f32(static_cast<uint16_t>(r.d));
  }
  static __device__ __forceinline__ int64_t x_first(int64_t c, int half) { return 8 * c; }
};

template <>
struct V3<kQ8_0Split> {
  // Chunk c: quants [8c, 8c + 8) (one 8-byte load when the row is 8-byte aligned: vec) and
  // scale c >> 2 from after the row's quants. The same chunks, values and arithmetic as
  // V3<kQ8_0>, so every dot product has its bits; 2 loads a chunk instead of 5.
  static constexpr int kElems = 8;
  struct Raw {
    uint32_t q[2];
    uint32_t d;
  };
  static __device__ __forceinline__ int64_t chunks(int64_t cols) { return cols / 8; }
  static __device__ __forceinline__ void load(const uint8_t* row, int64_t c, int64_t cols, bool vec, Raw& r) {
    if (vec) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(row + 8 * c));
      r.q[0] = v.x, r.q[1] = v.y;
    } else {  // rows are 2-byte aligned (34 bytes a block)
      const uint16_t* q = reinterpret_cast<const uint16_t*>(row + 8 * c);
      r.q[0] = static_cast<uint32_t>(__ldg(q)) | (static_cast<uint32_t>(__ldg(q + 1)) << 16);
      r.q[1] = static_cast<uint32_t>(__ldg(q + 2)) | (static_cast<uint32_t>(__ldg(q + 3)) << 16);
    }
    r.d = __ldg(reinterpret_cast<const uint16_t*>(row + cols) + (c >> 2));
  }
  static __device__ __forceinline__ float decode(const Raw& r, int64_t, float* w) {
    i8x4_to_f32(r.q[0], w);
    i8x4_to_f32(r.q[1], w + 4);
    return f16_to_f32(static_cast<uint16_t>(r.d));
  }
  static __device__ __forceinline__ int64_t x_first(int64_t c, int half) { return 8 * c; }
};

template <>
struct V3<DType::kQ4_0> {
  // Chunk c: half h = c & 1 of block c >> 1: bytes qs[8h, 8h + 8); their low nibbles are
  // elements 8h + i, their high nibbles elements 16 + 8h + i.
  static constexpr int kElems = 16;
  struct Raw {
    uint32_t q[4];
    uint32_t d;
  };
  static __device__ __forceinline__ int64_t chunks(int64_t cols) { return cols / 16; }
  static __device__ __forceinline__ void load(const uint8_t* row, int64_t c, int64_t, bool, Raw& r) {
    const uint8_t* b = row + (c >> 1) * kQ4_0Bytes;
    const uint16_t* q = reinterpret_cast<const uint16_t*>(b + 2 + (c & 1) * 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) r.q[i] = __ldg(q + i);
    r.d = __ldg(reinterpret_cast<const uint16_t*>(b));
  }
  // The chunk is computed eight weights at a time (kParts > 1: v3_rows_dots keeps 8 floats of it
  // live instead of kElems): part 0 the low nibbles (elements 0..7), part 1 the high (8..15),
  // each (nibble - 8); prep() the block scale d.
  static constexpr int kParts = 2;
  struct Prep {
    float d;
  };
  static __device__ __forceinline__ Prep prep(const Raw& r, int64_t) { return Prep{f16_to_f32(static_cast<uint16_t>(r.d))}; }
  static __device__ __forceinline__ void part(const Raw& r, const Prep&, int64_t, int p, float* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const uint32_t byte = (r.q[i] >> (8 * k)) & 0xffu;
        w[2 * i + k] = static_cast<float>(static_cast<int>(p == 0 ? byte & 0xFu : byte >> 4) - 8);
      }
    }
  }
  // x of elements [8 half, 8 half + 8) of the chunk: low nibbles, then high nibbles.
  static __device__ __forceinline__ int64_t x_first(int64_t c, int half) { return (c >> 1) * 32 + (c & 1) * 8 + 16 * half; }
};

// Exact small unsigned int -> float for byte k of v (k < 4): 2^23 + byte, minus `bias` (2^23
// + the value to subtract, exact for bytes and these biases).
__device__ __forceinline__ float u8_to_f32(uint32_t v, int k, float bias) {
  return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7440u | k)) - bias;
}

template <>
struct V3<DType::kQ4_K> {
  // Super-block c >> 3 (256 weights), chunk k = c & 7: nibble group g = k >> 1 (qs[32g ..
  // 32g + 32)), bytes [16 (k & 1), + 16) of it. Their low nibbles are weights 64g + 16 (k & 1)
  // + i of sub-block 2g, their high nibbles weights 64g + 32 + 16 (k & 1) + i of sub-block
  // 2g + 1 (i < 16). The chunk's weights are dequantized to floats: w = fma(d sc, q, -dmin m).
  static constexpr int kElems = 32;
  struct Raw {
    uint32_t h[4];  // d, dmin, scales[12]: the block's first 16 bytes
    uint32_t q[4];  // the chunk's 16 bytes of nibbles
  };
  static __device__ __forceinline__ int64_t chunks(int64_t cols) { return cols / 32; }
  // vec: the row is 16-byte aligned (row strides are multiples of 144, so every block is).
  static __device__ __forceinline__ void load(const uint8_t* row, int64_t c, int64_t, bool vec, Raw& r) {
    const uint8_t* b = row + (c >> 3) * kQ4_KBytes;
    const uint8_t* q = b + 16 + 16 * (c & 7);
    if (vec) {
      const uint4 hv = __ldg(reinterpret_cast<const uint4*>(b));
      const uint4 qv = __ldg(reinterpret_cast<const uint4*>(q));
      r.h[0] = hv.x, r.h[1] = hv.y, r.h[2] = hv.z, r.h[3] = hv.w;
      r.q[0] = qv.x, r.q[1] = qv.y, r.q[2] = qv.z, r.q[3] = qv.w;
    } else {  // 2-byte aligned
      const uint16_t* h16 = reinterpret_cast<const uint16_t*>(b);
      const uint16_t* q16 = reinterpret_cast<const uint16_t*>(q);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        r.h[i] = static_cast<uint32_t>(__ldg(h16 + 2 * i)) | (static_cast<uint32_t>(__ldg(h16 + 2 * i + 1)) << 16);
        r.q[i] = static_cast<uint32_t>(__ldg(q16 + 2 * i)) | (static_cast<uint32_t>(__ldg(q16 + 2 * i + 1)) << 16);
      }
    }
  }
  static constexpr int kParts = 4;  // as Q4_0's: elements [8p, 8p + 8) of the chunk
  struct Prep {
    float d1, m1, d2, m2;  // sub-blocks 2g and 2g + 1: d * scale, dmin * min
  };
  static __device__ __forceinline__ Prep prep(const Raw& r, int64_t c) {
    uint8_t scales[12];
#pragma unroll
    for (int i = 0; i < 12; ++i) scales[i] = static_cast<uint8_t>(r.h[1 + i / 4] >> (8 * (i % 4)));
    const int g = static_cast<int>(c & 7) >> 1;
    const float d = f16_to_f32(static_cast<uint16_t>(r.h[0] & 0xffffu));
    const float dmin = f16_to_f32(static_cast<uint16_t>(r.h[0] >> 16));
    uint8_t sc, m;
    Prep pr;
    q4k_scale_min(scales, 2 * g, &sc, &m);
    pr.d1 = d * static_cast<float>(sc), pr.m1 = dmin * static_cast<float>(m);
    q4k_scale_min(scales, 2 * g + 1, &sc, &m);
    pr.d2 = d * static_cast<float>(sc), pr.m2 = dmin * static_cast<float>(m);
    return pr;
  }
  // Parts 0, 1: the low nibbles of q[0..1], q[2..3] (sub-block 2g); 2, 3: their high nibbles.
  static __device__ __forceinline__ void part(const Raw& r, const Prep& pr, int64_t, int p, float* w) {
    const bool high = p >= 2;
#pragma unroll
    for (int ii = 0; ii < 2; ++ii) {
      const uint32_t q = r.q[2 * (p & 1) + ii];
      const uint32_t v = high ? (q >> 4) & 0x0F0F0F0Fu : q & 0x0F0F0F0Fu;
#pragma unroll
      for (int k = 0; k < 4; ++k)
        w[4 * ii + k] = high ? fmaf(pr.d2, u8_to_f32(v, k, 8388608.0f), -pr.m2) : fmaf(pr.d1, u8_to_f32(v, k, 8388608.0f), -pr.m1);
    }
  }
  // x of weights [8 part, 8 part + 8) of the chunk (part < 4; 0, 1 low nibbles, 2, 3 high).
  static __device__ __forceinline__ int64_t x_first(int64_t c, int part) {
    return (c >> 3) * 256 + 64 * ((c & 7) >> 1) + 16 * (c & 1) + 32 * (part >> 1) + 8 * (part & 1);
  }
};

template <>
struct V3<DType::kQ6_K> {
  // Super-block c >> 3, chunk k = c & 7: half h = k >> 2, positions l in [l0, l0 + 8), l0 =
  // 8 (k & 3), of its four 32-weight groups g: weight 128h + 32g + l has the 4 low bits of
  // ql[64h + l + 32 (g & 1)] (low nibble for g < 2, high for g >= 2), the 2 high bits
  // (qh[32h + l] >> 2g) & 3, and scale scales[8h + 2g + (l0 >= 16)]: w = d sc (q - 32).
  // Blocks are 210 bytes, so only 2-byte aligned: 2-byte loads, kept apart until decode so
  // that all of them issue before any result is needed.
  static constexpr int kElems = 32;
  struct Raw {
    uint32_t a[4], b[4], qh[4];  // ql[64h + l0 ..], ql[64h + 32 + l0 ..], qh[32h + l0 ..], 2 bytes each
    uint32_t sc[4];              // scales[8h + 2g], [8h + 2g + 1] for g < 4
    uint32_t d;
  };
  static __device__ __forceinline__ int64_t chunks(int64_t cols) { return cols / 32; }
  static __device__ __forceinline__ void load(const uint8_t* row, int64_t c, int64_t, bool, Raw& r) {
    const uint8_t* blk = row + (c >> 3) * kQ6_KBytes;
    const int h = static_cast<int>(c & 7) >> 2, l0 = 8 * static_cast<int>(c & 3);
    const uint16_t* a = reinterpret_cast<const uint16_t*>(blk + 64 * h + l0);
    const uint16_t* b = reinterpret_cast<const uint16_t*>(blk + 64 * h + 32 + l0);
    const uint16_t* qh = reinterpret_cast<const uint16_t*>(blk + 128 + 32 * h + l0);
    const uint16_t* sc = reinterpret_cast<const uint16_t*>(blk + 192 + 8 * h);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      r.a[i] = __ldg(a + i);
      r.b[i] = __ldg(b + i);
      r.qh[i] = __ldg(qh + i);
      r.sc[i] = __ldg(sc + i);
    }
    r.d = __ldg(reinterpret_cast<const uint16_t*>(blk + 208));
  }
  static constexpr int kParts = 4;  // part g: elements [8g, 8g + 8) of the chunk, group g's positions
  struct Prep {
    float d;
    int hi_scale;
  };
  static __device__ __forceinline__ Prep prep(const Raw& r, int64_t c) {
    return Prep{f16_to_f32(static_cast<uint16_t>(r.d)), (c & 3) >= 2 ? 8 : 0};
  }
  static __device__ __forceinline__ void part(const Raw& r, const Prep& pr, int64_t, int g, float* w) {
    const float dsc = pr.d * static_cast<float>(static_cast<int8_t>((r.sc[g] >> pr.hi_scale) & 0xffu));
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint32_t A = __byte_perm(r.a[2 * half], r.a[2 * half + 1], 0x5410);
      const uint32_t B = __byte_perm(r.b[2 * half], r.b[2 * half + 1], 0x5410);
      const uint32_t H = __byte_perm(r.qh[2 * half], r.qh[2 * half + 1], 0x5410);
      const uint32_t q = g == 0   ? (A & 0x0F0F0F0Fu) | ((H << 4) & 0x30303030u)
                         : g == 1 ? (B & 0x0F0F0F0Fu) | ((H << 2) & 0x30303030u)
                         : g == 2 ? ((A >> 4) & 0x0F0F0F0Fu) | (H & 0x30303030u)
                                  : ((B >> 4) & 0x0F0F0F0Fu) | ((H >> 2) & 0x30303030u);
#pragma unroll
      for (int k = 0; k < 4; ++k) w[4 * half + k] = dsc * u8_to_f32(q, k, 8388640.0f);  // 2^23 + 32
    }
  }
  static __device__ __forceinline__ int64_t x_first(int64_t c, int g) {
    return (c >> 3) * 256 + 128 * ((c & 7) >> 2) + 32 * g + 8 * (c & 3);
  }
};

// Parts of 8 elements a chunk is computed in (V3<T>::kParts where defined, else 1: the whole
// chunk from decode()).
template <class Tr, class = void>
struct V3Parts {
  static constexpr int value = 1;
};
template <class Tr>
struct V3Parts<Tr, std::void_t<decltype(Tr::kParts)>> {
  static constexpr int value = Tr::kParts;
};

// Chunks a lane keeps in flight: fewer for Q6_K, whose raw chunk takes 17 registers.
template <DType T>
constexpr int kV3UnrollOf = T == DType::kQ6_K ? 4 : kV3Unroll;

// 8 consecutive x values from xj[i0]; past cols they read as 0 on the scalar path.
// kXGlobal: x is global memory no thread of the kernel writes (the read-only path, __ldg);
// else plain loads (x in shared memory: the persistent decode kernel's staged activations).
template <bool kXGlobal = true>
__device__ __forceinline__ void load_x8_at(const float* __restrict__ xj, int64_t i0, int64_t cols, bool vec, float v[8]) {
  const float* r = xj + i0;
  if (vec) {
    const float4 a = kXGlobal ? __ldg(reinterpret_cast<const float4*>(r)) : reinterpret_cast<const float4*>(r)[0];
    const float4 b = kXGlobal ? __ldg(reinterpret_cast<const float4*>(r) + 1) : reinterpret_cast<const float4*>(r)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = i0 + i < cols ? r[i] : 0.0f;
  }
}

// The dot products of R weight rows with the n (<= NC) activation rows x[j, :]:
// dots[i][j] (every lane gets it) for j < n and rows[i] non-null (a null row is skipped).
// Calls griddep_wait() after issuing the first weight loads and before touching x (a PDL
// launch overlaps those loads with the previous kernel). Each x chunk is loaded once per
// column and used for all R rows: for n > 1 the x loads, not the weights, bound the kernel
// (one 32-byte x load per column per 8 weights), so R rows per warp cut them by R. The
// instructions for row i and column j are the same whatever R, NC and n, and whatever
// kernel calls this (gemv, the fused QKV and gate/up kernels): lane l adds its chunks
// l, l + 32, l + 64, ... of the row in increasing order, and the loads in flight (kU / R per
// row) only change when the loads are issued. REQUIRES: called by a whole warp (uniform rows).
template <DType T, int NC, int R, bool kXGlobal = true>
__device__ __forceinline__ void v3_rows_dots(const uint8_t* const (&rows)[R], int64_t cols,
                                             const float* __restrict__ x, int n, bool w_vec, bool x_vec,
                                             float (&dots)[R][NC]) {
  using Tr = V3<T>;
  constexpr int kE = Tr::kElems;
  constexpr bool kQuant = T == DType::kQ8_0 || T == kQ8_0Split || T == DType::kQ4_0;
  const int lane = threadIdx.x & 31;
  const int64_t n_chunks = Tr::chunks(cols);
  float acc[R][NC];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < NC; ++j) acc[i][j] = 0.0f;

  constexpr int kU = kV3UnrollOf<T> / R > 0 ? kV3UnrollOf<T> / R : 1;
  bool waited = false;
  for (int64_t c0 = lane; c0 < n_chunks; c0 += kWarpSize * kU) {
    typename Tr::Raw raw[R][kU];
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (rows[i] == nullptr) continue;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t c = c0 + u * kWarpSize;
        if (c < n_chunks) Tr::load(rows[i], c, cols, w_vec, raw[i][u]);
      }
    }
    if (!waited) {  // the first weight loads are in flight: now wait for the kernel that wrote x
      griddep_wait();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t c = c0 + u * kWarpSize;
      if (c >= n_chunks) break;  // c grows with u
      if constexpr (V3Parts<Tr>::value > 1) {
        // Eight elements at a time: the same fma sequence per (row, column) as the whole chunk.
        typename Tr::Prep pr[R] = {};
        float s[R][NC];
#pragma unroll
        for (int i = 0; i < R; ++i) {
          if (rows[i] != nullptr) pr[i] = Tr::prep(raw[i][u], c);
#pragma unroll
          for (int j = 0; j < NC; ++j) s[i][j] = 0.0f;
        }
#pragma unroll
        for (int p = 0; p < V3Parts<Tr>::value; ++p) {
          float wf[R][8];
#pragma unroll
          for (int i = 0; i < R; ++i) {
            if (rows[i] != nullptr) {
              Tr::part(raw[i][u], pr[i], c, p, wf[i]);
            } else {  // never read
#pragma unroll
              for (int e = 0; e < 8; ++e) wf[i][e] = 0.0f;
            }
          }
#pragma unroll
          for (int j = 0; j < NC; ++j) {
            if (j >= n) break;
            float xv[8];
            load_x8_at<kXGlobal>(x + j * cols, Tr::x_first(c, p), cols, x_vec, xv);
#pragma unroll
            for (int i = 0; i < R; ++i) {
              if (rows[i] == nullptr) continue;
#pragma unroll
              for (int e = 0; e < 8; ++e) {
                if constexpr (kQuant) s[i][j] = fmaf(wf[i][e], xv[e], s[i][j]);
                else acc[i][j] = fmaf(wf[i][e], xv[e], acc[i][j]);
              }
            }
          }
        }
        if constexpr (kQuant) {
#pragma unroll
          for (int i = 0; i < R; ++i) {
            if (rows[i] == nullptr) continue;
#pragma unroll
            for (int j = 0; j < NC; ++j) {
              if (j >= n) break;
              acc[i][j] = fmaf(pr[i].d, s[i][j], acc[i][j]);
            }
          }
        }
      } else {
        float wf[R][kE];
        float d[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
          if (rows[i] != nullptr) {
            d[i] = Tr::decode(raw[i][u], c, wf[i]);
          } else {  // a skipped row (past the matrix): never read; zeros keep the compilers quiet
            d[i] = 0.0f;
#pragma unroll
            for (int e = 0; e < kE; ++e) wf[i][e] = 0.0f;
          }
        }
#pragma unroll
        for (int j = 0; j < NC; ++j) {
          if (j >= n) break;
          const float* xj = x + j * cols;
          float xv[kE];
#pragma unroll
          for (int h = 0; h < kE / 8; ++h) load_x8_at<kXGlobal>(xj, Tr::x_first(c, h), cols, x_vec, xv + 8 * h);
#pragma unroll
          for (int i = 0; i < R; ++i) {
            if (rows[i] == nullptr) continue;
            if constexpr (kQuant) {
              float s = 0.0f;
#pragma unroll
              for (int e = 0; e < kE; ++e) s = fmaf(wf[i][e], xv[e], s);
              acc[i][j] = fmaf(d[i], s, acc[i][j]);
            } else {
#pragma unroll
              for (int e = 0; e < kE; ++e) acc[i][j] = fmaf(wf[i][e], xv[e], acc[i][j]);
            }
          }
        }
      }
    }
  }
  if (!waited) griddep_wait();  // a lane without chunks
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < NC; ++j) {
      if (j >= n) break;
      dots[i][j] = warp_sum(acc[i][j]);  // every lane takes part (also for a skipped row)
    }
}

// ---- streamed rows (n = 1; gemv version 5) -----------------------------------------
//
// The dots of one activation row x with the rows a warp takes in turn, each with the chunks,
// order and arithmetic of v3_rows_dots<T, 1, R> (any R: the same bits as every v3 kernel),
// streamed: a row's chunks go in units of kV3UnrollOf<T> a lane, and the loads of the warp's
// next unit (the row's next, or the next row's first) are issued before the current unit is
// computed, so a warp keeps loads in flight while it computes (v3 issues a unit's loads,
// then waits for them; its rows are one per warp, a grid of them). The rows: row_at(k, &ptr)
// gives the k-th row's bytes (k = 0, 1, ...; false past the warp's last); finish(k, dot) gets
// its dot (every lane). griddep_wait() is called once, after the first loads are issued.
// REQUIRES: called by a whole warp (uniform rows); cols > 0.
template <DType T, class RowAt, class Finish>
__device__ __forceinline__ void v3_stream_rows(int64_t cols, const float* __restrict__ x, bool w_vec, bool x_vec,
                                               RowAt&& row_at, Finish&& finish) {
  using Tr = V3<T>;
  using Raw = typename Tr::Raw;
  constexpr int kE = Tr::kElems;
  // Two units' raw chunks are live: half the unroll for the types of 16 and 32 weights a chunk
  // (whose raw chunks are bigger), which changes only when loads issue, not the order of the math.
  constexpr int kU = V3Parts<Tr>::value > 1 ? (kV3UnrollOf<T> / 2 > 0 ? kV3UnrollOf<T> / 2 : 1) : kV3UnrollOf<T>;
  constexpr bool kQuant = T == DType::kQ8_0 || T == kQ8_0Split || T == DType::kQ4_0;
  const int lane = threadIdx.x & 31;
  const int64_t n_chunks = Tr::chunks(cols);
  const int64_t per_unit = static_cast<int64_t>(kWarpSize) * kU;
  const int64_t units = (n_chunks + per_unit - 1) / per_unit;  // a row's
  const uint8_t* row = nullptr;
  if (units == 0 || !row_at(0, &row)) {
    griddep_wait();
    return;
  }
  auto load = [&](const uint8_t* r, int64_t unit, Raw (&raw)[kU]) {
    const int64_t c0 = lane + unit * per_unit;
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t c = c0 + u * kWarpSize;
      if (c < n_chunks) Tr::load(r, c, cols, w_vec, raw[u]);
    }
  };
  float acc = 0.0f;
  auto compute = [&](int64_t unit, const Raw (&raw)[kU]) {
    const int64_t c0 = lane + unit * per_unit;
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t c = c0 + u * kWarpSize;
      if (c >= n_chunks) break;  // c grows with u
      if constexpr (V3Parts<Tr>::value > 1) {  // as v3_rows_dots: eight elements at a time
        const typename Tr::Prep pr = Tr::prep(raw[u], c);
        float s = 0.0f;
#pragma unroll
        for (int p = 0; p < V3Parts<Tr>::value; ++p) {
          float w8[8], x8[8];
          Tr::part(raw[u], pr, c, p, w8);
          load_x8_at<true>(x, Tr::x_first(c, p), cols, x_vec, x8);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            if constexpr (kQuant) s = fmaf(w8[e], x8[e], s);
            else acc = fmaf(w8[e], x8[e], acc);
          }
        }
        if constexpr (kQuant) acc = fmaf(pr.d, s, acc);
      } else {
        float wf[kE], xv[kE];
        const float d = Tr::decode(raw[u], c, wf);
#pragma unroll
        for (int h = 0; h < kE / 8; ++h) load_x8_at<true>(x, Tr::x_first(c, h), cols, x_vec, xv + 8 * h);
        if constexpr (kQuant) {
          float s = 0.0f;
#pragma unroll
          for (int e = 0; e < kE; ++e) s = fmaf(wf[e], xv[e], s);
          acc = fmaf(d, s, acc);
        } else {
#pragma unroll
          for (int e = 0; e < kE; ++e) acc = fmaf(wf[e], xv[e], acc);
        }
      }
    }
  };
  Raw ra[kU], rb[kU];
  int64_t k = 0, unit = 0;  // the unit whose loads are in flight: row k's unit `unit`
  load(row, 0, ra);
  griddep_wait();  // the first loads are in flight: now wait for the kernel that wrote x
  // One unit: the next one's loads into `next`, then this one's math from `cur`. False when
  // this was the warp's last unit.
  auto step = [&](const Raw (&cur)[kU], Raw (&next)[kU]) {
    int64_t nk = k, nunit = unit + 1;
    const uint8_t* nrow = row;
    if (nunit == units) nk = k + 1, nunit = 0;
    const bool more = nunit > 0 || row_at(nk, &nrow);
    if (more) load(nrow, nunit, next);
    compute(unit, cur);
    if (unit == units - 1) {
      finish(k, warp_sum(acc));  // every lane takes part
      acc = 0.0f;
    }
    k = nk, unit = nunit, row = nrow;
    return more;
  };
  while (step(ra, rb) && step(rb, ra)) {
  }
}

// Rows per warp of the v3 kernels for NC activation rows: 1 for one (decode at batch 1 is
// bound by the weight bytes: the more warps the better), 2 for more (bound by the x loads).
// Setting kV3BatchedRows to 1 gives the one-row-per-warp kernels back, bit for bit.
constexpr int kV3BatchedRows = 2;
template <int NC>
constexpr int kV3Rows = NC > 1 ? kV3BatchedRows : 1;

// A RoPE pair of gemv_v3_qkv_rope_kernel's: matrix m (0 Q, 1 K, 2 V), pair p within its head,
// whether it rotates, and its two rows ra, rb.
struct QkvPair {
  int m, p;
  bool rotate;
  int64_t ra, rb;
};

// Pair gp of the concatenated pairs [Q heads' | K heads' | V's]; false past the last one.
__device__ __forceinline__ bool qkv_pair_at(const GemvQkv& a, const GemvQkvRope& rp, int64_t gp, QkvPair* q) {
  const int hd = rp.head_dim, half_pairs = hd / 2, rot_pairs = rp.n_rot / 2;
  int64_t lp = gp;
  int m = 0;
  while (m < 3 && lp >= a.rows[m] / 2) {
    lp -= a.rows[m] / 2;
    ++m;
  }
  if (m == 3) return false;
  const int64_t head = lp / half_pairs;
  const int p = static_cast<int>(lp - head * half_pairs);
  const bool rotate = m < 2 && p < rot_pairs;
  int ea, eb;  // the pair's elements within the head
  if (m == 2) {
    ea = 2 * p, eb = ea + 1;
  } else if (rotate) {
    ea = rp.neox ? p : 2 * p;
    eb = rp.neox ? p + rot_pairs : 2 * p + 1;
  } else {
    ea = rp.n_rot + 2 * (p - rot_pairs), eb = ea + 1;
  }
  *q = QkvPair{m, p, rotate, head * hd + ea, head * hd + eb};
  return true;
}

// Token j's end of pair q from its two dots (lane j does it): the bias add of add_bias,
// rope_store_kv's rotation (rope_angle / rope_rotate in double) and its kv_put.
template <class KvT>
__device__ __forceinline__ void qkv_pair_finish(const GemvQkv& a, const GemvQkvRope& rp, const QkvPair& q, int j,
                                                float da, float db) {
  const int64_t rows = a.rows[q.m];
  const float* bias = a.bias[q.m];
  float* y = a.y[q.m];
  float e[2] = {da, db};
  if (bias) {
    e[0] = e[0] + bias[q.ra];
    e[1] = e[1] + bias[q.rb];
  }
  if (q.rotate) {
    double sn, cs;
    rope_angle(rp.pos[j], q.p, rp.n_rot, rp.freq_base, rp.freq_scale, &sn, &cs);
    rope_rotate(e, 0, 1, sn, cs);
  }
  y[j * rows + q.ra] = e[0];
  y[j * rows + q.rb] = e[1];
  if (q.m > 0) {
    KvT* cache = static_cast<KvT*>(q.m == 1 ? rp.k_cache : rp.v_cache);
    const int64_t dst = static_cast<int64_t>(rp.slots[j]) * a.rows[1];
    kv_put(cache + dst + q.ra, e[0]);
    kv_put(cache + dst + q.rb, e[1]);
  }
}

// One warp of gemv_v3_qkv_rope_kernel (gemv_kernels.cuh): the dots of RoPE pair gp (its two
// rows' dots from v3_rows_dots with R = 2: the instructions of each row are those of
// gemv_qkv), then lane j < n finishes token j (qkv_pair_finish). Past the last pair: returns at
// once, writing nothing. kXGlobal: as v3_rows_dots. REQUIRES: called by a whole warp.
template <DType T, int NC, class KvT, bool kXGlobal = true>
__device__ __forceinline__ void qkv_rope_pair(const GemvQkv& a, const GemvQkvRope& rp, size_t row_stride,
                                              int64_t cols, const float* __restrict__ x, int n, bool w_vec,
                                              bool x_vec, int64_t gp) {
  const int lane = threadIdx.x & 31;
  QkvPair q;
  if (!qkv_pair_at(a, rp, gp, &q)) return;  // uniform per warp (writes nothing, so needs no griddep_wait)
  const auto* w = static_cast<const uint8_t*>(a.w[q.m]);
  const uint8_t* row_ptrs[2] = {w + q.ra * static_cast<int64_t>(row_stride), w + q.rb * static_cast<int64_t>(row_stride)};
  float dots[2][NC] = {};
  v3_rows_dots<T, NC, 2, kXGlobal>(row_ptrs, cols, x, n, w_vec, x_vec, dots);
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    if (j >= n || j != lane) continue;
    qkv_pair_finish<KvT>(a, rp, q, j, dots[0][j], dots[1][j]);
  }
}

}  // namespace ds::cuda::v3
