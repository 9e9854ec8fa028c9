// The OpenAI-compatible HTTP front end of `tqkv serve` (cpp-httplib), over the continuous-batching
// Engine (include/tqkv/serve.h). Routes:
//   GET  /health                 {"status":"ok", engine counters, KV bytes in use and their f16 size}
//   GET  /v1/models              the one model served
//   POST /v1/completions         prompt (a string or a one-string array), max_tokens (16), temperature
//                                (1), top_p (1), top_k (0 = off), min_p (0), seed, stop (string or
//                                list), stream
//   POST /v1/chat/completions    messages [{role, content}], the same sampling fields, max_tokens
//                                (default: the room left in the context), stream
// Streaming answers are server-sent events ("data: {chunk}" lines, then "data: [DONE]"). Errors are
// {"error": {"message", "type", "code"}} with 400 (bad request), 404, 503 (queue full) or 500. A
// client that disconnects mid-stream cancels its request and frees its KV slot.
#pragma once

#include <memory>
#include <string>

#include "tqkv/chat_template.h"
#include "tqkv/serve.h"
#include "tqkv/status.h"
#include "tqkv/tokenizer.h"

namespace tqkv {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;           // 0: any free port (start() returns it)
  std::string model_name;    // what /v1/models reports and responses carry
  std::string kv_format;     // reported by /health
};

class HttpServer {
 public:
  // `engine`, `tok` (and `chat`, may be null: then /v1/chat/completions answers 400) must outlive
  // the server.
  HttpServer(Engine& engine, const Tokenizer& tok, const ChatTemplate* chat, HttpServerOptions opt);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and serves on a background thread; returns the port.
  Result<int> start();
  // Serves on the calling thread until stop() (from a signal handler's thread or another thread).
  Status run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tqkv
