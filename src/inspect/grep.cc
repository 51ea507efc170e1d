// Inspect: a ripgrep-like search over an image's regular files.
#include <fnmatch.h>
#include <re2/re2.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <unordered_set>

#include "common/error.h"
#include "inspect/inspect.h"

namespace coppice::inspect {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kBinaryProbe = 8 * 1024;  // a NUL within this prefix: binary, skipped
constexpr size_t kReadChunk = 64 * 1024;   // file read size
constexpr size_t kMaxLine = 1 << 20;       // longer lines are searched on this prefix only
constexpr size_t kMaxSubmatches = 1000;    // per line
constexpr auto kDeadline = std::chrono::seconds(10);
constexpr int kMaxContext = 10000;

// Smart case: insensitive unless some pattern holds an upper-case letter outside an escape
// ("\S", "\W" and "\D" are classes, not letters).
bool has_upper(const std::vector<std::string>& patterns) {
  for (const auto& p : patterns) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i] == '\\') {
        ++i;
        continue;
      }
      if (p[i] >= 'A' && p[i] <= 'Z') return true;
    }
  }
  return false;
}

struct Line {
  int64_t number = 0;
  uint64_t offset = 0;
  std::string text;     // the line without its "\n", cut at kMaxLine
  uint64_t length = 0;  // the whole line's length without its "\n" (may exceed text.size())
  bool newline = false;
};

// Reads a file line by line in chunks, never holding more than one (capped) line.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}

  // Fills at least `n` bytes (or to EOF) and says whether they hold a NUL.
  bool binary_prefix(size_t n) {
    while (buf_.size() - pos_ < n && fill()) {
    }
    size_t m = std::min(n, buf_.size() - pos_);
    return std::memchr(buf_.data() + pos_, 0, m) != nullptr;
  }

  bool next(Line& line) {
    line.text.clear();
    line.newline = false;
    line.length = 0;
    line.offset = offset_;
    line.number = ++number_;
    while (true) {
      const char* start = buf_.data() + pos_;
      size_t avail = buf_.size() - pos_;
      const void* nl = std::memchr(start, '\n', avail);
      size_t take = nl ? static_cast<size_t>(static_cast<const char*>(nl) - start) : avail;
      size_t room = kMaxLine - line.text.size();
      line.text.append(start, std::min(take, room));
      line.length += take;
      pos_ += take;
      offset_ += take;
      if (nl) {
        ++pos_;
        ++offset_;
        line.newline = true;
        return true;
      }
      if (!fill()) {
        if (line.length == 0) {
          --number_;
          return false;
        }
        return true;
      }
    }
  }

 private:
  bool fill() {
    if (pos_ > 0) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    size_t old = buf_.size();
    buf_.resize(old + kReadChunk);
    ssize_t n;
    do {
      n = ::read(fd_, buf_.data() + old, kReadChunk);
    } while (n < 0 && errno == EINTR);
    buf_.resize(old + static_cast<size_t>(std::max<ssize_t>(n, 0)));
    return n > 0;
  }

  int fd_;
  std::string buf_;
  size_t pos_ = 0;
  uint64_t offset_ = 0;
  int64_t number_ = 0;
};

class Searcher {
 public:
  Searcher(const store::LayerView& view, const GrepQuery& q, const RE2& re, size_t budget)
      : view_(view), q_(q), re_(re), deadline_(Clock::now() + kDeadline), budget_(budget) {}

  bool stopped() const { return stop_; }
  // Why the answer is incomplete: "max_total", "max_bytes", "deadline", "max_entries" (a
  // directory with more than kMaxListNames names was searched in part), or nullptr.
  const char* truncated_reason() const {
    return reason_ ? reason_ : cut_ ? "max_entries" : nullptr;
  }
  // The matches as JSON array elements, comma-separated (no brackets).
  std::string& matches() { return out_; }

  void search_path(const std::string& resolved) {
    view_.walk(
        resolved,
        [&](const store::Entry& e) {
          if (stop_) return store::LayerView::Walk::kStop;
          if (Clock::now() > deadline_) {
            stop("deadline");
            return store::LayerView::Walk::kStop;
          }
          if (S_ISREG(e.st.st_mode) && glob_ok(e) && first_visit(e)) search_file(e);
          return stop_ ? store::LayerView::Walk::kStop : store::LayerView::Walk::kContinue;
        },
        kMaxListNames, &cut_);
  }

 private:
  void stop(const char* reason) {
    stop_ = true;
    reason_ = reason;
  }

  // Overlapping paths ("/" and "/etc") search each file once.
  bool first_visit(const store::Entry& e) {
    return q_.paths.size() <= 1 || searched_.insert(e.path).second;
  }

  bool glob_ok(const store::Entry& e) const {
    bool any_include = false, included = false;
    std::string_view rel = std::string_view(e.path).substr(1);
    for (const auto& g : q_.globs) {
      bool negate = !g.empty() && g[0] == '!';
      const char* pat = g.c_str() + (negate ? 1 : 0);
      bool m = ::fnmatch(pat, e.name.c_str(), 0) == 0 || ::fnmatch(pat, e.path.c_str(), 0) == 0 ||
               ::fnmatch(pat, std::string(rel).c_str(), 0) == 0;
      if (negate) {
        if (m) return false;
      } else {
        any_include = true;
        included = included || m;
      }
    }
    return !any_include || included;
  }

  // How much of a line the answer shows: at most max_line_bytes, cut on a UTF-8 boundary.
  size_t shown_bytes(const Line& l) const {
    size_t n = std::min(l.text.size(), static_cast<size_t>(q_.max_line_bytes));
    if (n < l.text.size())
      while (n > 0 && (static_cast<unsigned char>(l.text[n]) & 0xC0) == 0x80) --n;
    return n;
  }

  // Appends one match or context line to the answer; false (and the search stops) when it
  // does not fit in the byte budget.
  bool emit(const store::Entry& e, const Line& l, const char* type,
            const std::vector<std::pair<size_t, size_t>>& subs) {
    const size_t shown = shown_bytes(l);
    const bool cut = shown < l.length;
    auto sm = nlohmann::json::array();
    for (auto [s, t] : subs) {
      if (s > shown || (s == shown && t > s)) break;  // past what the answer shows
      sm.push_back(
          {{"text", detail::valid_utf8(std::string_view(l.text).substr(s, std::min(t, shown) - s))},
           {"start", s},
           {"end", t}});
    }
    std::string text = detail::valid_utf8(std::string_view(l.text).substr(0, shown));
    if (!cut && l.newline) text += '\n';
    nlohmann::json m = {{"path", detail::valid_utf8(e.path)},
                        {"line_number", l.number},
                        {"absolute_offset", l.offset},
                        {"line_text", std::move(text)},
                        {"line_bytes", l.length},
                        {"line_truncated", cut},
                        {"submatches", std::move(sm)},
                        {"type", type}};
    std::string one = m.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (out_.size() + one.size() + 1 > budget_) {
      stop("max_bytes");
      return false;
    }
    if (!out_.empty()) out_ += ',';
    out_ += one;
    return true;
  }

  std::vector<std::pair<size_t, size_t>> find_all(const Line& l) const {
    std::vector<std::pair<size_t, size_t>> subs;
    re2::StringPiece text(l.text.data(), l.text.size());
    size_t pos = 0;
    std::optional<size_t> prev_end;
    while (pos <= text.size() && subs.size() < kMaxSubmatches) {
      re2::StringPiece m;
      if (!re_.Match(text, pos, text.size(), RE2::UNANCHORED, &m, 1)) break;
      size_t s = static_cast<size_t>(m.data() - text.data());
      size_t t = s + m.size();
      if (s == t && prev_end == s) {  // an empty match right after the previous match
        pos = s + 1;
        continue;
      }
      subs.emplace_back(s, t);
      prev_end = t;
      pos = t > s ? t : t + 1;
    }
    return subs;
  }

  void search_file(const store::Entry& e) {
    UniqueFd fd;
    try {
      fd = view_.open_file(e.path);
    } catch (const Error&) {
      return;  // vanished or not a regular file any more
    }
    LineReader r(fd.get());
    if (r.binary_prefix(kBinaryProbe)) return;
    const int before = q_.before, after = q_.after;
    std::deque<Line> ring;  // context before the next match, cut to what the answer shows
    int64_t file_matches = 0;
    int64_t last_emitted = 0;
    int after_left = 0;
    Line line;
    for (uint64_t n = 0; r.next(line); ++n) {
      if ((n & 1023) == 1023 && Clock::now() > deadline_) {
        stop("deadline");
        return;
      }
      if (std::memchr(line.text.data(), 0, line.text.size())) return;  // binary after all
      bool can_match = !q_.max_count || file_matches < *q_.max_count;
      auto subs = can_match ? find_all(line) : std::vector<std::pair<size_t, size_t>>{};
      if (!subs.empty()) {
        if (total_ >= q_.max_total) {
          stop("max_total");
          return;
        }
        for (const auto& c : ring)
          if (c.number > last_emitted && !emit(e, c, "context", {})) return;
        ring.clear();
        if (!emit(e, line, "match", subs)) return;
        ++total_;
        ++file_matches;
        last_emitted = line.number;
        after_left = after;
      } else if (after_left > 0) {
        if (!emit(e, line, "context", {})) return;
        last_emitted = line.number;
        --after_left;
      } else if (before > 0) {
        if (static_cast<int>(ring.size()) == before) ring.pop_front();
        line.text.resize(shown_bytes(line));
        ring.push_back(std::move(line));
        line = Line{};
      }
      if (q_.max_count && file_matches >= *q_.max_count && after_left == 0) return;
    }
  }

  const store::LayerView& view_;
  const GrepQuery& q_;
  const RE2& re_;
  Clock::time_point deadline_;
  size_t budget_;
  std::string out_;
  int64_t total_ = 0;
  const char* reason_ = nullptr;
  bool stop_ = false;
  bool cut_ = false;
  std::unordered_set<std::string> searched_;  // overlapping paths search a file once
};

}  // namespace

std::string grep_response(const store::LayerView& view, const GrepQuery& q) {
  if (q.patterns.empty()) throw bad_request("pattern is required");
  if (q.max_count && *q.max_count < 0) throw bad_request("max_count must not be negative");
  if (q.max_total <= 0) throw bad_request("max_total must be positive");
  if (q.max_line_bytes < 1 || q.max_line_bytes > static_cast<int64_t>(kMaxLine))
    throw bad_request(fmt::format("max_line_bytes must be between 1 and {}", kMaxLine));
  if (q.max_bytes < static_cast<int64_t>(kMinResponseBytes))
    throw bad_request(fmt::format("max_bytes must be at least {}", kMinResponseBytes));
  if (q.before < 0 || q.after < 0 || q.before > kMaxContext || q.after > kMaxContext)
    throw bad_request(fmt::format("before/after must be between 0 and {}", kMaxContext));
  bool case_sensitive;
  if (q.case_mode == "sensitive" || q.case_mode.empty()) {
    case_sensitive = true;
  } else if (q.case_mode == "insensitive") {
    case_sensitive = false;
  } else if (q.case_mode == "smart") {
    case_sensitive = has_upper(q.patterns);
  } else {
    throw bad_request(
        fmt::format("case must be sensitive, insensitive or smart, not '{}'", q.case_mode));
  }
  RE2::Options opts;
  opts.set_log_errors(false);
  opts.set_case_sensitive(case_sensitive);
  opts.set_max_mem(64 << 20);
  std::string combined;
  for (const auto& p : q.patterns) {
    if (p.find('\0') != std::string::npos) throw bad_request("pattern contains a NUL byte");
    RE2 one(p, opts);
    if (!one.ok()) throw bad_request(fmt::format("invalid pattern '{}': {}", p, one.error()));
    if (!combined.empty()) combined += '|';
    combined += "(?:" + p + ")";
  }
  auto patterns_json = nlohmann::json::array();
  for (const auto& p : q.patterns) patterns_json.push_back(detail::valid_utf8(p));
  RE2 re(combined, opts);
  if (!re.ok()) throw bad_request(fmt::format("invalid patterns: {}", re.error()));

  std::vector<std::string> paths = q.paths.empty() ? std::vector<std::string>{"/"} : q.paths;
  std::vector<std::string> resolved;
  for (const auto& p : paths) resolved.push_back(view.resolve(p, true));  // 400/404/422 early
  // The answer around the matches: path, patterns, flags. Patterns come from the query
  // string, so they are small; the matches get the rest of the budget.
  const auto dump = [](const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  std::string head = "{\"path\":" + dump(detail::valid_utf8(paths.front())) +
                     ",\"patterns\":" + dump(patterns_json);
  const size_t framing = head.size() + 128;
  if (framing > static_cast<size_t>(q.max_bytes))
    throw bad_request("the patterns are too long for max_bytes");
  Searcher s(view, q, re, static_cast<size_t>(q.max_bytes) - framing);
  for (const auto& r : resolved) {
    s.search_path(r);
    if (s.stopped()) break;
  }
  const char* reason = s.truncated_reason();
  std::string out = std::move(head);
  out += ",\"truncated\":";
  out += reason ? "true" : "false";
  out += ",\"truncated_reason\":";
  out += reason ? dump(reason) : "null";
  out += ",\"matches\":[";
  out += s.matches();
  out += "]}";
  return out;
}

nlohmann::json grep(const store::LayerView& view, const GrepQuery& q) {
  return nlohmann::json::parse(grep_response(view, q));
}

}  // namespace coppice::inspect
