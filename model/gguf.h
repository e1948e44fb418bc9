// model/gguf.h: a validating reader of GGUF v2/v3 files (the llama.cpp model format).
//
// Open() maps the file read-only and parses the header, every metadata value and
// every tensor info. Everything is checked against the file size before use: magic,
// version, counts, string lengths, nesting, dimensions, type ids, alignment, tensor
// offsets and sizes (with overflow checks). A corrupt, truncated or hostile file is
// refused with a Status naming the problem and the byte offset; nothing reads out of
// bounds. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
//
// Thread-safety: a GgufFile is immutable after Open(); share it freely.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kernels/dtype.h"
#include "model/status.h"

namespace ds {

enum class GgufType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5,
  kFloat32 = 6, kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars use one of i/u/f/b/s; arrays record their element
// type and hold their elements in ints, floats or strings (by element type).
// Arrays of arrays are validated and counted but their elements are not kept.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  bool b = false;
  std::string s;
  GgufType arr_type = GgufType::kUint8;
  uint64_t arr_len = 0;
  std::vector<int64_t> ints;         // integer and bool arrays
  std::vector<double> floats;        // float arrays
  std::vector<std::string> strings;  // string arrays

  bool is_integer() const;
  bool is_float() const { return type == GgufType::kFloat32 || type == GgufType::kFloat64; }
};

struct GgufTensor {
  std::string name;
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension
  DType type = DType::kF32;
  uint64_t offset = 0;          // relative to the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  std::string shape_string() const;  // "[768, 32000]"
};

class GgufFile {
 public:
  // Maps and validates the file at path.
  static Result<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Validates an in-memory image (not copied: it must outlive the GgufFile).
  static Result<std::unique_ptr<GgufFile>> FromMemory(const uint8_t* data, size_t size,
                                                       std::string name = "<memory>");
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  // Typed getters: NotFound when the key is absent, InvalidArgument (naming the key and
  // both types) when it holds another type. Integer getters accept any integer type
  // whose value fits.
  Status get_string(std::string_view key, std::string* out) const;
  Status get_u32(std::string_view key, uint32_t* out) const;
  Status get_f32(std::string_view key, float* out) const;
  Status get_bool(std::string_view key, bool* out) const;
  Status get_array(std::string_view key, GgufType elem, const GgufValue** out) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;

 private:
  GgufFile() = default;
  Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace ds
