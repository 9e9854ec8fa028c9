// Small UTF-8 helpers shared by the tokenizers. Private to tqkv_tokenizer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tqkv::utf8 {

// Length of a sequence from its lead byte per the UTF-8 bit pattern: 1 for ASCII and for bytes
// that cannot start a sequence (continuation bytes 0x80-0xBF, 0xF8-0xFF), else 2, 3 or 4.
inline size_t lead_length(uint8_t b) {
  if (b < 0xC0) return 1;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  if (b < 0xF8) return 4;
  return 1;
}

// Length of the well-formed UTF-8 character at s[pos] (1..4), or 0 when the bytes there are not
// a well-formed character (bad lead, missing or bad continuation, overlong, surrogate, > U+10FFFF).
size_t valid_char_length(std::string_view s, size_t pos);

// Appends the UTF-8 encoding of code point cp (cp <= 0x10FFFF).
void append_codepoint(std::string& out, uint32_t cp);

// Decodes the well-formed character of length len at s[pos].
uint32_t decode_at(std::string_view s, size_t pos, size_t len);

}  // namespace tqkv::utf8
