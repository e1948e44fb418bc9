// kernels/cuda/nccl_comm.h: the NCCL implementation of Communicator (kernels/comm.h),
// one rank per GPU. Plain C++ (no CUDA or NCCL headers), like cuda_backend.h; it is only
// linked where DS_HAVE_CUDA is defined.
//
// Buffers are device memory of the rank's CudaBackend. A collective is enqueued on that
// backend's stream and the call returns at once: later ops of the backend see its result
// and download() waits for it, as for the backend's own ops (cuda_backend.h). The
// return value and last_error() report NCCL's immediate result only; a peer that dies
// mid-collective makes the stream wait (NCCL reports it asynchronously), so the owner
// needs a watchdog that calls abort() (ShardGroup's step timeout, model/shard_group.h).
// abort() waits (up to 2 s) for NCCL calls other threads are inside to return before
// ncclCommAbort frees the communicators.
//
// Builds without NCCL (nccl.h and libnccl not found when configuring) keep these
// functions: they report that NCCL is missing.
//
// Thread-safety: as Communicator: each rank's communicator is used by its own thread;
// abort() may come from any thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/comm.h"

namespace ds {

class CudaBackend;

// True when this build has NCCL ("" or the NCCL version in *version, e.g. "2.28.9").
bool nccl_available(std::string* version = nullptr);

// A group of one communicator per backend, for ranks that are threads of this process
// (ncclCommInitAll over the backends' devices): rank r runs on backends[r]'s stream.
// abort() on any rank aborts every rank of the group. Empty, with *error set, when NCCL
// is missing or fails, or two backends share a GPU (NCCL needs one device per rank).
// REQUIRES: the backends outlive the communicators.
std::vector<std::unique_ptr<Communicator>> make_nccl_comm_group(const std::vector<CudaBackend*>& backends,
                                                                std::string* error);

// For ranks in different processes: rank 0 makes a unique id (NCCL_UNIQUE_ID_BYTES bytes,
// opaque), hands it to every rank out of band, and each rank calls make_nccl_comm with
// it; the call blocks until all n_ranks ranks have joined. abort() aborts this rank's
// communicator only. nullptr / false, with *error set, on failure.
bool make_nccl_unique_id(std::string* id, std::string* error);
std::unique_ptr<Communicator> make_nccl_comm(const std::string& unique_id, int rank, int n_ranks, CudaBackend& backend,
                                             std::string* error);

}  // namespace ds
