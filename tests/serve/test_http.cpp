// The OpenAI-compatible HTTP front end (include/tqkv/http_server.h) on a free port, through
// cpp-httplib's client, over the real SmolLM2.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "serve_fixture.h"
#include "tqkv/chat_template.h"
#include "tqkv/http_server.h"

namespace tqkv {
namespace {

using json = nlohmann::json;

struct Server {
  std::unique_ptr<Engine> engine;
  ChatTemplate chat;
  std::unique_ptr<HttpServer> http;
  int port = 0;
};

std::unique_ptr<Server> start(testing::LoadedModel& lm, int max_batch = 4) {
  auto s = std::make_unique<Server>();
  EngineOptions eo;
  eo.kv = testing::kv_options("k4v4", 256);
  eo.max_batch = max_batch;
  auto e = Engine::create(*lm.model, *lm.tok, eo);
  EXPECT_TRUE(e.is_ok());
  s->engine = std::move(*e);
  s->chat = *chat_template_from_gguf(lm.model->gguf());
  HttpServerOptions ho;
  ho.port = 0;
  ho.model_name = "smollm2";
  ho.kv_format = "k4v4";
  s->http = std::make_unique<HttpServer>(*s->engine, *lm.tok, &s->chat, ho);
  auto port = s->http->start();
  EXPECT_TRUE(port.is_ok()) << port.status().to_string();
  s->port = *port;
  return s;
}

json post(int port, const std::string& path, const std::string& body, int* status) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(600, 0);  // (ctest -j on 2 shared cores can be slow)
  auto r = cli.Post(path.c_str(), body, "application/json");
  if (!r) {
    *status = -1;
    return {};
  }
  *status = r->status;
  return json::parse(r->body, nullptr, false);
}

// Text of an SSE stream: the "text" (completions) or "delta.content" (chat) of every chunk.
std::string sse_text(const std::string& body, bool chat, std::string* finish, bool* done_marker) {
  std::istringstream in(body);
  std::string line, out;
  *done_marker = false;
  while (std::getline(in, line)) {
    if (line.rfind("data: ", 0) != 0) continue;
    const std::string d = line.substr(6);
    if (d == "[DONE]") {
      *done_marker = true;
      continue;
    }
    const json j = json::parse(d);
    const json& c = j["choices"][0];
    if (chat) {
      if (c["delta"].contains("content")) out += c["delta"]["content"].get<std::string>();
    } else {
      out += c["text"].get<std::string>();
    }
    if (!c["finish_reason"].is_null()) *finish = c["finish_reason"].get<std::string>();
  }
  return out;
}

TEST(HttpServer, CompletionsPlainStreamedAndChat) {
  TQKV_REQUIRE_SMOLLM2();
  auto s = start(*lm);
  int status = 0;
  // Plain completion, greedy: generate()'s text.
  const auto ids = testing::generate_ids(*lm, testing::kv_options("k4v4", 256), "The capital of France is", 12);
  json r = post(s->port, "/v1/completions", R"({"prompt":"The capital of France is","max_tokens":12,"temperature":0})", &status);
  ASSERT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["model"], "smollm2");
  EXPECT_EQ(r["choices"][0]["text"], lm->tok->decode(ids, false));
  EXPECT_EQ(r["usage"]["completion_tokens"], static_cast<int>(ids.size()));
  // The same request streamed: the chunks add up to the same text, then [DONE].
  {
    httplib::Client cli("127.0.0.1", s->port);
    cli.set_read_timeout(600, 0);  // (ctest -j on 2 shared cores can be slow)
    auto res = cli.Post("/v1/completions", R"({"prompt":"The capital of France is","max_tokens":12,"temperature":0,"stream":true})",
                        "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    std::string finish;
    bool done = false;
    EXPECT_EQ(sse_text(res->body, false, &finish, &done), r["choices"][0]["text"].get<std::string>());
    EXPECT_TRUE(done);
    EXPECT_EQ(finish, r["choices"][0]["finish_reason"].get<std::string>());
  }
  // Chat: the template's rendering of one user turn, as `generate --chat` does.
  const std::string prompt = s->chat.render_user_turn("What is 2+2?");
  auto chat_ids = lm->tok->encode(prompt, lm->tok->add_bos(), true);
  auto kv = testing::new_kv(lm->model->config(), testing::kv_options("k4v4", 256));
  GenerateOptions go;
  go.max_new_tokens = 24;
  auto want = generate(*lm->model, *lm->tok, *kv, *chat_ids, go, nullptr);
  ASSERT_TRUE(want.is_ok());
  r = post(s->port, "/v1/chat/completions",
           R"({"messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":24,"temperature":0})", &status);
  ASSERT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["message"]["content"], lm->tok->decode(want->ids, false));
  EXPECT_EQ(r["usage"]["prompt_tokens"], static_cast<int>(chat_ids->size()));
  // Streamed chat: role first, then the content deltas.
  {
    httplib::Client cli("127.0.0.1", s->port);
    cli.set_read_timeout(600, 0);  // (ctest -j on 2 shared cores can be slow)
    auto res = cli.Post("/v1/chat/completions",
                        R"({"messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":24,"temperature":0,"stream":true})",
                        "application/json");
    ASSERT_TRUE(res);
    std::string finish;
    bool done = false;
    EXPECT_EQ(sse_text(res->body, true, &finish, &done), r["choices"][0]["message"]["content"].get<std::string>());
    EXPECT_NE(res->body.find(R"("role":"assistant")"), std::string::npos);
  }
  // Health and models.
  httplib::Client cli("127.0.0.1", s->port);
  cli.set_read_timeout(600, 0);  // (ctest -j on 2 shared cores can be slow)
  auto h = cli.Get("/health");
  ASSERT_TRUE(h);
  const json hj = json::parse(h->body);
  EXPECT_EQ(hj["status"], "ok");
  EXPECT_EQ(hj["requests_done"], 4);
  EXPECT_EQ(hj["pool_tokens"], 0);  // (each slot owns its cache here)
  EXPECT_GE(hj["peak_active"].get<int>(), 1);
  EXPECT_EQ(hj["admit_waits"], 0);
  auto m = cli.Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(json::parse(m->body)["data"][0]["id"], "smollm2");
}

TEST(HttpServer, BadRequestsGetClearErrorsAndTheServerKeepsServing) {
  TQKV_REQUIRE_SMOLLM2();
  auto s = start(*lm, 2);
  struct Case { std::string path, body; int status; std::string says; };
  const std::vector<Case> cases = {
      {"/v1/completions", "{bad json", 400, "not valid JSON"},
      {"/v1/completions", "[1,2]", 400, "JSON object"},
      {"/v1/completions", R"({"max_tokens":3})", 400, "\"prompt\" is required"},
      {"/v1/completions", R"({"prompt":5})", 400, "\"prompt\" must be a string"},
      {"/v1/completions", R"({"prompt":"hi","max_tokens":0})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt":"hi","max_tokens":"many"})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt":"hi","temperature":-1})", 400, "temperature"},
      {"/v1/completions", R"({"prompt":"hi","stop":[1]})", 400, "stop"},
      {"/v1/completions", R"({"prompt":"hi","stream":"yes"})", 400, "stream"},
      {"/v1/completions", R"({"prompt":"hi","n":3})", 400, "\"n\""},
      {"/v1/completions", R"({"prompt":""})", 400, "no tokens"},
      {"/v1/chat/completions", R"({"messages":[]})", 400, "messages"},
      {"/v1/chat/completions", R"({"messages":[{"role":"robot","content":"x"}]})", 400, "role"},
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]})", 400, "last message"},
      {"/v1/nothing", "{}", 404, "no route"},
  };
  for (const auto& c : cases) {
    int status = 0;
    const json r = post(s->port, c.path, c.body, &status);
    EXPECT_EQ(status, c.status) << c.path << " " << c.body;
    ASSERT_TRUE(r.is_object() && r.contains("error")) << c.body << " -> " << r.dump();
    EXPECT_NE(r["error"]["message"].get<std::string>().find(c.says), std::string::npos) << c.body << " -> " << r.dump();
  }
  // A prompt longer than the context (256 tokens).
  std::string longp;
  for (int i = 0; i < 300; ++i) longp += "word ";
  int status = 0;
  json r = post(s->port, "/v1/completions", json{{"prompt", longp}}.dump(), &status);
  EXPECT_EQ(status, 400) << r.dump();
  EXPECT_NE(r["error"]["message"].get<std::string>().find("context"), std::string::npos);
  // Still serving, and concurrent clients all get answers (two slots, five clients).
  std::vector<std::thread> th;
  std::vector<int> codes(5);
  std::vector<std::string> texts(5);
  for (int i = 0; i < 5; ++i)
    th.emplace_back([&, i] {
      int st = 0;
      const json j = post(s->port, "/v1/completions",
                          json{{"prompt", "Number " + std::to_string(i) + " is"}, {"max_tokens", 8}, {"temperature", 0}}.dump(), &st);
      codes[i] = st;
      if (st == 200) texts[i] = j["choices"][0]["text"];
    });
  for (auto& t : th) t.join();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(codes[i], 200) << "client " << i;
    EXPECT_FALSE(texts[i].empty()) << "client " << i;
  }
}

// A second server on a port in use fails to start (cpp-httplib's default socket options would
// let it share the port silently).
TEST(HttpServer, PortInUseIsAnError) {
  TQKV_REQUIRE_SMOLLM2();
  auto s = start(*lm, 1);
  HttpServerOptions ho;
  ho.port = s->port;
  HttpServer second(*s->engine, *lm->tok, &s->chat, ho);
  auto port = second.start();
  ASSERT_FALSE(port.is_ok());
  EXPECT_EQ(port.status().code(), StatusCode::kIoError);
  EXPECT_NE(port.status().message().find("in use"), std::string::npos) << port.status().to_string();
}

// A client that drops a stream mid-way cancels its request: the slot is freed (the one slot then
// serves the next request) and the server counts it as failed, not done.
TEST(HttpServer, DroppedStreamFreesItsSlot) {
  TQKV_REQUIRE_SMOLLM2();
  auto s = start(*lm, 1);
  {
    httplib::Client cli("127.0.0.1", s->port);
    cli.set_read_timeout(600, 0);  // (ctest -j on 2 shared cores can be slow)
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = R"({"prompt":"Once upon a time","max_tokens":200,"temperature":0,"stream":true})";
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };  // hang up
    auto res = cli.send(req);
    EXPECT_GE(chunks, 3);
  }
  int status = 0;
  const json r = post(s->port, "/v1/completions", R"({"prompt":"Water boils at","max_tokens":6,"temperature":0})", &status);
  EXPECT_EQ(status, 200) << r.dump();
  const EngineStats st = s->engine->stats();
  EXPECT_EQ(st.requests_failed, 1);
  EXPECT_EQ(testing::active_after_settling(*s->engine), 0);
}

TEST(ChatTemplate, ConversationsRenderEveryTurn) {
  for (auto fmt : {ChatFormat::kChatML, ChatFormat::kGemma, ChatFormat::kLlama3, ChatFormat::kPhi3, ChatFormat::kMistral}) {
    ChatTemplate t;
    t.format = fmt;
    // One user turn (with a system message) renders as render_user_turn.
    auto one = t.render_conversation({{"system", "Be brief."}, {"user", "Hi"}});
    ASSERT_TRUE(one.is_ok());
    EXPECT_EQ(*one, t.render_user_turn("Hi", "Be brief."));
    // Several turns keep every message, in order, and end with the assistant's opening.
    auto many = t.render_conversation({{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}});
    ASSERT_TRUE(many.is_ok());
    const size_t u1 = many->find("U1"), a1 = many->find("A1"), u2 = many->find("U2");
    EXPECT_NE(many->find("S"), std::string::npos);
    EXPECT_TRUE(u1 < a1 && a1 < u2 && u2 != std::string::npos) << *many;
    EXPECT_EQ(many->substr(0, one->find("Hi") == std::string::npos ? 0 : 0), "");
    const std::string opening = t.render_user_turn("Z").substr(t.render_user_turn("Z").find("Z") + 1);
    EXPECT_EQ(many->substr(many->size() - opening.size()), opening) << *many;
    EXPECT_FALSE(t.render_conversation({{"user", "U"}, {"assistant", "A"}}).is_ok());
    EXPECT_FALSE(t.render_conversation({{"user", "U"}, {"tool", "T"}, {"user", "U"}}).is_ok());
  }
}

}  // namespace
}  // namespace tqkv
