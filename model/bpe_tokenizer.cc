// Byte-level BPE ("gpt2" tokenizer in GGUF), as GPT-2, Llama 3, Qwen2 and DeepSeek use.
//
// Encoding a run of plain text:
//   1. Pre-tokenize: split the text into words with the regex tokenizer.ggml.pre names.
//      Each regex is a hand-written scanner below (std::regex knows no \p{L}). A pre
//      type may be a sequence of regexes: each splits every piece the previous ones
//      left, keeping both the matches and the text between them as pieces ("Isolated"
//      splitting in HF tokenizers, what llama.cpp's unicode_regex_split does).
//   2. Per word, start from one symbol per byte (the token spelling that byte through
//      GPT-2's bytes_to_unicode map) and repeatedly merge the adjacent pair with the
//      lowest merge rank (leftmost on ties) until no pair has a rank. Every final
//      symbol is a vocabulary token.
// Decoding maps a token's code points back through the inverse byte map.
//
// Supported tokenizer.ggml.pre values and their regexes (as llama.cpp's llama-vocab.cpp):
//   default, gpt-2   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//                    (llama.cpp gives an unnamed pre type its own "default" regex set; ds
//                    uses GPT-2's, which is what a byte-level BPE without a name expects)
//   llama-bpe        (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//   (llama3,          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//    llama-v3)       and a word that is itself a token skips the merges (ignore_merges)
//   qwen2            the llama-bpe regex with \p{N} instead of \p{N}{1,3}
//   deepseek-llm     [\r\n] ; \s?[cased letters]+ ; \s?[ASCII and CJK punctuation]+ ;
//                    \s+$ ; [CJK]+ ; \p{N}+
//   deepseek-coder   [\r\n] ; \s?\p{L}+ ; \s?\p{P}+ ; [CJK]+ ; \p{N}
// \s is the Unicode White_Space property; categories come from model/unicode.h.
// Malformed UTF-8 is tolerated: an undecodable byte counts as U+FFFD while its own
// byte is what gets encoded.
#include <algorithm>

#include "model/tokenizer.h"
#include "model/unicode.h"

namespace ds {
namespace {

using unicode::is_letter;
using unicode::is_number;
using unicode::is_whitespace;

// ---- GPT-2 bytes_to_unicode ----------------------------------------------------------
// The 188 printable bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for
// themselves; the other 68 map to U+0100, U+0101, ... in byte order.
constexpr uint32_t kByteMapEnd = 0x100 + 68;  // code points past this are not bytes

struct ByteMap {
  uint32_t byte_to_cp[256];
  int16_t cp_to_byte[kByteMapEnd];  // -1: not a byte's code point
};

const ByteMap& byte_map() {
  static const ByteMap m = [] {
    ByteMap b{};
    std::fill(std::begin(b.cp_to_byte), std::end(b.cp_to_byte), static_cast<int16_t>(-1));
    uint32_t next = 0x100;
    for (uint32_t c = 0; c < 256; ++c) {
      const bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
      b.byte_to_cp[c] = printable ? c : next++;
      b.cp_to_byte[b.byte_to_cp[c]] = static_cast<int16_t>(c);
    }
    return b;
  }();
  return m;
}

// ---- pre-tokenizer scanners ----------------------------------------------------------
// A Span is a piece of the text in code point indices [begin, end).
struct Span {
  size_t begin, end;
};
// Splits one piece into consecutive sub-pieces that cover it, appended to out.
using SplitFn = void (*)(const uint32_t* cp, Span piece, std::vector<Span>* out);

// Length of the match of one regex starting at pos, or 0 for none. A scanner sees only
// its piece: end is the end of the subject (where (?!\S) and $ hold).
template <typename Pred>
size_t run(const uint32_t* cp, size_t pos, size_t end, Pred pred) {
  size_t i = pos;
  while (i < end && pred(cp[i])) ++i;
  return i - pos;
}

// Applies a scanner over a piece as a leftmost-first regex search: matches and the
// gaps between them both become pieces.
template <typename Match>
void split_isolated(const uint32_t* cp, Span piece, std::vector<Span>* out, Match match) {
  size_t gap = piece.begin;
  for (size_t pos = piece.begin; pos < piece.end;) {
    const size_t n = match(cp, pos, piece.end);
    if (n == 0) {
      ++pos;
      continue;
    }
    if (gap < pos) out->push_back({gap, pos});
    out->push_back({pos, pos + n});
    pos += n;
    gap = pos;
  }
  if (gap < piece.end) out->push_back({gap, piece.end});
}

bool is_cr_lf(uint32_t c) { return c == '\r' || c == '\n'; }
// [^\s\p{L}\p{N}]
bool is_other(uint32_t c) { return !is_whitespace(c) && !is_letter(c) && !is_number(c); }

// 's|'t|'re|'ve|'m|'ll|'d, optionally ASCII case-insensitive.
size_t match_contraction(const uint32_t* cp, size_t pos, size_t end, bool ignore_case) {
  if (cp[pos] != '\'' || pos + 1 >= end) return 0;
  auto low = [&](uint32_t c) { return ignore_case && c >= 'A' && c <= 'Z' ? c + 32 : c; };
  const uint32_t c1 = low(cp[pos + 1]);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (pos + 2 >= end) return 0;
  const uint32_t c2 = low(cp[pos + 2]);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ : a whitespace run, less its last character when a non-space follows
// (that one goes with the next word) unless it is the only one.
size_t match_space_run(const uint32_t* cp, size_t pos, size_t end) {
  const size_t k = run(cp, pos, end, is_whitespace);
  if (k <= 1 || pos + k == end) return k;
  return k - 1;
}

// ' ?' followed by one or more of a class.
template <typename Pred>
size_t match_space_then_run(const uint32_t* cp, size_t pos, size_t end, Pred pred) {
  if (cp[pos] == ' ' && pos + 1 < end && pred(cp[pos + 1])) return 1 + run(cp, pos + 1, end, pred);
  return run(cp, pos, end, pred);
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t match_gpt2(const uint32_t* cp, size_t pos, size_t end) {
  size_t n = match_contraction(cp, pos, end, false);
  if (n == 0) n = match_space_then_run(cp, pos, end, [](uint32_t c) { return is_letter(c); });
  if (n == 0) n = match_space_then_run(cp, pos, end, [](uint32_t c) { return is_number(c); });
  if (n == 0) n = match_space_then_run(cp, pos, end, is_other);
  if (n == 0) n = match_space_run(cp, pos, end);
  return n;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
//  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
size_t match_llama3(const uint32_t* cp, size_t pos, size_t end, size_t max_digits) {
  if (size_t n = match_contraction(cp, pos, end, true)) return n;
  auto letter = [](uint32_t c) { return is_letter(c); };
  const uint32_t c = cp[pos];
  if (is_letter(c)) return run(cp, pos, end, letter);
  if (!is_cr_lf(c) && !is_number(c) && pos + 1 < end && is_letter(cp[pos + 1])) {
    return 1 + run(cp, pos + 1, end, letter);
  }
  if (is_number(c)) return std::min(max_digits, run(cp, pos, end, [](uint32_t x) { return is_number(x); }));
  const size_t q = (c == ' ' && pos + 1 < end && is_other(cp[pos + 1])) ? pos + 1 : pos;
  if (is_other(cp[q])) {
    size_t e = q + run(cp, q, end, is_other);
    e += run(cp, e, end, is_cr_lf);
    return e - pos;
  }
  const size_t k = run(cp, pos, end, is_whitespace);
  for (size_t i = pos + k; i > pos; --i) {
    if (is_cr_lf(cp[i - 1])) return i - pos;  // \s*[\r\n]+ ends at the last CR/LF
  }
  return match_space_run(cp, pos, end);
}

// Code point ranges, sorted and disjoint, for the DeepSeek character classes.
struct Range {
  uint32_t first, last;
};

template <size_t N>
bool in_ranges(const Range (&ranges)[N], uint32_t c) {
  const Range* it = std::upper_bound(ranges, ranges + N, c, [](uint32_t x, const Range& r) { return x < r.first; });
  return it != ranges && c <= (it - 1)->last;
}

// deepseek-llm's letter class: the cased letters of its tokenizer.json regex
// ([A-Za-zµÀ-ÖØ-öø-ƺ...𞤀-𞥃]), written as code points.
constexpr Range kDeepseekLetters[] = {
    {0x0041, 0x005A}, {0x0061, 0x007A}, {0x00B5, 0x00B5}, {0x00C0, 0x00D6}, {0x00D8, 0x00F6}, {0x00F8, 0x01BA},
    {0x01BC, 0x01BF}, {0x01C4, 0x0293}, {0x0295, 0x02AF}, {0x0370, 0x0373}, {0x0376, 0x0377}, {0x037B, 0x037D},
    {0x037F, 0x037F}, {0x0386, 0x0386}, {0x0388, 0x038A}, {0x038C, 0x038C}, {0x038E, 0x03A1}, {0x03A3, 0x03F5},
    {0x03F7, 0x0481}, {0x048A, 0x052F}, {0x0531, 0x0556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124},
    {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F},
    {0x2145, 0x2149}, {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2CF2, 0x2CF3}, {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E},
    {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F},
    {0x104B0, 0x104D3}, {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF},
    {0x1E900, 0x1E943},
};
// [!-/:-~！-／：-～‘-‟　-。]
constexpr Range kDeepseekPunct[] = {
    {0x0021, 0x002F}, {0x003A, 0x007E}, {0x2018, 0x201F}, {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E},
};
// [一-龥ࠀ-一가-퟿]
constexpr Range kDeepseekCjk[] = {{0x0800, 0x9FA5}, {0xAC00, 0xD7FF}};

bool deepseek_letter(uint32_t c) { return in_ranges(kDeepseekLetters, c); }
bool deepseek_punct(uint32_t c) { return in_ranges(kDeepseekPunct, c); }
bool deepseek_cjk(uint32_t c) { return in_ranges(kDeepseekCjk, c); }

// \s?X+
template <typename Pred>
size_t match_ws_then_run(const uint32_t* cp, size_t pos, size_t end, Pred pred) {
  if (is_whitespace(cp[pos]) && pos + 1 < end && pred(cp[pos + 1])) return 1 + run(cp, pos + 1, end, pred);
  return run(cp, pos, end, pred);
}

void split_gpt2(const uint32_t* cp, Span s, std::vector<Span>* out) { split_isolated(cp, s, out, match_gpt2); }

void split_llama3(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) { return match_llama3(c, pos, end, 3); });
}

void split_qwen2(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) { return match_llama3(c, pos, end, 1); });
}

// [\r\n]
void split_cr_lf(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t) -> size_t { return is_cr_lf(c[pos]) ? 1 : 0; });
}

// \s+$ : the piece's trailing whitespace.
void split_trailing_space(const uint32_t* cp, Span s, std::vector<Span>* out) {
  size_t t = s.end;
  while (t > s.begin && is_whitespace(cp[t - 1])) --t;
  if (t > s.begin) out->push_back({s.begin, t});
  if (t < s.end) out->push_back({t, s.end});
}

void split_deepseek_llm_letters(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) {
    return match_ws_then_run(c, pos, end, deepseek_letter);
  });
}

void split_deepseek_llm_punct(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) {
    return match_ws_then_run(c, pos, end, deepseek_punct);
  });
}

void split_cjk_runs(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) { return run(c, pos, end, deepseek_cjk); });
}

// \p{N}+
void split_number_runs(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) {
    return run(c, pos, end, [](uint32_t x) { return is_number(x); });
  });
}

// \p{N}
void split_digits(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t) -> size_t { return is_number(c[pos]) ? 1 : 0; });
}

// \s?\p{L}+
void split_ws_letters(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) {
    return match_ws_then_run(c, pos, end, [](uint32_t x) { return is_letter(x); });
  });
}

// \s?\p{P}+
void split_ws_punct(const uint32_t* cp, Span s, std::vector<Span>* out) {
  split_isolated(cp, s, out, [](const uint32_t* c, size_t pos, size_t end) {
    return match_ws_then_run(c, pos, end, [](uint32_t x) { return unicode::is_punctuation(x); });
  });
}

struct PreTokenizer {
  std::vector<SplitFn> passes;
  bool ignore_merges = false;  // a word that is a token is emitted whole
};

constexpr const char* kSupportedPre =
    "default, gpt-2, llama-bpe (llama3, llama-v3), qwen2, deepseek-llm, deepseek-coder";

Result<PreTokenizer> pre_tokenizer_for(const std::string& pre) {
  PreTokenizer p;
  if (pre == "default" || pre == "gpt-2") {
    p.passes = {split_gpt2};
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    p.passes = {split_llama3};
    p.ignore_merges = true;
  } else if (pre == "qwen2") {
    p.passes = {split_qwen2};
  } else if (pre == "deepseek-llm") {
    p.passes = {split_cr_lf, split_deepseek_llm_letters, split_deepseek_llm_punct, split_trailing_space,
                split_cjk_runs, split_number_runs};
  } else if (pre == "deepseek-coder") {
    p.passes = {split_cr_lf, split_ws_letters, split_ws_punct, split_cjk_runs, split_digits};
  } else {
    return Status::NotSupported("tokenizer.ggml.pre '" + pre + "' is not supported by the gpt2 (byte-level BPE) " +
                                "tokenizer; ds supports: " + kSupportedPre);
  }
  return p;
}

// ---- the tokenizer ---------------------------------------------------------------------

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(Vocab v, PreTokenizer pre) : Tokenizer(std::move(v)), pre_(std::move(pre)) {}

  // Resolves the byte tokens and the merges; Corruption on a malformed merge.
  Status init() {
    const ByteMap& bm = byte_map();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      unicode::append_utf8(bm.byte_to_cp[b], &s);
      byte_ids_[b] = vocab_.find(s);
    }
    merges_.reserve(vocab_.merges.size());
    for (size_t rank = 0; rank < vocab_.merges.size(); ++rank) {
      const std::string& m = vocab_.merges[rank];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= m.size()) {
        return Status::Corruption("tokenizer.ggml.merges[" + std::to_string(rank) + "] = '" + m +
                                  "' is not two tokens separated by a space");
      }
      const std::string_view left(m.data(), sp), right(m.data() + sp + 1, m.size() - sp - 1);
      const int32_t l = vocab_.find(left), r = vocab_.find(right);
      const int32_t merged = vocab_.find(std::string(left) + std::string(right));
      // A merge naming text that is no token can never fire (HF refuses such files;
      // llama.cpp keeps them inert): skip it.
      if (l < 0 || r < 0 || merged < 0) continue;
      merges_.emplace(pair_key(l, r), Merge{static_cast<int32_t>(rank), merged});  // first rank wins
    }
    return Status::Ok();
  }

 protected:
  void encode_text(std::string_view text, bool /*first*/, std::vector<int32_t>* out) const override {
    // Code points and their byte offsets (offsets has one more entry: the end).
    std::vector<uint32_t> cps;
    std::vector<size_t> offsets;
    cps.reserve(text.size());
    offsets.reserve(text.size() + 1);
    for (size_t pos = 0; pos < text.size();) {
      offsets.push_back(pos);
      cps.push_back(unicode::next_code_point(text, &pos));
    }
    offsets.push_back(text.size());
    if (cps.empty()) return;

    std::vector<Span> pieces{{0, cps.size()}}, next;
    for (SplitFn pass : pre_.passes) {
      next.clear();
      for (const Span& s : pieces) pass(cps.data(), s, &next);
      pieces.swap(next);
    }
    Work work;
    for (const Span& s : pieces) {
      encode_word(text.substr(offsets[s.begin], offsets[s.end] - offsets[s.begin]), &work, out);
    }
  }

  std::string normal_piece(int32_t id) const override {
    const std::string& t = vocab_.tokens[id];
    const ByteMap& bm = byte_map();
    std::string out;
    out.reserve(t.size());
    for (size_t pos = 0; pos < t.size();) {
      const size_t at = pos;
      const uint32_t cp = unicode::next_code_point(t, &pos);
      if (cp < kByteMapEnd && bm.cp_to_byte[cp] >= 0) {
        out.push_back(static_cast<char>(bm.cp_to_byte[cp]));
      } else {
        out.append(t, at, pos - at);  // not a byte's code point: keep the text as it is
      }
    }
    return out;
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  struct Symbol {
    int32_t id;  // -1: a byte no token spells
    int prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int left, right;
    int32_t left_id, right_id, merged_id;
  };
  struct LaterFirst {  // heap order: the "largest" (lowest rank, then leftmost) on top
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  // Scratch reused across the words of one encode_text call.
  struct Work {
    std::vector<Symbol> syms;
    std::vector<Candidate> heap;
    std::string encoded;
  };

  void encode_word(std::string_view word, Work* w, std::vector<int32_t>* out) const {
    if (word.empty()) return;
    if (pre_.ignore_merges) {
      const ByteMap& bm = byte_map();
      w->encoded.clear();
      for (char c : word) unicode::append_utf8(bm.byte_to_cp[static_cast<unsigned char>(c)], &w->encoded);
      const int32_t id = vocab_.find(w->encoded);
      if (id >= 0) {
        out->push_back(id);
        return;
      }
    }
    std::vector<Symbol>& syms = w->syms;
    syms.clear();
    const int n = static_cast<int>(word.size());
    for (int i = 0; i < n; ++i) {
      syms.push_back({byte_ids_[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1, true});
    }

    // A min-heap of candidate merges: lowest rank first, then leftmost.
    std::vector<Candidate>& heap = w->heap;
    heap.clear();
    auto consider = [&](int left, int right) {
      if (left < 0 || right < 0 || syms[left].id < 0 || syms[right].id < 0) return;
      const auto it = merges_.find(pair_key(syms[left].id, syms[right].id));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, left, right, syms[left].id, syms[right].id, it->second.id});
      std::push_heap(heap.begin(), heap.end(), LaterFirst{});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);

    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), LaterFirst{});
      const Candidate c = heap.back();
      heap.pop_back();
      Symbol& l = syms[c.left];
      Symbol& r = syms[c.right];
      // Stale when either side was merged away or grew since the pair was queued.
      if (!l.alive || !r.alive || l.next != c.right || l.id != c.left_id || r.id != c.right_id) continue;
      l.id = c.merged_id;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = c.left;
      r.alive = false;
      consider(l.prev, c.left);
      consider(c.left, l.next);
    }

    for (int i = 0; i != -1; i = syms[i].next) {
      if (syms[i].id >= 0) out->push_back(syms[i].id);
      else if (vocab_.unk >= 0) out->push_back(vocab_.unk);
    }
  }

  PreTokenizer pre_;
  int32_t byte_ids_[256];
  std::unordered_map<uint64_t, Merge> merges_;  // (left id, right id) -> rank, merged id
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(Vocab vocab) {
  Result<PreTokenizer> pre = pre_tokenizer_for(vocab.pre);
  if (!pre.ok()) return pre.status();
  auto tok = std::make_unique<BpeTokenizer>(std::move(vocab), std::move(pre).value());
  DS_RETURN_IF_ERROR(tok->init());
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace ds
