// tests/fuzz/gguf_seed.cc: ds_gguf_seed OUT_DIR [VOCAB_DIR]: writes a seed corpus for
// ds_gguf_fuzz, every file small enough for -max_len=65536:
//   - tiny random models (write_random_model) of several architectures and types;
//   - tiny byte-level BPE ("gpt2") vocabularies, one per supported tokenizer.ggml.pre;
//   - for each *.gguf in VOCAB_DIR (e.g. ../shared/models/vocab): a cut-down copy with its
//     first tokens, the merges among them and its other small metadata.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <unordered_set>
#include <vector>

#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/mkmodel.h"

namespace {

namespace fs = std::filesystem;
using ds::DType;
using ds::GgufType;
using ds::GgufValue;

constexpr size_t kMaxSeed = 65536;
constexpr size_t kKeepTokens = 1000;
constexpr size_t kKeepMerges = 1500;

bool report(const ds::Status& s, const std::string& path) {
  if (!s.ok()) {
    std::fprintf(stderr, "ds_gguf_seed: %s: %s\n", path.c_str(), s.ToString().c_str());
    return false;
  }
  const auto size = fs::file_size(path);
  std::printf("  %-48s %7llu bytes%s\n", fs::path(path).filename().c_str(), static_cast<unsigned long long>(size),
              size > kMaxSeed ? " (longer than -max_len: only its start is fuzzed)" : "");
  return true;
}

ds::ModelSpec spec(const char* arch, int dim, int layers, int heads, int kv_heads, int ffn, int vocab, DType type,
                   bool tied, uint64_t seed) {
  ds::ModelSpec s;
  s.arch = arch;
  s.dim = dim;
  s.layers = layers;
  s.heads = heads;
  s.kv_heads = kv_heads;
  s.ffn = ffn;
  s.vocab = vocab;
  s.ctx = 128;
  s.type = type;
  s.tied_output = tied;
  s.seed = seed;
  return s;
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100...
std::string byte_token(int b) {
  static const std::vector<uint32_t> cps = [] {
    std::vector<uint32_t> m(256);
    uint32_t next = 0x100;
    for (uint32_t c = 0; c < 256; ++c) {
      const bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
      m[c] = printable ? c : next++;
    }
    return m;
  }();
  const uint32_t cp = cps[b];
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A byte-level BPE vocabulary: 256 byte tokens, a few merges, two control tokens.
ds::Status write_bpe_vocab(const std::string& pre, const std::string& path) {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(byte_token(b));
    types.push_back(1);
  }
  const std::string G = "\xc4\xa0";  // U+0120: the space byte
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {G, "t"}, {"h", "e"}, {G + "t", "he"}, {"i", "n"}, {"e", "r"}, {"o", "n"}, {"a", "n"}, {G, "a"},
      {"l", "l"}, {"o", "r"}, {"e", "l"}, {"el", "l"}, {"ell", "o"}, {"H", "ello"}, {G, "w"}, {G + "w", "or"},
      {G + "wor", "l"}, {G + "worl", "d"}, {"1", "2"}, {"12", "3"}, {G, G}, {"\n", "\n"}};
  std::vector<std::string> merges;
  for (const auto& [l, r] : pairs) {
    merges.push_back(l + " " + r);
    tokens.push_back(l + r);
    types.push_back(1);
  }
  tokens.push_back("<|endoftext|>");
  types.push_back(3);
  tokens.push_back("<|user|>");
  types.push_back(4);
  ds::GgufWriter w;
  w.set_string("general.architecture", "gpt2");
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", pre);
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", merges);
  w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tokens.size() - 2));
  w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tokens.size() - 2));
  w.set_bool("tokenizer.ggml.add_bos_token", pre == "llama-bpe");
  return w.write(path);
}

// Writes one metadata value in the closest type GgufWriter has; false when it has none.
bool copy_value(ds::GgufWriter& w, const std::string& key, const GgufValue& v) {
  switch (v.type) {
    case GgufType::kString: w.set_string(key, v.s); return true;
    case GgufType::kBool: w.set_bool(key, v.b); return true;
    case GgufType::kFloat32: case GgufType::kFloat64: w.set_f32(key, static_cast<float>(v.f)); return true;
    case GgufType::kArray:
      if (v.arr_type == GgufType::kString) w.set_string_array(key, v.strings);
      else if (v.arr_type == GgufType::kFloat32 || v.arr_type == GgufType::kFloat64) w.set_f32_array(key, std::vector<float>(v.floats.begin(), v.floats.end()));
      else if (!v.ints.empty() || v.arr_len == 0) w.set_i32_array(key, std::vector<int32_t>(v.ints.begin(), v.ints.end()));
      else return false;
      return true;
    default:
      if (!v.is_integer()) return false;
      if (v.i >= 0 && v.u <= 0xFFFFFFFFu) w.set_u32(key, static_cast<uint32_t>(v.u));
      else if (v.i >= INT32_MIN && v.i <= INT32_MAX) w.set_i32(key, static_cast<int32_t>(v.i));
      else return false;
      return true;
  }
}

// A cut-down copy of a vocabulary GGUF: its first kKeepTokens tokens (with their scores and
// types), the merges that join kept tokens into kept tokens, token ids that stay in range,
// and every other small metadata value. Tensors are dropped.
ds::Status write_small_vocab(const std::string& src, const std::string& path) {
  auto f = ds::GgufFile::Open(src);
  if (!f.ok()) return f.status();
  const GgufValue* tok = (*f)->find("tokenizer.ggml.tokens");
  if (tok == nullptr || tok->type != GgufType::kArray || tok->arr_type != GgufType::kString) {
    return ds::Status::NotFound("no tokenizer.ggml.tokens");
  }
  const size_t n = std::min(kKeepTokens, tok->strings.size());
  std::unordered_set<std::string> kept(tok->strings.begin(), tok->strings.begin() + n);
  ds::GgufWriter w;
  for (const auto& [key, v] : (*f)->metadata()) {
    if (key == "general.alignment") continue;
    GgufValue c = v;
    if (key == "tokenizer.ggml.tokens" || key == "tokenizer.ggml.scores" || key == "tokenizer.ggml.token_type") {
      if (c.strings.size() > n) c.strings.resize(n);
      if (c.floats.size() > n) c.floats.resize(n);
      if (c.ints.size() > n) c.ints.resize(n);
    } else if (key == "tokenizer.ggml.merges") {
      c.strings.clear();
      for (const std::string& m : v.strings) {
        const size_t sp = m.find(' ', 1);
        if (sp == std::string::npos) continue;
        const std::string l = m.substr(0, sp), r = m.substr(sp + 1);
        if (kept.count(l) && kept.count(r) && kept.count(l + r)) c.strings.push_back(m);
        if (c.strings.size() >= kKeepMerges) break;
      }
    } else if (key.size() > 9 && key.compare(key.size() - 9, 9, "_token_id") == 0) {
      if (!v.is_integer() || v.u >= n) continue;
    } else if (v.type == GgufType::kArray && v.arr_len > 64) {
      continue;
    }
    copy_value(w, key, c);
  }
  return w.write(path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s OUT_DIR [VOCAB_DIR]\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  fs::create_directories(out);
  bool ok = true;

  struct Named {
    const char* name;
    ds::ModelSpec spec;
  };
  const std::vector<Named> models = {
      {"seed-llama-q4_0", spec("llama", 32, 1, 2, 1, 32, 300, DType::kQ4_0, true, 1)},
      {"seed-llama-q8_0", spec("llama", 32, 1, 4, 2, 64, 300, DType::kQ8_0, true, 2)},
      {"seed-llama-f16", spec("llama", 32, 1, 2, 2, 32, 300, DType::kF16, true, 3)},
      {"seed-llama-bf16", spec("llama", 32, 1, 2, 1, 32, 320, DType::kBF16, true, 4)},
      {"seed-qwen2-q8_0", spec("qwen2", 32, 1, 2, 1, 64, 300, DType::kQ8_0, true, 5)},
      {"seed-qwen2-q4_0", spec("qwen2", 64, 1, 4, 4, 64, 400, DType::kQ4_0, true, 6)},
      {"seed-llama-2l-q4_0", spec("llama", 64, 2, 4, 2, 64, 300, DType::kQ4_0, false, 7)},
  };
  for (const Named& m : models) {
    const std::string path = out + "/" + m.name + ".gguf";
    ok &= report(ds::write_random_model(m.spec, path), path);
  }
  for (const char* pre : {"gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder"}) {
    const std::string path = out + "/seed-bpe-" + pre + ".gguf";
    ok &= report(write_bpe_vocab(pre, path), path);
  }
  if (argc == 3 && fs::is_directory(argv[2])) {
    std::vector<fs::path> vocabs;
    for (const auto& e : fs::directory_iterator(argv[2]))
      if (e.path().extension() == ".gguf") vocabs.push_back(e.path());
    std::sort(vocabs.begin(), vocabs.end());
    for (const fs::path& v : vocabs) {
      const std::string path = out + "/seed-small-" + v.stem().string() + ".gguf";
      ok &= report(write_small_vocab(v.string(), path), path);
    }
  }
  return ok ? 0 : 1;
}
