// Fuzzes the CLI's parser of text/event-stream bodies (cli/sse_parser.h), which reads what a
// server (or anything on the path to it) sends to `coppice run`, `operations follow` and the
// MCP server. The first input bytes choose chunk sizes; the rest is the stream.
//
// Oracles:
//  * how the stream is cut into chunks never changes the events (the parser is fed one byte,
//    a fuzz-chosen split, and the whole body, and must give the same events each time);
//  * every event has a type ("message" when the frame names none).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cli/sse_parser.h"
#include "oracle.h"

using coppice::cli::SseEvent;
using coppice::cli::SseParser;
using coppice::fuzz::finding;

namespace {

struct Got {
  std::string id, event, data;
  bool operator==(const Got&) const = default;
};

std::vector<Got> parse(std::string_view body, const std::vector<size_t>& cuts) {
  std::vector<Got> out;
  SseParser p([&](const SseEvent& e) { out.push_back({e.id, e.event, e.data}); });
  size_t pos = 0;
  for (size_t i = 0; pos < body.size(); ++i) {
    size_t n = cuts.empty() ? body.size() : cuts[i % cuts.size()];
    n = std::min(n, body.size() - pos);
    p.feed(body.substr(pos, n));
    pos += n;
  }
  p.feed("");
  return out;
}

std::string show(const std::vector<Got>& v) {
  std::string s;
  for (const auto& g : v) s += "{id=" + g.id + " event=" + g.event + " data=" + g.data + "} ";
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<size_t> cuts;
  // Leading bytes up to the first 0 byte: chunk sizes 1..255 (cycled).
  size_t zero = in.find('\0');
  if (zero != std::string_view::npos && zero <= 16) {
    for (size_t i = 0; i < zero; ++i) cuts.push_back(static_cast<unsigned char>(in[i]));
    in.remove_prefix(zero + 1);
  }
  if (cuts.empty()) cuts.push_back(7);
  auto whole = parse(in, {});
  auto bytes = parse(in, {1});
  auto split = parse(in, cuts);
  if (bytes != whole)
    finding("feeding byte by byte gives other events: " + show(bytes) + "vs " + show(whole));
  if (split != whole)
    finding("feeding in chunks gives other events: " + show(split) + "vs " + show(whole));
  for (const auto& g : whole)
    if (g.event.empty()) finding("an event without a type (\"message\" is the default)");
  return 0;
}
