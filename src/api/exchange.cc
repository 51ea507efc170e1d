#include "api/exchange.h"

#include <boost/asio/post.hpp>
#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/core/buffers_to_string.hpp>

#include "common/error.h"

namespace coppice::api {

namespace {
// A SyncWriteStream that appends to a string: Beast's serializer writes a message into it,
// so the bytes on the wire are the ones Beast's synchronous http::write would send.
class StringSink {
 public:
  explicit StringSink(std::string& out) : out_(out) {}
  template <class ConstBuffers>
  size_t write_some(const ConstBuffers& buffers) {
    size_t n = 0;
    for (auto b : boost::beast::buffers_range_ref(buffers)) {
      out_.append(static_cast<const char*>(b.data()), b.size());
      n += b.size();
    }
    return n;
  }
  template <class ConstBuffers>
  size_t write_some(const ConstBuffers& buffers, boost::system::error_code& ec) {
    ec = {};
    return write_some(buffers);
  }

 private:
  std::string& out_;
};

template <class Body>
std::string serialize_header(http::response<Body>& res) {
  std::string out;
  StringSink sink(out);
  http::response_serializer<Body> sr{res};
  http::write_header(sink, sr);
  return out;
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hexval(s[i + 1]) * 16 + hexval(s[i + 2])));
      i += 2;
    } else if (s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

Query Query::parse(std::string_view qs) {
  Query q;
  size_t pos = 0;
  while (pos <= qs.size()) {
    size_t amp = qs.find('&', pos);
    if (amp == std::string_view::npos) amp = qs.size();
    std::string_view kv = qs.substr(pos, amp - pos);
    pos = amp + 1;
    if (kv.empty()) {
      if (amp == qs.size()) break;
      continue;
    }
    size_t eq = kv.find('=');
    std::string k = percent_decode(kv.substr(0, eq));
    std::string v = eq == std::string_view::npos ? "" : percent_decode(kv.substr(eq + 1));
    q.m_.emplace(std::move(k), std::move(v));
  }
  return q;
}

std::optional<std::string> Query::get(const std::string& k) const {
  auto it = m_.find(k);
  if (it == m_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> Query::all(const std::string& k) const {
  std::vector<std::string> out;
  auto [a, b] = m_.equal_range(k);
  for (auto it = a; it != b; ++it) out.push_back(it->second);
  return out;
}

Exchange::Exchange(std::shared_ptr<ResponseChannel> channel, const http::request_header<>& header,
                   std::string body)
    : channel_(std::move(channel)), header_(header), body_(std::move(body)) {
  std::string_view target(header.target().data(), header.target().size());
  size_t qpos = target.find('?');
  std::string_view path = target.substr(0, qpos);
  if (qpos != std::string_view::npos) query_ = Query::parse(target.substr(qpos + 1));
  // Accept any base-path prefix before /v1 (contract §1.1).
  size_t v1 = path.find("/v1/");
  if (v1 != std::string_view::npos) {
    path = path.substr(v1 + 3);
  } else if (path.size() >= 3 && path.substr(path.size() - 3) == "/v1") {
    path = "/";
  } else {
    path = "";  // not an API path
    segments_.push_back("");
  }
  trailing_slash_ = path.size() > 1 && path.back() == '/';
  size_t pos = 0;
  while (pos < path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > pos) segments_.push_back(percent_decode(path.substr(pos, slash - pos)));
    pos = slash + 1;
  }
  gzip_ = accepts_gzip(header_value(http::field::accept_encoding));
  head_ = header.method() == http::verb::head;
  auto conn = header_value(http::field::connection);
  for (auto& ch : conn) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  keep_alive_ = header.version() >= 11 ? conn.find("close") == std::string::npos
                                       : conn.find("keep-alive") != std::string::npos;
}

std::string Exchange::header_value(http::field f) const {
  auto it = header_.find(f);
  if (it == header_.end()) return "";
  return std::string(it->value());
}

std::string Exchange::header_value(std::string_view name) const {
  auto it = header_.find(boost::beast::string_view(name.data(), name.size()));
  if (it == header_.end()) return "";
  return std::string(it->value());
}

nlohmann::json Exchange::json_body() const {
  if (body_.empty()) throw bad_request("request body must be JSON");
  try {
    return nlohmann::json::parse(body_);
  } catch (const nlohmann::json::parse_error& e) {
    throw bad_request(std::string("malformed JSON body: ") + e.what());
  }
}

void Exchange::reply_json(int status, const nlohmann::json& j,
                          const std::vector<std::pair<std::string, std::string>>& headers) {
  // Strings echoed from requests may hold invalid UTF-8: replace it rather than fail.
  reply(status, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
        "application/json", headers);
}

void Exchange::reply_error(int status, const std::string& message) {
  std::vector<std::pair<std::string, std::string>> headers;
  if (status == 425 || status == 429 || status == 503) headers.push_back({"Retry-After", "1"});
  reply_json(status, {{"error", message}, {"status", status}}, headers);
}

void Exchange::reply(int status, std::string body, const std::string& content_type,
                     const std::vector<std::pair<std::string, std::string>>& headers) {
  if (responded_) return;
  responded_ = true;
  status_ = status;
  http::response<http::string_body> res{static_cast<http::status>(status), header_.version()};
  res.set(http::field::server, "coppiced");
  if (!content_type.empty()) res.set(http::field::content_type, content_type);
  for (const auto& [k, v] : headers) res.set(k, v);
  res.keep_alive(keep_alive_);
  size_t raw_len = body.size();
  if (gzip_ && !body.empty() && status != 204 && status != 304) {
    body = gzip_all(body);
    res.set(http::field::content_encoding, "gzip");
    res.set(http::field::vary, "Accept-Encoding");
  }
  if (head_) {
    res.content_length(gzip_ ? body.size() : raw_len);
    return channel_->send(serialize_header(res));
  }
  res.body() = std::move(body);
  res.prepare_payload();
  std::string out;
  StringSink sink(out);
  http::write(sink, res);
  channel_->send(std::move(out));
}

void Exchange::reply_head(int status, const std::string& content_type, uint64_t content_length) {
  if (responded_) return;
  responded_ = true;
  status_ = status;
  http::response<http::empty_body> res{static_cast<http::status>(status), header_.version()};
  res.set(http::field::server, "coppiced");
  res.set(http::field::content_type, content_type);
  res.content_length(content_length);
  res.keep_alive(keep_alive_);
  channel_->send(serialize_header(res));
}

void Exchange::begin_stream(int status, const std::string& content_type,
                            const std::vector<std::pair<std::string, std::string>>& headers) {
  responded_ = true;
  streaming_ = true;
  status_ = status;
  http::response<http::empty_body> res{static_cast<http::status>(status), header_.version()};
  res.set(http::field::server, "coppiced");
  res.set(http::field::content_type, content_type);
  for (const auto& [k, v] : headers) res.set(k, v);
  res.keep_alive(keep_alive_);
  if (gzip_) {
    res.set(http::field::content_encoding, "gzip");
    // An event stream may stay open for hours with a frame now and then: a 4 KiB window
    // (about 32 KiB of zlib state instead of 256 KiB) compresses its frames as well.
    stream_gz_ = content_type == "text/event-stream" ? std::make_unique<GzipStream>(12, 5)
                                                     : std::make_unique<GzipStream>();
  }
  res.chunked(true);
  channel_->send(serialize_header(res));
}

std::string Exchange::chunk_bytes(std::string_view data) {
  if (stream_gz_) {
    std::string z = stream_gz_->chunk(data);
    return boost::beast::buffers_to_string(http::make_chunk(boost::asio::buffer(z)));
  }
  return boost::beast::buffers_to_string(
      http::make_chunk(boost::asio::buffer(data.data(), data.size())));
}

std::string Exchange::last_chunk_bytes() {
  std::string out;
  if (stream_gz_) {
    std::string z = stream_gz_->finish();
    out = boost::beast::buffers_to_string(http::make_chunk(boost::asio::buffer(z)));
  }
  return out + boost::beast::buffers_to_string(http::make_chunk_last());
}

void Exchange::write(std::string_view data) {
  if (data.empty()) return;
  channel_->send(chunk_bytes(data));
}

void Exchange::end_stream() {
  if (!streaming_) return;
  streaming_ = false;
  channel_->send(last_chunk_bytes());
}

void Exchange::async_write(std::string_view data, std::function<void(bool ok)> done) {
  if (data.empty()) {
    boost::asio::post(channel_->executor(), [done = std::move(done)] { done(true); });
    return;
  }
  channel_->async_send(chunk_bytes(data), std::move(done));
}

void Exchange::async_end_stream(std::function<void(bool ok)> done) {
  if (!streaming_) {
    boost::asio::post(channel_->executor(), [done = std::move(done)] { done(true); });
    return;
  }
  streaming_ = false;
  channel_->async_send(last_chunk_bytes(), std::move(done));
}

}  // namespace coppice::api
