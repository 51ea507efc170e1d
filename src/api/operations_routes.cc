// POST /v1/instances, /v1/operations[/{id}[/events|/archive]] (contract §2.6, §2.7, §3).
#include <fmt/format.h>

#include <limits>

#include "api/api.h"
#include "api/event_stream.h"
#include "common/clock.h"
#include "common/error.h"
#include "oci/exporter.h"

namespace coppice::api {

using json = nlohmann::json;

namespace {
const char* const kStatuses[] = {"PENDING", "ASSIGNED", "EXECUTING",
                                 "SUCCESS", "FAILED",   "CANCELLED"};

int64_t parse_int_or(const std::optional<std::string>& v, int64_t def, const char* what) {
  if (!v || v->empty()) return def;
  char* end = nullptr;
  long long n = std::strtoll(v->c_str(), &end, 10);
  if (*end) throw bad_request(fmt::format("{} must be an integer", what));
  return n;
}
}  // namespace

void Api::instances(Exchange& ex) {
  if (ex.segments().size() != 1) throw not_found("no such endpoint");
  if (ex.method() != http::verb::post) throw Error(405, "method not allowed");
  json body = ex.json_body();
  auto rec = engine_.spawn(ex.project, body);
  json resp = rec.metadata;
  resp["uuid"] = rec.uuid;
  resp["status"] = rec.status;
  resp["result"] = nullptr;
  ex.reply_json(201, resp, {{"Location", "/v1/operations/" + rec.uuid}});
}

void Api::operations(Exchange& ex) {
  const auto& s = ex.segments();
  if (s.size() == 1) {
    if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
    store::OperationFilter f;
    f.page = parse_page(ex.query());
    if (auto st = ex.query().get("status"); st && !st->empty()) {
      bool ok = false;
      for (const char* k : kStatuses) ok = ok || *st == k;
      if (!ok) throw bad_request(fmt::format("unknown status: {}", *st));
      f.status = *st;
    }
    if (auto k = ex.query().get("kind"); k && !k->empty()) {
      if (*k != "instance" && *k != "image_import" && *k != "image_push" && *k != "image_export")
        throw bad_request("kind must be instance, image_import, image_push or image_export");
      f.kind = *k;
    }
    // The store keeps an active operation as PENDING until it ends; its live state (ASSIGNED,
    // EXECUTING) is in memory. So an active-status filter reads every active operation of the
    // project, applies the filter to the live state, then pages.
    const std::optional<std::string> want = f.status;
    const bool active_filter =
        want && (*want == "PENDING" || *want == "ASSIGNED" || *want == "EXECUTING");
    const store::Page page = f.page;
    if (active_filter) {
      f.status = "PENDING";
      f.page.offset = 0;
      f.page.limit = std::numeric_limits<int64_t>::max();
    }
    json arr = json::array();
    int64_t skipped = 0;
    for (const auto& op : engine_.meta().list_operations(ex.project, f)) {
      // Active operations: report their live state.
      auto cur = op.finished_us ? std::optional(op) : engine_.operation(ex.project, op.uuid);
      const auto& rec = cur ? *cur : op;
      if (active_filter) {
        if (rec.status != *want) continue;
        if (skipped++ < page.offset) continue;
        if (static_cast<int64_t>(arr.size()) >= page.limit) break;
      }
      arr.push_back(operation_summary_json(rec));
    }
    return ex.reply_json(200, arr);
  }
  const std::string& id = s[1];
  if (s.size() == 2) {
    if (ex.method() == http::verb::get) {
      auto op = engine_.operation(ex.project, id);
      if (!op) throw not_found(fmt::format("operation not found: {}", id));
      std::vector<std::pair<std::string, std::string>> hdr;
      if (!op->finished_us) hdr.push_back({"Retry-After", "1"});
      return ex.reply_json(200, operation_json(*op), hdr);
    }
    if (ex.method() == http::verb::delete_) {
      engine_.cancel(ex.project, id);
      return ex.reply(202, "", "");
    }
    throw Error(405, "method not allowed");
  }
  if (s.size() == 3 && s[2] == "events") {
    if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
    return events(ex, id);
  }
  if (s.size() == 3 && s[2] == "archive") {
    // The OCI archive of a finished image_export operation (docs/API.md).
    if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
    auto archive = engine_.export_archive(ex.project, id);
    ex.begin_stream(200, "application/x-tar",
                    {{"Content-Disposition",
                      fmt::format("attachment; filename=\"{}.oci.tar\"", archive->image_uuid)},
                     {"Docker-Content-Digest", archive->built.manifest_digest}});
    oci::write_oci_archive(archive->built, archive->ref_name,
                           [&](std::string_view chunk) { ex.write(chunk); });
    return ex.end_stream();
  }
  if (s.size() >= 3 && s[2] == "subprocesses")
    throw Error(501, "subprocesses are not supported by this server yet");
  throw not_found("no such endpoint");
}

void Api::events(Exchange& ex, const std::string& op_uuid) {
  auto rec = engine_.operation(ex.project, op_uuid);
  if (!rec) throw not_found(fmt::format("operation not found: {}", op_uuid));
  int64_t since = parse_int_or(ex.query().get("since"), -1, "since");
  std::string last = ex.header_value(std::string_view("Last-Event-Id"));
  if (!last.empty()) since = std::max(since, parse_int_or(last, -1, "Last-Event-Id"));
  std::optional<int> spid;
  if (auto v = ex.query().get("spid"); v && !v->empty())
    spid = static_cast<int>(parse_int_or(v, 0, "spid"));
  bool follow = false;
  if (auto f = ex.query().get("follow")) follow = *f != "0" && *f != "false";

  auto live = engine_.live(op_uuid);
  std::vector<store::EventRecord> stored;
  if (!live) {
    stored = engine_.meta().events(op_uuid);
    if (stored.empty() && !engine_.meta().get_operation(op_uuid)->finished_us)
      return ex.reply_error(425, "the event log is not ready yet");
  }
  ex.begin_stream(200, "text/event-stream",
                  {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
  if (!live) {
    for (const auto& e : stored)
      if (e.id > since && (!spid || e.spid == *spid)) ex.write(sse_frame(e));
    return ex.end_stream();
  }
  if (!follow) {
    std::string buf;
    for (const auto& e : live->events_after(since, spid, std::chrono::milliseconds(0)))
      buf += sse_frame(e);
    if (!buf.empty()) ex.write(buf);
    return ex.end_stream();
  }
  // Following: the rest runs on the connection's strand, waiting without a thread.
  auto self = ex.shared_from_this();
  ex.detach();
  follow_events(std::move(self), std::move(live), since, spid,
                std::chrono::seconds(cfg_.sse_keepalive_s));
}

}  // namespace coppice::api
