// A small blocking HTTP client on libcurl for talking to registries: one request at a time
// per client, bodies either collected (small documents) or streamed to a sink (blobs).
//
// Where it may connect (net_policy.h): redirects are followed here, hop by hop, not by
// libcurl, so that a ConnectPolicy decides each hop (its scheme, and whether its host may be at
// a non-public address) before it is fetched; and every socket goes through an open-socket
// callback that refuses non-public addresses for hops not permitted them, checking the address
// actually connected to. A refusal is Error 403 naming the address and the operator's flags.
// An Authorization header is dropped when a redirect leaves the request's origin.
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

// A URL split for the policy: scheme "http"/"https", host lower-cased ("[v6]" in brackets),
// port (the scheme's default when not given).
struct UrlParts {
  std::string scheme, host;
  int port = 0;
  std::string host_port() const;  // "host:port"
  bool same_origin(const UrlParts& o) const {
    return scheme == o.scheme && host == o.host && port == o.port;
  }
};
// Parses an absolute http(s) URL; Error 502 when it is not one.
UrlParts parse_url(const std::string& url);
// `ref` (absolute, or relative as a Location header may be) resolved against `base`.
std::string resolve_url(const std::string& base, const std::string& ref);

// What one hop may reach.
struct HopPermit {
  bool private_addresses = false;  // loopback, private, link-local, metadata, ... (net_policy.h)
};
// Decides each hop before it is fetched: `url` is the hop, `from` the one that redirected to
// it (nullptr for the request itself). Throws (Error 403) to refuse the URL outright.
using ConnectPolicy = std::function<HopPermit(const UrlParts& url, const UrlParts* from)>;

// Receives a 2xx body as it arrives. Throwing aborts the transfer (the exception propagates).
using BodySink = std::function<void(std::string_view)>;
// Polled during transfers; returning true aborts with Error 499 ("cancelled").
using AbortCheck = std::function<bool()>;

class HttpClient {
 public:
  // Without a policy every hop is permitted public addresses only.
  explicit HttpClient(AbortCheck abort = nullptr, ConnectPolicy policy = nullptr);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Performs one request, following up to 10 redirects when `req.follow_redirects` (303, and
  // 301/302 after a POST, continue as GET without a body). A 2xx body goes to `sink` when
  // given; other bodies are collected (up to 1 MiB) for error messages. Transport failures
  // throw Error 502 with curl's message; a connection the policy refuses throws Error 403; an
  // abort throws Error 499. HTTP error statuses are returned, not thrown.
  HttpResponse perform(const HttpRequest& req, const BodySink* sink = nullptr);

  // Collected (non-streamed) bodies larger than this fail with Error 502.
  void set_max_body(size_t bytes) { max_body_ = bytes; }

 private:
  HttpResponse perform_once(const HttpRequest& req, const BodySink* sink, const UrlParts& url,
                            const HopPermit& permit);

  struct Handle;
  std::unique_ptr<Handle> h_;
  AbortCheck abort_;
  ConnectPolicy policy_;
  size_t max_body_ = 16u << 20;
};

// Percent-encodes a query value.
std::string url_escape(std::string_view s);

}  // namespace coppice::oci
