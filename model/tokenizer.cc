#include "model/tokenizer.h"

#include <algorithm>

namespace ds {

Result<Vocab> load_vocab(const GgufFile& f) {
  Vocab v;
  DS_RETURN_IF_ERROR(f.get_string("tokenizer.ggml.model", &v.model));
  if (!f.get_string("tokenizer.ggml.pre", &v.pre).ok()) v.pre = "default";
  const GgufValue* arr = nullptr;
  DS_RETURN_IF_ERROR(f.get_array("tokenizer.ggml.tokens", GgufType::kString, &arr));
  v.tokens = arr->strings;
  if (v.tokens.empty()) return Status::Corruption("tokenizer.ggml.tokens is empty");
  const size_t n = v.tokens.size();
  if (n > (1u << 24)) return Status::Corruption("tokenizer.ggml.tokens has " + std::to_string(n) + " entries (too many)");
  if (f.get_array("tokenizer.ggml.scores", GgufType::kFloat32, &arr).ok()) {
    if (arr->floats.size() != n) return Status::Corruption("tokenizer.ggml.scores has " + std::to_string(arr->floats.size()) + " entries but there are " + std::to_string(n) + " tokens");
    v.scores.assign(arr->floats.begin(), arr->floats.end());
  }
  v.types.assign(n, TokenType::kNormal);
  if (f.get_array("tokenizer.ggml.token_type", GgufType::kInt32, &arr).ok()) {
    if (arr->ints.size() != n) return Status::Corruption("tokenizer.ggml.token_type has " + std::to_string(arr->ints.size()) + " entries but there are " + std::to_string(n) + " tokens");
    for (size_t i = 0; i < n; ++i) {
      if (arr->ints[i] < 0 || arr->ints[i] > 6) return Status::Corruption("tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + std::to_string(arr->ints[i]) + " is not a token type");
      v.types[i] = static_cast<TokenType>(arr->ints[i]);
    }
  }
  if (f.find("tokenizer.ggml.merges")) {
    DS_RETURN_IF_ERROR(f.get_array("tokenizer.ggml.merges", GgufType::kString, &arr));
    v.merges = arr->strings;
  }
  v.token_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) v.token_to_id.emplace(v.tokens[i], static_cast<int32_t>(i));

  auto id_key = [&](const char* key, int32_t* out) -> Status {
    const GgufValue* val = f.find(key);
    if (val == nullptr) return Status::Ok();
    // -1 (or its uint32 spelling) means "no such token".
    if (val->is_integer() && (val->i == -1 || val->u == 0xFFFFFFFFu)) return Status::Ok();
    uint32_t x;
    DS_RETURN_IF_ERROR(f.get_u32(key, &x));
    if (x >= n) return Status::Corruption(std::string(key) + " = " + std::to_string(x) + " is not a token id (vocabulary has " + std::to_string(n) + ")");
    *out = static_cast<int32_t>(x);
    return Status::Ok();
  };
  DS_RETURN_IF_ERROR(id_key("tokenizer.ggml.bos_token_id", &v.bos));
  DS_RETURN_IF_ERROR(id_key("tokenizer.ggml.eos_token_id", &v.eos));
  DS_RETURN_IF_ERROR(id_key("tokenizer.ggml.unknown_token_id", &v.unk));
  DS_RETURN_IF_ERROR(id_key("tokenizer.ggml.padding_token_id", &v.pad));
  DS_RETURN_IF_ERROR(id_key("tokenizer.ggml.eot_token_id", &v.eot));

  const bool spm = v.model == "llama";
  v.add_bos = spm;  // llama.cpp's defaults: SentencePiece adds BOS, gpt2 does not
  v.add_space_prefix = spm;
  bool b;
  if (f.get_bool("tokenizer.ggml.add_bos_token", &b).ok()) v.add_bos = b;
  if (f.get_bool("tokenizer.ggml.add_eos_token", &b).ok()) v.add_eos = b;
  if (f.get_bool("tokenizer.ggml.add_space_prefix", &b).ok()) v.add_space_prefix = b;
  if (v.add_bos && v.bos < 0) return Status::Corruption("the vocabulary asks for a BOS token but names none");
  return v;
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::Create(Vocab vocab) {
  Result<std::unique_ptr<Tokenizer>> r = Status::Internal("unset");
  if (vocab.model == "llama") r = make_spm_tokenizer(std::move(vocab));
  else if (vocab.model == "gpt2") r = make_bpe_tokenizer(std::move(vocab));
  else return Status::NotSupported("tokenizer model '" + vocab.model + "' is not supported (ds has 'llama' and 'gpt2')");
  if (!r.ok()) return r;
  Tokenizer& t = *r.value();
  for (int32_t i = 0; i < t.n_vocab(); ++i) {
    const TokenType ty = t.vocab_.types[i];
    if ((ty == TokenType::kControl || ty == TokenType::kUserDefined) && !t.vocab_.tokens[i].empty()) t.special_ids_.push_back(i);
  }
  std::stable_sort(t.special_ids_.begin(), t.special_ids_.end(), [&](int32_t a, int32_t b) {
    return t.vocab_.tokens[a].size() > t.vocab_.tokens[b].size();
  });
  return r;
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& f) {
  Result<Vocab> v = load_vocab(f);
  if (!v.ok()) return v.status();
  return Create(std::move(v).value());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && vocab_.add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
  bool first = true;
  size_t start = 0;
  // User-defined tokens are always split out of the text (as HF tokenizers and llama.cpp
  // do with added tokens); control tokens only when parse_special is set.
  std::vector<int32_t> candidates;
  bool first_byte[256] = {};
  for (int32_t id : special_ids_) {
    if (!parse_special && vocab_.types[id] == TokenType::kControl) continue;
    candidates.push_back(id);
    first_byte[static_cast<unsigned char>(vocab_.tokens[id][0])] = true;
  }
  if (!candidates.empty()) {
    size_t i = 0;
    while (i < text.size()) {
      int32_t hit = -1;
      if (first_byte[static_cast<unsigned char>(text[i])]) {
        for (int32_t id : candidates) {  // longest first
          const std::string& s = vocab_.tokens[id];
          if (text.compare(i, s.size(), s) == 0) {
            hit = id;
            break;
          }
        }
      }
      if (hit < 0) {
        ++i;
        continue;
      }
      if (i > start) encode_text(text.substr(start, i - start), first, &out);
      out.push_back(hit);
      first = true;
      i += vocab_.tokens[hit].size();
      start = i;
    }
  }
  if (start < text.size()) encode_text(text.substr(start), first, &out);
  if (add_special && vocab_.add_eos && vocab_.eos >= 0) out.push_back(vocab_.eos);
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id, bool render_special) const {
  if (id < 0 || id >= n_vocab()) return "";
  switch (vocab_.types[id]) {
    case TokenType::kControl:
      return render_special ? vocab_.tokens[id] : "";
    case TokenType::kUserDefined:
      return vocab_.tokens[id];
    case TokenType::kUnknown:
      return "\xe2\x96\x85";  // U+2585, as llama.cpp renders <unk>
    case TokenType::kByte: {
      const std::string& t = vocab_.tokens[id];  // "<0xAB>"
      auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
      if (t.size() == 6 && t[0] == '<' && t[1] == '0' && t[2] == 'x' && t[5] == '>' && hex(t[3]) >= 0 && hex(t[4]) >= 0) {
        return std::string(1, static_cast<char>(hex(t[3]) * 16 + hex(t[4])));
      }
      return normal_piece(id);
    }
    default:
      return normal_piece(id);
  }
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += token_to_piece(id);
  return s;
}

size_t utf8_complete_prefix(std::string_view s) {
  // Walk back over at most 3 trailing continuation bytes to the last lead byte and
  // check whether its sequence is complete.
  const size_t n = s.size();
  size_t i = n;
  int back = 0;
  while (i > 0 && back < 4) {
    const auto c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) != 0x80) {  // lead byte or ASCII
      const size_t need = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
      return (n - (i - 1) >= need) ? n : i - 1;
    }
    --i;
    ++back;
  }
  return n;  // only continuation bytes: invalid, let them through
}

std::string IncrementalDecoder::push(int32_t id) {
  pending_ += tok_.token_to_piece(id);
  const size_t k = utf8_complete_prefix(pending_);
  std::string out = pending_.substr(0, k);
  pending_.erase(0, k);
  return out;
}

std::string IncrementalDecoder::flush() {
  std::string out;
  for (size_t i = 0; i < pending_.size(); ++i) out += "\xEF\xBF\xBD";
  pending_.clear();
  return out;
}

}  // namespace ds
