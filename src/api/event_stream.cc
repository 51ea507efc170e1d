#include "api/event_stream.h"

#include <fmt/format.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "common/clock.h"

namespace coppice::api {

namespace net = boost::asio;

std::string sse_frame(const store::EventRecord& e) {
  nlohmann::json j = {{"id", e.id},
                      {"ts", format_rfc3339(e.ts_us)},
                      {"spid", e.spid},
                      {"type", e.type},
                      {"data", e.data}};
  return fmt::format("id: {}\nevent: {}\ndata: {}\n\n", e.id, e.type, j.dump());
}

namespace {

// Every member is used on the connection's strand only; the subscription callback (which
// runs on the thread that appended an event) only posts to the strand.
class Follower : public std::enable_shared_from_this<Follower> {
 public:
  Follower(std::shared_ptr<Exchange> ex, std::shared_ptr<engine::LiveOperation> live, int64_t since,
           std::optional<int> spid, std::chrono::milliseconds keepalive)
      : ex_(std::move(ex)),
        live_(std::move(live)),
        since_(since),
        spid_(spid),
        keepalive_(keepalive),
        timer_(ex_->channel().executor()) {}

  void start() {
    std::weak_ptr<Follower> weak = weak_from_this();
    net::any_io_executor strand = ex_->channel().executor();
    sub_ = live_->subscribe([weak, strand] {
      if (auto self = weak.lock()) net::post(strand, [self] { self->on_change(); });
    });
    ex_->channel().on_close([self = shared_from_this()] { self->end(false); });
    step();
  }

 private:
  // Sends what is new; ends after the completion; else waits for a change or the keepalive.
  void step() {
    if (ended_) return;
    if (ex_->channel().closed()) return end(false);
    const bool done_before = live_->finished();
    auto evs = live_->events_after(since_, spid_, std::chrono::milliseconds(0));
    std::string buf;
    bool completed = false;
    for (const auto& e : evs) {
      buf += sse_frame(e);
      since_ = e.id;
      if (e.type == "completion") completed = true;
    }
    if (!buf.empty()) {
      return ex_->async_write(buf, [self = shared_from_this(), completed](bool ok) {
        if (!ok) return self->end(false);
        if (completed) return self->end(true);
        self->step();
      });
    }
    if (done_before) return end(true);
    wait();
  }

  void wait() {
    waiting_ = true;
    const uint64_t gen = ++wait_gen_;
    timer_.expires_after(keepalive_);
    timer_.async_wait([self = shared_from_this(), gen](boost::system::error_code ec) {
      if (ec || gen != self->wait_gen_ || self->ended_) return;
      self->waiting_ = false;
      if (self->live_->finished()) return self->step();
      self->ex_->async_write(": keepalive\n\n", [self](bool ok) {
        if (!ok) return self->end(false);
        self->step();
      });
    });
  }

  // A new event or the operation's end. Ignored unless waiting: a step under way (a write)
  // reads the log again when it is done.
  void on_change() {
    if (!waiting_ || ended_) return;
    waiting_ = false;
    ++wait_gen_;
    timer_.cancel();
    step();
  }

  void end(bool ok) {
    if (ended_) return;
    ended_ = true;
    waiting_ = false;
    ++wait_gen_;
    timer_.cancel();
    live_->unsubscribe(sub_);
    if (!ok) {
      ex_->abort();
      return ex_->channel().finish(false);
    }
    ex_->async_end_stream([self = shared_from_this()](bool written) {
      self->ex_->channel().finish(written && self->ex_->keep_alive());
    });
  }

  std::shared_ptr<Exchange> ex_;
  std::shared_ptr<engine::LiveOperation> live_;
  int64_t since_;
  std::optional<int> spid_;
  std::chrono::milliseconds keepalive_;
  net::steady_timer timer_;
  uint64_t sub_ = 0;
  uint64_t wait_gen_ = 0;
  bool waiting_ = false;
  bool ended_ = false;
};

}  // namespace

void follow_events(std::shared_ptr<Exchange> ex, std::shared_ptr<engine::LiveOperation> live,
                   int64_t since, std::optional<int> spid, std::chrono::milliseconds keepalive) {
  net::any_io_executor strand = ex->channel().executor();
  auto f = std::make_shared<Follower>(std::move(ex), std::move(live), since, spid, keepalive);
  net::post(strand, [f] { f->start(); });
}

}  // namespace coppice::api
