// tests/gpu/emu/emu.cc: the CPU emulation behind tests/gpu/emu/include (see cuda_runtime.h
// there): block-by-block launches in which every CUDA thread is a fiber (a stack of its
// own stack) of one OS thread, scheduled cooperatively: __syncthreads() and the warp
// shuffles are barriers at which a fiber yields until the block's (or warp's) other threads
// arrive. Host memory is device memory; cublasGemmEx is a column-major reference.
//
// Fibers instead of one OS thread per CUDA thread (the first version): a barrier costs a few
// context switches in user space instead of a futex wake-up of every thread, which made the
// kernel check ~10x slower and a whole engine run impractical.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <algorithm>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define DS_EMU_ASAN 1
#endif

#include "cublas_v2.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace emu {
namespace {

#if defined(DS_EMU_ASAN)
constexpr size_t kStackBytes = size_t{1} << 20;  // ASan's redzones make frames larger
#else
constexpr size_t kStackBytes = size_t{256} << 10;
#endif

// A fiber switch without system calls (swapcontext saves and restores the signal mask with
// one: half of the emulation's time went there): switch_stack() pushes the callee-saved
// registers on the running stack, stores its stack pointer in *from, loads `to` and pops the
// registers saved there, then returns into that fiber. x86-64 System V only.
extern "C" void ds_emu_switch_stack(void** from, void* to);
asm(R"(
  .text
  .globl ds_emu_switch_stack
  .type ds_emu_switch_stack, @function
ds_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ds_emu_switch_stack, .-ds_emu_switch_stack
  .section .note.GNU-stack,"",@progbits
  .text
)");

struct Fiber {
  void* sp = nullptr;  // the saved stack pointer while switched out
  std::unique_ptr<char[]> stack;
  bool done = false;
  void* fake = nullptr;  // ASan's fake stack while switched out
};

// A barrier among `n` fibers: the last to arrive opens it (next generation).
struct Barrier {
  unsigned n = 0, arrived = 0;
  uint64_t gen = 0;
};

struct Warp {
  Barrier bar;
  float slot[32] = {};
  unsigned uslot[32] = {};
  struct MmaIn {
    uint32_t a[4], b[2];
    float c[4];
  } mma[32] = {};
};

// The running launch (launches are serialized: __shared__ variables are function statics).
// A plain launch runs its blocks one after another (`slots` = 1: one block's fibers, barrier,
// warps and shared memory, reused); a cooperative launch runs all of them at once (`slots` =
// grid: fiber f is thread f % block of block f / block), so that a grid-wide barrier
// (common.cuh's grid_sync, spinning in spin_wait()) can open. Kernels of cooperative launches
// use dynamic shared memory only (a __shared__ static would be shared by every block).
struct GridState {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;  // slots * block; stacks kept across launches
  void* sched = nullptr;      // the scheduler's saved stack pointer (the launching thread's stack)
  unsigned current = 0;       // the fiber running
  unsigned live = 0;          // fibers of the current block(s) that have not returned
  unsigned block = 0, warps_per_block = 0, slots = 1;
  size_t shm = 0;
  std::vector<Barrier> block_bars;   // [slots]
  std::vector<Warp> warps;           // [slots * warps_per_block]
  std::vector<unsigned char> shared; // [slots * shm]
  uint64_t spins = 0;                // spin_wait() calls (a cooperative launch's progress)
  void* sched_fake = nullptr;  // ASan bookkeeping of the scheduler's stack
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;

  unsigned slot() const { return current / block; }
  Barrier& block_bar() { return block_bars[slot()]; }
  Warp& warp() { return warps[slot() * warps_per_block + (current % block) / 32]; }
};

GridState g_launch;
std::mutex g_launch_mu;
int64_t g_launches = 0;
cudaError_t g_last_error = cudaSuccess;

void set_error(cudaError_t e) {
  if (g_last_error == cudaSuccess) g_last_error = e;
}

// The running fiber -> the scheduler; returns when the scheduler resumes it.
void yield() {
  GridState& L = g_launch;
  Fiber& f = L.fibers[L.current];
#if defined(DS_EMU_ASAN)
  __sanitizer_start_switch_fiber(&f.fake, L.sched_bottom, L.sched_size);
#endif
  ds_emu_switch_stack(&f.sp, L.sched);
#if defined(DS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(f.fake, nullptr, nullptr);
#endif
}

void wait_at(Barrier& b) {
  const uint64_t gen = b.gen;
  if (++b.arrived == b.n) {
    b.arrived = 0;
    ++b.gen;
    return;
  }
  while (b.gen == gen) yield();
}

// A CUDA thread: the kernel body once per block of the launch; between blocks it waits in
// yield() until the scheduler starts the next block (after the last one it is dropped).
void fiber_main() {
  GridState& L = g_launch;
#if defined(DS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &L.sched_bottom, &L.sched_size);
#endif
  for (;;) {
    (*L.body)();
    L.fibers[L.current].done = true;
    --L.live;
    yield();
  }
}

}  // namespace

namespace {

// Runs `body` for blocks [first, first + slots) of the launch at once (round-robin passes
// over their fibers); aborts on a barrier that some thread will never reach.
void run_blocks(unsigned first, unsigned grid) {
  GridState& L = g_launch;
  ThreadCoords& c = coords();
  const unsigned n = L.slots * L.block;
  for (unsigned f = 0; f < n; ++f) L.fibers[f].done = false;
  L.live = n;
  for (Barrier& b : L.block_bars) b = Barrier{L.block, 0, 0};
  for (unsigned w = 0; w < L.warps.size(); ++w) {
    const unsigned wb = w % L.warps_per_block;
    L.warps[w].bar = Barrier{std::min(32u, L.block - 32 * wb), 0, 0};
  }
  auto progress = [&] {
    uint64_t g = 0;
    for (const Barrier& b : L.block_bars) g += b.gen;
    for (const Warp& w : L.warps) g += w.bar.gen;
    return g;
  };
  int spin_only = 0;  // passes in a row in which threads only polled a grid barrier
  // Several blocks at once (cooperative): blocks must not keep in step as round-robin passes
  // would keep them (a missing grid barrier would go unseen), so block b runs in one pass of
  // 1, 2 or 3 (b + launch number, mod 3): between two grid barriers the fastest block does
  // three times the work of the slowest, and reads what the slowest has not yet written
  // unless a barrier is between. Every pass divisible by 6 runs them all.
  std::vector<unsigned> period(L.slots, 1);
  for (unsigned b = 0; b < L.slots; ++b) period[b] = L.slots == 1 ? 1 : 1 + (b + g_launches) % 3;
  for (uint64_t pass = 0; L.live > 0; ++pass) {
    const bool every = pass % 6 == 0;
    const unsigned live_before = L.live;
    const uint64_t before = progress(), spins_before = L.spins;
    for (unsigned f = 0; f < n; ++f) {
      if (L.fibers[f].done || (!every && pass % period[f / L.block] != 0)) continue;
      L.current = f;
      c.block_idx = {first + f / L.block, 0, 0};
      c.thread_idx = {f % L.block, 0, 0};
#if defined(DS_EMU_ASAN)
      __sanitizer_start_switch_fiber(&L.sched_fake, L.fibers[f].stack.get(), kStackBytes);
#endif
      ds_emu_switch_stack(&L.sched, L.fibers[f].sp);
#if defined(DS_EMU_ASAN)
      __sanitizer_finish_switch_fiber(L.sched_fake, nullptr, nullptr);
#endif
    }
    // Every live fiber ran, none returned and no barrier opened: each waits at a barrier that
    // a thread of its block or warp will never reach (it returned), or at a grid barrier that
    // some block never reaches (or, in a plain launch, whose other blocks never run
    // meanwhile). Undefined on a GPU; a hang here.
    if (every && L.live == live_before && progress() == before) {
      // A grid barrier opens within a pass or two of its last arrival; polls without end
      // mean blocks wait at different barriers (or one returned).
      if (L.spins != spins_before && ++spin_only < 1000) continue;
      std::fprintf(stderr, "emu: block %u of a launch of %u x %u threads: a barrier that not every thread reaches%s\n",
                   first, grid, L.block, L.spins != spins_before ? " (a grid barrier)" : "");
      std::abort();
    }
    spin_only = 0;
  }
}

void launch(unsigned grid, unsigned block, size_t shm, const std::function<void()>& body, bool cooperative) {
  std::lock_guard<std::mutex> lock(g_launch_mu);
  ++g_launches;
  const unsigned slots = cooperative ? grid : 1;
  if (grid == 0 || block == 0 || block > 1024 || shm > 48 * 1024 || (cooperative && grid * block > 8192)) {
    std::fprintf(stderr, "emu: invalid launch configuration grid=%u block=%u shm=%zu%s\n", grid, block, shm,
                 cooperative ? " (cooperative)" : "");
    set_error(cudaErrorInvalidValue);
    return;
  }
  GridState& L = g_launch;
  L.body = &body;
  L.block = block;
  L.slots = slots;
  L.shm = (shm + 255) / 256 * 256;  // each block's dynamic shared memory 256-byte aligned, as on a GPU
  L.warps_per_block = (block + 31) / 32;
  const unsigned n = slots * block;
  if (L.fibers.size() < n) {
    std::vector<Fiber> more(n);
    for (size_t i = 0; i < L.fibers.size(); ++i) more[i].stack = std::move(L.fibers[i].stack);
    for (auto& f : more)
      if (!f.stack) f.stack.reset(new char[kStackBytes]);
    L.fibers = std::move(more);
  }
  L.block_bars.assign(slots, Barrier{});
  L.warps.assign(static_cast<size_t>(slots) * L.warps_per_block, Warp{});
  L.shared.assign(slots * L.shm, 0xff);
  L.spins = 0;
  ThreadCoords& c = coords();
  c.block_dim = {block, 1, 1};
  c.grid_dim = {grid, 1, 1};
  for (unsigned f = 0; f < n; ++f) {  // fiber_main runs the body once per block
    Fiber& fb = L.fibers[f];
    // A fresh stack for fiber_main (which never returns): its entry address for the switch's
    // ret, six zero registers for its pops, and a 16-byte aligned top so that fiber_main
    // starts with the stack a call would give it (rsp = 8 mod 16).
    auto top = reinterpret_cast<uintptr_t>(fb.stack.get() + kStackBytes) & ~uintptr_t{15};
    auto* frame = reinterpret_cast<void**>(top) - 8;
    for (int i = 0; i < 6; ++i) frame[i] = nullptr;
    frame[6] = reinterpret_cast<void*>(&fiber_main);
    frame[7] = nullptr;  // fiber_main's (never used) return address
    fb.sp = frame;
  }
  for (unsigned first = 0; first < grid; first += slots) {
    if (first > 0 && !L.shared.empty()) std::memset(L.shared.data(), 0xff, L.shared.size());  // undefined between blocks
    run_blocks(first, grid);
  }
  L.body = nullptr;
}

}  // namespace

void run_grid(unsigned grid, unsigned block, size_t shm, const std::function<void()>& body) {
  launch(grid, block, shm, body, false);
}
void run_grid_cooperative(unsigned grid, unsigned block, size_t shm, const std::function<void()>& body) {
  launch(grid, block, shm, body, true);
}

void spin_wait() {
  ++g_launch.spins;
  yield();
}

void* dynamic_shared() { return g_launch.shared.data() + g_launch.slot() * g_launch.shm; }
int64_t launches() { return g_launches; }

}  // namespace emu

void __syncthreads() { emu::wait_at(emu::g_launch.block_bar()); }
void __syncwarp(unsigned) { emu::wait_at(emu::g_launch.warp().bar); }

float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::Warp& w = emu::g_launch.warp();
  const unsigned lane = threadIdx.x % 32;
  w.slot[lane] = v;
  emu::wait_at(w.bar);
  const float r = w.slot[(lane ^ static_cast<unsigned>(lane_mask)) % 32];
  emu::wait_at(w.bar);
  return r;
}

namespace emu {
// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 with the PTX ISA's fragment layouts
// (lane = 4 groupID + tig): A (16 x 16, row major) register r of a lane holds the halves
// (row groupID + 8 (r & 1), cols 2 tig + 8 (r >> 1) + {0, 1}), low half first; B (16 x 8,
// column major) register r holds (rows k = 2 tig + 8 r + {0, 1}, col groupID); C and D
// element e holds (row groupID + 8 (e >> 1), col 2 tig + (e & 1)). Products exact, added in
// k order to C.
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  Warp& w = g_launch.warp();
  const unsigned lane = threadIdx.x % 32;
  for (int i = 0; i < 4; ++i) w.mma[lane].a[i] = a[i], w.mma[lane].c[i] = c[i];
  for (int i = 0; i < 2; ++i) w.mma[lane].b[i] = b[i];
  wait_at(w.bar);
  auto half_at = [](uint32_t reg, int hi) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(hi ? reg >> 16 : reg & 0xffffu)));
  };
  auto A = [&](int row, int k) {
    const unsigned l = 4 * (row % 8) + (k % 8) / 2;
    return half_at(w.mma[l].a[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
  };
  auto B = [&](int k, int col) {
    const unsigned l = 4 * col + (k % 8) / 2;
    return half_at(w.mma[l].b[k >= 8 ? 1 : 0], k % 2);
  };
  float out[4];
  const int g = static_cast<int>(lane / 4), t = static_cast<int>(lane % 4);
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    float s = w.mma[lane].c[e];
    for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
    out[e] = s;
  }
  wait_at(w.bar);
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}
}  // namespace emu

unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }

unsigned __match_any_sync(unsigned, unsigned value) {
  emu::Warp& w = emu::g_launch.warp();
  const unsigned lane = threadIdx.x % 32;
  w.uslot[lane] = value;
  emu::wait_at(w.bar);
  unsigned peers = 0;
  for (unsigned l = 0; l < w.bar.n; ++l)
    if (w.uslot[l] == value) peers |= 1u << l;
  emu::wait_at(w.bar);
  return peers;
}

// Device memory: host memory, counted against a notional total (DS_EMU_DEVICE_MEMORY bytes,
// default 16 GiB, the totalGlobalMem reported above), so that out-of-memory paths run here as
// on a GPU and cudaMemGetInfo tells what is in use (leak checks).
namespace emu {
namespace {
std::mutex g_mem_mu;
std::unordered_map<void*, size_t> g_allocations;  // device allocations -> rounded bytes
size_t g_mem_used = 0;
size_t mem_total() {
  static const size_t total = [] {
    const char* v = std::getenv("DS_EMU_DEVICE_MEMORY");
    return v && *v ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) : size_t{16} << 30;
  }();
  return total;
}
}  // namespace
}  // namespace emu

// ---- runtime API ------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  if (std::getenv("DS_EMU_NO_DEVICE")) {
    *count = 0;
    return cudaErrorNoDevice;
  }
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  *prop = {};
  std::snprintf(prop->name, sizeof prop->name, "CPU emulation of an sm_90 GPU");
  prop->major = 9;
  prop->multiProcessorCount = 1;
  prop->l2CacheSize = 50 << 20;
  prop->totalGlobalMem = emu::mem_total();
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaRuntimeGetVersion(int* v) { return *v = 13000, cudaSuccess; }
cudaError_t cudaDriverGetVersion(int* v) { return *v = 0, cudaSuccess; }

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaError(emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {  // the runtime's own strings where tests look for them
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    default: return "emulated CUDA error";
  }
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  std::lock_guard<std::mutex> lock(emu::g_mem_mu);
  if (rounded > emu::mem_total() - emu::g_mem_used) return emu::g_last_error = cudaErrorMemoryAllocation;
  *p = std::aligned_alloc(256, rounded);
  if (*p == nullptr) return emu::g_last_error = cudaErrorMemoryAllocation;
  // Not zeroed, as on a GPU (a huge block, such as a test's ballast, is left as the OS gives
  // it: writing it would take seconds and its pages).
  if (rounded <= (size_t{64} << 20)) std::memset(*p, 0xcd, rounded);
  emu::g_allocations[*p] = rounded;
  emu::g_mem_used += rounded;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(emu::g_mem_mu);
  auto it = emu::g_allocations.find(p);
  if (it == emu::g_allocations.end()) return emu::g_last_error = cudaErrorInvalidDevicePointer;
  emu::g_mem_used -= it->second;
  emu::g_allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(emu::g_mem_mu);
  *free_bytes = emu::mem_total() - emu::g_mem_used;
  *total_bytes = emu::mem_total();
  return cudaSuccess;
}
// Pinned host memory: not device memory.
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::aligned_alloc(256, (std::max<size_t>(bytes, 1) + 255) / 256 * 256);
  return *p ? cudaSuccess : (emu::g_last_error = cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

struct CUevent_st {
  std::chrono::steady_clock::time_point t;
};
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}

// ---- cuBLAS -------------------------------------------------------------------------------

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(new char);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete reinterpret_cast<char*>(h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void* workspace, size_t bytes) {
  return workspace != nullptr && bytes > 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
const char* cublasGetStatusName(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_(emulated error)";
}
const char* cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "error"; }

// C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, all column-major (cuBLAS's definition).
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                            const void* alpha, const void* a, cudaDataType atype, int lda, const void* b,
                            cudaDataType btype, int ldb, const void* beta, void* c, cudaDataType ctype, int ldc,
                            cublasComputeType_t, cublasGemmAlgo_t) {
  if (atype != btype || ctype != CUDA_R_32F || (atype != CUDA_R_32F && atype != CUDA_R_16F && atype != CUDA_R_16BF))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  auto load = [atype](const void* p, int64_t i) -> float {
    if (atype == CUDA_R_32F) return static_cast<const float*>(p)[i];
    const uint16_t h = static_cast<const uint16_t*>(p)[i];
    if (atype == CUDA_R_16F) return __half2float(__ushort_as_half(h));
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, transa == CUBLAS_OP_N ? m : k) ||
      ldb < std::max(1, transb == CUBLAS_OP_N ? k : n) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  auto* C = static_cast<float*>(c);
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double s = 0;
      for (int l = 0; l < k; ++l) {
        const int64_t ia = transa == CUBLAS_OP_N ? i + int64_t{l} * lda : l + int64_t{i} * lda;
        const int64_t ib = transb == CUBLAS_OP_N ? l + int64_t{j} * ldb : j + int64_t{l} * ldb;
        const float av = load(a, ia), bv = load(b, ib);
        s += static_cast<double>(av) * bv;
      }
      float& out = C[i + static_cast<int64_t>(j) * ldc];
      out = static_cast<float>(al * s + (be == 0.0f ? 0.0 : static_cast<double>(be) * out));
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}
