#include "model/kv_cache.h"

namespace ds {

BlockAllocator::BlockAllocator(int n_blocks) : n_blocks_(n_blocks) {
  free_.reserve(n_blocks);
  for (int i = n_blocks - 1; i >= 0; --i) free_.push_back(i);
}

bool BlockAllocator::allocate(int n, std::vector<int32_t>* table) {
  if (n > n_free()) return false;
  for (int i = 0; i < n; ++i) {
    table->push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockAllocator::release(std::vector<int32_t>* table) {
  for (auto it = table->rbegin(); it != table->rend(); ++it) free_.push_back(*it);
  table->clear();
}

Result<std::unique_ptr<KvCache>> KvCache::Create(Backend& backend, int n_layer, int kv_dim, int block_size, int n_blocks,
                                                 DType type) {
  if (block_size <= 0 || n_blocks <= 0) return Status::InvalidArgument("KV cache needs a positive block size and block count");
  if (!kv_type_supported(type)) return Status::InvalidArgument(std::string("no KV cache of type ") + dtype_name(type) + " (f32 or f16)");
  std::unique_ptr<KvCache> c(new KvCache(backend, block_size, kv_dim, n_blocks, type));
  const size_t per = static_cast<size_t>(n_blocks) * block_size * kv_dim * kv_elem_bytes(type);
  for (int l = 0; l < n_layer; ++l) {
    void* k = backend.alloc(per);
    void* v = backend.alloc(per);
    if (k) c->k_.push_back(k);
    if (v) c->v_.push_back(v);
    if (!k || !v) {
      return Status::ResourceExhausted("cannot allocate the KV cache (" + std::to_string(2 * per * n_layer >> 20) +
                                       " MiB of " + dtype_name(type) + " on " + backend.name() +
                                       "): lower --kv-cache-tokens or --ctx" + (type == DType::kF32 ? ", or use --kv-type f16" : ""));
    }
    c->bytes_ += 2 * per;
  }
  return c;
}

KvCache::~KvCache() {
  for (void* p : k_) backend_.free(p);
  for (void* p : v_) backend_.free(p);
}

}  // namespace ds
