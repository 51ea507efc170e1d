// MCP streamable HTTP (spec 2025-11-25 "Transports"), on Boost.Beast with one thread per
// connection. Every request is checked by HttpGuard first (Host, Origin, bearer secret).
// Sessions: `initialize` creates one and answers with Mcp-Session-Id; later requests must
// carry it (400 without, 404 when unknown or ended).
#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <iostream>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "cli/log.h"
#include "common/error.h"
#include "common/ids.h"
#include "mcp/http_guard.h"
#include "mcp/jsonrpc.h"
#include "mcp/transport.h"
#include "mcp/worker_set.h"

namespace coppice::mcp {

namespace beast = boost::beast;
namespace http = beast::http;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr size_t kMaxBody = 32 * 1024 * 1024;

// The live sessions of the HTTP transport. A session ends on DELETE, after `idle` without a
// request in flight, or when `max` newer ones push it out (the least recently used idle one
// first); a request on an ended session gets 404, and the client initializes again (as the
// transport spec says). A session with a request in flight never ends by itself.
class Sessions {
 public:
  using Clock = std::chrono::steady_clock;
  Sessions(McpServer& server, std::chrono::seconds idle, size_t max)
      : server_(server), idle_(idle), max_(max) {}

  std::string create() {
    std::string id = random_hex(16);
    std::vector<std::string> ended;
    {
      std::lock_guard lock(mu_);
      const auto now = Clock::now();
      for (auto it = live_.begin(); it != live_.end();) {
        if (it->second.busy == 0 && now - it->second.last > idle_) {
          ended.push_back(it->first);
          it = live_.erase(it);
        } else {
          ++it;
        }
      }
      while (live_.size() >= max_) {
        auto oldest = live_.end();
        for (auto it = live_.begin(); it != live_.end(); ++it)
          if (it->second.busy == 0 &&
              (oldest == live_.end() || it->second.last < oldest->second.last))
            oldest = it;
        if (oldest == live_.end()) break;  // every one is busy: go over the cap for now
        ended.push_back(oldest->first);
        live_.erase(oldest);
      }
      live_.emplace(id, State{now, 0});
    }
    for (const auto& e : ended) server_.end_session(e);
    return id;
  }
  // A request on `id` begins: false when the session is unknown or ended (it expires here when
  // it sat idle too long). Each true must be followed by end(id).
  bool begin(const std::string& id) {
    bool expired = false;
    {
      std::lock_guard lock(mu_);
      auto it = live_.find(id);
      if (it == live_.end()) return false;
      const auto now = Clock::now();
      expired = it->second.busy == 0 && now - it->second.last > idle_;
      if (expired) {
        live_.erase(it);
      } else {
        it->second.last = now;
        ++it->second.busy;
      }
    }
    if (expired) server_.end_session(id);
    return !expired;
  }
  void end(const std::string& id) {
    std::lock_guard lock(mu_);
    auto it = live_.find(id);
    if (it == live_.end()) return;  // deleted meanwhile
    it->second.last = Clock::now();
    --it->second.busy;
  }
  bool erase(const std::string& id) {
    {
      std::lock_guard lock(mu_);
      if (live_.erase(id) == 0) return false;
    }
    server_.end_session(id);  // cancels what it has in flight
    return true;
  }

 private:
  struct State {
    Clock::time_point last;  // the last request's start or end
    int busy;                // requests in flight
  };
  McpServer& server_;
  const std::chrono::seconds idle_;
  const size_t max_;
  std::mutex mu_;
  std::unordered_map<std::string, State> live_;
};

// Ends a request on a session (Sessions::begin's pair).
class SessionUse {
 public:
  SessionUse(Sessions& sessions, std::string id) : sessions_(sessions), id_(std::move(id)) {}
  ~SessionUse() { sessions_.end(id_); }
  SessionUse(const SessionUse&) = delete;
  SessionUse& operator=(const SessionUse&) = delete;

 private:
  Sessions& sessions_;
  std::string id_;
};

std::string docs_page(const McpServer& server) {
  std::string rows;
  auto esc = [](std::string s) {
    std::string o;
    for (char c : s)
      o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
    return o;
  };
  for (const auto& t : server.tools())
    rows += fmt::format("<tr><td><code>{}</code></td><td>{}</td></tr>\n", esc(t.name),
                        esc(t.description));
  return fmt::format(
      "<!doctype html><html><head><meta charset=\"utf-8\"><title>Coppice MCP</title></head><body>"
      "<h1>Coppice MCP server</h1><p>Streamable HTTP endpoint: <code>POST /mcp</code> (MCP {}).</p>"
      "<table border=\"1\" cellpadding=\"4\"><tr><th>tool</th><th>what it "
      "does</th></tr>\n{}</table>"
      "</body></html>\n",
      supported_protocol_versions().front(), rows);
}

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

Response plain(const Request& req, http::status s, const std::string& body,
               const std::string& type = "application/json") {
  Response r{s, req.version()};
  r.set(http::field::server, "coppice-mcp");
  r.set(http::field::content_type, type);
  r.keep_alive(req.keep_alive());
  r.body() = body;
  r.prepare_payload();
  return r;
}

Response rpc_failure(const Request& req, http::status s, int code, const std::string& msg) {
  return plain(req, s, rpc_error(nullptr, code, msg).dump());
}

// Writes an SSE response by hand: the head, one `message` event per notification as they
// happen, then the response; the connection closes after it.
class SseWriter {
 public:
  SseWriter(tcp::socket& sock, const std::string& session) : sock_(sock), session_(session) {}
  void event(const json& m) {
    std::lock_guard lock(mu_);
    if (!head_sent_) {
      std::string head =
          "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
          "Connection: close\r\n";
      if (!session_.empty()) head += "Mcp-Session-Id: " + session_ + "\r\n";
      send(head + "\r\n");
      head_sent_ = true;
    }
    send("event: message\ndata: " + m.dump(-1, ' ', false, json::error_handler_t::replace) +
         "\n\n");
  }

 private:
  void send(const std::string& s) {
    boost::system::error_code ec;
    asio::write(sock_, asio::buffer(s), ec);
  }
  std::mutex mu_;
  tcp::socket& sock_;
  std::string session_;
  bool head_sent_ = false;
};

// Handles one request; returns false when the connection must close.
bool serve_one(McpServer& server, Sessions& sessions, const HttpGuard& guard, tcp::socket& sock,
               const Request& req) {
  auto reply = [&](Response r) {
    boost::system::error_code ec;
    http::write(sock, r, ec);
    return !ec && r.keep_alive();
  };
  std::string target(req.target());
  std::string path = target.substr(0, target.find('?'));
  auto sv = [](beast::string_view v) { return std::string_view(v.data(), v.size()); };
  std::optional<std::string_view> origin;
  if (auto it = req.find(http::field::origin); it != req.end()) origin = sv(it->value());
  if (auto refused =
          guard.check(sv(req[http::field::host]), origin, sv(req[http::field::authorization]))) {
    Response r = rpc_failure(req, static_cast<http::status>(refused->status), kInvalidRequest,
                             refused->message);
    if (refused->status == 401)
      r.set(http::field::www_authenticate, "Bearer realm=\"coppice-mcp\"");
    return reply(std::move(r));
  }
  if (path == "/" && req.method() == http::verb::get)
    return reply(plain(req, http::status::ok, docs_page(server), "text/html; charset=utf-8"));
  if (path != "/mcp")
    return reply(plain(req, http::status::not_found, R"({"error":"not found: use /mcp"})"));

  std::string session(req["mcp-session-id"]);
  if (req.method() == http::verb::delete_) {
    if (session.empty())
      return reply(rpc_failure(req, http::status::bad_request, kInvalidRequest,
                               "Mcp-Session-Id header required"));
    if (!sessions.erase(session))
      return reply(rpc_failure(req, http::status::not_found, kInvalidRequest, "unknown session"));
    return reply(plain(req, http::status::ok, ""));
  }
  if (req.method() != http::verb::post) {
    Response r = plain(
        req, http::status::method_not_allowed,
        R"({"error":"this server offers no server-initiated stream; POST requests to /mcp"})");
    r.set(http::field::allow, "POST, DELETE");
    return reply(std::move(r));
  }
  std::string ctype(req[http::field::content_type]);
  if (ctype.rfind("application/json", 0) != 0)
    return reply(rpc_failure(req, http::status::unsupported_media_type, kInvalidRequest,
                             "Content-Type must be application/json"));
  json msg = json::parse(req.body(), nullptr, false);
  if (msg.is_discarded())
    return reply(
        rpc_failure(req, http::status::bad_request, kParseError, "parse error: not valid JSON"));

  bool is_init = msg.is_object() && msg.value("method", "") == "initialize";
  std::optional<SessionUse> use;  // the request is in flight on its session until it returns
  if (is_init) {
    session = sessions.create();
  } else {
    if (session.empty())
      return reply(rpc_failure(req, http::status::bad_request, kInvalidRequest,
                               "Mcp-Session-Id header required (initialize first)"));
    if (!sessions.begin(session))
      return reply(rpc_failure(req, http::status::not_found, kInvalidRequest,
                               "unknown or ended session: initialize again"));
    use.emplace(sessions, session);
    std::string pv(req["mcp-protocol-version"]);
    const auto& v = supported_protocol_versions();
    if (!pv.empty() && std::find(v.begin(), v.end(), pv) == v.end())
      return reply(rpc_failure(req, http::status::bad_request, kInvalidRequest,
                               "unsupported MCP-Protocol-Version " + pv));
  }
  auto has_requests = [](const json& m) {
    auto is_req = [](const json& x) {
      return x.is_object() && x.contains("method") && x.contains("id");
    };
    if (m.is_array()) return std::any_of(m.begin(), m.end(), is_req);
    return is_req(m);
  };
  if (!has_requests(msg)) {  // notifications and responses: accepted, nothing to answer
    server.handle(msg, session, nullptr);
    Response r = plain(req, http::status::accepted, "");
    return reply(std::move(r));
  }
  std::string accept(req[http::field::accept]);
  bool wants_progress = msg.is_object() && msg.contains("params") && msg["params"].is_object() &&
                        msg["params"].contains("_meta") && msg["params"]["_meta"].is_object() &&
                        msg["params"]["_meta"].contains("progressToken");
  if (wants_progress && accept.find("text/event-stream") != std::string::npos) {
    SseWriter sse(sock, session);
    auto r = server.handle(msg, session, [&sse](const json& m) { sse.event(m); });
    if (r) sse.event(*r);
    return false;
  }
  auto r = server.handle(msg, session, nullptr);
  if (!r) return reply(plain(req, http::status::accepted, ""));
  Response out =
      plain(req, http::status::ok, r->dump(-1, ' ', false, json::error_handler_t::replace));
  if (is_init) out.set("Mcp-Session-Id", session);
  return reply(std::move(out));
}

void serve_connection(McpServer& server, Sessions& sessions, const HttpGuard& guard,
                      tcp::socket& sock) {
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(kMaxBody);
    boost::system::error_code ec;
    http::read(sock, buf, parser, ec);
    if (ec) return;
    if (!serve_one(server, sessions, guard, sock, parser.get())) break;
  }
  boost::system::error_code ec;
  sock.shutdown(tcp::socket::shutdown_both, ec);
}

}  // namespace

void serve_http(McpServer& server, const HttpOptions& opt) {
  const std::string& listen = opt.listen;
  auto colon = listen.rfind(':');
  if (colon == std::string::npos)
    throw bad_request("--listen must be ADDR:PORT, e.g. 127.0.0.1:9452");
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  unsigned short port = static_cast<unsigned short>(std::stoi(listen.substr(colon + 1)));
  asio::io_context io;
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) throw bad_request(fmt::format("--listen: '{}' is not an IP address", host));
  tcp::acceptor acceptor(io);
  tcp::endpoint ep(addr, port);
  acceptor.open(ep.protocol());
  acceptor.set_option(asio::socket_base::reuse_address(true));
  acceptor.bind(ep, ec);
  if (ec) throw Error(500, fmt::format("cannot listen on {}: {}", listen, ec.message()));
  acceptor.listen();
  const unsigned short bound = acceptor.local_endpoint().port();
  HttpGuard guard({opt.token, host, bound, opt.allow_hosts, opt.allow_origins});
  std::cerr << fmt::format("coppice mcp: serving MCP on http://{}:{}/mcp",
                           host.find(':') != std::string::npos ? "[" + host + "]" : host, bound)
            << std::endl;
  if (opt.token_generated)
    std::cerr << "coppice mcp: bearer token (clients send 'Authorization: Bearer <token>'): "
              << opt.token << std::endl;
  if (!addr.is_loopback())
    std::cerr << "coppice mcp: warning: listening beyond loopback over plain http: the bearer "
                 "token travels unencrypted"
              << std::endl;
  Sessions sessions(server, opt.session_idle, opt.max_sessions);
  WorkerSet workers;
  for (;;) {
    tcp::socket sock(io);
    acceptor.accept(sock, ec);
    if (ec) continue;
    auto s = std::make_shared<tcp::socket>(std::move(sock));
    workers.start(
        [&server, &sessions, &guard, s] { serve_connection(server, sessions, guard, *s); });
  }
}

}  // namespace coppice::mcp
