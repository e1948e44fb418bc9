// tests/gpu/kernel_trace.h: the GPU time of every kernel and copy that a stretch of work runs,
// CUDA graph replays included, from CUPTI's activity records. Events around a loop of eager
// launches time the host's launch rate as much as the kernels, and a graph replay's events give
// only its total: these records give each kernel's own start and end on the GPU, and so the
// idle time between the kernels of one replay.
//
// libcupti is loaded at run time (dlopen), so a machine without it gets a reason, not a
// failure; the CPU emulation (DS_CUDA_EMULATION) records nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::gpu_trace {

struct Record {
  std::string name;  // kernels: demangled, ds:: and the argument list dropped; copies: "memcpy HtoD" etc.
  uint64_t start_ns = 0, end_ns = 0;
  uint32_t correlation = 0;  // the API call that launched it (every node of one graph launch shares it)
  int64_t bytes = 0;         // copies and sets
  int grid = 0, block = 0;   // kernels: blocks, threads a block
  int regs = 0;              // registers a thread
  int smem = 0;              // shared memory a block, static + dynamic
  bool kernel = true;
};

// Starts recording kernels, copies and sets on every stream. False and *why when it cannot:
// no libcupti, the emulation, a CUPTI error, or already started.
bool start(std::string* why);

// CUPTI's clock now (the records' time base; 0 when not recording): records that start before
// it can be left out by stop(), e.g. a graph's first replay, recorded after start() so that
// the graph's kernels are traced whatever CUPTI's rule for graphs made before tracing began.
uint64_t now_ns();

// Stops recording and returns what ran since start() and started at or after from_ns, in
// order of start time (empty when start() failed).
std::vector<Record> stop(uint64_t from_ns = 0);

// Per name: calls a step, GPU microseconds a step and a call, share, launch shape; then the
// records' busy time (the union of their intervals) a step, and for graph launches (records
// sharing a correlation id) their span from the first start to the last end and the idle time
// inside it. steps: what the records cover (a decode step's graph replays, say).
std::string table(const std::vector<Record>& rs, int steps, const std::string& title);

}  // namespace ds::gpu_trace
