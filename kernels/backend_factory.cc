// kernels/backend_factory.cc: make_cuda_backend() and cuda_backend_available() for
// builds without CUDA. When the CUDA backend is built, kernels/cuda/CMakeLists.txt
// defines DS_HAVE_CUDA on ds_kernels and the real definitions come from
// kernels/cuda/cuda_backend.cu (library ds_cuda); this file is then empty.
#include "kernels/backend.h"

namespace ds {

#ifndef DS_HAVE_CUDA

std::unique_ptr<Backend> make_cuda_backend(int /*device*/, std::string* error, const CudaBackendChoices& /*choices*/) {
  if (error) *error = "this build of ds has no CUDA backend (configure with -DDS_CUDA=ON on a machine with nvcc)";
  return nullptr;
}

bool cuda_backend_available() { return false; }

#endif  // DS_HAVE_CUDA

}  // namespace ds
