// Operation tools: get_operation, list_operations, wait_operations, cancel_operation.
#include <fmt/format.h>

#include <chrono>
#include <map>
#include <thread>

#include "common/error.h"
#include "mcp/api_helpers.h"
#include "mcp/tool.h"

namespace coppice::mcp {

using cli::path_segment;
using cli::query_string;

namespace {

json read_op(cli::ApiClient& api, const std::string& id) {
  auto r = api.request("GET", fmt::format("/operations/{}", path_segment(id)));
  if (r.status == 404)
    throw not_found(
        fmt::format("no operation {}: call list_operations to see recent operations", id));
  if (r.status < 200 || r.status >= 300) api.fail(r, "read operation " + id);
  return json::parse(r.body);
}

ToolResult get_operation(const json& a, CallContext& ctx) {
  return {summarize_operation(read_op(ctx.api, a["operation_id"]), 8000), "", false};
}

ToolResult list_operations(const json& a, CallContext& ctx) {
  cli::Query q{{"limit", std::to_string(a.value("limit", 100))}};
  if (a.contains("offset")) q.emplace_back("offset", std::to_string(a["offset"].get<int>()));
  if (a.contains("status") && a["status"].is_string()) q.emplace_back("status", a["status"]);
  if (a.contains("type") && a["type"].is_string()) q.emplace_back("kind", a["type"]);
  if (a.contains("since") && a["since"].is_string()) q.emplace_back("since", a["since"]);
  json ops = ctx.api.get_json("/operations" + query_string(q), "list operations");
  if (ops.is_object() && ops.contains("operations")) ops = ops["operations"];
  json rows = json::array();
  for (const auto& o : ops)
    rows.push_back({{"operation_id", o.value("uuid", "")},
                    {"kind", o.value("kind", "")},
                    {"state", o.value("status", "")},
                    {"created_at", o.value("created_at", "")},
                    {"image", o.value("image_uuid", json(nullptr))},
                    {"result_image", o.value("result_image_uuid", json(nullptr))},
                    {"error", o.value("error", json(nullptr))}});
  return {{{"count", rows.size()}, {"operations", rows}}, "", false};
}

ToolResult wait_operations(const json& a, CallContext& ctx) {
  std::vector<std::string> ids = a["operation_ids"].get<std::vector<std::string>>();
  if (ids.empty())
    throw bad_request("operation_ids is empty: pass the ids that run(wait=false) returned");
  double timeout = a.value("timeout", 300.0);
  bool any = a.value("mode", "all") == "any";
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  std::map<std::string, json> done;
  int delay = 20;
  for (;;) {
    for (const auto& id : ids) {
      if (done.count(id)) continue;
      json op = read_op(ctx.api, id);
      if (is_terminal(op.value("status", ""))) done[id] = op;
    }
    double elapsed = std::chrono::duration<double>(clock::now() - t0).count();
    if (done.size() == ids.size() || (any && !done.empty()) || elapsed >= timeout) break;
    if (ctx.cancelled()) throw Error(499, "cancelled by the client");
    ctx.progress(elapsed, timeout,
                 fmt::format("{} of {} operations finished after {:.0f} s", done.size(), ids.size(),
                             elapsed));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    delay = std::min(500, delay * 2);
  }
  json results = json::object(), completed = json::array(), cancelled = json::array(),
       timed_out = json::array();
  for (const auto& id : ids) {
    if (done.count(id)) {
      results[id] = summarize_operation(done[id], 2000);
      completed.push_back(id);
    } else if (any) {
      auto r = ctx.api.request("DELETE", fmt::format("/operations/{}", path_segment(id)));
      (void)r;  // 409: it finished meanwhile; its result stays readable with get_operation
      cancelled.push_back(id);
    } else {
      timed_out.push_back(id);
    }
  }
  json out = {{"results", results},
              {"completed", completed},
              {"cancelled", cancelled},
              {"timed_out", timed_out}};
  if (!timed_out.empty())
    out["hint"] = "some operations are still running: call wait_operations again";
  return {out, "", false};
}

ToolResult cancel_operation(const json& a, CallContext& ctx) {
  std::string id = a["operation_id"];
  json op = read_op(ctx.api, id);
  if (is_terminal(op.value("status", "")))
    return {{{"cancelled", false},
             {"operation_id", id},
             {"state", op["status"]},
             {"reason", "the operation had already finished"}},
            "",
            false};
  auto r = ctx.api.request("DELETE", fmt::format("/operations/{}", path_segment(id)));
  if (r.status == 409)
    return {{{"cancelled", false}, {"operation_id", id}, {"reason", "it finished meanwhile"}},
            "",
            false};
  if (r.status < 200 || r.status >= 300) ctx.api.fail(r, "cancel operation " + id);
  return {{{"cancelled", true}, {"operation_id", id}}, "", false};
}

}  // namespace

void add_operation_tools(std::vector<Tool>& out) {
  json ro = {{"readOnlyHint", true}, {"openWorldHint", false}};
  out.push_back(
      {"get_operation", "Read an operation",
       "The state of one operation (a run or an image import): PENDING, EXECUTING, "
       "SUCCESS, FAILED or CANCELLED, and for finished runs exit_code, stdout, stderr "
       "and result_image. Cheap; does not wait (use wait_operations to wait).",
       object_schema({{"operation_id", prop("string", "The operation's UUID.")}}, {"operation_id"}),
       ro, get_operation});
  out.push_back(
      {"list_operations", "List operations",
       "Recent operations, newest first, with their state and result image. Cheap.",
       object_schema(
           {{"limit",
             {{"type", "integer"},
              {"minimum", 1},
              {"default", 100},
              {"description", "At most this many."}}},
            {"offset",
             {{"type", "integer"},
              {"minimum", 0},
              {"default", 0},
              {"description", "Skip this many."}}},
            {"status",
             {{"type", "string"},
              {"enum", {"PENDING", "ASSIGNED", "EXECUTING", "SUCCESS", "FAILED", "CANCELLED"}},
              {"description", "Only operations in this state."}}},
            {"type",
             {{"type", "string"},
              {"enum", {"instance", "image_import"}},
              {"description", "instance = runs; image_import = imports."}}},
            {"since", prop("string",
                           "Only operations created at or after this time (RFC 3339, or a duration "
                           "like 1h).")}},
           {}),
       ro, list_operations});
  out.push_back(
      {"wait_operations",
       "Wait for operations",
       "Waits for several operations (e.g. runs started with wait=false) and returns their "
       "results. mode=all waits for every one; mode=any returns when the first finishes and "
       "cancels the others. Blocks up to `timeout` seconds; ids still running are listed in "
       "timed_out.",
       object_schema({{"operation_ids",
                       {{"type", "array"},
                        {"items", {{"type", "string"}}},
                        {"description", "Operation UUIDs."}}},
                      {"timeout",
                       {{"type", "number"},
                        {"minimum", 0},
                        {"default", 300},
                        {"description", "Seconds to wait at most."}}},
                      {"mode",
                       {{"type", "string"},
                        {"enum", {"all", "any"}},
                        {"default", "all"},
                        {"description", "all or any."}}}},
                     {"operation_ids"}),
       {{"readOnlyHint", false}, {"openWorldHint", false}},
       wait_operations});
  out.push_back(
      {"cancel_operation",
       "Cancel an operation",
       "Cancels a pending or running operation (its processes are killed; no image is "
       "kept). Finished operations are left as they are.",
       object_schema({{"operation_id", prop("string", "The operation's UUID.")}}, {"operation_id"}),
       {{"readOnlyHint", false},
        {"destructiveHint", true},
        {"idempotentHint", true},
        {"openWorldHint", false}},
       cancel_operation});
}

}  // namespace coppice::mcp
