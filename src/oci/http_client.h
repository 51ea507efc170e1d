// A small blocking HTTP client on libcurl for talking to registries: one request at a time
// per client, bodies either collected (small documents) or streamed to a sink (blobs).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace coppice::oci {

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::string body;                  // sent when non-empty (or method is PUT/POST)
  std::filesystem::path body_file;   // sent instead of `body` when set
  bool follow_redirects = true;
};

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased; the last value wins
  std::string body;           // the body, unless it was streamed to a sink (then empty)
  std::string effective_url;  // after redirects
  bool streamed = false;      // some body bytes went to the sink
  std::string header(const std::string& lower_name) const;
};

// Receives a 2xx body as it arrives. Throwing aborts the transfer (the exception propagates).
using BodySink = std::function<void(std::string_view)>;
// Polled during transfers; returning true aborts with Error 499 ("cancelled").
using AbortCheck = std::function<bool()>;

class HttpClient {
 public:
  explicit HttpClient(AbortCheck abort = nullptr);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Performs one request. A 2xx body goes to `sink` when given; other bodies are collected
  // (up to 1 MiB) for error messages. Transport failures throw Error 502 with curl's message;
  // an abort throws Error 499. HTTP error statuses are returned, not thrown.
  HttpResponse perform(const HttpRequest& req, const BodySink* sink = nullptr);

  // Collected (non-streamed) bodies larger than this fail with Error 502.
  void set_max_body(size_t bytes) { max_body_ = bytes; }

 private:
  struct Handle;
  std::unique_ptr<Handle> h_;
  AbortCheck abort_;
  size_t max_body_ = 16u << 20;
};

// Percent-encodes a query value.
std::string url_escape(std::string_view s);

}  // namespace coppice::oci
