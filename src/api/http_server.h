// A blocking HTTP/1.1 server on Boost.Beast: one acceptor thread, one thread per connection
// (connections are few and long-lived event streams block, so threads keep handlers simple).
// Uploads to /v1/files stream to a file under the data directory instead of memory.
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "api/api.h"

namespace coppice::api {

class HttpServer {
 public:
  // Binds `listen` ("127.0.0.1:8080", "[::1]:0"; port 0 picks a free one). Throws on failure.
  HttpServer(Api& api, const std::string& listen, std::filesystem::path upload_dir,
             size_t max_connections = 1024);
  ~HttpServer();
  uint16_t port() const { return port_; }
  // Accepts until stop() is called.
  void run();
  // Stops accepting. With `close_connections`, also shuts every open connection down.
  void stop(bool close_connections);
  // Waits until every connection thread ended.
  void wait_connections();

 private:
  void serve(tcp::socket sock);
  // Past max_connections: answers 503 (Retry-After) without reading the request, then drains
  // what the peer sent for up to a second so the answer is not lost to a reset.
  void refuse(tcp::socket sock);

  Api& api_;
  std::filesystem::path upload_dir_;
  size_t max_connections_;
  boost::asio::io_context ioc_;
  tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::set<tcp::socket*> open_;
  std::atomic<size_t> active_{0};
  std::atomic<size_t> refusing_{0};  // connections being answered 503 (at most kMaxRefusing)
};

}  // namespace coppice::api
