// GET /v1/inspect/... : read an image's files without a sandbox (contract §2.9).
#include <fmt/format.h>
#include <unistd.h>

#include "api/api.h"
#include "common/error.h"
#include "inspect/inspect.h"

namespace coppice::api {

using json = nlohmann::json;

namespace {
std::string required_path(const Exchange& ex) {
  auto p = ex.query().get("path");
  if (!p || p->empty()) return "/";
  if (p->find('\0') != std::string::npos) throw bad_request("path contains NUL");
  if ((*p)[0] != '/') return "/" + *p;
  return *p;
}

int64_t int_param(const Exchange& ex, const char* name, int64_t def, int64_t lo, int64_t hi) {
  auto v = ex.query().get(name);
  if (!v || v->empty()) return def;
  char* end = nullptr;
  long long n = std::strtoll(v->c_str(), &end, 10);
  if (*end || n < lo || n > hi)
    throw bad_request(fmt::format("{} must be an integer between {} and {}", name, lo, hi));
  return n;
}
}  // namespace

void Api::inspect(Exchange& ex) {
  const auto& s = ex.segments();
  bool head = ex.method() == http::verb::head;
  if (ex.method() != http::verb::get && !head) throw Error(405, "method not allowed");
  if (s.size() == 1) {
    auto tag = ex.query().get("tag");
    if (!tag || tag->empty()) throw bad_request("tag is required");
    auto img = engine_.meta().find_by_tag(ex.project, *tag);
    if (!img) throw not_found(fmt::format("image tag not found: {}", *tag));
    return ex.reply(302, "", "", {{"Location", img->uuid + "/"}});
  }
  auto img = engine_.find_image(ex.project, s[1]);
  if (!img) throw not_found(fmt::format("image not found: {}", s[1]));
  if (s.size() == 2) {
    if (!ex.trailing_slash()) return ex.reply(302, "", "", {{"Location", s[1] + "/"}});
    return ex.reply_json(200, image_json(*img));
  }
  if (s.size() != 3) throw not_found("no such endpoint");
  store::LayerView view(engine_.image_layers(*img), engine_.config().uid_shift);
  const std::string& what = s[2];
  // Listings and grep answers are cut at max_bytes (the server's --max-response-mb, or less
  // when the client asks) and say so.
  const auto max_bytes = static_cast<int64_t>(cfg_.max_response_bytes);
  if (what == "list") {
    std::string path = required_path(ex);
    inspect::ListOptions o;
    o.offset = int_param(ex, "offset", 0, 0, INT64_MAX);
    if (ex.query().has("limit"))
      o.limit = int_param(ex, "limit", 0, 1, static_cast<int64_t>(inspect::kMaxListNames));
    o.max_bytes = static_cast<uint64_t>(
        int_param(ex, "max_bytes", max_bytes, inspect::kMinResponseBytes, max_bytes));
    if (ex.query().has("text"))
      return ex.reply(200, inspect::list_text(view, path, o), "text/plain; charset=utf-8");
    return ex.reply(200, inspect::list_response(view, path, o), "application/json");
  }
  if (what == "download") {
    auto fh = inspect::open_download(view, required_path(ex));
    if (head) return ex.reply_head(200, "application/octet-stream", fh.size);
    // Small files in one response; larger ones streamed in 256 KiB chunks.
    if (fh.size <= (1 << 20)) {
      std::string data(fh.size, '\0');
      size_t off = 0;
      while (off < data.size()) {
        ssize_t n = ::pread(fh.fd.get(), data.data() + off, data.size() - off, off);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      data.resize(off);
      return ex.reply(200, std::move(data), "application/octet-stream");
    }
    ex.begin_stream(200, "application/octet-stream");
    std::string buf(256 << 10, '\0');
    for (;;) {
      ssize_t n = ::read(fh.fd.get(), buf.data(), buf.size());
      if (n <= 0) break;
      ex.write(std::string_view(buf.data(), static_cast<size_t>(n)));
    }
    return ex.end_stream();
  }
  if (what == "archive") {
    std::string path = required_path(ex);
    if (head) {
      if (!inspect::exists(view, path)) throw not_found(fmt::format("path not found: {}", path));
      return ex.reply(200, "", "application/x-tar");
    }
    if (!inspect::exists(view, path)) throw not_found(fmt::format("path not found: {}", path));
    ex.begin_stream(200, "application/x-tar");
    inspect::write_archive(view, path, [&](std::string_view chunk) { ex.write(chunk); });
    return ex.end_stream();
  }
  if (what == "grep") {
    inspect::GrepQuery q;
    q.patterns = ex.query().all("pattern");
    if (q.patterns.empty()) throw bad_request("pattern is required");
    q.paths = ex.query().all("path");
    q.globs = ex.query().all("glob");
    if (ex.query().has("max_count")) q.max_count = int_param(ex, "max_count", 0, 1, 1000000);
    q.max_total = int_param(ex, "max_total", 1000, 1, 100000);
    q.case_mode = ex.query().get("case").value_or("sensitive");
    if (q.case_mode.empty()) q.case_mode = "sensitive";
    if (q.case_mode != "sensitive" && q.case_mode != "insensitive" && q.case_mode != "smart")
      throw bad_request("case must be sensitive, insensitive or smart");
    q.before = static_cast<int>(int_param(ex, "before", 0, 0, 100));
    q.after = static_cast<int>(int_param(ex, "after", 0, 0, 100));
    q.max_bytes = int_param(ex, "max_bytes", max_bytes, inspect::kMinResponseBytes, max_bytes);
    q.max_line_bytes = int_param(ex, "max_line_bytes", 4096, 1, 1 << 20);
    return ex.reply(200, inspect::grep_response(view, q), "application/json");
  }
  throw not_found("no such endpoint");
}

}  // namespace coppice::api
