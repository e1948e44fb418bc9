#include "model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

namespace ds {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxStringLen = 1ull << 30;
constexpr int kMaxArrayDepth = 4;

// Bounds-checked little-endian cursor over the file image.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  template <typename T>
  Status read(T* out, const char* what) {
    *out = T{};
    if (remaining() < sizeof(T)) return truncated(what);
    std::memcpy(out, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }
  Status skip(uint64_t n, const char* what) {
    if (remaining() < n) return truncated(what);
    pos_ += n;
    return Status::Ok();
  }
  Status read_string(std::string* out, const char* what) {
    uint64_t len = 0;
    DS_RETURN_IF_ERROR(read(&len, what));
    if (len > kMaxStringLen) {
      return Status::Corruption(std::string(what) + ": string length " + std::to_string(len) +
                                " at offset " + std::to_string(pos_ - 8) + " is implausible");
    }
    if (remaining() < len) return truncated(what);
    out->assign(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return Status::Ok();
  }
  Status truncated(const char* what) const {
    return Status::Corruption(std::string("file is truncated: ") + what + " at offset " +
                              std::to_string(pos_) + " runs past the end (" + std::to_string(n_) +
                              " bytes)");
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kBool: return 1;
    case GgufType::kUint16: case GgufType::kInt16: return 2;
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kFloat32: return 4;
    case GgufType::kUint64: case GgufType::kInt64: case GgufType::kFloat64: return 8;
    default: return 0;
  }
}

bool valid_type(uint32_t t) { return t <= 12; }

// Capacity to reserve for n entries a file announces. Counts are only checked against the
// file size, so a hostile count in a big file would allocate many times the file up front:
// containers grow as entries actually parse instead.
size_t reserve_hint(uint64_t n) { return static_cast<size_t>(std::min<uint64_t>(n, 4096)); }

// Reads one scalar of type t into v (i/u/f/b set as fits the type).
Status read_scalar(Cursor& c, GgufType t, GgufValue* v, const std::string& key) {
  const char* what = "metadata value";
  switch (t) {
    case GgufType::kUint8: { uint8_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; v->i = x; break; }
    case GgufType::kInt8: { int8_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; v->u = static_cast<uint64_t>(x); break; }
    case GgufType::kUint16: { uint16_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; v->i = x; break; }
    case GgufType::kInt16: { int16_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; v->u = static_cast<uint64_t>(x); break; }
    case GgufType::kUint32: { uint32_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; v->i = x; break; }
    case GgufType::kInt32: { int32_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; v->u = static_cast<uint64_t>(x); break; }
    case GgufType::kUint64: { uint64_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->u = x; v->i = static_cast<int64_t>(x); break; }
    case GgufType::kInt64: { int64_t x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->i = x; v->u = static_cast<uint64_t>(x); break; }
    case GgufType::kFloat32: { float x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->f = x; break; }
    case GgufType::kFloat64: { double x; DS_RETURN_IF_ERROR(c.read(&x, what)); v->f = x; break; }
    case GgufType::kBool: {
      uint8_t x;
      DS_RETURN_IF_ERROR(c.read(&x, what));
      if (x > 1) return Status::Corruption("metadata '" + key + "': bool value " + std::to_string(x) + " is not 0 or 1");
      v->b = x != 0; v->i = x; v->u = x;
      break;
    }
    default:
      return Status::Internal("read_scalar on a non-scalar type");
  }
  return Status::Ok();
}

Status read_value(Cursor& c, GgufType t, GgufValue* v, const std::string& key, int depth) {
  v->type = t;
  if (t == GgufType::kString) return c.read_string(&v->s, "metadata string");
  if (t != GgufType::kArray) return read_scalar(c, t, v, key);
  if (depth >= kMaxArrayDepth) return Status::Corruption("metadata '" + key + "': arrays nested too deeply");
  uint32_t et;
  DS_RETURN_IF_ERROR(c.read(&et, "array element type"));
  if (!valid_type(et)) return Status::Corruption("metadata '" + key + "': unknown array element type " + std::to_string(et));
  uint64_t n;
  DS_RETURN_IF_ERROR(c.read(&n, "array length"));
  v->arr_type = static_cast<GgufType>(et);
  v->arr_len = n;
  // Every element takes at least one byte (strings 8): a count beyond that is a lie.
  const size_t min_elem = v->arr_type == GgufType::kString ? 8 : v->arr_type == GgufType::kArray ? 12 : scalar_size(v->arr_type);
  if (n > c.remaining() / min_elem) {
    return Status::Corruption("metadata '" + key + "': array of " + std::to_string(n) + " elements at offset " +
                              std::to_string(c.pos()) + " does not fit in the file");
  }
  if (v->arr_type == GgufType::kString) {
    v->strings.reserve(reserve_hint(n));
    for (uint64_t k = 0; k < n; ++k) {
      std::string s;
      DS_RETURN_IF_ERROR(c.read_string(&s, "array string"));
      v->strings.push_back(std::move(s));
    }
  } else if (v->arr_type == GgufType::kArray) {
    for (uint64_t k = 0; k < n; ++k) {
      GgufValue inner;
      DS_RETURN_IF_ERROR(read_value(c, GgufType::kArray, &inner, key, depth + 1));
    }
  } else if (v->arr_type == GgufType::kFloat32 || v->arr_type == GgufType::kFloat64) {
    v->floats.reserve(reserve_hint(n));
    for (uint64_t k = 0; k < n; ++k) {
      GgufValue e;
      DS_RETURN_IF_ERROR(read_scalar(c, v->arr_type, &e, key));
      v->floats.push_back(e.f);
    }
  } else {
    v->ints.reserve(reserve_hint(n));
    for (uint64_t k = 0; k < n; ++k) {
      GgufValue e;
      DS_RETURN_IF_ERROR(read_scalar(c, v->arr_type, &e, key));
      v->ints.push_back(e.i);
    }
  }
  return Status::Ok();
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* const kNames[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                       "bool", "string", "array", "uint64", "int64", "float64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? kNames[i] : "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kUint16: case GgufType::kInt16:
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kUint64: case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

std::string GgufTensor::shape_string() const {
  std::string s = "[";
  for (int d = 0; d < n_dims; ++d) s += (d ? ", " : "") + std::to_string(ne[d]);
  return s + "]";
}

GgufFile::~GgufFile() {
  if (mapped_ && base_ != nullptr) munmap(const_cast<uint8_t*>(base_), size_);
}

Result<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::IOError("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return Status::IOError("cannot stat '" + path + "': " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument("'" + path + "' is not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 24) {
    ::close(fd);
    return Status::Corruption("'" + path + "' is " + std::to_string(size) + " bytes: too small to be a GGUF file");
  }
  void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) return Status::IOError("cannot mmap '" + path + "': " + std::strerror(e));
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->base_ = static_cast<const uint8_t*>(p);
  f->size_ = size;
  f->mapped_ = true;
  Status s = f->Parse();
  if (!s.ok()) return Status(s.code() == StatusCode::kCorruption
                                 ? Status::Corruption("'" + path + "': " + s.message())
                                 : s);
  return f;
}

Result<std::unique_ptr<GgufFile>> GgufFile::FromMemory(const uint8_t* data, size_t size, std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = std::move(name);
  f->base_ = data;
  f->size_ = size;
  DS_RETURN_IF_ERROR(f->Parse());
  return f;
}

Status GgufFile::Parse() {
  Cursor c(base_, size_);
  uint32_t magic;
  DS_RETURN_IF_ERROR(c.read(&magic, "magic"));
  if (magic != kMagic) return Status::Corruption("not a GGUF file (bad magic; expected 'GGUF')");
  DS_RETURN_IF_ERROR(c.read(&version_, "version"));
  if (version_ == 1) return Status::NotSupported("GGUF version 1 is obsolete; convert the model again with a current llama.cpp");
  if (version_ != 2 && version_ != 3) return Status::Corruption("unsupported GGUF version " + std::to_string(version_) + " (ds reads 2 and 3)");
  uint64_t n_tensors, n_kv;
  DS_RETURN_IF_ERROR(c.read(&n_tensors, "tensor count"));
  DS_RETURN_IF_ERROR(c.read(&n_kv, "metadata count"));
  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
  // at least 8 + 4 + 4 + 8 bytes. Counts beyond what the file can hold are corrupt.
  if (n_kv > c.remaining() / 13) return Status::Corruption("metadata count " + std::to_string(n_kv) + " is larger than the file can hold");
  if (n_tensors > c.remaining() / 24) return Status::Corruption("tensor count " + std::to_string(n_tensors) + " is larger than the file can hold");

  kv_.reserve(reserve_hint(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    DS_RETURN_IF_ERROR(c.read_string(&key, "metadata key"));
    if (key.empty()) return Status::Corruption("metadata entry " + std::to_string(k) + " has an empty key");
    if (kv_index_.count(key)) return Status::Corruption("metadata key '" + key + "' appears twice");
    uint32_t t;
    DS_RETURN_IF_ERROR(c.read(&t, "metadata type"));
    if (!valid_type(t)) return Status::Corruption("metadata '" + key + "': unknown value type " + std::to_string(t));
    GgufValue v;
    DS_RETURN_IF_ERROR(read_value(c, static_cast<GgufType>(t), &v, key, 0));
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (!a->is_integer() || a->u == 0 || a->u > (1u << 20) || (a->u & (a->u - 1)) != 0) {
      return Status::Corruption("general.alignment must be a power of two up to 1 MiB");
    }
    alignment_ = static_cast<uint32_t>(a->u);
  }

  tensors_.reserve(reserve_hint(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    DS_RETURN_IF_ERROR(c.read_string(&t.name, "tensor name"));
    if (t.name.empty() || t.name.size() > 256) return Status::Corruption("tensor " + std::to_string(k) + ": name is empty or longer than 256 bytes");
    if (tensor_index_.count(t.name)) return Status::Corruption("tensor '" + t.name + "' appears twice");
    uint32_t n_dims;
    DS_RETURN_IF_ERROR(c.read(&n_dims, "tensor dimension count"));
    if (n_dims == 0 || n_dims > 4) return Status::Corruption("tensor '" + t.name + "': " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
    t.n_dims = static_cast<int>(n_dims);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne;
      DS_RETURN_IF_ERROR(c.read(&ne, "tensor dimension"));
      if (ne == 0 || ne > (1ull << 40)) return Status::Corruption("tensor '" + t.name + "': dimension " + std::to_string(d) + " is " + std::to_string(ne));
      if (mul_overflows(n_el, ne, &n_el) || n_el > (1ull << 48)) return Status::Corruption("tensor '" + t.name + "': element count overflows");
      t.ne[d] = static_cast<int64_t>(ne);
    }
    uint32_t type;
    DS_RETURN_IF_ERROR(c.read(&type, "tensor type"));
    const DTypeTraits* tr = dtype_traits(type);
    if (tr == nullptr) return Status::Corruption("tensor '" + t.name + "': unknown type id " + std::to_string(type));
    t.type = static_cast<DType>(type);
    if (t.ne[0] % tr->block_size != 0) {
      return Status::Corruption("tensor '" + t.name + "': row length " + std::to_string(t.ne[0]) + " is not a multiple of the " + tr->name + " block size " + std::to_string(tr->block_size));
    }
    uint64_t nbytes;
    if (mul_overflows(n_el / tr->block_size, tr->type_size, &nbytes)) return Status::Corruption("tensor '" + t.name + "': byte size overflows");
    t.nbytes = nbytes;
    DS_RETURN_IF_ERROR(c.read(&t.offset, "tensor offset"));
    if (t.offset % alignment_ != 0) return Status::Corruption("tensor '" + t.name + "': offset " + std::to_string(t.offset) + " is not aligned to " + std::to_string(alignment_));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (n_tensors > 0 && data_start > size_) return Status::Corruption("file is truncated: the tensor data section is missing");
  for (GgufTensor& t : tensors_) {
    uint64_t end;
    if (__builtin_add_overflow(data_start, t.offset, &end) || __builtin_add_overflow(end, t.nbytes, &end) || end > size_) {
      return Status::Corruption("tensor '" + t.name + "' (" + dtype_name(t.type) + " " + t.shape_string() + ", " +
                                std::to_string(t.nbytes) + " bytes at data offset " + std::to_string(t.offset) +
                                ") ends past the end of the file (" + std::to_string(size_) + " bytes): the file is truncated or corrupt");
    }
    t.data = base_ + data_start + t.offset;
  }
  return Status::Ok();
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(std::string(key));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
Status wrong_type(std::string_view key, const char* want, GgufType got) {
  return Status::InvalidArgument("metadata '" + std::string(key) + "' should be " + want + " but is " + gguf_type_name(got));
}
}  // namespace

Status GgufFile::get_string(std::string_view key, std::string* out) const {
  const GgufValue* v = find(key);
  if (!v) return Status::NotFound("metadata '" + std::string(key) + "' is missing");
  if (v->type != GgufType::kString) return wrong_type(key, "a string", v->type);
  *out = v->s;
  return Status::Ok();
}

Status GgufFile::get_u32(std::string_view key, uint32_t* out) const {
  const GgufValue* v = find(key);
  if (!v) return Status::NotFound("metadata '" + std::string(key) + "' is missing");
  if (!v->is_integer()) return wrong_type(key, "an integer", v->type);
  if (v->i < 0 || v->u > std::numeric_limits<uint32_t>::max()) {
    return Status::InvalidArgument("metadata '" + std::string(key) + "' = " + std::to_string(v->i) + " is out of range");
  }
  *out = static_cast<uint32_t>(v->u);
  return Status::Ok();
}

Status GgufFile::get_f32(std::string_view key, float* out) const {
  const GgufValue* v = find(key);
  if (!v) return Status::NotFound("metadata '" + std::string(key) + "' is missing");
  if (v->is_float()) *out = static_cast<float>(v->f);
  else if (v->is_integer()) *out = static_cast<float>(v->i);
  else return wrong_type(key, "a number", v->type);
  return Status::Ok();
}

Status GgufFile::get_bool(std::string_view key, bool* out) const {
  const GgufValue* v = find(key);
  if (!v) return Status::NotFound("metadata '" + std::string(key) + "' is missing");
  if (v->type != GgufType::kBool) return wrong_type(key, "a bool", v->type);
  *out = v->b;
  return Status::Ok();
}

Status GgufFile::get_array(std::string_view key, GgufType elem, const GgufValue** out) const {
  const GgufValue* v = find(key);
  if (!v) return Status::NotFound("metadata '" + std::string(key) + "' is missing");
  if (v->type != GgufType::kArray) return wrong_type(key, "an array", v->type);
  const bool int_ok = elem == GgufType::kInt32 && (v->arr_type == GgufType::kInt32 || v->arr_type == GgufType::kUint32 ||
                                                   v->arr_type == GgufType::kInt64 || v->arr_type == GgufType::kUint8 ||
                                                   v->arr_type == GgufType::kInt8 || v->arr_type == GgufType::kInt16 ||
                                                   v->arr_type == GgufType::kUint16);
  const bool float_ok = elem == GgufType::kFloat32 && (v->arr_type == GgufType::kFloat32 || v->arr_type == GgufType::kFloat64);
  if (v->arr_type != elem && !int_ok && !float_ok) {
    return Status::InvalidArgument("metadata '" + std::string(key) + "' should be an array of " + gguf_type_name(elem) +
                                   " but holds " + gguf_type_name(v->arr_type));
  }
  *out = v;
  return Status::Ok();
}

}  // namespace ds
