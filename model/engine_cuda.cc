// model/engine_cuda.cc: Engine::CreateCudaTensorParallel, one CUDA backend per GPU and an
// NCCL group over them. Builds without the CUDA backend (DS_HAVE_CUDA undefined) keep the
// factory; it reports that CUDA is missing.
#include <functional>
#include <set>
#include <string>

#include "model/engine.h"
#include "model/tensor_parallel.h"

#ifdef DS_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_comm.h"
#endif

namespace ds {

Result<std::unique_ptr<Engine>> Engine::CreateCudaTensorParallel(std::shared_ptr<const Model> model,
                                                                 const std::vector<int>& gpu_ids, const EngineOptions& opts) {
#ifndef DS_HAVE_CUDA
  (void)model;
  (void)gpu_ids;
  (void)opts;
  return Status::NotSupported("this build of ds has no CUDA backend (configure with -DDS_CUDA=ON on a machine with nvcc)");
#else
  if (gpu_ids.empty()) return Status::InvalidArgument("a CUDA tensor-parallel engine needs at least one GPU id");
  if (std::set<int>(gpu_ids.begin(), gpu_ids.end()).size() != gpu_ids.size()) {
    return Status::InvalidArgument("CUDA tensor parallelism needs one GPU per rank; a GPU id repeats (NCCL needs one device per rank)");
  }
  std::string version;
  if (!nccl_available(&version)) {
    std::string why;
    (void)make_nccl_comm_group({}, &why);
    return Status::NotSupported("CUDA tensor parallelism needs NCCL: " + why);
  }
  // Fail early, before any GPU memory is taken, when the model does not split.
  DS_RETURN_IF_ERROR(check_tensor_parallel(*model, static_cast<int>(gpu_ids.size())));
  std::vector<std::unique_ptr<Backend>> backends;
  std::vector<CudaBackend*> raw;
  for (int gpu : gpu_ids) {
    CudaBackendOptions o;
    o.device = gpu;
    std::string error;
    std::unique_ptr<CudaBackend> b = CudaBackend::create(o, &error);
    if (!b) return Status::Internal("GPU " + std::to_string(gpu) + ": the CUDA backend did not start: " + error);
    raw.push_back(b.get());
    backends.push_back(std::move(b));
  }
  std::string error;
  std::vector<std::unique_ptr<Communicator>> comms = make_nccl_comm_group(raw, &error);
  if (comms.size() != raw.size()) return Status::Internal("NCCL " + version + " group over " + std::to_string(raw.size()) + " GPUs: " + error);
  // A CUDA error is sticky and only reported by the backend: check it after every step.
  std::vector<std::function<Status()>> health;
  for (size_t r = 0; r < raw.size(); ++r) {
    CudaBackend* b = raw[r];
    const int gpu = gpu_ids[r];
    health.push_back([b, gpu]() {
      return b->ok() ? Status::Ok() : Status::Internal("GPU " + std::to_string(gpu) + ": " + b->last_error());
    });
  }
  return CreateTensorParallel(std::move(model), std::move(backends), std::move(comms), opts, std::move(health));
#endif
}

}  // namespace ds
