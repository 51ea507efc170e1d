// One HTTP request and its response. Handlers read the parsed request and answer exactly once:
// a whole body (gzip-encoded when the client accepts it) or a chunked stream (gzip chunks
// sync-flushed). The bytes go to a ResponseChannel: the connection the request came from.
//
// Handlers run on a worker thread and write with blocking calls (reply, write, ...), which
// wait until the connection's IO thread wrote the bytes. A handler that waits for something
// else (an event stream follower) calls detach() and goes on asynchronously with async_write /
// async_end_stream on the connection's strand, so that waiting costs no thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http.hpp>
#include <functional>
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

// Where an Exchange's response bytes go. Implemented by the HTTP server's connection.
class ResponseChannel {
 public:
  virtual ~ResponseChannel() = default;
  // Writes `bytes` and waits until they are written. Only from a worker thread, never from the
  // connection's strand. Throws when the write fails, times out or the connection is closed.
  virtual void send(std::string bytes) = 0;
  // Writes `bytes`, then runs `done(ok)` on the connection's strand. From the strand only.
  virtual void async_send(std::string bytes, std::function<void(bool ok)> done) = 0;
  // The connection's strand: the completions of an asynchronous response run on it.
  virtual boost::asio::any_io_executor executor() = 0;
  // Ends a detached response: the connection reads its next request (keep_alive) or closes.
  // From the strand only, exactly once per detached response.
  virtual void finish(bool keep_alive) = 0;
  // True once the connection is closing (the server stops, a write failed): an asynchronous
  // response should end.
  virtual bool closed() const = 0;
  // `fn` runs on the strand when the connection closes while a detached response is on (it
  // is dropped when the response finishes). From the strand only.
  virtual void on_close(std::function<void()> fn) = 0;
};

class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  // `header` must outlive the Exchange (the connection keeps it until the response ended).
  Exchange(std::shared_ptr<ResponseChannel> channel, const http::request_header<>& header,
           std::string body);

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

  // Asynchronous responses. detach() hands the rest of the response to the caller, who keeps
  // the Exchange alive (a shared_ptr from the connection) and, on the channel's strand only,
  // writes with async_write / async_end_stream and finally calls channel().finish(). The
  // handler returns at once after detach() and touches the Exchange no more on its thread.
  void detach() { detached_ = true; }
  bool detached() const { return detached_; }
  ResponseChannel& channel() { return *channel_; }
  // `done(ok)` runs on the strand once the chunk is written (ok=false: the connection failed).
  void async_write(std::string_view data, std::function<void(bool ok)> done);
  void async_end_stream(std::function<void(bool ok)> done);

  bool responded() const { return responded_; }
  // A response broke off half-way (e.g. a stream failed): the connection must be closed.
  void abort() { keep_alive_ = false; }
  void set_keep_alive(bool k) { keep_alive_ = k; }
  bool keep_alive() const { return keep_alive_; }
  int status() const { return status_; }

 private:
  // Serializes a chunk of a stream (gzip-compressed when the stream is).
  std::string chunk_bytes(std::string_view data);
  std::string last_chunk_bytes();

  std::shared_ptr<ResponseChannel> channel_;
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
  bool detached_ = false;
  int status_ = 0;
  std::unique_ptr<GzipStream> stream_gz_;
};

}  // namespace coppice::api
