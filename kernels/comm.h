// kernels/comm.h: collective communication between the ranks of a tensor-parallel group.
//
// A Communicator is one rank's handle on a group of size() ranks that run the same
// sharded computation. Every rank calls the same collectives, in the same order, with
// the same counts (and root): a collective completes only when all ranks have called
// it. Buffers are in the memory of the backend the group serves: host memory for the
// CPU group (make_cpu_comm_group), device memory for NCCL (kernels/cuda/nccl_comm.h),
// where a collective is enqueued on the rank's backend stream, ordered with its ops.
//
// Errors: a collective returns false and last_error() says why (the group was aborted,
// the ranks disagreed on the call, NCCL failed). After a failure the group is not
// usable; its owner reports the failure and drops the group.
//
// Thread-safety: a Communicator is used by one thread (its rank's); the ranks of one
// group run concurrently, each in its own thread (or process). abort() may be called
// from any thread.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace ds {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* name() const = 0;  // "cpu", "nccl"
  virtual int rank() const = 0;          // in [0, size())
  virtual int size() const = 0;

  // buf[i] = sum over ranks r of rank r's buf[i], in place on every rank.
  virtual bool all_reduce_sum(float* buf, size_t n) = 0;
  // recv[r * n_per_rank + i] = rank r's send[i], on every rank. recv holds
  // size() * n_per_rank floats; send is either apart from recv or exactly
  // recv + rank() * n_per_rank (in place).
  virtual bool all_gather(const float* send, size_t n_per_rank, float* recv) = 0;
  // buf = rank root's buf, on every rank. REQUIRES: 0 <= root < size().
  virtual bool broadcast(float* buf, size_t n, int root) = 0;

  // Makes every pending and later collective of the whole group fail, so that ranks
  // blocked in a collective return when one rank gave up.
  virtual void abort() = 0;
  // Why the last collective failed ("" when none has).
  virtual const std::string& last_error() const = 0;
};

// A group of n_ranks communicators over host memory, for ranks that are threads of
// this process (the CPU backend, and tests of tensor parallelism). Element i of
// all_reduce_sum is ((buf_0[i] + buf_1[i]) + buf_2[i]) + ... in rank order, the same
// on every rank and on every run. Ranks that call different collectives (kind, count
// or root) all fail with a message naming the difference. REQUIRES: n_ranks >= 1.
std::vector<std::unique_ptr<Communicator>> make_cpu_comm_group(int n_ranks);

}  // namespace ds
