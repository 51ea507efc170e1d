// The CLI's HTTP/1.1 client: plain sockets (OpenSSL for https) and Boost.Beast's response
// parser. The CLI does not use libcurl, whose ~30 shared libraries cost several milliseconds at
// every process start (`coppice --version` has a 5 ms budget). One request per connection;
// bodies are collected or streamed to a sink (SSE). Redirects are not followed.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace coppice::cli {

struct HttpRequest {
  std::string method = "GET";
  std::string url;                   // http://host[:port]/path?query or https://…
  std::vector<std::string> headers;  // "Name: value"
  std::string body;
};

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased; the last value wins
  std::string body;                            // unless streamed to a sink
  bool streamed = false;                       // some body bytes went to the sink
  std::string header(const std::string& lower_name) const;
};

// Receives a 2xx body as it arrives; throwing aborts the request (the exception propagates).
using BodySink = std::function<void(std::string_view)>;
// Polled about every 100 ms while waiting on the network; true aborts with Error 499.
using AbortCheck = std::function<bool()>;

class HttpTransport {
 public:
  explicit HttpTransport(AbortCheck abort = nullptr) : abort_(std::move(abort)) {}

  // Connection failures, resets and malformed responses throw Error 502 naming the URL; an
  // abort throws Error 499. HTTP error statuses are returned. Non-2xx bodies are kept (up to
  // 1 MiB) for error messages; 2xx bodies go to `sink` when given.
  HttpResponse perform(const HttpRequest& req, const BodySink* sink = nullptr);

 private:
  AbortCheck abort_;
};

}  // namespace coppice::cli
