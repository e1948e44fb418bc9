// tests/gpu/kernel_trace.cc: see kernel_trace.h.
#include "tests/gpu/kernel_trace.h"

#include <algorithm>
#include <cstdio>
#include <map>

#if !defined(DS_CUDA_EMULATION) && __has_include(<cupti_activity.h>)
#define DS_HAVE_CUPTI 1
#include <cupti_activity.h>
#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#endif

namespace ds::gpu_trace {

#ifdef DS_HAVE_CUPTI
namespace {

// The CUPTI entry points used, resolved from libcupti at run time.
struct Api {
  void* lib = nullptr;
  CUptiResult (*register_callbacks)(CUpti_BuffersCallbackRequestFunc, CUpti_BuffersCallbackCompleteFunc) = nullptr;
  CUptiResult (*enable)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*disable)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*flush_all)(uint32_t) = nullptr;
  CUptiResult (*next_record)(uint8_t*, size_t, CUpti_Activity**) = nullptr;
  CUptiResult (*timestamp)(uint64_t*) = nullptr;
  bool registered = false;
};

Api g_api;
std::mutex g_mu;
std::vector<Record> g_records;  // filled by buffer_completed (a CUPTI thread, or the flush)
bool g_on = false;

constexpr size_t kBufferBytes = size_t{8} << 20;
constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                         CUPTI_ACTIVITY_KIND_MEMSET};

bool load(std::string* why) {
  if (g_api.lib) return true;
  const char* names[] = {
#ifdef DS_CUPTI_PATH
      DS_CUPTI_PATH,
#endif
      "libcupti.so.13", "libcupti.so", "/usr/local/cuda/lib64/libcupti.so", "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so"};
  void* lib = nullptr;
  for (const char* n : names)
    if ((lib = dlopen(n, RTLD_NOW | RTLD_GLOBAL)) != nullptr) break;
  if (!lib) {
    *why = "libcupti not found (dlopen libcupti.so.13, libcupti.so, /usr/local/cuda/{lib64,extras/CUPTI/lib64})";
    return false;
  }
  Api a;
  a.lib = lib;
  a.register_callbacks = reinterpret_cast<decltype(a.register_callbacks)>(dlsym(lib, "cuptiActivityRegisterCallbacks"));
  a.enable = reinterpret_cast<decltype(a.enable)>(dlsym(lib, "cuptiActivityEnable"));
  a.disable = reinterpret_cast<decltype(a.disable)>(dlsym(lib, "cuptiActivityDisable"));
  a.flush_all = reinterpret_cast<decltype(a.flush_all)>(dlsym(lib, "cuptiActivityFlushAll"));
  a.next_record = reinterpret_cast<decltype(a.next_record)>(dlsym(lib, "cuptiActivityGetNextRecord"));
  a.timestamp = reinterpret_cast<decltype(a.timestamp)>(dlsym(lib, "cuptiGetTimestamp"));
  if (!a.register_callbacks || !a.enable || !a.disable || !a.flush_all || !a.next_record || !a.timestamp) {
    *why = "libcupti lacks the activity API";
    dlclose(lib);
    return false;
  }
  g_api = a;
  return true;
}

// "void ds::cuda::v3::gemv_v3_kernel<(ds::DType)8, 1, true, 1>(unsigned char const*, ...)" ->
// "cuda::v3::gemv_v3_kernel<(DType)8, 1, true, 1>"
std::string short_name(const char* mangled) {
  if (!mangled) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : mangled;
  std::free(d);
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    else if (s[i] == '>') --depth;
    else if (s[i] == '(' && depth == 0 && i > 0) {
      s.resize(i);
      break;
    }
  }
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  for (size_t p; (p = s.find("ds::")) != std::string::npos;) s.erase(p, 4);
  return s;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

const char* copy_kind(uint8_t k) {
  switch (k) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "DtoD";
    default: return "other";
  }
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<Record> got;
  CUpti_Activity* rec = nullptr;
  while (buffer && g_api.next_record(buffer, valid, &rec) == CUPTI_SUCCESS) {
    Record r;
    if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
      r.name = short_name(k->name);
      r.start_ns = k->start, r.end_ns = k->end, r.correlation = k->correlationId;
      r.grid = k->gridX * k->gridY * k->gridZ, r.block = k->blockX * k->blockY * k->blockZ;
      r.regs = k->registersPerThread, r.smem = k->staticSharedMemory + k->dynamicSharedMemory;
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      r.name = std::string("memcpy ") + copy_kind(m->copyKind);
      r.start_ns = m->start, r.end_ns = m->end, r.correlation = m->correlationId, r.bytes = static_cast<int64_t>(m->bytes);
      r.kernel = false;
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(rec);
      r.name = "memset";
      r.start_ns = m->start, r.end_ns = m->end, r.correlation = m->correlationId, r.bytes = static_cast<int64_t>(m->bytes);
      r.kernel = false;
    } else {
      continue;
    }
    got.push_back(std::move(r));
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_on) g_records.insert(g_records.end(), got.begin(), got.end());
}

}  // namespace

bool start(std::string* why) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_on) {
    *why = "already recording";
    return false;
  }
  if (!load(why)) return false;
  if (!g_api.registered) {
    if (g_api.register_callbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS) {
      *why = "cuptiActivityRegisterCallbacks failed";
      return false;
    }
    g_api.registered = true;
  }
  for (CUpti_ActivityKind k : kKinds) {
    if (const CUptiResult e = g_api.enable(k); e != CUPTI_SUCCESS) {
      for (CUpti_ActivityKind k2 : kKinds) g_api.disable(k2);
      *why = "cuptiActivityEnable(" + std::to_string(static_cast<int>(k)) + ") failed: CUPTI error " +
             std::to_string(static_cast<int>(e));
      return false;
    }
  }
  g_records.clear();
  g_on = true;
  return true;
}

uint64_t now_ns() {
  uint64_t t = 0;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_on) return 0;
  }
  return g_api.timestamp(&t) == CUPTI_SUCCESS ? t : 0;
}

std::vector<Record> stop(uint64_t from_ns) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_on) return {};
  }
  g_api.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);  // calls buffer_completed (outside the lock)
  for (CUpti_ActivityKind k : kKinds) g_api.disable(k);
  std::lock_guard<std::mutex> lock(g_mu);
  g_on = false;
  std::vector<Record> out;
  for (Record& r : g_records)
    if (r.start_ns >= from_ns) out.push_back(std::move(r));
  g_records.clear();
  std::sort(out.begin(), out.end(), [](const Record& a, const Record& b) { return a.start_ns < b.start_ns; });
  return out;
}

#else  // no CUPTI

bool start(std::string* why) {
#ifdef DS_CUDA_EMULATION
  *why = "the CPU emulation has no GPU timeline";
#else
  *why = "built without CUPTI's headers (cupti_activity.h)";
#endif
  return false;
}

uint64_t now_ns() { return 0; }

std::vector<Record> stop(uint64_t) { return {}; }

#endif

namespace {

// Nanoseconds covered by the union of the intervals of rs[first, last), sorted by start.
uint64_t busy_ns(const std::vector<Record>& rs, size_t first, size_t last) {
  uint64_t busy = 0, open_start = 0, open_end = 0;
  bool open = false;
  for (size_t i = first; i < last; ++i) {
    const Record& r = rs[i];
    if (!open || r.start_ns > open_end) {
      if (open) busy += open_end - open_start;
      open_start = r.start_ns, open_end = r.end_ns, open = true;
    } else {
      open_end = std::max(open_end, r.end_ns);
    }
  }
  if (open) busy += open_end - open_start;
  return busy;
}

}  // namespace

std::string table(const std::vector<Record>& rs, int steps, const std::string& title) {
  std::string out = title + "\n";
  if (rs.empty()) return out + "  (no records)\n";
  const double n = std::max(steps, 1);
  struct Row {
    int64_t calls = 0, bytes = 0;
    double ns = 0;
    int grid = 0, block = 0, regs = 0, smem = 0;
  };
  std::map<std::string, Row> by_name;
  double total_ns = 0;
  for (const Record& r : rs) {
    Row& row = by_name[r.name];
    ++row.calls;
    row.ns += static_cast<double>(r.end_ns - r.start_ns);
    row.bytes += r.bytes;
    row.grid = r.grid, row.block = r.block, row.regs = r.regs, row.smem = r.smem;
    total_ns += static_cast<double>(r.end_ns - r.start_ns);
  }
  std::vector<std::pair<std::string, Row>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  char line[512];
  std::snprintf(line, sizeof line, "  %10s %10s %9s %6s  %-22s  %s\n", "calls/step", "us/step", "us/call", "share",
                "grid x block, regs, smem", "kernel (GPU time of each, from CUPTI)");
  out += line;
  for (const auto& [name, row] : rows) {
    char shape[64] = "";
    if (row.block > 0) std::snprintf(shape, sizeof shape, "%d x %d, %d, %d", row.grid, row.block, row.regs, row.smem);
    else if (row.bytes > 0) std::snprintf(shape, sizeof shape, "%.0f B a call", static_cast<double>(row.bytes) / row.calls);
    std::snprintf(line, sizeof line, "  %10.1f %10.1f %9.2f %5.1f%%  %-22s  %.150s\n", row.calls / n, row.ns / 1e3 / n,
                  row.ns / 1e3 / row.calls, 100.0 * row.ns / std::max(total_ns, 1.0), shape, name.c_str());
    out += line;
  }
  // Graph launches: the records of one correlation id (more than one record).
  double span_ns = 0, inside_busy_ns = 0;
  int launches = 0;
  for (size_t i = 0; i < rs.size();) {  // records of one launch are contiguous unless launches overlap
    size_t j = i + 1;
    while (j < rs.size() && rs[j].correlation == rs[i].correlation) ++j;
    if (j - i > 1) {
      uint64_t last_end = 0;
      for (size_t k = i; k < j; ++k) last_end = std::max(last_end, rs[k].end_ns);
      span_ns += static_cast<double>(last_end - rs[i].start_ns);
      inside_busy_ns += static_cast<double>(busy_ns(rs, i, j));
      ++launches;
    }
    i = j;
  }
  const double busy = static_cast<double>(busy_ns(rs, 0, rs.size()));
  const double all_span = static_cast<double>(rs.back().end_ns - rs.front().start_ns);
  std::snprintf(line, sizeof line,
                "  total: %.1f us a step of GPU time in %zu records (%.1f a step); busy (their union) %.1f us a step, "
                "%.1f us from the first start to the last end\n",
                total_ns / 1e3 / n, rs.size(), rs.size() / n, busy / 1e3 / n, all_span / 1e3 / n);
  out += line;
  if (launches > 0) {
    std::snprintf(line, sizeof line,
                  "  graph launches: %d (%.2f a step), each %.1f us from its first kernel's start to its last end, "
                  "%.1f us of it busy: %.1f us (%.1f%%) idle between its kernels\n",
                  launches, launches / n, span_ns / 1e3 / launches, inside_busy_ns / 1e3 / launches,
                  (span_ns - inside_busy_ns) / 1e3 / launches, 100.0 * (span_ns - inside_busy_ns) / std::max(span_ns, 1.0));
    out += line;
  }
  return out;
}

}  // namespace ds::gpu_trace
