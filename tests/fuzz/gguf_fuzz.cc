// tests/fuzz/gguf_fuzz.cc: libFuzzer target for the GGUF reader and the model loader.
//
// Each input is a GGUF image. It is parsed with GgufFile::FromMemory; when it parses, it is
// loaded with Model::FromGguf (full, then vocab_only) and, when that succeeds, a short text
// (a fixed string plus the input's last bytes, so the text varies too) is encoded and
// decoded. Any crash, sanitizer report, leak, timeout or huge allocation is a bug.
// Build and run with tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/model.h"
#include "model/tokenizer.h"

namespace {

void exercise_tokenizer(const ds::Tokenizer& tok, const uint8_t* data, size_t size) {
  std::string text = "Hello, world! 123 h\xc3\xa9llo \xe4\xb8\xad\xe6\x96\x87\n\t  <s></s> ";
  const size_t tail = size < 48 ? size : 48;
  text.append(reinterpret_cast<const char*>(data + size - tail), tail);
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = tok.encode(text, /*add_special=*/special, /*parse_special=*/special);
    const std::string back = tok.decode(ids);
    ds::IncrementalDecoder dec(tok);
    std::string streamed;
    for (int32_t id : ids) streamed += dec.push(id);
    streamed += dec.flush();
    (void)back;
    (void)streamed;
  }
  (void)tok.token_to_piece(tok.bos(), /*render_special=*/true);
  (void)tok.token_to_piece(tok.n_vocab() - 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (bool vocab_only : {false, true}) {
    auto file = ds::GgufFile::FromMemory(data, size, "fuzz.gguf");
    if (!file.ok()) return 0;
    ds::LoadOptions opts;
    opts.vocab_only = vocab_only;
    auto model = ds::Model::FromGguf(std::move(file).value(), opts);
    if (!model.ok()) continue;
    const ds::Model& m = *model.value();
    if (!vocab_only) (void)m.weight_type_name();
    exercise_tokenizer(m.tokenizer(), data, size);
  }
  return 0;
}
