#include "cli/sse_parser.h"

namespace coppice::cli {

void SseParser::feed(std::string_view chunk) {
  partial_.append(chunk);
  size_t start = 0;
  for (;;) {
    size_t nl = partial_.find('\n', start);
    if (nl == std::string::npos) break;
    std::string_view l(partial_.data() + start, nl - start);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    line(l);
    start = nl + 1;
  }
  partial_.erase(0, start);
}

void SseParser::line(std::string_view l) {
  if (l.empty()) {
    if (has_data_) {
      if (cur_.event.empty()) cur_.event = "message";
      on_event_(cur_);
    }
    cur_ = SseEvent{};
    has_data_ = false;
    return;
  }
  if (l.front() == ':') return;
  auto colon = l.find(':');
  std::string_view field = l.substr(0, colon);
  std::string_view value = colon == std::string_view::npos ? "" : l.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (field == "data") {
    if (has_data_) cur_.data += '\n';
    cur_.data += value;
    has_data_ = true;
  } else if (field == "event") {
    cur_.event = value;
  } else if (field == "id") {
    cur_.id = value;
  }
}

}  // namespace coppice::cli
