// The input of the commands that score a model on a text, `tqkv perplexity` and `tqkv verify`:
// the text file (cut to what the requested chunks need), the model, its tokenizer and the token
// ids, loaded in that order with the same progress lines. One definition instead of a copy per
// command.
#pragma once

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tqkv/model.h"
#include "tqkv/status.h"
#include "tqkv/tokenizer.h"

namespace tqkv::cli {

struct TextEvalInput {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;  // built from model's GGUF file (declared after it: destroyed first)
  std::vector<int32_t> ids;        // the text's tokens, no BOS
};

// max_bytes > 0 keeps only the text's first max_bytes bytes (English runs ~4 bytes per token, so
// chunks * ctx * 16 leaves a 4x margin). open_hint is appended to the message when the text file
// cannot be opened. On failure *what names the input that failed (the text file, the model file,
// "tokenizer" or "tokenize") for the command's "tqkv CMD: WHAT: STATUS" line.
inline Result<TextEvalInput> load_text_eval_input(const std::string& model_path, const std::string& text_path,
                                                  size_t max_bytes, const std::string& open_hint, std::string* what) {
  std::ifstream in(text_path, std::ios::binary);
  *what = text_path;
  if (!in) return io_error("cannot open the text file" + open_hint);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (max_bytes > 0 && text.size() > max_bytes) text.resize(max_bytes);

  TextEvalInput r;
  std::fprintf(stderr, "loading %s ...\n", model_path.c_str());
  *what = model_path;
  TQKV_ASSIGN_OR_RETURN(r.model, Model::load(model_path));
  *what = "tokenizer";
  TQKV_ASSIGN_OR_RETURN(r.tok, Tokenizer::from_gguf(r.model->gguf()));
  std::fprintf(stderr, "tokenizing %zu bytes ...\n", text.size());
  *what = "tokenize";
  TQKV_ASSIGN_OR_RETURN(r.ids, r.tok->encode(text, false, false));
  what->clear();
  return r;
}

}  // namespace tqkv::cli
