// model/gguf_writer.h: writes GGUF v3 files (metadata + tensors), streaming tensor
// data one tensor at a time so multi-GiB files need little memory.
//
// Thread-safety: none.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "model/status.h"

namespace ds {

class GgufWriter {
 public:
  void set_string(const std::string& key, const std::string& v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);

  // Adds a tensor; fill(out) is called during write() and must append exactly
  // row_bytes(type, ne[0]) * ne[1] * ... bytes. ne[0] is the row (contiguous) length.
  void add_tensor(const std::string& name, DType type, std::vector<int64_t> ne,
                  std::function<void(std::vector<uint8_t>* out)> fill);

  // Writes the file; progress(bytes done, bytes total) after each tensor.
  Status write(const std::string& path, const std::function<void(size_t, size_t)>& progress = {}) const;

 private:
  struct Tensor {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    std::function<void(std::vector<uint8_t>*)> fill;
    size_t nbytes;
  };
  std::vector<uint8_t> kv_;  // serialized key-value pairs
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace ds
