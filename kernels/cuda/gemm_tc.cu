// kernels/cuda/gemm_tc.cu: y[n, rows] = x[n, cols] * W^T for the small batches between the
// GEMV's (n <= kGemvMaxN) and a real GEMM's (decode at batch 9..32), on the tensor cores,
// reading each weight byte once per call and dequantizing it on the chip.
//
// Why: cuBLAS needs F16 operands, so for a quantized matrix the cuBLAS path first writes the
// whole matrix dequantized to F16 (reading 1.06 bytes and writing 2 per Q8_0 weight, which
// cuBLAS then reads again), and a GEMV launch serves at most 8 activation rows (n = 32 is
// four passes over the weights). Here a warp stages a tile of its 32 rows' raw bytes in
// shared memory with asynchronous copies, dequantizes 32 x 16 weights at a time to F16 (the
// exact values cuBLAS's F16 operand would hold: load_elem, then round to nearest even) and
// multiplies them with every activation row in m32n8k16 WMMA steps (F32 accumulation).
//
// Layout: a block is kTcWarps warps on the same 32 weight rows (row group g); warp w of the
// block of group g and column split s takes the segments (KT columns each) (s * kTcWarps + w)
// * spw ... + spw - 1, so the block covers a contiguous column range; the warps' sums are
// added in warp order through shared memory, and the S column splits' partial sums of a row
// either go straight to y (S = 1) or to a workspace that the row group's last block to finish
// adds in split order (an arrival counter per group). S and spw depend on the matrix shape
// only, never on n: every y element is computed by the same operations whatever the batch, so
// a sequence decoded in a batch of 9..32 gets the bits it gets in any other batch of 9..32.
//
// Activations: x rounded to F16 (as the cuBLAS path does) into a buffer of ceil(n / 8) * 8
// rows, the padding rows zero, by tc_prepare (which also zeroes the arrival counters); WMMA
// reads it (column-major B, ldm = cols) from global memory, where it stays in L1/L2 (it is
// small and every block reads it). Two launches a call.
//
// Reference: ref::matmul; differences are those of F16 operands (relative 2^-11 per
// operand), like the cuBLAS F16 path.
#include <cuda_pipeline.h>
#include <mma.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace ds::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kTcWarps = 4;
constexpr int kTcRows = 32;                // weight rows per block (the WMMA tile's M)
constexpr int kTcTileBytes = 8192;         // raw bytes one warp stages per segment (32 rows)
constexpr int kTcTargetBlocks = 264;       // enough blocks to keep every SM of an H100/H200 busy

// Columns per segment, so that 32 rows' bytes fit kTcTileBytes and segments start on the
// type's block boundaries. Split Q8_0 rows stage their quants only (tc_row_bytes); the
// dequantizing lane reads its row's scales from global memory.
template <DType T>
__host__ __device__ constexpr int tc_segment_cols() {
  return T == DType::kF16 || T == DType::kQ8_0 || T == kQ8_0Split ? 128 : 256;  // 256, 136, 128, 144 (Q4_0, Q4_K) bytes a row
}
template <DType T>
__host__ __device__ constexpr int64_t tc_row_bytes(int64_t cols) {
  if constexpr (T == DType::kF16) return cols * 2;
  else if constexpr (T == DType::kQ8_0) return cols / 32 * kQ8_0Bytes;
  else if constexpr (T == kQ8_0Split) return cols;  // the quants
  else if constexpr (T == DType::kQ4_0) return cols / 32 * kQ4_0Bytes;
  else return cols / 256 * kQ4_KBytes;
}

// Copies rows [r0, r0 + 32) (row indices clamped to rows - 1) of bytes [off, off + bytes) into
// dst (pitch bytes a row) with g-byte asynchronous copies spread over the warp's lanes.
template <int G>
__device__ __forceinline__ void tc_stage(uint8_t* dst, int pitch, const uint8_t* w, size_t row_stride, int64_t rows,
                                         int64_t r0, size_t off, int bytes, int lane) {
  const int per_row = bytes / G;
  for (int f = lane; f < kTcRows * per_row; f += 32) {
    const int rr = f / per_row, c = f % per_row;
    const int64_t r = r0 + rr < rows ? r0 + rr : rows - 1;
    __pipeline_memcpy_async(dst + rr * pitch + c * G, w + r * static_cast<int64_t>(row_stride) + off + c * G, G);
  }
  __pipeline_commit();
  __pipeline_wait_prior(0);
}

// A block's shared memory: each warp's raw tile and F16 weight tile.
struct alignas(128) TcShared {
  uint8_t raw[kTcWarps][kTcTileBytes];
  __half a_tile[kTcWarps][kTcRows * 16];
};

// xh[j, k] = x[j, k] rounded to F16 for j < n, 0 for n <= j < n_pad; and the row groups'
// arrival counters zeroed (the tensor-core kernel's last block of a group adds the splits).
__global__ void tc_prepare(const float* __restrict__ x, int n, int n_pad, int64_t cols, uint16_t* __restrict__ xh,
                           unsigned* __restrict__ counters, int groups) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < static_cast<int64_t>(n_pad) * cols) xh[idx] = idx < static_cast<int64_t>(n) * cols ? f32_to_f16_bits(x[idx]) : 0;
  if (counters != nullptr && idx < groups) counters[idx] = 0;
}

// One matrix of a launch (the matrices of one launch share x, type and column count).
struct TcPart {
  const uint8_t* w = nullptr;
  int64_t rows = 0;
  float* y = nullptr;
  float* ws = nullptr;            // splits > 1: partial sums [splits][n][rows]
  unsigned* counters = nullptr;   // splits > 1: an arrival counter per row group
  int groups = 0, splits = 1, spw = 1;
  int first_block = 0;            // its blocks are [first_block, first_block + groups * splits)
};
struct TcArgs {
  TcPart part[kGemmTcMaxParts];
  int parts = 0;
  size_t row_stride = 0;
  int64_t cols = 0;
  const __half* xh = nullptr;
  int n = 0;
  int copy_bytes = 4;
  bool add = false;
  L2Prefetch pf;  // the next op's weights: each block's share asked of L2 at its start (ops.cuh)
};

// Block b of a part takes row group b % groups and column split b / groups. With splits > 1,
// each block writes its partial sums to ws[split][j][r]; the last block of a row group to
// arrive (an atomic counter per group, zeroed by tc_prepare) adds them in split order into y.
template <DType T, int NT>
__global__ void __launch_bounds__(kTcWarps * 32) gemm_tc_kernel(const TcArgs args) {
  l2_prefetch_share(args.pf);
  int q = 0;
  while (q + 1 < args.parts && static_cast<int>(blockIdx.x) >= args.part[q + 1].first_block) ++q;
  const TcPart P = args.part[q];
  const uint8_t* __restrict__ w = P.w;
  const size_t row_stride = args.row_stride;
  const int64_t rows = P.rows, cols = args.cols;
  const __half* __restrict__ xh = args.xh;
  const int n = args.n, spw = P.spw, groups = P.groups, splits = P.splits, copy_bytes = args.copy_bytes;
  float* __restrict__ y = P.y;
  float* __restrict__ ws = P.ws;
  const bool add = args.add;
  const int b = static_cast<int>(blockIdx.x) - P.first_block;
  constexpr int KT = tc_segment_cols<T>();
  // Staged bytes a row; split Q8_0's 128-byte rows get 16 bytes of padding, so that the lanes'
  // 16-byte reads of their rows (lane l at l * 144) fall in distinct banks (at a pitch of 128
  // every lane's row starts in the same bank).
  constexpr int kPitch = T == kQ8_0Split ? tc_row_bytes<T>(KT) + 16 : (tc_row_bytes<T>(KT) + 15) / 16 * 16;
  static_assert(kPitch * kTcRows <= kTcTileBytes, "a segment's 32 rows must fit the tile");
  static_assert(kTcWarps * NT * 8 * kTcRows * 4 <= kTcWarps * kTcTileBytes, "the reduction reuses the tiles");
  __shared__ TcShared sm;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = b / groups;
  const int64_t r0 = static_cast<int64_t>(b % groups) * kTcRows;
  const int64_t n_seg = (cols + KT - 1) / KT;

  wmma::fragment<wmma::accumulator, 32, 8, 16, float> acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) wmma::fill_fragment(acc[t], 0.0f);
  uint8_t* my_raw = sm.raw[warp];
  __half* my_a = sm.a_tile[warp];
  for (int i = 0; i < spw; ++i) {
    const int64_t seg = (static_cast<int64_t>(split) * kTcWarps + warp) * spw + i;
    if (seg >= n_seg) break;  // warp-uniform
    const int64_t k0 = seg * KT;
    const int kc = static_cast<int>(cols - k0 < KT ? cols - k0 : KT);  // a multiple of 16
    const size_t off = static_cast<size_t>(tc_row_bytes<T>(k0));
    const int bytes = static_cast<int>(tc_row_bytes<T>(kc));
    // Split Q8_0: the lane's row's scales of this segment (kc / 32 <= 4 blocks), from global
    // memory, asked for before the staging wait (load_elem's d * q from the staged quants and
    // these; until the 16th session one dependent global load every step).
    float dseg[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if constexpr (T == kQ8_0Split) {
      static_assert(KT / 32 == 4, "a segment of split Q8_0 is 4 blocks");
      const int64_t r = r0 + lane < rows ? r0 + lane : rows - 1;
      const uint16_t* my_scales = reinterpret_cast<const uint16_t*>(w + r * static_cast<int64_t>(row_stride) + cols) + k0 / 32;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (32 * i < kc) dseg[i] = f16_to_f32(__ldg(my_scales + i));
    }
    if (copy_bytes == 16) tc_stage<16>(my_raw, kPitch, w, row_stride, rows, r0, off, bytes, lane);
    else if (copy_bytes == 8) tc_stage<8>(my_raw, kPitch, w, row_stride, rows, r0, off, bytes, lane);
    else tc_stage<4>(my_raw, kPitch, w, row_stride, rows, r0, off, bytes, lane);
    __syncwarp();
    const uint8_t* my_row = my_raw + lane * kPitch;  // lane = the row it dequantizes
    for (int ks = 0; ks < kc / 16; ++ks) {
      uint32_t packed[8];
      if constexpr (T == kQ8_0Split) {
        const int blk = ks / 2;  // selects, not an indexed register array (that would go to local memory)
        const float d = blk == 0 ? dseg[0] : blk == 1 ? dseg[1] : blk == 2 ? dseg[2] : dseg[3];
        const uint4 v = *reinterpret_cast<const uint4*>(my_row + ks * 16);  // the step's 16 quants, one read
        const uint32_t q4[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const uint32_t word = q4[e / 2];
          const int sh = 16 * (e % 2);
          const uint32_t lo = f32_to_f16_bits(d * static_cast<float>(static_cast<int8_t>((word >> sh) & 0xffu)));
          const uint32_t hi = f32_to_f16_bits(d * static_cast<float>(static_cast<int8_t>((word >> (sh + 8)) & 0xffu)));
          packed[e] = lo | (hi << 16);
        }
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const uint32_t lo = f32_to_f16_bits(load_elem<T>(my_row, ks * 16 + 2 * e, kc));
          const uint32_t hi = f32_to_f16_bits(load_elem<T>(my_row, ks * 16 + 2 * e + 1, kc));
          packed[e] = lo | (hi << 16);
        }
      }
      uint4* dst = reinterpret_cast<uint4*>(my_a + lane * 16);
      dst[0] = uint4{packed[0], packed[1], packed[2], packed[3]};
      dst[1] = uint4{packed[4], packed[5], packed[6], packed[7]};
      __syncwarp();
      wmma::fragment<wmma::matrix_a, 32, 8, 16, __half, wmma::row_major> a;
      wmma::load_matrix_sync(a, my_a, 16);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        wmma::fragment<wmma::matrix_b, 32, 8, 16, __half, wmma::col_major> b;
        wmma::load_matrix_sync(b, xh + static_cast<int64_t>(t) * 8 * cols + k0 + ks * 16, static_cast<unsigned>(cols));
        wmma::mma_sync(acc[t], a, b, acc[t]);
      }
      __syncwarp();  // my_a is rewritten next step
    }
  }

  // The warps' partial sums, added in warp order: red[warp][j][i] for activation row j and
  // weight row r0 + i.
  __syncthreads();  // every warp is done with its raw tile
  float* red = reinterpret_cast<float*>(&sm.raw[0][0]);
  constexpr int kPerWarp = NT * 8 * kTcRows;
#pragma unroll
  for (int t = 0; t < NT; ++t)
    wmma::store_matrix_sync(red + warp * kPerWarp + t * 8 * kTcRows, acc[t], kTcRows, wmma::mem_col_major);
  __syncthreads();
  const int64_t total = static_cast<int64_t>(n) * rows;
  for (int o = threadIdx.x; o < kPerWarp; o += kTcWarps * 32) {
    const int j = o / kTcRows, ii = o % kTcRows;
    const int64_t r = r0 + ii;
    if (j >= n || r >= rows) continue;
    float s = red[o];
#pragma unroll
    for (int q = 1; q < kTcWarps; ++q) s += red[q * kPerWarp + o];
    const int64_t at = static_cast<int64_t>(j) * rows + r;
    if (splits == 1) y[at] = add ? y[at] + s : s;
    else ws[split * total + at] = s;
  }
  if (splits == 1) return;
  // The last block of this row group adds the splits' partial sums, in split order.
  __shared__ bool last;
  __threadfence();  // this block's partial sums are visible before it counts itself in
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&P.counters[b % groups], 1u) == static_cast<unsigned>(splits - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int o = threadIdx.x; o < NT * 8 * kTcRows; o += kTcWarps * 32) {
    const int j = o / kTcRows, ii = o % kTcRows;
    const int64_t r = r0 + ii;
    if (j >= n || r >= rows) continue;
    const int64_t at = static_cast<int64_t>(j) * rows + r;
    float s = __ldcg(ws + at);
    for (int q = 1; q < splits; ++q) s += __ldcg(ws + q * total + at);
    y[at] = add ? y[at] + s : s;
  }
}

template <DType T>
int tc_segments(int64_t cols) {
  return static_cast<int>((cols + tc_segment_cols<T>() - 1) / tc_segment_cols<T>());
}

// The split of a rows x cols matrix (shape only): segments per warp and column splits.
template <DType T>
void tc_split(int64_t rows, int64_t cols, int* spw, int* splits) {
  const int64_t n_seg = tc_segments<T>(cols), groups = (rows + kTcRows - 1) / kTcRows;
  const int64_t max_splits = (n_seg + kTcWarps - 1) / kTcWarps;
  const int64_t want = std::clamp<int64_t>((kTcTargetBlocks + groups - 1) / groups, 1, max_splits);
  *spw = static_cast<int>((n_seg + kTcWarps * want - 1) / (kTcWarps * want));
  *splits = static_cast<int>((n_seg + static_cast<int64_t>(kTcWarps) * *spw - 1) / (static_cast<int64_t>(kTcWarps) * *spw));
}

template <DType T, int NT>
cudaError_t launch_tc(const TcArgs& args, int blocks, cudaStream_t stream) {
  auto* kernel = gemm_tc_kernel<T, NT>;
  DS_LAUNCH(kernel, static_cast<unsigned>(blocks), kTcWarps * 32, 0, stream)(args);
  return cudaGetLastError();
}

// The scratch layout of a call: x in F16, then each part's partial sums (splits > 1), then
// every part's arrival counters. Returns the bytes; fills args' parts when args is non-null.
template <DType T>
size_t tc_layout(const GemmTcMatrix* m, int count, int64_t cols, int n, void* scratch, TcArgs* args) {
  size_t off = gemm_tc_x_bytes(cols, n), counters = 0;
  TcPart parts[kGemmTcMaxParts];
  int block = 0;
  for (int i = 0; i < count; ++i) {
    TcPart& p = parts[i];
    p.w = static_cast<const uint8_t*>(m[i].w);
    p.rows = m[i].rows;
    p.y = m[i].y;
    p.groups = static_cast<int>((m[i].rows + kTcRows - 1) / kTcRows);
    tc_split<T>(m[i].rows, cols, &p.spw, &p.splits);
    p.first_block = block;
    block += p.groups * p.splits;
    if (p.splits > 1) {
      if (scratch) p.ws = reinterpret_cast<float*>(static_cast<uint8_t*>(scratch) + off);
      off += static_cast<size_t>(p.splits) * n * m[i].rows * sizeof(float);
      counters += static_cast<size_t>(p.groups);
    }
  }
  size_t c = 0;
  for (int i = 0; i < count; ++i) {
    if (parts[i].splits > 1 && scratch) parts[i].counters = reinterpret_cast<unsigned*>(static_cast<uint8_t*>(scratch) + off) + c;
    if (parts[i].splits > 1) c += static_cast<size_t>(parts[i].groups);
  }
  if (args) {
    for (int i = 0; i < count; ++i) args->part[i] = parts[i];
    args->parts = count;
  }
  return off + counters * sizeof(unsigned);
}

template <DType T>
cudaError_t gemm_tc_typed(const GemmTcMatrix* m, int count, size_t row_stride, int64_t cols, const float* x, int n,
                          bool add, void* scratch, cudaStream_t stream, const L2Prefetch* l2) {
  TcArgs a;
  if (l2) a.pf = *l2;
  tc_layout<T>(m, count, cols, n, scratch, &a);
  a.row_stride = row_stride;
  a.cols = cols;
  a.n = n;
  a.add = add;
  a.xh = static_cast<const __half*>(scratch);
  const int nt = (n + 7) / 8;
  int blocks = 0, n_counters = 0;
  unsigned* counters = nullptr;
  for (int i = 0; i < count; ++i) {
    blocks += a.part[i].groups * a.part[i].splits;
    if (a.part[i].splits > 1) {
      if (!counters) counters = a.part[i].counters;
      n_counters += a.part[i].groups;
    }
  }
  // x -> F16 rows [0, n), zero rows [n, 8 * nt); the counters (contiguous) zeroed.
  const int64_t prep = std::max<int64_t>(static_cast<int64_t>(8 * nt) * cols, n_counters);
  DS_LAUNCH(tc_prepare, static_cast<unsigned>((prep + 255) / 256), 256, 0, stream)(
      x, n, 8 * nt, cols, static_cast<uint16_t*>(scratch), counters, n_counters);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  int copy = 16;
  const size_t seg_bytes = static_cast<size_t>(tc_row_bytes<T>(tc_segment_cols<T>()));
  const size_t last_bytes = static_cast<size_t>(tc_row_bytes<T>(cols - static_cast<int64_t>(tc_segments<T>(cols) - 1) *
                                                                           tc_segment_cols<T>()));
  auto misaligned = [&](int g) {
    for (int i = 0; i < count; ++i)
      if (reinterpret_cast<uintptr_t>(m[i].w) % g) return true;
    return row_stride % g || seg_bytes % g || last_bytes % g;
  };
  while (copy > 4 && misaligned(copy)) copy /= 2;
  a.copy_bytes = copy;
  switch (nt) {
    case 2: return launch_tc<T, 2>(a, blocks, stream);
    case 3: return launch_tc<T, 3>(a, blocks, stream);
    case 4: return launch_tc<T, 4>(a, blocks, stream);
    default: return launch_tc<T, 1>(a, blocks, stream);
  }
}

}  // namespace

bool gemm_tc_supports(DType t, const void* w, size_t row_stride, int64_t cols, int n) {
  if (n < 1 || n > kGemmTcMaxN || cols <= 0) return false;
  switch (t) {
    case DType::kF16: if (cols % 16 != 0) return false; break;
    case DType::kQ8_0: case kQ8_0Split: case DType::kQ4_0: if (cols % 32 != 0) return false; break;
    case DType::kQ4_K: if (cols % 256 != 0) return false; break;
    default: return false;
  }
  // 4-byte asynchronous copies at least: the matrix and its rows 4-byte aligned (segments
  // are then too: 256, 136 or 144 bytes a row, and the last one's bytes a multiple of 4).
  return reinterpret_cast<uintptr_t>(w) % 4 == 0 && row_stride % 4 == 0;
}

size_t gemm_tc_x_bytes(int64_t cols, int n) {
  return (static_cast<size_t>((n + 7) / 8) * 8 * static_cast<size_t>(cols) * sizeof(__half) + 255) / 256 * 256;
}

size_t gemm_tc_scratch_bytes(DType t, const GemmTcMatrix* m, int count, int64_t cols, int n) {
  switch (t) {
    case DType::kF16: return tc_layout<DType::kF16>(m, count, cols, n, nullptr, nullptr);
    case DType::kQ8_0: return tc_layout<DType::kQ8_0>(m, count, cols, n, nullptr, nullptr);
    case kQ8_0Split: return tc_layout<kQ8_0Split>(m, count, cols, n, nullptr, nullptr);
    case DType::kQ4_0: return tc_layout<DType::kQ4_0>(m, count, cols, n, nullptr, nullptr);
    default: return tc_layout<DType::kQ4_K>(m, count, cols, n, nullptr, nullptr);
  }
}

cudaError_t gemm_tc(DType t, const GemmTcMatrix* m, int count, size_t row_stride, int64_t cols, const float* x, int n,
                    bool add, void* scratch, cudaStream_t stream, const L2Prefetch* l2) {
  if (count < 1 || count > kGemmTcMaxParts) return cudaErrorInvalidValue;
  switch (t) {
    case DType::kF16: return gemm_tc_typed<DType::kF16>(m, count, row_stride, cols, x, n, add, scratch, stream, l2);
    case DType::kQ8_0: return gemm_tc_typed<DType::kQ8_0>(m, count, row_stride, cols, x, n, add, scratch, stream, l2);
    case kQ8_0Split: return gemm_tc_typed<kQ8_0Split>(m, count, row_stride, cols, x, n, add, scratch, stream, l2);
    case DType::kQ4_0: return gemm_tc_typed<DType::kQ4_0>(m, count, row_stride, cols, x, n, add, scratch, stream, l2);
    case DType::kQ4_K: return gemm_tc_typed<DType::kQ4_K>(m, count, row_stride, cols, x, n, add, scratch, stream, l2);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace ds::cuda
