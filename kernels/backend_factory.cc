// kernels/backend_factory.cc: make_cuda_backend() and cuda_backend_available() for
// builds without CUDA. When the CUDA backend is built, kernels/cuda/CMakeLists.txt
// defines DS_HAVE_CUDA on ds_kernels and the real definitions come from
// kernels/cuda/cuda_backend.cu (library ds_cuda); this file is then empty.
#include "kernels/backend.h"

#include <algorithm>
#include <string>

namespace ds {

bool parse_cuda_tuning(const std::string& list, CudaBackendChoices* choices, std::string* error) {
  CudaBackendChoices c = *choices;
  c.l2_prefetch = c.gemv_stream = c.half_weight_cache = false;
  size_t at = 0;
  while (at <= list.size() && !list.empty() && list != "none") {
    const size_t comma = std::min(list.find(',', at), list.size());
    const std::string item = list.substr(at, comma - at);
    if (item == "l2-prefetch") {
      c.l2_prefetch = true;
    } else if (item == "stream-gemv") {
      c.gemv_stream = true;
    } else if (item == "half-weights") {
      c.half_weight_cache = true;
    } else {
      if (error) *error = "'" + item + "' is not a CUDA tuning (l2-prefetch, stream-gemv, half-weights; comma-separated, or none)";
      return false;
    }
    at = comma + 1;
  }
  *choices = c;
  return true;
}

#ifndef DS_HAVE_CUDA

std::unique_ptr<Backend> make_cuda_backend(int /*device*/, std::string* error, const CudaBackendChoices& /*choices*/) {
  if (error) *error = "this build of ds has no CUDA backend (configure with -DDS_CUDA=ON on a machine with nvcc)";
  return nullptr;
}

bool cuda_backend_available() { return false; }

#endif  // DS_HAVE_CUDA

}  // namespace ds
