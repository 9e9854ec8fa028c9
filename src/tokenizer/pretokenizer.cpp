// PCRE2 (8-bit, UTF + Unicode properties, invalid UTF-8 tolerated) regex splitting. The patterns
// are those of the Hugging Face tokenizer.json files (and llama.cpp's llama-vocab.cpp) for each
// tokenizer.ggml.pre name.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pretokenizer.h"

#include <pcre2.h>

#include <string>

namespace tqkv {

namespace {

// GPT-2 (HF ByteLevel with use_regex=true).
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama 3 ("llama-bpe"): case-insensitive contractions, numbers in groups of up to 3.
constexpr const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2: as Llama 3 but every digit alone.
constexpr const char* kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// SmolLM / StarCoder: HF Digits(individual_digits=true) first, then GPT-2's regex.
constexpr const char* kDigit = R"(\p{N})";

struct PreSpec {
  const char* name;
  std::vector<const char*> regexes;
  bool ignore_merges;
};

const std::vector<PreSpec>& pre_specs() {
  static const std::vector<PreSpec> specs = {
      {"", {kGpt2}, false},
      {"default", {kGpt2}, false},
      {"gpt2", {kGpt2}, false},
      {"llama-bpe", {kLlama3}, true},
      {"llama3", {kLlama3}, true},
      {"llama-v3", {kLlama3}, true},
      {"smaug-bpe", {kLlama3}, true},
      {"dbrx", {kLlama3}, true},
      {"falcon3", {kLlama3}, true},
      {"qwen2", {kQwen2}, false},
      {"deepseek-r1-qwen", {kQwen2}, false},
      {"smollm", {kDigit, kGpt2}, false},
      {"starcoder", {kDigit, kGpt2}, false},
      {"refact", {kDigit, kGpt2}, false},
  };
  return specs;
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

Result<PreTokenizer> PreTokenizer::create(std::string_view pre_name) {
  const PreSpec* spec = nullptr;
  for (const auto& s : pre_specs()) {
    if (pre_name == s.name) spec = &s;
  }
  if (!spec) {
    std::string known;
    for (const auto& s : pre_specs()) {
      if (*s.name) known += std::string(known.empty() ? "" : ", ") + s.name;
    }
    return unsupported("tokenizer: pre-tokenizer '" + std::string(pre_name) + "' is not supported (known: " +
                       known + ")");
  }
  PreTokenizer p;
  p.ignore_merges_ = spec->ignore_merges;
  for (const char* pattern : spec->regexes) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    auto r = std::make_unique<Regex>();
    r->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                            PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
    if (!r->code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return internal_error("tokenizer: regex does not compile at " + std::to_string(err_off) + ": " +
                            reinterpret_cast<const char*>(msg));
    }
    // JIT is an optimisation only; the interpreter gives the same matches when it is unavailable.
    (void)pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE);
    p.regexes_.push_back(std::move(r));
  }
  return p;
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  std::vector<std::string_view> cur{text};
  std::vector<std::string_view> next;
  for (const auto& re : regexes_) {
    // Match data is per call so that one PreTokenizer can be used from many threads.
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
    next.clear();
    for (std::string_view piece : cur) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t start = 0;  // where the unmatched gap begins
      size_t at = 0;     // where the next search begins
      while (at < piece.size()) {
        const int rc = pcre2_match(re->code, subject, piece.size(), at, 0, md, nullptr);
        if (rc < 0) break;  // no more matches (or a match error: treat the rest as a gap)
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t m0 = ov[0], m1 = ov[1];
        if (m1 <= m0) {  // empty match: none of our patterns can, but never loop on one
          at = m0 + 1;
          continue;
        }
        if (m0 > start) next.push_back(piece.substr(start, m0 - start));
        next.push_back(piece.substr(m0, m1 - m0));
        start = at = m1;
      }
      if (start < piece.size()) next.push_back(piece.substr(start));
    }
    pcre2_match_data_free(md);
    cur.swap(next);
  }
  out.insert(out.end(), cur.begin(), cur.end());
}

}  // namespace tqkv
