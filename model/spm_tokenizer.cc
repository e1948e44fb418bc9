// SentencePiece-style BPE ("llama" tokenizer in GGUF): spaces become U+2581, a space
// is prefixed to the text, adjacent symbols are merged greedily by the score of the
// merged token (highest first, leftmost on ties), and what no token covers falls back
// to <0xXX> byte tokens. Same algorithm as llama.cpp's llm_tokenizer_spm.
#include <cstdio>
#include <queue>

#include "model/tokenizer.h"

namespace ds {
namespace {

constexpr std::string_view kSpace = "\xe2\x96\x81";  // U+2581

size_t utf8_len(unsigned char c) {
  static const size_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[c >> 4];
}

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(Vocab v) : Tokenizer(std::move(v)) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      byte_ids_[b] = vocab_.find(name);
    }
  }

 protected:
  void encode_text(std::string_view raw, bool first, std::vector<int32_t>* out) const override {
    std::string text;
    if (vocab_.add_space_prefix && first) text += kSpace;
    for (char c : raw) {
      if (c == ' ') text += kSpace;
      else text += c;
    }

    // Symbols: a doubly linked list over UTF-8 characters of text.
    struct Sym {
      int prev, next;
      size_t pos, len;
    };
    std::vector<Sym> syms;
    for (size_t i = 0; i < text.size();) {
      const size_t len = std::min(utf8_len(static_cast<unsigned char>(text[i])), text.size() - i);
      syms.push_back({static_cast<int>(syms.size()) - 1, static_cast<int>(syms.size()) + 1, i, len});
      i += len;
    }
    if (syms.empty()) return;
    syms.back().next = -1;

    struct Bigram {
      int left, right;
      float score;
      size_t size;
    };
    auto cmp = [](const Bigram& a, const Bigram& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(cmp)> queue(cmp);
    auto try_add = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const std::string s = text.substr(syms[left].pos, syms[left].len + syms[right].len);
      const int32_t id = vocab_.find(s);
      if (id < 0 || static_cast<size_t>(id) >= vocab_.scores.size()) return;
      queue.push({left, right, vocab_.scores[id], s.size()});
    };
    for (size_t i = 1; i < syms.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));

    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Sym& l = syms[b.left];
      Sym& r = syms[b.right];
      if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }

    // Every merged symbol is a vocabulary token (merges are only made into tokens), so
    // a final symbol is either a token or a single character no token covers: bytes.
    for (int i = 0; i != -1; i = syms[i].next) {
      const int32_t id = vocab_.find(text.substr(syms[i].pos, syms[i].len));
      if (id >= 0) {
        out->push_back(id);
        continue;
      }
      for (size_t k = 0; k < syms[i].len; ++k) {
        const int32_t bid = byte_ids_[static_cast<unsigned char>(text[syms[i].pos + k])];
        out->push_back(bid >= 0 ? bid : vocab_.unk);
      }
    }
  }

  std::string normal_piece(int32_t id) const override {
    std::string s = vocab_.tokens[id];
    std::string out;
    for (size_t i = 0; i < s.size();) {
      if (s.compare(i, kSpace.size(), kSpace) == 0) {
        out += ' ';
        i += kSpace.size();
      } else {
        out += s[i++];
      }
    }
    return out;
  }

 private:
  int32_t byte_ids_[256];
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_spm_tokenizer(Vocab vocab) {
  if (vocab.scores.size() != vocab.tokens.size()) {
    return Status::Corruption("a SentencePiece ('llama') vocabulary needs tokenizer.ggml.scores for every token");
  }
  return std::unique_ptr<Tokenizer>(new SpmTokenizer(std::move(vocab)));
}

}  // namespace ds
