// Tokenizer tests: llama.cpp's reference vocabularies (shared/models/vocab/*.gguf with
// their .inp/.out cases, made with the HF tokenizers), decode round trips, incremental
// decoding, special tokens, and self-contained checks of the BPE and Unicode code.
#include "model/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "model/unicode.h"
#include "test_util.h"

namespace ds {
namespace {

struct VocabCase {
  std::string text;
  std::vector<int32_t> ids;
};

// Reads name.inp / name.out the way llama.cpp's tests/test-tokenizer-0.cpp does: inputs
// are separated by "\n__ggml_vocab_test__\n" (the file ends with one), and line i of the
// .out file holds the space-separated ids of input i (an empty line: no ids).
std::vector<VocabCase> read_cases(const std::string& base) {
  const std::string inp = test::read_file(base + ".inp");
  const std::string out = test::read_file(base + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) {
      texts.push_back(inp.substr(pos));
      break;
    }
    texts.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<std::vector<int32_t>> ids;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::vector<int32_t> v;
    for (int32_t id; words >> id;) v.push_back(id);
    ids.push_back(std::move(v));
  }
  std::vector<VocabCase> cases;
  if (texts.size() != ids.size()) return cases;  // the caller reports the mismatch
  for (size_t i = 0; i < texts.size(); ++i) cases.push_back({texts[i], ids[i]});
  return cases;
}

std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s + "]";
}

// True when s is well-formed UTF-8 (no code point decodes as a replacement it wasn't).
bool valid_utf8(const std::string& s) {
  for (size_t pos = 0; pos < s.size();) {
    const size_t at = pos;
    if (unicode::next_code_point(s, &pos) == unicode::kReplacementChar && s.compare(at, 3, "\xEF\xBF\xBD") != 0) {
      return false;
    }
  }
  return true;
}

// GPT-2's bytes_to_unicode, written independently of bpe_tokenizer.cc.
std::string byte_token(unsigned char b) {
  uint32_t cp = b;
  const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  if (!printable) {
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; ++c) {
      if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) ++n;
    }
    cp = 0x100 + n;
  }
  std::string s;
  unicode::append_utf8(cp, &s);
  return s;
}

std::unique_ptr<Tokenizer> load_vocab_file(const std::string& name) {
  const std::string path = test::shared_models() + "/vocab/ggml-vocab-" + name + ".gguf";
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << path << ": " << f.status().ToString();
  if (!f.ok()) return nullptr;
  auto tok = Tokenizer::FromGguf(**f);
  EXPECT_TRUE(tok.ok()) << path << ": " << tok.status().ToString();
  if (!tok.ok()) return nullptr;
  return std::move(tok).value();
}

// Every reference case of one vocabulary: ids equal, and decoding gives the text back.
void check_reference_cases(const std::string& name) {
  std::unique_ptr<Tokenizer> tok = load_vocab_file(name);
  ASSERT_NE(tok, nullptr);
  const std::string base = test::shared_models() + "/vocab/ggml-vocab-" + name + ".gguf";
  const std::vector<VocabCase> cases = read_cases(base);
  ASSERT_FALSE(cases.empty()) << base << ".inp/.out: missing, or different numbers of cases";
  // SentencePiece puts one space before the text (add_space_prefix); decoding keeps it.
  // llama.cpp's detokenizer strips it again; here we check it is exactly that one space.
  const bool space_prefix = tok->vocab().model == "llama" && tok->vocab().add_space_prefix;
  int ids_ok = 0, decode_ok = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const VocabCase& c = cases[i];
    const std::vector<int32_t> got = tok->encode(c.text, /*add_special=*/false);
    if (got == c.ids) {
      ++ids_ok;
    } else {
      ADD_FAILURE() << name << " case " << i << ": '" << escaped(c.text) << "'\n  expected " << ids_str(c.ids)
                    << "\n  got      " << ids_str(got);
    }
    const std::string want = (space_prefix && !c.text.empty() ? " " : "") + c.text;
    const std::string back = tok->decode(got);
    if (back == want) {
      ++decode_ok;
    } else {
      ADD_FAILURE() << name << " case " << i << ": decode(encode('" << escaped(c.text) << "')) = '" << escaped(back)
                    << "'";
    }
  }
  std::printf("[ %-14s ] %d/%zu cases encode as the reference, %d/%zu decode back\n", name.c_str(), ids_ok,
              cases.size(), decode_ok, cases.size());
}

TEST(TokenizerVocab, LlamaSpm) {
  DS_REQUIRE_SHARED_MODELS();
  check_reference_cases("llama-spm");
}

TEST(TokenizerVocab, Gpt2) {
  DS_REQUIRE_SHARED_MODELS();
  check_reference_cases("gpt-2");
}

TEST(TokenizerVocab, DeepseekLlm) {
  DS_REQUIRE_SHARED_MODELS();
  check_reference_cases("deepseek-llm");
}

TEST(TokenizerVocab, DeepseekCoder) {
  DS_REQUIRE_SHARED_MODELS();
  check_reference_cases("deepseek-coder");
}

// Byte-level BPE must give back any byte string, malformed UTF-8 included, as long as
// every byte has a normal token. The DeepSeek vocabularies lack normal tokens for the
// bytes that never occur in UTF-8 (C0, C1, F5..FF): their spellings ("À", "ü", ...)
// are user-defined tokens that stand for the character itself, so those bytes are left
// out of their inputs.
TEST(TokenizerVocab, BpeRoundTripsRandomBytes) {
  DS_REQUIRE_SHARED_MODELS();
  std::mt19937 rng(7);
  for (const char* name : {"gpt-2", "deepseek-llm", "deepseek-coder"}) {
    std::unique_ptr<Tokenizer> tok = load_vocab_file(name);
    ASSERT_NE(tok, nullptr);
    std::vector<char> bytes;
    for (int b = 0; b < 256; ++b) {
      const int32_t id = tok->vocab().find(byte_token(static_cast<unsigned char>(b)));
      if (id >= 0 && tok->vocab().types[id] == TokenType::kNormal) bytes.push_back(static_cast<char>(b));
    }
    if (std::string(name) == "gpt-2") EXPECT_EQ(bytes.size(), 256u);
    else EXPECT_EQ(bytes.size(), 256u - 13u) << name;
    for (int trial = 0; trial < 50; ++trial) {
      std::string s(rng() % 64, '\0');
      for (char& c : s) c = bytes[rng() % bytes.size()];
      EXPECT_EQ(tok->decode(tok->encode(s, false)), s) << name << " trial " << trial;
    }
  }
}

// User-defined tokens are split out of plain text even without parse_special (HF and
// llama.cpp do the same): deepseek-coder spells "ü" with one.
TEST(TokenizerSpecial, UserDefinedTokensAlwaysMatch) {
  DS_REQUIRE_SHARED_MODELS();
  std::unique_ptr<Tokenizer> tok = load_vocab_file("deepseek-coder");
  ASSERT_NE(tok, nullptr);
  const int32_t u = tok->vocab().find("ü");
  ASSERT_GE(u, 0);
  EXPECT_EQ(tok->vocab().types[u], TokenType::kUserDefined);
  const std::vector<int32_t> ids = tok->encode("Führer", false);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), u), 1) << ids_str(ids);
  EXPECT_EQ(tok->decode(ids), "Führer");
}

// Pushing tokens one at a time yields only valid UTF-8 pieces that add up to the text,
// even where one character is spread over several byte tokens.
TEST(TokenizerIncremental, PiecesAreValidUtf8) {
  DS_REQUIRE_SHARED_MODELS();
  const std::string text = "нещо 🦙 на Български 😶‍🌫️ 我想在apple工作";
  for (const char* name : {"gpt-2", "llama-spm", "deepseek-llm"}) {
    std::unique_ptr<Tokenizer> tok = load_vocab_file(name);
    ASSERT_NE(tok, nullptr);
    const std::vector<int32_t> ids = tok->encode(text, false);
    IncrementalDecoder dec(*tok);
    std::string all;
    int held_back = 0;
    for (int32_t id : ids) {
      const std::string piece = dec.push(id);
      EXPECT_TRUE(valid_utf8(piece)) << name << ": '" << escaped(piece) << "' after token " << id;
      if (piece.empty()) ++held_back;
      all += piece;
    }
    EXPECT_EQ(dec.flush(), "") << name;
    const std::string want = (tok->vocab().model == "llama" ? " " : "") + text;
    EXPECT_EQ(all, want) << name;
    EXPECT_GT(held_back, 0) << name << ": no token split a character, so nothing was held back";
  }
}

TEST(TokenizerIncremental, FlushReplacesIncompleteCharacter) {
  DS_REQUIRE_SHARED_MODELS();
  std::unique_ptr<Tokenizer> tok = load_vocab_file("gpt-2");
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = tok->encode("🦙", false);
  ASSERT_GT(ids.size(), 1u);
  IncrementalDecoder dec(*tok);
  EXPECT_EQ(dec.push(ids[0]), "");
  const std::string rest = dec.flush();
  EXPECT_FALSE(rest.empty());
  EXPECT_TRUE(valid_utf8(rest));
}

TEST(TokenizerSpecial, EndOfTextIsTextUnlessParsed) {
  DS_REQUIRE_SHARED_MODELS();
  std::unique_ptr<Tokenizer> tok = load_vocab_file("gpt-2");
  ASSERT_NE(tok, nullptr);
  const int32_t eot = tok->vocab().find("<|endoftext|>");
  ASSERT_GE(eot, 0);
  EXPECT_EQ(tok->vocab().types[eot], TokenType::kControl);

  const std::string text = "Hello<|endoftext|> world";
  const std::vector<int32_t> plain = tok->encode(text, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), eot), 0) << ids_str(plain);
  EXPECT_EQ(tok->decode(plain), text);

  const std::vector<int32_t> parsed = tok->encode(text, false, /*parse_special=*/true);
  std::vector<int32_t> want = tok->encode("Hello", false);
  want.push_back(eot);
  for (int32_t id : tok->encode(" world", false)) want.push_back(id);
  EXPECT_EQ(parsed, want);
  EXPECT_EQ(tok->encode("<|endoftext|>", false, true), std::vector<int32_t>{eot});

  EXPECT_EQ(tok->token_to_piece(eot), "");
  EXPECT_EQ(tok->token_to_piece(eot, /*render_special=*/true), "<|endoftext|>");
  EXPECT_EQ(tok->decode(parsed), "Hello world");
}

// ---- self-contained checks (no shared models) ------------------------------------------

Vocab tiny_bpe_vocab(const std::string& pre, const std::vector<std::string>& merges) {
  Vocab v;
  v.model = "gpt2";
  v.pre = pre;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_token(static_cast<unsigned char>(b)));
  v.merges = merges;
  for (const std::string& m : merges) {
    const size_t sp = m.find(' ');
    v.tokens.push_back(m.substr(0, sp) + m.substr(sp + 1));
  }
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  for (size_t i = 0; i < v.tokens.size(); ++i) v.token_to_id.emplace(v.tokens[i], static_cast<int32_t>(i));
  return v;
}

TEST(TokenizerBpe, MergesLowestRankFirst) {
  // "l l" outranks "e l", so "hello" becomes h e ll o, then he ll o, then hell o.
  auto tok = Tokenizer::Create(tiny_bpe_vocab("gpt-2", {"l l", "e l", "h e", "he ll", "Ġ w"}));
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  const Vocab& v = (*tok)->vocab();
  EXPECT_EQ((*tok)->encode("hello", false), (std::vector<int32_t>{v.find("hell"), v.find("o")}));
  // " w" merges inside the word " world" but the space in "a  w" ends the word "a".
  EXPECT_EQ((*tok)->encode(" w", false), std::vector<int32_t>{v.find("Ġw")});
  EXPECT_EQ((*tok)->encode("a w", false), (std::vector<int32_t>{'a', v.find("Ġw")}));
  EXPECT_EQ((*tok)->decode((*tok)->encode("hello  world\n", false)), "hello  world\n");
}

TEST(TokenizerBpe, EveryByteRoundTrips) {
  auto tok = Tokenizer::Create(tiny_bpe_vocab("deepseek-coder", {}));
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<int32_t> ids = (*tok)->encode(all, false);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ((*tok)->decode(ids), all);
}

TEST(TokenizerBpe, UnknownPreTypeIsNotSupported) {
  auto tok = Tokenizer::Create(tiny_bpe_vocab("no-such-pre", {}));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(tok.status().message().find("no-such-pre"), std::string::npos);
  EXPECT_NE(tok.status().message().find("deepseek-coder"), std::string::npos);
}

TEST(TokenizerBpe, MalformedMergeIsCorruption) {
  Vocab v = tiny_bpe_vocab("gpt-2", {});
  v.merges.push_back("nospace");
  auto tok = Tokenizer::Create(std::move(v));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kCorruption);
}

TEST(TokenizerUnicode, Categories) {
  EXPECT_TRUE(unicode::is_letter(U'a'));
  EXPECT_TRUE(unicode::is_letter(U'Ж'));
  EXPECT_TRUE(unicode::is_letter(U'我'));
  EXPECT_FALSE(unicode::is_letter(U'1'));
  EXPECT_TRUE(unicode::is_number(U'٣'));  // ARABIC-INDIC DIGIT THREE
  EXPECT_TRUE(unicode::is_number(U'½'));
  EXPECT_TRUE(unicode::is_punctuation(U'¿'));
  EXPECT_FALSE(unicode::is_punctuation(U'$'));
  EXPECT_EQ(unicode::category(U'$'), unicode::Category::kSc);
  EXPECT_EQ(unicode::category(0x0301), unicode::Category::kMn);
  EXPECT_EQ(unicode::category(0x10FFFF), unicode::Category::kCn);
  EXPECT_EQ(unicode::category(0x110000), unicode::Category::kCn);
  EXPECT_TRUE(unicode::is_whitespace(0x3000));
  EXPECT_TRUE(unicode::is_whitespace(0x85));
  EXPECT_FALSE(unicode::is_whitespace(0x200B));  // ZERO WIDTH SPACE is Cf, not White_Space
}

TEST(TokenizerUnicode, Utf8DecodeEncode) {
  const std::string s = "a\xD0\xB6\xE6\x88\x91\xF0\x9F\xA6\x99";  // a ж 我 🦙
  size_t pos = 0;
  std::vector<uint32_t> cps;
  while (pos < s.size()) cps.push_back(unicode::next_code_point(s, &pos));
  EXPECT_EQ(cps, (std::vector<uint32_t>{'a', 0x436, 0x6211, 0x1F999}));
  std::string back;
  for (uint32_t cp : cps) unicode::append_utf8(cp, &back);
  EXPECT_EQ(back, s);
  // Malformed: stray continuation, truncated sequence, overlong, surrogate: one byte each.
  for (const std::string bad : {"\x80", "\xE6\x88", "\xC0\xAF", "\xED\xA0\x80"}) {
    pos = 0;
    EXPECT_EQ(unicode::next_code_point(bad, &pos), unicode::kReplacementChar) << escaped(bad);
    EXPECT_EQ(pos, 1u);
  }
}

}  // namespace
}  // namespace ds
