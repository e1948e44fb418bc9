// model/tokenizer.h: text <-> token ids from a GGUF vocabulary.
//
// Two families, chosen by tokenizer.ggml.model:
//   "llama": SentencePiece BPE (merges by score) with byte fallback (spm_tokenizer.cc)
//   "gpt2":  byte-level BPE with ranked merges and a pre-tokenizer regex chosen by
//            tokenizer.ggml.pre (gpt-2, llama-bpe, deepseek-llm, deepseek-coder, qwen2)
//            (bpe_tokenizer.cc)
// Special (control) tokens written in user text are plain text unless parse_special
// is set. Decoding turns ids back into bytes; IncrementalDecoder cuts a token stream
// into valid UTF-8 pieces for streaming.
//
// Thread-safety: a Tokenizer is immutable after creation; share it freely.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/gguf.h"
#include "model/status.h"

namespace ds {

// GGUF tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

// The vocabulary as stored in GGUF metadata.
struct Vocab {
  std::string model;  // "llama" or "gpt2"
  std::string pre;    // tokenizer.ggml.pre ("default" when absent)
  std::vector<std::string> tokens;
  std::vector<float> scores;        // empty for gpt2
  std::vector<TokenType> types;
  std::vector<std::string> merges;  // "a b" pairs, gpt2 only
  std::unordered_map<std::string, int32_t> token_to_id;
  int32_t bos = -1, eos = -1, unk = -1, pad = -1, eot = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;

  int32_t find(std::string_view text) const {
    auto it = token_to_id.find(std::string(text));
    return it == token_to_id.end() ? -1 : it->second;
  }
  int32_t size() const { return static_cast<int32_t>(tokens.size()); }
};

// Reads and checks the tokenizer.* metadata (counts agree, ids in range).
Result<Vocab> load_vocab(const GgufFile& f);

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Builds the tokenizer the vocabulary names; NotSupported for other models.
  static Result<std::unique_ptr<Tokenizer>> Create(Vocab vocab);
  static Result<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& f);

  // Encodes text. add_special: BOS (and EOS) where the vocabulary asks for them.
  // parse_special: text spelling a control token (e.g. "<|endoftext|>") becomes that token.
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special = false) const;
  // The bytes a token stands for ("" for control tokens unless render_special).
  std::string token_to_piece(int32_t id, bool render_special = false) const;
  // Concatenated pieces of ids (control tokens skipped).
  std::string decode(const std::vector<int32_t>& ids) const;

  const Vocab& vocab() const { return vocab_; }
  int32_t n_vocab() const { return vocab_.size(); }
  int32_t bos() const { return vocab_.bos; }
  int32_t eos() const { return vocab_.eos; }
  bool add_bos() const { return vocab_.add_bos; }
  // End of generation: EOS or EOT.
  bool is_eog(int32_t id) const { return id >= 0 && (id == vocab_.eos || id == vocab_.eot); }

 protected:
  explicit Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {}
  // Encodes one run of plain text (no special tokens in it). first: the run starts the
  // input or follows a special token (SentencePiece adds its space prefix there).
  virtual void encode_text(std::string_view text, bool first, std::vector<int32_t>* out) const = 0;
  // The bytes of a normal token's text (SentencePiece: U+2581 -> ' '; byte-level BPE:
  // the GPT-2 byte-to-unicode map reversed).
  virtual std::string normal_piece(int32_t id) const = 0;

  Vocab vocab_;
  std::vector<int32_t> special_ids_;  // control + user-defined tokens, longest text first
};

// Implemented in spm_tokenizer.cc and bpe_tokenizer.cc.
Result<std::unique_ptr<Tokenizer>> make_spm_tokenizer(Vocab vocab);
Result<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(Vocab vocab);

// Turns a stream of token ids into text pieces that are always valid UTF-8: bytes of an
// incomplete character are held back until the character completes.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tok) : tok_(tok) {}
  // Returns the text that became complete with this token (may be empty).
  std::string push(int32_t id);
  // Returns what is held back (invalid bytes replaced by U+FFFD) and resets.
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

// Length of the longest prefix of s that is complete, valid UTF-8... up to an
// incomplete trailing sequence (used by IncrementalDecoder and stop strings).
size_t utf8_complete_prefix(std::string_view s);

}  // namespace ds
