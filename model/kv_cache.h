// model/kv_cache.h: the paged KV cache shared by all sequences of one engine.
//
// Memory is a pool of fixed-size blocks (block_size token positions each) per layer,
// for keys and values: [n_blocks, block_size, kv_dim] elements of the cache's type (F32, or
// F16 for half the memory) in backend memory. A
// sequence owns a block table; position p lives in block table[p / block_size].
// BlockAllocator is the pure bookkeeping (a free list), tested on its own.
//
// Thread-safety: none; owned and used by one engine.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "model/status.h"

namespace ds {

class BlockAllocator {
 public:
  explicit BlockAllocator(int n_blocks);
  int n_blocks() const { return n_blocks_; }
  int n_free() const { return static_cast<int>(free_.size()); }
  // Appends n blocks to table; false (and nothing taken) when fewer than n are free.
  bool allocate(int n, std::vector<int32_t>* table);
  // Returns every block of table to the pool and clears it.
  void release(std::vector<int32_t>* table);

 private:
  int n_blocks_;
  std::vector<int32_t> free_;  // LIFO: recently freed blocks are reused first (warm)
};

class KvCache {
 public:
  // Allocates the pool in backend memory; ResourceExhausted when it does not fit.
  // type: kF32 or kF16 (InvalidArgument otherwise).
  static Result<std::unique_ptr<KvCache>> Create(Backend& backend, int n_layer, int kv_dim, int block_size, int n_blocks,
                                                 DType type = DType::kF32);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int block_size() const { return block_size_; }
  int kv_dim() const { return kv_dim_; }
  BlockAllocator& blocks() { return alloc_; }
  const BlockAllocator& blocks() const { return alloc_; }
  DType type() const { return type_; }
  // Layer `layer`'s keys and values, as the attention ops take them.
  KvLayer layer(int layer) const { return KvLayer{k_[layer], v_[layer], type_}; }
  size_t bytes() const { return bytes_; }
  // Blocks needed to hold n positions.
  int blocks_for(int n_positions) const { return (n_positions + block_size_ - 1) / block_size_; }

 private:
  KvCache(Backend& b, int block_size, int kv_dim, int n_blocks, DType type)
      : backend_(b), block_size_(block_size), kv_dim_(kv_dim), type_(type), alloc_(n_blocks) {}
  Backend& backend_;
  int block_size_;
  int kv_dim_;
  DType type_;
  BlockAllocator alloc_;
  std::vector<void*> k_, v_;
  size_t bytes_ = 0;
};

}  // namespace ds
