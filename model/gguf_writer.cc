#include "model/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace ds {
namespace {

constexpr uint32_t kAlign = 32;

template <typename T>
void put(std::vector<uint8_t>* b, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b->insert(b->end(), p, p + sizeof(T));
}
void put_str(std::vector<uint8_t>* b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b->insert(b->end(), s.begin(), s.end());
}

}  // namespace

void GgufWriter::set_string(const std::string& key, const std::string& v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 8);
  put_str(&kv_, v);
  ++n_kv_;
}
void GgufWriter::set_u32(const std::string& key, uint32_t v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 4);
  put(&kv_, v);
  ++n_kv_;
}
void GgufWriter::set_i32(const std::string& key, int32_t v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 5);
  put(&kv_, v);
  ++n_kv_;
}
void GgufWriter::set_f32(const std::string& key, float v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 6);
  put(&kv_, v);
  ++n_kv_;
}
void GgufWriter::set_bool(const std::string& key, bool v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 7);
  put<uint8_t>(&kv_, v ? 1 : 0);
  ++n_kv_;
}
void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 9);
  put<uint32_t>(&kv_, 8);
  put<uint64_t>(&kv_, v.size());
  for (const auto& s : v) put_str(&kv_, s);
  ++n_kv_;
}
void GgufWriter::set_f32_array(const std::string& key, const std::vector<float>& v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 9);
  put<uint32_t>(&kv_, 6);
  put<uint64_t>(&kv_, v.size());
  for (float x : v) put(&kv_, x);
  ++n_kv_;
}
void GgufWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  put_str(&kv_, key);
  put<uint32_t>(&kv_, 9);
  put<uint32_t>(&kv_, 5);
  put<uint64_t>(&kv_, v.size());
  for (int32_t x : v) put(&kv_, x);
  ++n_kv_;
}

void GgufWriter::add_tensor(const std::string& name, DType type, std::vector<int64_t> ne,
                            std::function<void(std::vector<uint8_t>*)> fill) {
  size_t rows = 1;
  for (size_t d = 1; d < ne.size(); ++d) rows *= static_cast<size_t>(ne[d]);
  const size_t nbytes = row_bytes(type, ne[0]) * rows;
  tensors_.push_back({name, type, std::move(ne), std::move(fill), nbytes});
}

Status GgufWriter::write(const std::string& path, const std::function<void(size_t, size_t)>& progress) const {
  std::vector<uint8_t> head;
  put<uint32_t>(&head, 0x46554747);
  put<uint32_t>(&head, 3);
  put<uint64_t>(&head, tensors_.size());
  put<uint64_t>(&head, n_kv_);
  head.insert(head.end(), kv_.begin(), kv_.end());
  uint64_t offset = 0, total = 0;
  for (const Tensor& t : tensors_) {
    put_str(&head, t.name);
    put<uint32_t>(&head, static_cast<uint32_t>(t.ne.size()));
    for (int64_t n : t.ne) put<uint64_t>(&head, static_cast<uint64_t>(n));
    put<uint32_t>(&head, static_cast<uint32_t>(t.type));
    put<uint64_t>(&head, offset);
    offset += (t.nbytes + kAlign - 1) / kAlign * kAlign;
    total += t.nbytes;
  }
  head.resize((head.size() + kAlign - 1) / kAlign * kAlign, 0);

  const std::string tmp = path + ".tmp";
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(tmp.c_str(), "wb"), &std::fclose);
  if (!f) return Status::IOError("cannot create '" + tmp + "': " + std::strerror(errno));
  auto write_all = [&](const void* p, size_t n) { return std::fwrite(p, 1, n, f.get()) == n; };
  if (!write_all(head.data(), head.size())) return Status::IOError("cannot write '" + tmp + "': " + std::strerror(errno));
  std::vector<uint8_t> buf;
  size_t done = 0;
  static const uint8_t kZeros[kAlign] = {};
  for (const Tensor& t : tensors_) {
    buf.clear();
    buf.reserve(t.nbytes);
    t.fill(&buf);
    if (buf.size() != t.nbytes) return Status::Internal("tensor '" + t.name + "': fill produced " + std::to_string(buf.size()) + " bytes, expected " + std::to_string(t.nbytes));
    const size_t pad = (kAlign - t.nbytes % kAlign) % kAlign;
    if (!write_all(buf.data(), buf.size()) || !write_all(kZeros, pad)) {
      return Status::IOError("cannot write '" + tmp + "': " + std::strerror(errno));
    }
    done += t.nbytes;
    if (progress) progress(done, total);
  }
  if (std::fflush(f.get()) != 0) return Status::IOError("cannot write '" + tmp + "': " + std::strerror(errno));
  f.reset();
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return Status::IOError("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(errno));
  return Status::Ok();
}

}  // namespace ds
