// Chat template recognition (include/tqkv/chat_template.h).
#include "tqkv/chat_template.h"

namespace tqkv {

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::kChatML: return "chatml";
    case ChatFormat::kGemma: return "gemma";
    case ChatFormat::kLlama3: return "llama3";
    case ChatFormat::kPhi3: return "phi3";
    case ChatFormat::kMistral: return "mistral";
  }
  return "unknown";
}

namespace {

bool has(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

// ChatML templates that add a default system turn spell it out as a literal:
//   '<|im_start|>system\nYou are ...<|im_end|>\n'  (the \n may be written escaped).
std::string chatml_default_system(const std::string& t) {
  for (const char* open : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    const size_t a = t.find(open);
    if (a == std::string::npos) continue;
    const size_t start = a + std::string(open).size();
    const size_t end = t.find("<|im_end|>", start);
    if (end == std::string::npos) continue;
    const std::string s = t.substr(start, end - start);
    // A Jinja expression here ("' + messages[0]['content'] + '") is not a default prompt.
    if (has(s, "{{") || has(s, "'") || has(s, "+")) continue;
    return s;
  }
  return "";
}

}  // namespace

Result<ChatTemplate> detect_chat_template(const std::string& t, const std::string& arch) {
  ChatTemplate c;
  if (has(t, "<|im_start|>")) {
    c.format = ChatFormat::kChatML;
    c.default_system = chatml_default_system(t);
  } else if (has(t, "<start_of_turn>")) {
    c.format = ChatFormat::kGemma;
  } else if (has(t, "<|start_header_id|>")) {
    c.format = ChatFormat::kLlama3;
  } else if (has(t, "<|user|>") && has(t, "<|end|>")) {
    c.format = ChatFormat::kPhi3;
  } else if (has(t, "[INST]")) {
    c.format = ChatFormat::kMistral;
  } else if (t.empty() && arch.rfind("gemma", 0) == 0) {
    c.format = ChatFormat::kGemma;
    c.note = "the file has no chat template; using Gemma's documented turn format";
  } else if (t.empty()) {
    return unsupported("the model file has no chat template (tokenizer.chat_template); use --prompt");
  } else {
    return unsupported("unknown chat template (not ChatML, Gemma, Llama 3, Phi-3 or Mistral); use --prompt");
  }
  return c;
}

Result<ChatTemplate> chat_template_from_gguf(const GgufFile& g) {
  TQKV_ASSIGN_OR_RETURN(std::string t, g.get_string_or("tokenizer.chat_template", ""));
  return detect_chat_template(t, g.architecture());
}

std::string ChatTemplate::render_user_turn(const std::string& user, const std::string& system) const {
  // (one user turn after at most one system message: render_conversation cannot fail on it)
  std::vector<ChatMessage> m;
  if (!system.empty()) m.push_back({"system", system});
  m.push_back({"user", user});
  return *render_conversation(m);
}

Result<std::string> ChatTemplate::render_conversation(const std::vector<ChatMessage>& messages) const {
  std::string sys;
  std::vector<const ChatMessage*> turns;
  for (const auto& m : messages) {
    if (m.role == "system") {
      if (!turns.empty()) return invalid_argument("a system message must come before the conversation's turns");
      sys += (sys.empty() ? "" : "\n\n") + m.content;
    } else if (m.role == "user" || m.role == "assistant") {
      turns.push_back(&m);
    } else {
      return invalid_argument("unknown message role \"" + m.role + "\" (system, user or assistant)");
    }
  }
  if (turns.empty() || turns.back()->role != "user") return invalid_argument("the last message must be the user's");
  const std::string sy = sys.empty() ? default_system : sys;
  std::string s;
  bool first_user = true;
  switch (format) {
    case ChatFormat::kChatML:
      if (!sy.empty()) s += "<|im_start|>system\n" + sy + "<|im_end|>\n";
      for (const auto* m : turns) s += "<|im_start|>" + m->role + "\n" + m->content + "<|im_end|>\n";
      return s + "<|im_start|>assistant\n";
    case ChatFormat::kGemma:  // no system role: a system text goes first in the first user turn
      for (const auto* m : turns) {
        if (m->role == "user") {
          s += "<start_of_turn>user\n" + (first_user && !sy.empty() ? sy + "\n\n" : "") + m->content + "<end_of_turn>\n";
          first_user = false;
        } else {
          s += "<start_of_turn>model\n" + m->content + "<end_of_turn>\n";
        }
      }
      return s + "<start_of_turn>model\n";
    case ChatFormat::kLlama3:
      if (!sy.empty()) s += "<|start_header_id|>system<|end_header_id|>\n\n" + sy + "<|eot_id|>";
      for (const auto* m : turns) s += "<|start_header_id|>" + m->role + "<|end_header_id|>\n\n" + m->content + "<|eot_id|>";
      return s + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatFormat::kPhi3:
      if (!sy.empty()) s += "<|system|>\n" + sy + "<|end|>\n";
      for (const auto* m : turns) s += "<|" + m->role + "|>\n" + m->content + "<|end|>\n";
      return s + "<|assistant|>\n";
    case ChatFormat::kMistral:
      for (const auto* m : turns) {
        if (m->role == "user") {
          s += "[INST] " + (first_user && !sy.empty() ? sy + "\n\n" : "") + m->content + " [/INST]";
          first_user = false;
        } else {
          s += " " + m->content + "</s>";
        }
      }
      return s;
  }
  return invalid_argument("unknown chat format");
}

}  // namespace tqkv
