// OpenAI-compatible HTTP front end (include/tqkv/http_server.h). Each request thread of
// cpp-httplib turns the JSON body into a CompletionRequest, hands it to the Engine and waits on a
// per-request channel that the engine's thread fills with text pieces.
#include "tqkv/http_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

namespace tqkv {
namespace {

using json = nlohmann::ordered_json;

// Model text can hold bytes that are not UTF-8 (a byte token whose sequence never completes):
// replaced by U+FFFD in JSON instead of an exception (nlohmann's default) in a server thread.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// What the engine's thread hands to the HTTP thread of one request.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<CompletionEvent> events;
  std::atomic<bool> cancelled{false};

  CompletionSink sink() {
    return [this](const CompletionEvent& ev) {
      if (cancelled.load()) return false;
      {
        std::lock_guard<std::mutex> lk(mu);
        events.push_back(ev);
      }
      cv.notify_all();
      return true;
    };
  }
  CompletionEvent pop() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return !events.empty(); });
    CompletionEvent ev = std::move(events.front());
    events.pop_front();
    return ev;
  }
};

int http_status_of(const Status& st) {
  switch (st.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return 400;
    case StatusCode::kResourceExhausted:
      return 503;
    default:
      return 500;
  }
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  json e;
  e["error"] = {{"message", message},
                {"type", status == 400 ? "invalid_request_error" : status == 404 ? "not_found_error" : status == 503 ? "overloaded" : "server_error"},
                {"code", status}};
  res.status = status;
  res.set_content(dump(e), "application/json");
}

// Reads the sampling and length fields shared by both endpoints. Throws std::invalid_argument.
void read_common(const json& b, CompletionRequest& r, int default_max_tokens) {
  auto num = [&](const char* k, double def) {
    if (!b.contains(k) || b[k].is_null()) return def;
    if (!b[k].is_number()) throw std::invalid_argument(std::string("\"") + k + "\" must be a number");
    return b[k].get<double>();
  };
  const double mt = num("max_tokens", default_max_tokens);
  if (mt < 1 || mt > 1e9 || mt != static_cast<int64_t>(mt)) throw std::invalid_argument("\"max_tokens\" must be a positive integer");
  r.max_tokens = static_cast<int>(mt);
  r.sampler.temperature = static_cast<float>(num("temperature", 1.0));
  if (r.sampler.temperature < 0 || r.sampler.temperature > 100) throw std::invalid_argument("\"temperature\" must be in [0, 100]");
  r.sampler.top_p = static_cast<float>(num("top_p", 1.0));
  if (!(r.sampler.top_p > 0 && r.sampler.top_p <= 1)) throw std::invalid_argument("\"top_p\" must be in (0, 1]");
  r.sampler.top_k = static_cast<int>(num("top_k", 0));
  r.sampler.min_p = static_cast<float>(num("min_p", 0.0));
  if (r.sampler.min_p < 0 || r.sampler.min_p > 1) throw std::invalid_argument("\"min_p\" must be in [0, 1]");
  r.sampler.repeat_penalty = static_cast<float>(num("repeat_penalty", 1.0));
  const double seed = num("seed", 0);
  if (seed < 0) throw std::invalid_argument("\"seed\" must be >= 0");
  r.sampler.seed = static_cast<uint64_t>(seed);
  if (b.contains("stop") && !b["stop"].is_null()) {
    const json& s = b["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (const auto& x : s) {
        if (!x.is_string()) throw std::invalid_argument("\"stop\" must hold strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      throw std::invalid_argument("\"stop\" must be a string or a list of up to 4 strings");
    }
    for (const auto& x : r.stop)
      if (x.empty()) throw std::invalid_argument("\"stop\" strings must not be empty");
  }
  if (b.contains("n") && !(b["n"].is_number_integer() && b["n"].get<int>() == 1))
    throw std::invalid_argument("only \"n\": 1 is supported");
}

bool read_stream(const json& b) {
  if (!b.contains("stream") || b["stream"].is_null()) return false;
  if (!b["stream"].is_boolean()) throw std::invalid_argument("\"stream\" must be true or false");
  return b["stream"].get<bool>();
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  const Tokenizer& tok;
  const ChatTemplate* chat;
  HttpServerOptions opt;
  httplib::Server svr;
  std::thread thread;
  std::atomic<int64_t> next_id{1};

  Impl(Engine& e, const Tokenizer& t, const ChatTemplate* c, HttpServerOptions o)
      : engine(e), tok(t), chat(c), opt(std::move(o)) {
    svr.set_payload_max_length(8 << 20);
    // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, with which a second server on the
    // same port starts without an error and the kernel splits the connections between the two.
    svr.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
    });
    svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) { health(res); });
    svr.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      json m = {{"id", opt.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "tqkv"}};
      res.set_content(dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
    });
    svr.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& res) { complete(q, res, false); });
    svr.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& res) { complete(q, res, true); });
    svr.set_error_handler([](const httplib::Request& q, httplib::Response& res) {
      if (res.status == 404) send_error(res, 404, "no route " + q.method + " " + q.path);
    });
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string m = "internal error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        m = e.what();
      } catch (...) {
      }
      send_error(res, 500, m);
    });
  }

  void health(httplib::Response& res) {
    const EngineStats s = engine.stats();
    json j = {{"status", "ok"},
              {"model", opt.model_name},
              {"kv", opt.kv_format},
              {"context", engine.context()},
              {"max_batch", s.max_batch},
              {"active", s.active},
              {"queued", s.queued},
              {"requests_done", s.requests_done},
              {"requests_failed", s.requests_failed},
              {"tokens_generated", s.tokens_generated},
              {"decode_steps", s.steps},
              {"mean_batch", s.batch_fill},
              {"prompt_tokens", s.prompt_tokens},
              {"kv_exhausted", s.kv_exhausted},
              {"prompt_waits", s.prompt_waits},
              {"admit_waits", s.admit_waits},
              {"peak_active", s.peak_active},
              {"pool_tokens", s.pool_tokens},
              {"kv_bytes_in_use", s.kv_bytes_in_use},
              {"kv_f16_bytes", s.kv_f16_bytes}};
    res.set_content(dump(j), "application/json");
  }

  void complete(const httplib::Request& q, httplib::Response& res, bool is_chat) {
    json body;
    try {
      body = json::parse(q.body);
    } catch (const std::exception& e) {
      return send_error(res, 400, std::string("the body is not valid JSON: ") + e.what());
    }
    if (!body.is_object()) return send_error(res, 400, "the body must be a JSON object");
    CompletionRequest req;
    bool stream = false;
    std::string text;
    try {
      if (is_chat) {
        if (!chat) throw std::invalid_argument("this model has no chat template tqkv recognises; use /v1/completions");
        if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
          throw std::invalid_argument("\"messages\" must be a non-empty list");
        std::vector<ChatMessage> msgs;
        for (const auto& m : body["messages"]) {
          if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
              !m["content"].is_string())
            throw std::invalid_argument("each message needs a string \"role\" and a string \"content\"");
          msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
        }
        auto r = chat->render_conversation(msgs);
        if (!r.is_ok()) throw std::invalid_argument(r.status().message());
        text = *r;
        read_common(body, req, static_cast<int>(std::min<int64_t>(engine.context(), 1 << 30)));
      } else {
        if (!body.contains("prompt")) throw std::invalid_argument("\"prompt\" is required");
        const json& p = body["prompt"];
        if (p.is_string()) text = p.get<std::string>();
        else if (p.is_array() && p.size() == 1 && p[0].is_string()) text = p[0].get<std::string>();
        else throw std::invalid_argument("\"prompt\" must be a string (or a list of one string)");
        read_common(body, req, 16);
      }
      stream = read_stream(body);
    } catch (const std::exception& e) {
      return send_error(res, 400, e.what());
    }
    auto ids = tok.encode(text, tok.add_bos(), /*parse_special=*/is_chat);
    if (!ids.is_ok()) return send_error(res, 400, ids.status().message());
    req.prompt = std::move(*ids);

    auto ch = std::make_shared<Channel>();
    const Status st = engine.submit(std::move(req), ch->sink());
    if (!st.is_ok()) return send_error(res, http_status_of(st), st.message());
    const std::string id = (is_chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const int64_t created = unix_now();
    const std::string object = is_chat ? "chat.completion" : "text_completion";

    if (!stream) {
      std::string out;
      for (;;) {
        CompletionEvent ev = ch->pop();
        out += ev.text;
        if (!ev.done) continue;
        if (!ev.error.is_ok()) return send_error(res, http_status_of(ev.error), ev.error.message());
        json choice = {{"index", 0}};
        if (is_chat) choice["message"] = {{"role", "assistant"}, {"content", out}};
        else choice["text"] = out, choice["logprobs"] = nullptr;
        choice["finish_reason"] = ev.finish_reason;
        json j = {{"id", id}, {"object", object}, {"created", created}, {"model", opt.model_name},
                  {"choices", json::array({choice})},
                  {"usage", {{"prompt_tokens", ev.prompt_tokens}, {"completion_tokens", ev.completion_tokens},
                             {"total_tokens", ev.prompt_tokens + ev.completion_tokens}}}};
        res.set_content(dump(j), "application/json");
        return;
      }
    }
    // Server-sent events: one chunk per piece of text, the finish reason on the last one.
    const std::string chunk_object = is_chat ? "chat.completion.chunk" : "text_completion";
    const std::string model = opt.model_name;
    auto first = std::make_shared<bool>(true);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [ch, id, created, chunk_object, model, is_chat, first](size_t, httplib::DataSink& sink) {
          CompletionEvent ev = ch->pop();
          auto send = [&](const json& j) {
            const std::string line = "data: " + dump(j) + "\n\n";
            return sink.write(line.data(), line.size());
          };
          json choice = {{"index", 0}};
          if (!ev.error.is_ok()) {
            json e = {{"error", {{"message", ev.error.message()}, {"type", "server_error"}, {"code", http_status_of(ev.error)}}}};
            send(e);
            sink.done();
            return true;
          }
          if (is_chat) {
            json delta = json::object();
            if (*first) delta["role"] = "assistant";
            if (!ev.text.empty() || !*first) delta["content"] = ev.text;
            choice["delta"] = delta;
          } else {
            choice["text"] = ev.text;
          }
          *first = false;
          choice["finish_reason"] = ev.done ? json(ev.finish_reason) : json(nullptr);
          json j = {{"id", id}, {"object", chunk_object}, {"created", created}, {"model", model},
                    {"choices", json::array({choice})}};
          if (ev.done) {
            j["usage"] = {{"prompt_tokens", ev.prompt_tokens}, {"completion_tokens", ev.completion_tokens},
                          {"total_tokens", ev.prompt_tokens + ev.completion_tokens}};
          }
          if (!send(j)) {
            ch->cancelled = true;
            return false;
          }
          if (ev.done) {
            const std::string end = "data: [DONE]\n\n";
            sink.write(end.data(), end.size());
            sink.done();
          }
          return true;
        },
        [ch](bool) { ch->cancelled = true; });  // the connection ended: the engine drops the request
  }
};

HttpServer::HttpServer(Engine& engine, const Tokenizer& tok, const ChatTemplate* chat, HttpServerOptions opt)
    : impl_(std::make_unique<Impl>(engine, tok, chat, std::move(opt))) {}

HttpServer::~HttpServer() { stop(); }

Result<int> HttpServer::start() {
  int port = impl_->opt.port;
  if (port == 0) {
    port = impl_->svr.bind_to_any_port(impl_->opt.host);
    if (port <= 0) return io_error("cannot bind " + impl_->opt.host);
  } else if (!impl_->svr.bind_to_port(impl_->opt.host, port)) {
    return io_error("cannot bind " + impl_->opt.host + ":" + std::to_string(port) + " (in use?)");
  }
  impl_->thread = std::thread([this] { impl_->svr.listen_after_bind(); });
  // Return only once the server is accepting: a stop() before that would find nothing running,
  // and the listening thread would then never end (a destructor right after start hung on it).
  for (int i = 0; i < 5000 && !impl_->svr.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!impl_->svr.is_running()) {
    impl_->svr.stop();
    if (impl_->thread.joinable()) impl_->thread.join();
    return io_error("the HTTP server did not start listening on port " + std::to_string(port));
  }
  return port;
}

Status HttpServer::run() {
  TQKV_ASSIGN_OR_RETURN(int port, start());
  (void)port;
  impl_->thread.join();
  return Status::ok();
}

void HttpServer::stop() {
  if (!impl_) return;
  impl_->svr.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace tqkv
