#include "tokenizer/utf8.h"

#include "tqkv/tokenizer.h"

namespace tqkv {
namespace utf8 {

size_t valid_char_length(std::string_view s, size_t pos) {
  if (pos >= s.size()) return 0;
  const auto b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) return 1;
  const size_t n = lead_length(b0);
  if (n == 1 || pos + n > s.size()) return 0;  // stray continuation byte, 0xF8.., or truncated
  for (size_t i = 1; i < n; ++i) {
    if ((static_cast<uint8_t>(s[pos + i]) & 0xC0) != 0x80) return 0;
  }
  const uint32_t cp = decode_at(s, pos, n);
  if (n == 2 && cp < 0x80) return 0;      // overlong
  if (n == 3 && cp < 0x800) return 0;     // overlong
  if (n == 4 && cp < 0x10000) return 0;   // overlong
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;  // surrogate
  if (cp > 0x10FFFF) return 0;
  return n;
}

uint32_t decode_at(std::string_view s, size_t pos, size_t len) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[pos + i])); };
  switch (len) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void append_codepoint(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace utf8

// How many bytes at the end of s form the start of a UTF-8 sequence that more bytes could still
// complete (0..3). Anything else (complete characters, invalid bytes) can be released now.
static size_t incomplete_tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto b = static_cast<uint8_t>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for its lead
    const size_t need = utf8::lead_length(b);
    // A lead byte that wants more bytes than follow it: hold it (and what follows) back.
    return (need > back) ? back : 0;
  }
  return 0;
}

std::string Utf8StreamDecoder::push(std::string_view bytes) {
  held_.append(bytes);
  const size_t keep = incomplete_tail(held_);
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string Utf8StreamDecoder::flush() {
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace tqkv
