#include "api/http_server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/error.h"
#include "common/ids.h"

namespace coppice::api {

namespace beast = boost::beast;

namespace {
constexpr int kIoTimeoutSeconds = 60;
// Refused connections answered at once; past this many, further ones are just closed.
constexpr size_t kMaxRefusing = 32;

tcp::endpoint parse_listen(const std::string& listen) {
  std::string host = listen, port = "8080";
  if (!listen.empty() && listen[0] == '[') {
    auto close = listen.find(']');
    if (close == std::string::npos) throw bad_request("bad --listen address: " + listen);
    host = listen.substr(1, close - 1);
    if (close + 1 < listen.size() && listen[close + 1] == ':') port = listen.substr(close + 2);
  } else if (auto colon = listen.rfind(':'); colon != std::string::npos) {
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
  }
  boost::system::error_code ec;
  auto addr = boost::asio::ip::make_address(host.empty() ? "127.0.0.1" : host, ec);
  if (ec) throw bad_request(fmt::format("bad --listen address {}: {}", listen, ec.message()));
  return tcp::endpoint(addr, static_cast<uint16_t>(std::stoi(port)));
}
}  // namespace

HttpServer::HttpServer(Api& api, const std::string& listen, std::filesystem::path upload_dir,
                       size_t max_connections)
    : api_(api),
      upload_dir_(std::move(upload_dir)),
      max_connections_(max_connections),
      acceptor_(ioc_) {
  auto ep = parse_listen(listen);
  acceptor_.open(ep.protocol());
  acceptor_.set_option(boost::asio::socket_base::reuse_address(true));
  acceptor_.bind(ep);
  acceptor_.listen(boost::asio::socket_base::max_listen_connections);
  port_ = acceptor_.local_endpoint().port();
}

HttpServer::~HttpServer() {
  stop(true);
  wait_connections();
}

void HttpServer::run() {
  while (!stopping_) {
    tcp::socket sock(ioc_);
    boost::system::error_code ec;
    acceptor_.accept(sock, ec);
    if (ec) {
      if (stopping_) {
        acceptor_.close(ec);
        break;
      }
      spdlog::warn("accept: {}", ec.message());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (active_.load() >= max_connections_) {
      spdlog::warn("connection limit ({}) reached; refusing a connection", max_connections_);
      if (refusing_.load() < kMaxRefusing) {
        refusing_++;
        std::thread([this, s = std::move(sock)]() mutable {
          refuse(std::move(s));
          refusing_--;
        }).detach();
      }
      continue;
    }
    sock.set_option(tcp::no_delay(true), ec);
    // A peer that stops reading or writing for this long loses its connection (and thread).
    timeval tv{kIoTimeoutSeconds, 0};
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    active_++;
    std::thread([this, s = std::move(sock)]() mutable {
      serve(std::move(s));
      active_--;
    }).detach();
  }
}

void HttpServer::stop(bool close_connections) {
  stopping_ = true;
  boost::system::error_code ec;
  // A blocked accept() is woken by shutting the listening socket down.
  if (acceptor_.is_open()) ::shutdown(acceptor_.native_handle(), SHUT_RDWR);
  if (close_connections) {
    std::lock_guard lk(mu_);
    for (auto* s : open_) s->shutdown(tcp::socket::shutdown_both, ec);
  }
}

void HttpServer::wait_connections() {
  // Bounded by the sockets' I/O timeouts: every connection thread ends within them.
  while (active_.load() > 0 || refusing_.load() > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void HttpServer::refuse(tcp::socket sock) {
  timeval tv{1, 0};
  ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string body =
      fmt::format(R"({{"error":"the server is at its connection limit ({}); retry","status":503}})",
                  max_connections_);
  std::string res = fmt::format(
      "HTTP/1.1 503 Service Unavailable\r\nServer: coppiced\r\nContent-Type: application/json\r\n"
      "Retry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
      body.size(), body);
  boost::system::error_code ec;
  boost::asio::write(sock, boost::asio::buffer(res), ec);
  sock.shutdown(tcp::socket::shutdown_send, ec);
  // Drain until the peer closes (or a second passes), at most 1 MiB.
  char sink[4096];
  for (size_t got = 0; !ec && got < (1u << 20);)
    got += sock.read_some(boost::asio::buffer(sink), ec);
  sock.close(ec);
}

void HttpServer::serve(tcp::socket sock) {
  {
    std::lock_guard lk(mu_);
    open_.insert(&sock);
  }
  beast::flat_buffer buf;
  const auto& cfg = api_.config();
  try {
    for (;;) {
      http::request_parser<http::empty_body> hp;
      hp.header_limit(64 * 1024);
      hp.body_limit(cfg.max_upload);
      beast::error_code ec;
      http::read_header(sock, buf, hp, ec);
      if (ec) break;
      auto& hdr = hp.get();
      // Authenticate from the header alone, on every path but the public ones: no body (and no
      // 100 Continue) without a valid token.
      std::string target(hdr.target());
      const bool pub = Api::is_public(hdr.method(), target);
      if (!pub) {
        try {
          api_.authenticate(hdr);
        } catch (const Error& e) {
          Exchange ex(sock, hdr, "");
          ex.set_keep_alive(false);
          ex.reply_error(e.status(), e.what());
          break;
        }
      }
      auto expect = hdr.find(http::field::expect);
      if (expect != hdr.end() && beast::iequals(expect->value(), "100-continue")) {
        static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
        boost::asio::write(sock, boost::asio::buffer(kContinue, sizeof kContinue - 1));
      }
      bool keep = true;
      if (Api::is_upload(hdr.method(), target)) {
        http::request_parser<http::file_body> fp(std::move(hp));
        fp.body_limit(cfg.max_upload);
        auto tmp = upload_dir_ / ("upload-" + new_uuid());
        fp.get().body().open(tmp.c_str(), beast::file_mode::write, ec);
        if (ec) throw internal("open upload file: " + ec.message());
        http::read(sock, buf, fp, ec);
        fp.get().body().close();
        if (ec) {
          ::unlink(tmp.c_str());
          if (ec == http::error::body_limit) {
            Exchange ex(sock, fp.get().base(), "");
            ex.set_keep_alive(false);
            ex.reply_error(413, fmt::format("upload is larger than {} bytes", cfg.max_upload));
          }
          break;
        }
        Exchange ex(sock, fp.get().base(), "");
        ex.upload_path = tmp.string();
        api_.handle(ex);
        ::unlink(tmp.c_str());
        keep = ex.keep_alive();
      } else {
        const uint64_t limit = pub ? Api::kPublicBodyLimit : cfg.max_json_body;
        bool too_big = hp.content_length() && *hp.content_length() > limit;
        http::request_parser<http::string_body> sp(std::move(hp));
        sp.body_limit(limit);
        if (!too_big) http::read(sock, buf, sp, ec);
        if (too_big || ec == http::error::body_limit) {
          Exchange ex(sock, sp.get().base(), "");
          ex.set_keep_alive(false);
          ex.reply_error(413, fmt::format("request body is larger than {} bytes", limit));
          break;
        }
        if (ec) break;
        Exchange ex(sock, sp.get().base(), std::move(sp.get().body()));
        api_.handle(ex);
        keep = ex.keep_alive();
      }
      if (!keep || stopping_) break;
    }
  } catch (const std::exception& e) {
    spdlog::debug("connection closed: {}", e.what());
  }
  boost::system::error_code ec;
  sock.shutdown(tcp::socket::shutdown_send, ec);
  std::lock_guard lk(mu_);
  open_.erase(&sock);
}

}  // namespace coppice::api
