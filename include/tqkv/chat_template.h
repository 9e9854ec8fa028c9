// Chat prompts for the supported model families. We do not run Jinja: the file's
// tokenizer.chat_template is recognised by substrings that only its family uses, and the turn
// format of that family is written out here.
//
//   ChatML        "<|im_start|>"        SmolLM2, Qwen2   (default system prompt read from the template)
//   Gemma         "<start_of_turn>"     Gemma 2 / 3      (also used, with a note, for gemma files
//                                                        that carry no template)
//   Llama 3       "<|start_header_id|>" Llama 3.x
//   Phi-3         "<|user|>" + "<|end|>"
//   Mistral       "[INST]"
#pragma once

#include <string>
#include <vector>

#include "tqkv/gguf.h"
#include "tqkv/status.h"

namespace tqkv {

enum class ChatFormat { kChatML, kGemma, kLlama3, kPhi3, kMistral };
const char* chat_format_name(ChatFormat f);

// One message of a conversation: role "system", "user" or "assistant".
struct ChatMessage {
  std::string role, content;
};

struct ChatTemplate {
  ChatFormat format = ChatFormat::kChatML;
  std::string default_system;  // ChatML: the system turn the template adds when none is given
  std::string note;            // e.g. "no chat template in the file; using Gemma's turn format"

  // One user turn and the opening of the assistant's reply. BOS is not included (the tokenizer
  // adds it when the file says so). Special tokens appear as text: encode with parse_special.
  std::string render_user_turn(const std::string& user, const std::string& system = "") const;
  // A whole conversation (system messages first, then user / assistant turns in order) and the
  // opening of the next assistant reply (render_user_turn is the one-turn case of it).
  // Fails on an unknown role, on no user message, or when the last message is not the user's.
  Result<std::string> render_conversation(const std::vector<ChatMessage>& messages) const;
};

// Recognises the template in `template_text` (may be empty); `arch` chooses a fallback for files
// without one (gemma*). Fails with kUnsupported, saying so, when the template is not recognised.
Result<ChatTemplate> detect_chat_template(const std::string& template_text, const std::string& arch);
// Reads tokenizer.chat_template and general.architecture from the file.
Result<ChatTemplate> chat_template_from_gguf(const GgufFile& g);

}  // namespace tqkv
