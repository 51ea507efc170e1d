// Incremental parser of a text/event-stream body: feed it chunks as they arrive, get whole
// events. Comment lines (": keepalive") are skipped; CRLF and LF line ends are accepted.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace coppice::cli {

struct SseEvent {
  std::string id;
  std::string event;  // "message" when the frame has no `event:` line
  std::string data;   // `data:` lines joined with '\n'
};

class SseParser {
 public:
  using Handler = std::function<void(const SseEvent&)>;
  explicit SseParser(Handler on_event) : on_event_(std::move(on_event)) {}
  void feed(std::string_view chunk);

 private:
  void line(std::string_view l);
  Handler on_event_;
  std::string partial_;
  SseEvent cur_;
  bool has_data_ = false;
};

}  // namespace coppice::cli
