#include "cli/http_transport.h"

#include <fmt/format.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/beast/http/basic_parser.hpp>
#include <exception>
#include <limits>
#include <memory>
#include <optional>

#include "common/error.h"
#include "common/fd.h"

namespace coppice::cli {

namespace http = boost::beast::http;

namespace {

struct Url {
  bool tls = false;
  std::string host, port, target;
};

Url parse_url(const std::string& url) {
  Url u;
  std::string_view rest = url;
  if (rest.rfind("https://", 0) == 0) {
    u.tls = true;
    rest.remove_prefix(8);
  } else if (rest.rfind("http://", 0) == 0) {
    rest.remove_prefix(7);
  } else {
    throw Error(400, fmt::format("unsupported URL {} (want http:// or https://)", url));
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  u.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (!authority.empty() && authority.front() == '[') {  // [v6]:port
    size_t close = authority.find(']');
    if (close == std::string_view::npos) throw Error(400, "bad IPv6 address in " + url);
    u.host = std::string(authority.substr(1, close - 1));
    if (close + 1 < authority.size() && authority[close + 1] == ':')
      u.port = std::string(authority.substr(close + 2));
  } else {
    size_t colon = authority.rfind(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) u.port = std::string(authority.substr(colon + 1));
  }
  if (u.host.empty()) throw Error(400, "no host in URL " + url);
  if (u.port.empty()) u.port = u.tls ? "443" : "80";
  return u;
}

struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};

// A connected socket, optionally wrapped in TLS, with reads and writes that wait in 100 ms
// slices so that the abort check runs.
class Connection {
 public:
  Connection(const Url& u, const AbortCheck& abort, const std::string& url)
      : abort_(abort), url_(url) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(u.host.c_str(), u.port.c_str(), &hints, &res);
    if (rc != 0) throw Error(502, fmt::format("{}: {}", u.host, gai_strerror(rc)));
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(res, freeaddrinfo);
    int last_errno = 0;
    for (addrinfo* a = res; a; a = a->ai_next) {
      UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
      if (!fd) continue;
      if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) == 0) {
        fd_ = std::move(fd);
        break;
      }
      last_errno = errno;
    }
    if (!fd_)
      throw Error(502, fmt::format("connect to {}:{}: {}", u.host, u.port,
                                   std::strerror(last_errno ? last_errno : ECONNREFUSED)));
    if (u.tls) start_tls(u.host);
  }

  void write_all(std::string_view data) {
    while (!data.empty()) {
      wait(POLLOUT);
      ssize_t n = ssl_ ? SSL_write(ssl_.get(), data.data(), static_cast<int>(data.size()))
                       : ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        if (!ssl_ && errno == EINTR) continue;
        throw Error(502, fmt::format("{}: sending the request failed", url_));
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  // Bytes read (0 at the end of the stream).
  size_t read_some(char* buf, size_t len) {
    for (;;) {
      if (!ssl_ || SSL_pending(ssl_.get()) == 0) wait(POLLIN);
      ssize_t n =
          ssl_ ? SSL_read(ssl_.get(), buf, static_cast<int>(len)) : ::recv(fd_.get(), buf, len, 0);
      if (n > 0) return static_cast<size_t>(n);
      if (n == 0) return 0;
      if (ssl_) {
        int e = SSL_get_error(ssl_.get(), static_cast<int>(n));
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) continue;
        if (e == SSL_ERROR_ZERO_RETURN) return 0;
        throw Error(502, fmt::format("{}: TLS read failed", url_));
      }
      if (errno == EINTR) continue;
      throw Error(502, fmt::format("{}: {}", url_, std::strerror(errno)));
    }
  }

 private:
  void wait(short events) {
    pollfd p{fd_.get(), events, 0};
    for (;;) {
      if (abort_ && abort_()) throw Error(499, "cancelled");
      int rc = ::poll(&p, 1, 100);
      if (rc > 0) return;
      if (rc < 0 && errno != EINTR) throw Error(502, fmt::format("{}: poll failed", url_));
    }
  }

  void start_tls(const std::string& host) {
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx_) throw Error(500, "TLS setup failed");
    SSL_CTX_set_default_verify_paths(ctx_.get());
    SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    ssl_.reset(SSL_new(ctx_.get()));
    SSL_set_fd(ssl_.get(), fd_.get());
    SSL_set_tlsext_host_name(ssl_.get(), host.c_str());
    SSL_set1_host(ssl_.get(), host.c_str());
    if (SSL_connect(ssl_.get()) != 1) {
      char err[256];
      ERR_error_string_n(ERR_get_error(), err, sizeof err);
      throw Error(502, fmt::format("TLS handshake with {} failed: {}", host, err));
    }
  }

  const AbortCheck& abort_;
  std::string url_;
  UniqueFd fd_;
  std::unique_ptr<SSL_CTX, SslFree> ctx_;
  std::unique_ptr<SSL, SslFree> ssl_;
};

// Beast's incremental response parser, delivering headers into an HttpResponse and the body
// to a sink (2xx) or into the response (other statuses, capped).
class ResponseParser final : public http::basic_parser<false> {
 public:
  ResponseParser(HttpResponse& r, const BodySink* sink) : r_(r), sink_(sink) {}
  std::exception_ptr sink_error;

 private:
  void on_request_impl(http::verb, boost::string_view, boost::string_view, int,
                       boost::beast::error_code&) override {}
  void on_response_impl(int code, boost::string_view, int, boost::beast::error_code&) override {
    r_.status = code;
  }
  void on_field_impl(http::field, boost::string_view name, boost::string_view value,
                     boost::beast::error_code&) override {
    std::string n(name.data(), name.size());
    for (auto& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r_.headers[n] = std::string(value.data(), value.size());
  }
  void on_header_impl(boost::beast::error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>&,
                         boost::beast::error_code&) override {}
  std::size_t on_body_impl(boost::string_view body, boost::beast::error_code& ec) override {
    deliver(std::string_view(body.data(), body.size()), ec);
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t, boost::string_view, boost::beast::error_code&) override {
  }
  std::size_t on_chunk_body_impl(std::uint64_t, boost::string_view body,
                                 boost::beast::error_code& ec) override {
    deliver(std::string_view(body.data(), body.size()), ec);
    return body.size();
  }
  void on_finish_impl(boost::beast::error_code&) override {}

  void deliver(std::string_view data, boost::beast::error_code& ec) {
    if (sink_ && r_.status >= 200 && r_.status < 300) {
      try {
        (*sink_)(data);
        r_.streamed = true;
      } catch (...) {
        sink_error = std::current_exception();
        ec = http::error::body_limit;  // any error stops the parser
      }
      return;
    }
    if (r_.body.size() + data.size() > (64u << 20)) {
      ec = http::error::body_limit;
      return;
    }
    r_.body.append(data);
  }

  HttpResponse& r_;
  const BodySink* sink_;
};

}  // namespace

std::string HttpResponse::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

HttpResponse HttpTransport::perform(const HttpRequest& req, const BodySink* sink) {
  Url u = parse_url(req.url);
  Connection conn(u, abort_, req.url);
  std::string head = fmt::format(
      "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: coppice/0.1\r\n"
      "Connection: close\r\n",
      req.method, u.target, (u.port == (u.tls ? "443" : "80")) ? u.host : u.host + ":" + u.port);
  for (const auto& h : req.headers) {
    if (h.size() >= 1 && h.back() == ':') continue;  // "Expect:" style removals
    head += h + "\r\n";
  }
  if (!req.body.empty() || req.method == "POST" || req.method == "PUT" || req.method == "PATCH")
    head += fmt::format("Content-Length: {}\r\n", req.body.size());
  head += "\r\n";
  conn.write_all(head);
  if (!req.body.empty()) conn.write_all(req.body);

  HttpResponse resp;
  ResponseParser parser(resp, sink);
  parser.eager(true);
  // Not boost::none: Boost 1.74 compares the length with an empty optional as "over the limit".
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  if (req.method == "HEAD") parser.skip(true);
  std::string buf;
  std::vector<char> chunk(64 * 1024);
  while (!parser.is_done()) {
    size_t n = conn.read_some(chunk.data(), chunk.size());
    boost::beast::error_code ec;
    if (n == 0) {
      parser.put_eof(ec);
      if (parser.sink_error) std::rethrow_exception(parser.sink_error);
      if (ec || !parser.is_done())
        throw Error(502, fmt::format("{} {}: the connection closed before the response ended",
                                     req.method, req.url));
      break;
    }
    buf.append(chunk.data(), n);
    while (!buf.empty() && !parser.is_done()) {
      size_t used = parser.put(boost::asio::buffer(buf.data(), buf.size()), ec);
      if (parser.sink_error) std::rethrow_exception(parser.sink_error);
      buf.erase(0, used);  // consumed even when the parser then asks for more
      if (ec == http::error::need_more) break;
      if (ec)
        throw Error(502, fmt::format("{} {}: bad response: {}", req.method, req.url, ec.message()));
      if (used == 0) break;
    }
  }
  return resp;
}

}  // namespace coppice::cli
