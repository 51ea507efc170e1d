// The HTTP/1.1 server of coppiced: asynchronous Boost.Beast on a few IO threads, so that an
// open connection costs memory (a socket, a timer, its buffers) but no thread.
//
// A connection goes through these phases, each with its own deadline (HttpServerConfig):
//   idle    between keep-alive requests: no byte for idle_timeout → closed quietly;
//   header  the whole request header within header_timeout (counted from the connection's
//           accept, or from the first byte of a later request) → else 408 and closed;
//   auth    every request but the public ones (Api::is_public) is authenticated from its
//           header alone before any of its body is read or 100 Continue is sent: 401 and
//           closed without reading the body;
//   body    the body must progress: every body_window, at least min(body_min_bytes, what is
//           left of it) must arrive → else 408 and closed. JSON bodies are held in memory up
//           to max_json_body (a public request's up to Api::kPublicBodyLimit; 413 from the
//           Content-Length before reading); uploads (Api::is_upload) stream to a file in
//           upload_dir, the disk writes on the bulk pool;
//   handler Api::handle runs on a worker pool, never on an IO thread: the `quick` pool for
//           short requests, the `bulk` pool for uploads, downloads, archives, exports and
//           greps (Api::is_bulk), so that long streams never delay short requests. Its
//           writes wait for the IO thread; a write that makes no progress for
//           write_timeout (the client reads nothing) closes the connection.
//           An event-stream follower detaches (Exchange::detach) and waits on the strand.
// Past max_connections a new connection is answered 503 with Retry-After without reading it.
#pragma once

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "api/api.h"
#include "api/worker_pool.h"

namespace coppice::api {

struct HttpServerConfig {
  std::string listen = "127.0.0.1:8080";  // "127.0.0.1:8080", "[::1]:0"; port 0 picks a free one
  std::filesystem::path upload_dir;       // uploads in flight (the store's tmp/)
  size_t max_connections = 16384;
  size_t io_threads = 0;     // 0: one per CPU
  size_t quick_workers = 0;  // 0: max(8, 2 per CPU)
  size_t bulk_workers = 32;  // uploads, downloads, archives, exports, greps at once
  std::chrono::milliseconds header_timeout{std::chrono::seconds(20)};
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(60)};
  std::chrono::milliseconds body_window{std::chrono::seconds(30)};
  uint64_t body_min_bytes = 64 << 10;
  std::chrono::milliseconds write_timeout{std::chrono::seconds(60)};  // without progress
};

class Connection;

class HttpServer {
 public:
  // Binds cfg.listen. Throws on failure.
  HttpServer(Api& api, HttpServerConfig cfg);
  ~HttpServer();
  uint16_t port() const { return port_; }
  // Starts the IO threads and accepts until stop() is called; returns then (connections stay
  // served until stop(true) or until they end).
  void run();
  // Stops accepting. With `close_connections`, also closes every open connection (a handler
  // still running sees its writes fail and ends).
  void stop(bool close_connections);
  // Waits until every connection ended, then stops the IO threads.
  void wait_connections();
  const HttpServerConfig& config() const { return cfg_; }

 private:
  friend class Connection;
  void accept();
  void on_accept(tcp::socket sock,
                 boost::asio::strand<boost::asio::io_context::executor_type> strand);
  // Past max_connections: answers 503 (Retry-After) without reading the request, then drains
  // what the peer sent for up to a second so the answer is not lost to a reset.
  void refuse(tcp::socket sock);
  void forget(Connection* c);

  Api& api_;
  HttpServerConfig cfg_;
  boost::asio::io_context ioc_;
  // Keeps the IO threads running while no operation is pending (a handler on a worker will
  // post back to its connection); released by wait_connections().
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  WorkerPool quick_;
  WorkerPool bulk_;
  std::vector<std::thread> io_threads_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool accepting_ = true;
  // Every open connection. A connection is owned by the shared_ptrs its pending operations
  // (and a running handler) hold; this map only names them for stop(true) and the limit.
  std::unordered_map<Connection*, std::weak_ptr<Connection>> open_;
  std::atomic<size_t> refusing_{0};  // connections being answered 503 (at most kMaxRefusing)
  std::atomic<size_t> uploads_{0};   // upload bodies being read (at most kMaxUploads)
};

}  // namespace coppice::api
