// Factories for the two tokenizer families; private to tqkv_tokenizer.
#pragma once

#include <memory>

#include "tqkv/gguf.h"
#include "tqkv/status.h"
#include "tqkv/tokenizer.h"

namespace tqkv {

Result<std::unique_ptr<Tokenizer>> make_byte_level_bpe_tokenizer(const GgufFile& gguf);
Result<std::unique_ptr<Tokenizer>> make_sentencepiece_tokenizer(const GgufFile& gguf);

}  // namespace tqkv
