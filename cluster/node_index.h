// cluster/node_index.h: node id -> slot number, as a flat open-addressing table.
//
// Membership looks up a node id for every entry a message carries; with a thousand members the
// node-based std::unordered_map costs two dependent cache misses per lookup (bucket, node) before
// the slot itself is touched. This table stores (hash, slot) pairs in one array with linear
// probing, so a lookup is one miss in the table plus the slot access the caller needs anyway.
// Keys are never erased (Membership keeps tombstones), which keeps probing trivial.
//
// The table does not own the keys: `key_of(slot)` returns the node id stored in that slot.
// Thread-safety: none.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "cluster/member.h"

namespace ds::cluster {

class NodeIndex {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  // The slot holding `id`, or kNone. key_of(uint32_t slot) -> std::string_view.
  template <class KeyOf>
  uint32_t find(std::string_view id, const KeyOf& key_of) const {
    if (table_.empty()) return kNone;
    const uint64_t h = node_hash(id);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Cell& c = table_[i];
      if (c.slot == kNone) return kNone;
      if (c.hash == h && key_of(c.slot) == id) return c.slot;
    }
  }

  // Records `slot` for `id`. REQUIRES: find(id) == kNone.
  void insert(std::string_view id, uint32_t slot) {
    if (2 * (size_ + 1) > table_.size()) grow();
    place(node_hash(id), slot);
    ++size_;
  }

  size_t size() const { return size_; }

 private:
  struct Cell {
    uint64_t hash = 0;
    uint32_t slot = kNone;
  };

  void place(uint64_t h, uint32_t slot) {
    size_t i = h & mask_;
    while (table_[i].slot != kNone) i = (i + 1) & mask_;
    table_[i] = {h, slot};
  }

  void grow() {
    std::vector<Cell> old = std::move(table_);
    table_.assign(old.empty() ? 64 : old.size() * 2, Cell{});
    mask_ = table_.size() - 1;
    for (const Cell& c : old) {
      if (c.slot != kNone) place(c.hash, c.slot);
    }
  }

  std::vector<Cell> table_;  // size: a power of two, at most half full
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace ds::cluster
