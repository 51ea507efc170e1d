#include "api/http_server.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <future>
#include <limits>
#include <optional>

#include "common/error.h"
#include "common/fd.h"
#include "common/ids.h"

namespace coppice::api {

namespace net = boost::asio;
namespace beast = boost::beast;
using Strand = net::strand<net::io_context::executor_type>;

namespace {
// Refused connections answered at once; past this many, further ones are just closed.
constexpr size_t kMaxRefusing = 32;
constexpr size_t kHeaderLimit = 64 * 1024;
// Uploads are read from the socket in reads of up to kUploadRead bytes into a chunk of
// kUploadChunk, written to disk once it is full. At most kMaxUploads bodies are read at once
// (more get 503 + Retry-After), so stalled uploads hold at most kMaxUploads * 192 KiB.
constexpr size_t kUploadChunk = 128 * 1024;
constexpr size_t kUploadRead = 64 * 1024;
constexpr size_t kMaxUploads = 256;
// After a response that ends the connection: what the peer still sends is read and dropped
// for this long (or this much), so that a reset does not destroy the response in flight.
constexpr auto kLingerTime = std::chrono::seconds(1);
constexpr size_t kLingerBytes = 1 << 20;
// How long a deadline's answer (408, 413, 401 ...) may take to write before the connection
// is closed anyway.
constexpr auto kFarewellTime = std::chrono::seconds(2);

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

std::string_view target_of(const http::request_header<>& h) {
  return std::string_view(h.target().data(), h.target().size());
}

size_t cpus() {
  return std::max(1u, std::thread::hardware_concurrency());
}

std::string seconds(std::chrono::milliseconds d) {
  return d.count() % 1000 ? fmt::format("{:.1f}", d.count() / 1000.0)
                          : fmt::format("{}", d.count() / 1000);
}

// A ResponseChannel that keeps what it is sent: the server's own answers (401, 408, 413 ...)
// are made by an Exchange like every handler's, so they carry the same headers and encoding.
class CaptureChannel : public ResponseChannel {
 public:
  void send(std::string bytes) override { out += bytes; }
  void async_send(std::string, std::function<void(bool)>) override {
    throw internal("CaptureChannel is synchronous");
  }
  boost::asio::any_io_executor executor() override {
    throw internal("CaptureChannel has no executor");
  }
  void finish(bool) override {}
  bool closed() const override { return false; }
  void on_close(std::function<void()>) override {}
  std::string out;
};

std::string error_bytes(const http::request_header<>& req, int status, const std::string& msg) {
  auto cap = std::make_shared<CaptureChannel>();
  Exchange ex(cap, req, "");
  ex.set_keep_alive(false);
  ex.reply_error(status, msg);
  return std::move(cap->out);
}

// A malformed request (answered 400), as opposed to a connection that ended or failed.
bool is_parse_error(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
         ec != http::error::end_of_stream && ec != http::error::partial_message;
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
}  // namespace

// One client connection. Every member is used on the strand only, except where noted: a
// worker running this connection's handler (or its authentication, or an upload's disk
// write) touches only what the strand leaves alone until the worker posts back.
class Connection : public ResponseChannel, public std::enable_shared_from_this<Connection> {
 public:
  Connection(HttpServer& srv, Strand strand, tcp::socket sock)
      : srv_(srv), strand_(std::move(strand)), sock_(std::move(sock)), timer_(strand_) {}
  ~Connection() override { srv_.forget(this); }

  void start() {
    beast::error_code ec;
    sock_.set_option(tcp::no_delay(true), ec);
    net::post(strand_, [self = shared_from_this()] { self->next_request(); });
  }

  // ResponseChannel.
  void send(std::string bytes) override;
  void async_send(std::string bytes, std::function<void(bool ok)> done) override {
    write(std::move(bytes), [done = std::move(done)](beast::error_code ec) { done(!ec); });
  }
  boost::asio::any_io_executor executor() override { return strand_; }
  void finish(bool keep_alive) override;
  bool closed() const override { return closed_.load(); }
  void on_close(std::function<void()> fn) override { on_close_ = std::move(fn); }

  // Closes at once (from any thread).
  void close_soon() {
    net::post(strand_, [self = shared_from_this()] { self->close_now(); });
  }

 private:
  enum class Phase { kIdle, kHeader, kAuth, kBody, kHandler, kWrite, kLinger };

  void next_request();
  void read_header();
  void on_header(beast::error_code ec);
  void after_auth(std::optional<Error> err);
  void start_body();
  void read_body();
  void on_body(beast::error_code ec, size_t n);
  void flush_upload();
  void on_body_done();
  void on_deadline();
  // Answers `status` (an error, Connection: close), then closes gracefully.
  void refuse_request(int status, const std::string& msg);
  void write(std::string bytes, std::function<void(beast::error_code)> done);
  void write_some();
  void close_graceful();
  void drain();
  void close_now();
  // Closes and removes an upload being received, and gives its buffer and slot back. Never
  // while the bulk pool writes to it (disk_busy_).
  void drop_upload();
  void arm(std::chrono::steady_clock::duration d);
  void disarm();

  HttpServer& srv_;
  Strand strand_;
  tcp::socket sock_;
  net::steady_timer timer_;
  uint64_t timer_gen_ = 0;
  Phase phase_ = Phase::kHeader;
  bool timed_out_ = false;
  bool first_request_ = true;
  std::atomic<bool> closed_{false};
  std::function<void()> on_close_;

  beast::flat_buffer buf_;
  // The request being read: its header parser, then the parser of its body.
  std::unique_ptr<http::request_parser<http::empty_body>> hp_;
  std::unique_ptr<http::request_parser<http::string_body>> sp_;
  std::unique_ptr<http::request_parser<http::buffer_body>> up_;
  http::request_header<> header_;  // the current request's, while its handler runs
  bool public_ = false;
  bool upload_ = false;
  // Body progress: bytes so far, and at the start of the current window.
  uint64_t body_bytes_ = 0;
  uint64_t window_start_ = 0;
  // An upload: its file, the chunk being filled and whether the bulk pool is writing it.
  UniqueFd upload_fd_;
  std::string upload_path_;
  std::unique_ptr<char[]> chunk_;  // kUploadChunk bytes
  size_t chunk_used_ = 0;
  // Holds one of the server's kMaxUploads upload slots while an upload's body is read.
  struct UploadSlot {
    explicit UploadSlot(std::atomic<size_t>& n) : n_(n) { ++n_; }
    ~UploadSlot() { --n_; }
    UploadSlot(const UploadSlot&) = delete;
    UploadSlot& operator=(const UploadSlot&) = delete;
    std::atomic<size_t>& n_;
  };
  std::optional<UploadSlot> upload_slot_;
  bool disk_busy_ = false;

  std::string out_;  // bytes being written, out_off_ of them written already
  size_t out_off_ = 0;
  std::function<void(beast::error_code)> write_done_;
  std::shared_ptr<Exchange> ex_;
  std::unique_ptr<char[]> drain_buf_;
  size_t drained_ = 0;
};

void Connection::arm(std::chrono::steady_clock::duration d) {
  ++timer_gen_;
  timed_out_ = false;
  timer_.expires_after(d);
  timer_.async_wait([self = shared_from_this(), gen = timer_gen_](beast::error_code ec) {
    if (ec || gen != self->timer_gen_) return;
    self->on_deadline();
  });
}

void Connection::disarm() {
  ++timer_gen_;
  timer_.cancel();
}

void Connection::on_deadline() {
  const auto& cfg = srv_.cfg_;
  switch (phase_) {
    case Phase::kBody: {
      // The window ended: did the body progress enough? Time the bulk pool spends writing a
      // chunk to disk is not the client's: a window with a disk write in flight starts over.
      uint64_t need = cfg.body_min_bytes;
      if (auto len = (sp_ ? sp_->content_length() : up_->content_length()))
        need = std::min<uint64_t>(need, *len > window_start_ ? *len - window_start_ : 0);
      if (disk_busy_ || body_bytes_ - window_start_ >= need) {
        window_start_ = body_bytes_;
        arm(cfg.body_window);
        return;
      }
      timed_out_ = true;
      beast::error_code ec;
      sock_.cancel(ec);  // the pending read ends with operation_aborted and answers 408
      return;
    }
    case Phase::kHeader:
      timed_out_ = true;
      {
        beast::error_code ec;
        sock_.cancel(ec);
      }
      return;
    case Phase::kIdle:
    case Phase::kWrite:
    case Phase::kLinger:
    case Phase::kAuth:
    case Phase::kHandler:
      return close_now();
  }
}

void Connection::next_request() {
  hp_.reset();
  sp_.reset();
  up_.reset();
  header_ = {};
  if (closed_) return;
  if (srv_.stopping_) return close_graceful();
  if (first_request_ || buf_.size() > 0) return read_header();
  // Between requests nothing is allocated: the buffer is given back and the wait for the next
  // byte needs none.
  buf_.shrink_to_fit();
  phase_ = Phase::kIdle;
  arm(srv_.cfg_.idle_timeout);
  sock_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
    if (ec || self->closed_) return self->close_now();
    self->read_header();
  });
}

void Connection::read_header() {
  first_request_ = false;
  phase_ = Phase::kHeader;
  arm(srv_.cfg_.header_timeout);
  hp_ = std::make_unique<http::request_parser<http::empty_body>>();
  hp_->header_limit(kHeaderLimit);
  // The body's limit depends on the request (after_auth checks the Content-Length against it):
  // none while the header is parsed (boost::none would not do: Beast 1.74 compares the
  // Content-Length with an empty optional as if it were larger).
  hp_->body_limit(std::numeric_limits<uint64_t>::max());
  http::async_read_header(
      sock_, buf_, *hp_,
      [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
}

void Connection::on_header(beast::error_code ec) {
  disarm();
  if (closed_) return;
  if (timed_out_) {
    // A partial header may be all there is: answer from a blank request.
    return refuse_request(408, fmt::format("the request header did not arrive within {} s",
                                           seconds(srv_.cfg_.header_timeout)));
  }
  if (ec == http::error::header_limit)
    return refuse_request(431, fmt::format("request header larger than {} bytes", kHeaderLimit));
  if (ec && is_parse_error(ec)) return refuse_request(400, "malformed request: " + ec.message());
  if (ec) return close_now();  // the peer closed or reset
  const auto& hdr = hp_->get();
  public_ = Api::is_public(hdr.method(), target_of(hdr));
  if (public_) return after_auth(std::nullopt);
  // Authenticate from the header alone, before any of the body is read. A token not in the
  // cache is looked up in SQLite: on the quick pool, never on this IO thread.
  phase_ = Phase::kAuth;
  srv_.quick_.post([self = shared_from_this()] {
    std::optional<Error> err;
    try {
      self->srv_.api_.authenticate(self->hp_->get());
    } catch (const Error& e) {
      err = e;
    } catch (const std::exception& e) {
      err = Error(500, e.what());
    }
    net::post(self->strand_, [self, err = std::move(err)] { self->after_auth(err); });
  });
}

void Connection::after_auth(std::optional<Error> err) {
  if (closed_) return close_now();
  if (err) return refuse_request(err->status(), err->what());
  const auto& hdr = hp_->get();
  const auto& cfg = srv_.api_.config();
  upload_ = !public_ && Api::is_upload(hdr.method(), target_of(hdr));
  const uint64_t limit = upload_   ? cfg.max_upload
                         : public_ ? Api::kPublicBodyLimit
                                   : cfg.max_json_body;
  if (upload_ && srv_.uploads_.load() >= kMaxUploads)
    return refuse_request(503, fmt::format("{} uploads are in progress; retry", kMaxUploads));
  // Refused from the Content-Length, before reading.
  if (auto len = hp_->content_length(); len && *len > limit) {
    return refuse_request(413, upload_
                                   ? fmt::format("upload is larger than {} bytes", limit)
                                   : fmt::format("request body is larger than {} bytes", limit));
  }
  auto expect = hdr.find(http::field::expect);
  if (expect != hdr.end() && beast::iequals(expect->value(), "100-continue") && !hp_->is_done()) {
    static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
    return write(std::string(kContinue, sizeof kContinue - 1),
                 [self = shared_from_this()](beast::error_code ec) {
                   if (!ec) self->start_body();
                 });
  }
  start_body();
}

void Connection::start_body() {
  const auto& cfg = srv_.api_.config();
  body_bytes_ = window_start_ = 0;
  if (upload_) {
    upload_slot_.emplace(srv_.uploads_);
    up_ = std::make_unique<http::request_parser<http::buffer_body>>(std::move(*hp_));
    up_->body_limit(cfg.max_upload);
    upload_path_ = (srv_.cfg_.upload_dir / ("upload-" + new_uuid())).string();
    upload_fd_ = UniqueFd(
        ::open(upload_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!upload_fd_) {
      int err = errno;
      upload_path_.clear();
      return refuse_request(err == ENOSPC || err == EDQUOT ? 507 : 500,
                            fmt::format("open upload file: {}", std::strerror(err)));
    }
    chunk_ = std::make_unique_for_overwrite<char[]>(kUploadChunk);
    chunk_used_ = 0;
    buf_.reserve(kUploadRead);  // Beast reads at most the buffer's free space at a time
  } else {
    sp_ = std::make_unique<http::request_parser<http::string_body>>(std::move(*hp_));
    sp_->body_limit(public_ ? Api::kPublicBodyLimit : cfg.max_json_body);
  }
  hp_.reset();
  phase_ = Phase::kBody;
  if (sp_ ? sp_->is_done() : up_->is_done()) return on_body_done();
  arm(srv_.cfg_.body_window);
  read_body();
}

void Connection::read_body() {
  auto done = [self = shared_from_this()](beast::error_code ec, size_t n) { self->on_body(ec, n); };
  if (sp_) return http::async_read_some(sock_, buf_, *sp_, std::move(done));
  auto& body = up_->get().body();
  body.data = chunk_.get() + chunk_used_;
  body.size = kUploadChunk - chunk_used_;
  body.more = true;
  http::async_read_some(sock_, buf_, *up_, std::move(done));
}

void Connection::on_body(beast::error_code ec, size_t n) {
  if (closed_) return;
  body_bytes_ += n;
  if (timed_out_) {
    disarm();
    return refuse_request(
        408, fmt::format("the request body did not progress by {} KiB in {} s",
                         srv_.cfg_.body_min_bytes >> 10, seconds(srv_.cfg_.body_window)));
  }
  if (up_) {
    chunk_used_ = kUploadChunk - up_->get().body().size;
    if (ec == http::error::need_buffer) ec = {};
  }
  if (ec == http::error::body_limit) {
    disarm();
    return refuse_request(
        413, up_ ? fmt::format("upload is larger than {} bytes", srv_.api_.config().max_upload)
                 : fmt::format("request body is larger than {} bytes",
                               public_ ? Api::kPublicBodyLimit : srv_.api_.config().max_json_body));
  }
  if (ec) {
    disarm();
    if (is_parse_error(ec)) return refuse_request(400, "malformed request body: " + ec.message());
    return close_now();
  }
  const bool done = sp_ ? sp_->is_done() : up_->is_done();
  if (up_ && (chunk_used_ == kUploadChunk || (done && chunk_used_ > 0))) return flush_upload();
  if (done) return on_body_done();
  read_body();
}

void Connection::flush_upload() {
  disk_busy_ = true;
  srv_.bulk_.post([self = shared_from_this(), n = chunk_used_] {
    bool ok = write_all(self->upload_fd_.get(), self->chunk_.get(), n);
    int err = ok ? 0 : errno;
    net::post(self->strand_, [self, err] {
      self->disk_busy_ = false;
      if (self->closed_) return self->drop_upload();
      if (err) {
        self->disarm();
        return self->refuse_request(err == ENOSPC || err == EDQUOT ? 507 : 500,
                                    fmt::format("write upload: {}", std::strerror(err)));
      }
      self->chunk_used_ = 0;
      if (self->up_->is_done()) return self->on_body_done();
      self->read_body();
    });
  });
}

void Connection::on_body_done() {
  disarm();
  phase_ = Phase::kHandler;
  std::string body;
  if (sp_) {
    auto msg = sp_->release();
    body = std::move(msg.body());
    header_ = std::move(msg.base());
  } else {
    header_ = std::move(up_->get().base());
    upload_fd_.reset();
    chunk_.reset();
    upload_slot_.reset();
  }
  sp_.reset();
  up_.reset();
  auto ex = std::make_shared<Exchange>(shared_from_this(), header_, std::move(body));
  ex->upload_path = upload_path_;
  ex_ = ex;
  WorkerPool& pool =
      upload_ || Api::is_bulk(header_.method(), target_of(header_)) ? srv_.bulk_ : srv_.quick_;
  pool.post([self = shared_from_this(), ex, upload = std::move(upload_path_)] {
    try {
      self->srv_.api_.handle(*ex);
    } catch (const std::exception& e) {  // the error answer itself failed: the client is gone
      ex->abort();
    }
    if (!upload.empty()) ::unlink(upload.c_str());  // stored by the handler, or not wanted
    if (ex->detached()) return;                     // the rest of the response runs on the strand
    net::post(self->strand_, [self, keep = ex->keep_alive()] { self->finish(keep); });
  });
  upload_path_.clear();
}

void Connection::finish(bool keep_alive) {
  ex_.reset();
  on_close_ = nullptr;
  if (closed_) return;
  if (!keep_alive) return close_graceful();
  next_request();
}

void Connection::send(std::string bytes) {
  if (strand_.running_in_this_thread())
    throw internal("a blocking write on the connection's own IO thread");
  std::promise<beast::error_code> done;
  auto result = done.get_future();
  net::post(strand_, [self = shared_from_this(), &bytes, &done] {
    self->write(std::move(bytes), [&done](beast::error_code ec) { done.set_value(ec); });
  });
  if (auto ec = result.get()) throw Error(499, "the client went away: " + ec.message());
}

void Connection::write(std::string bytes, std::function<void(beast::error_code)> done) {
  if (closed_) return done(net::error::operation_aborted);
  out_ = std::move(bytes);
  out_off_ = 0;
  write_done_ = std::move(done);
  phase_ = Phase::kWrite;
  write_some();
}

void Connection::write_some() {
  // The deadline restarts with every bit of progress: a slow reader is fine, one that reads
  // nothing for write_timeout is not.
  arm(srv_.cfg_.write_timeout);
  sock_.async_write_some(net::buffer(out_.data() + out_off_, out_.size() - out_off_),
                         [self = shared_from_this()](beast::error_code ec, size_t n) {
                           self->out_off_ += n;
                           if (!ec && self->out_off_ < self->out_.size()) return self->write_some();
                           self->disarm();
                           self->out_.clear();
                           if (ec) self->close_now();
                           auto done = std::move(self->write_done_);
                           self->write_done_ = nullptr;
                           done(ec);
                         });
}

void Connection::refuse_request(int status, const std::string& msg) {
  http::request_header<> blank;
  blank.version(11);
  // A header that did not arrive whole (or is malformed) is not used: answer a blank request.
  const http::request_header<>& req = hp_ && hp_->is_header_done() ? hp_->get()
                                      : sp_                        ? sp_->get().base()
                                      : up_                        ? up_->get().base()
                                                                   : blank;
  std::string bytes = error_bytes(req, status, msg);
  drop_upload();
  out_ = std::move(bytes);
  phase_ = Phase::kWrite;
  arm(kFarewellTime);
  net::async_write(sock_, net::buffer(out_),
                   [self = shared_from_this()](beast::error_code ec, size_t) {
                     self->disarm();
                     if (ec) return self->close_now();
                     self->close_graceful();
                   });
}

void Connection::drop_upload() {
  if (upload_fd_) {
    upload_fd_.reset();
    ::unlink(upload_path_.c_str());
    upload_path_.clear();
  }
  chunk_.reset();
  upload_slot_.reset();
}

void Connection::close_graceful() {
  if (closed_) return;
  beast::error_code ec;
  sock_.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) return close_now();
  phase_ = Phase::kLinger;
  arm(kLingerTime);
  drain_buf_ = std::make_unique<char[]>(4096);
  drained_ = 0;
  drain();
}

void Connection::drain() {
  sock_.async_read_some(net::buffer(drain_buf_.get(), 4096),
                        [self = shared_from_this()](beast::error_code ec, size_t n) {
                          self->drained_ += n;
                          if (ec || self->drained_ > kLingerBytes) return self->close_now();
                          self->drain();
                        });
}

void Connection::close_now() {
  if (closed_.exchange(true)) return;
  disarm();
  beast::error_code ec;
  sock_.shutdown(tcp::socket::shutdown_both, ec);
  sock_.close(ec);
  if (!disk_busy_) drop_upload();  // else when the disk write returns: it uses the fd
  ex_.reset();
  if (on_close_) {
    auto fn = std::move(on_close_);
    on_close_ = nullptr;
    fn();
  }
}

// A connection past the limit: 503 written, the peer's bytes drained, closed.
class Refusal : public std::enable_shared_from_this<Refusal> {
 public:
  Refusal(tcp::socket sock, std::atomic<size_t>& count, size_t limit)
      : sock_(std::move(sock)), timer_(sock_.get_executor()), count_(count) {
    std::string body = fmt::format(
        R"({{"error":"the server is at its connection limit ({}); retry","status":503}})", limit);
    out_ = fmt::format(
        "HTTP/1.1 503 Service Unavailable\r\nServer: coppiced\r\nContent-Type: "
        "application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
        body.size(), body);
  }
  ~Refusal() { count_--; }
  void start() {
    timer_.expires_after(std::chrono::seconds(1));
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->sock_.close(ec);
    });
    net::async_write(sock_, net::buffer(out_),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec) return self->end();
                       self->sock_.shutdown(tcp::socket::shutdown_send, ec);
                       self->drain();
                     });
  }

 private:
  void drain() {
    sock_.async_read_some(net::buffer(sink_),
                          [self = shared_from_this()](beast::error_code ec, size_t n) {
                            self->got_ += n;
                            if (ec || self->got_ >= (1u << 20)) return self->end();
                            self->drain();
                          });
  }
  void end() {
    beast::error_code ec;
    timer_.cancel();
    sock_.close(ec);
  }
  tcp::socket sock_;
  net::steady_timer timer_;
  std::atomic<size_t>& count_;
  std::string out_;
  char sink_[4096];
  size_t got_ = 0;
};

HttpServer::HttpServer(Api& api, HttpServerConfig cfg)
    : api_(api),
      cfg_(std::move(cfg)),
      work_(boost::asio::make_work_guard(ioc_)),
      acceptor_(ioc_),
      quick_("http-quick",
             cfg_.quick_workers ? cfg_.quick_workers : std::max<size_t>(8, 2 * cpus())),
      bulk_("http-bulk", cfg_.bulk_workers) {
  auto ep = parse_listen(cfg_.listen);
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
  const size_t n = cfg_.io_threads ? cfg_.io_threads : cpus();
  accept();
  {
    std::lock_guard lk(mu_);
    for (size_t i = 0; i < n; ++i) {
      io_threads_.emplace_back([this] { ioc_.run(); });
      pthread_setname_np(io_threads_.back().native_handle(), "http-io");
    }
  }
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return !accepting_; });
}

void HttpServer::accept() {
  auto strand = net::make_strand(ioc_);
  acceptor_.async_accept(strand, [this, strand](beast::error_code ec, tcp::socket sock) {
    if (stopping_ || ec == net::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors (or another transient failure): the pending connection stays in
      // the backlog; try again shortly rather than spin (and say so every 10 s at most).
      static std::atomic<int64_t> last_warned{0};
      const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::steady_clock::now().time_since_epoch())
                              .count();
      if (now - last_warned.load() >= 10) {
        last_warned = now;
        spdlog::warn("accept: {}", ec.message());
      }
      auto t = std::make_shared<net::steady_timer>(ioc_, std::chrono::milliseconds(50));
      t->async_wait([this, t](beast::error_code) {
        if (!stopping_) accept();
      });
      return;
    }
    on_accept(std::move(sock), strand);
    accept();
  });
}

void HttpServer::on_accept(tcp::socket sock, Strand strand) {
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lk(mu_);
    if (open_.size() < cfg_.max_connections) {
      c = std::make_shared<Connection>(*this, std::move(strand), std::move(sock));
      open_.emplace(c.get(), c);
    }
  }
  if (c) return c->start();
  spdlog::warn("connection limit ({}) reached; refusing a connection", cfg_.max_connections);
  refuse(std::move(sock));
}

void HttpServer::refuse(tcp::socket sock) {
  if (refusing_.load() >= kMaxRefusing) {
    beast::error_code ec;
    sock.close(ec);
    return;
  }
  refusing_++;
  std::make_shared<Refusal>(std::move(sock), refusing_, cfg_.max_connections)->start();
}

void HttpServer::forget(Connection* c) {
  std::lock_guard lk(mu_);
  open_.erase(c);
  if (open_.empty()) cv_.notify_all();
}

void HttpServer::stop(bool close_connections) {
  stopping_ = true;
  std::vector<std::shared_ptr<Connection>> open;
  {
    std::lock_guard lk(mu_);
    if (accepting_) {
      accepting_ = false;
      net::post(ioc_, [this] {
        beast::error_code ec;
        acceptor_.close(ec);
      });
      cv_.notify_all();
    }
    if (close_connections)
      for (auto& [p, w] : open_)
        if (auto c = w.lock()) open.push_back(std::move(c));
  }
  for (auto& c : open) c->close_soon();
}

void HttpServer::wait_connections() {
  {
    std::unique_lock lk(mu_);
    // Bounded: closed connections end once their handlers see their writes fail.
    while (!open_.empty() || refusing_.load() > 0) cv_.wait_for(lk, std::chrono::milliseconds(10));
  }
  work_.reset();
  ioc_.stop();
  std::vector<std::thread> threads;
  {
    std::lock_guard lk(mu_);
    threads.swap(io_threads_);
  }
  for (auto& t : threads) t.join();
}

}  // namespace coppice::api
