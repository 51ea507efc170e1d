// One HTTP request and its response on a synchronous Beast connection. Handlers read the
// parsed request and answer exactly once: a whole body (gzip-encoded when the client accepts
// it) or a chunked stream (gzip chunks sync-flushed).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/gzip.h"

namespace coppice::api {

namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;

// Decoded query parameters; keys may repeat (grep's pattern=a&pattern=b).
class Query {
 public:
  static Query parse(std::string_view qs);
  std::optional<std::string> get(const std::string& k) const;
  std::vector<std::string> all(const std::string& k) const;
  bool has(const std::string& k) const { return m_.count(k) > 0; }

 private:
  std::multimap<std::string, std::string> m_;
};

std::string percent_decode(std::string_view s);

class Exchange {
 public:
  Exchange(tcp::socket& sock, const http::request_header<>& header, std::string body);

  const http::request_header<>& header() const { return header_; }
  http::verb method() const { return header_.method(); }
  // Path segments after the "/v1" prefix, percent-decoded ("/v1/images/x/tag" -> images,x,tag).
  const std::vector<std::string>& segments() const { return segments_; }
  bool trailing_slash() const { return trailing_slash_; }
  const Query& query() const { return query_; }
  const std::string& body() const { return body_; }
  std::string header_value(http::field f) const;
  std::string header_value(std::string_view name) const;
  // The body parsed as JSON; throws 400 when malformed.
  nlohmann::json json_body() const;

  // The caller's tenant, set by authentication.
  std::string project;
  std::string token_uuid;
  // Set for uploads that were streamed to a file instead of `body`.
  std::string upload_path;

  void reply_json(int status, const nlohmann::json& j,
                  const std::vector<std::pair<std::string, std::string>>& headers = {});
  void reply(int status, std::string body, const std::string& content_type,
             const std::vector<std::pair<std::string, std::string>>& headers = {});
  void reply_error(int status, const std::string& message);
  // A bodiless answer to HEAD that announces `content_length` bytes.
  void reply_head(int status, const std::string& content_type, uint64_t content_length);

  // Streaming: begin (status + headers), any number of writes, end.
  void begin_stream(int status, const std::string& content_type,
                    const std::vector<std::pair<std::string, std::string>>& headers = {});
  void write(std::string_view data);
  void end_stream();

  bool responded() const { return responded_; }
  // A response broke off half-way (e.g. a stream failed): the connection must be closed.
  void abort() { keep_alive_ = false; }
  void set_keep_alive(bool k) { keep_alive_ = k; }
  bool keep_alive() const { return keep_alive_; }
  int status() const { return status_; }

 private:
  tcp::socket& sock_;
  const http::request_header<>& header_;
  std::string body_;
  std::vector<std::string> segments_;
  bool trailing_slash_ = false;
  Query query_;
  bool gzip_ = false;
  bool head_ = false;
  bool responded_ = false;
  bool streaming_ = false;
  bool keep_alive_ = true;
  int status_ = 0;
  std::unique_ptr<GzipStream> stream_gz_;
};

}  // namespace coppice::api
