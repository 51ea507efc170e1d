// The `run` tool: spawn a command in a sandbox from an image, wait for it (with progress
// notifications; cancelling the request cancels the operation) and return a summary sized for
// a model's context.
#include <fmt/format.h>

#include "common/base64.h"
#include "common/error.h"
#include "mcp/api_helpers.h"
#include "mcp/tool.h"

namespace coppice::mcp {

using cli::path_segment;

namespace {

json stdin_repr(const std::string& s) {
  bool ascii = true;
  for (unsigned char c : s) ascii = ascii && c < 0x80;
  if (ascii) return {{"value", s}, {"encoding", "ascii"}, {"close", true}};
  return {{"value", base64_encode(s)}, {"encoding", "base64"}, {"close", true}};
}

std::string mode_string(unsigned m) {
  return fmt::format("{:04o}", m & 07777);
}

json files_field(const json& args, CallContext& ctx) {
  json files = json::object();
  if (args.contains("directory_state_id") && !args["directory_state_id"].is_null()) {
    int64_t id = args["directory_state_id"].get<int64_t>();
    auto st = ctx.state.state(id);
    if (!st)
      throw not_found(fmt::format(
          "no directory state {} on this server: call rsync to upload the directory and use the "
          "id it returns",
          id));
    std::string dest = st->destination;
    while (dest.size() > 1 && dest.back() == '/') dest.pop_back();
    for (const auto& f : st->files)
      files[(dest == "/" ? "" : dest) + "/" + f.path] = {{"uuid", f.uuid},
                                                         {"mode", mode_string(f.mode)}};
  }
  if (args.contains("files") && args["files"].is_object())
    for (const auto& [path, spec] : args["files"].items()) {
      if (path.empty() || path[0] != '/')
        throw bad_request(fmt::format("files: '{}' is not an absolute sandbox path", path));
      if (spec.is_string())
        files[path] = {{"uuid", spec}, {"mode", "0644"}};
      else if (spec.is_object() && spec.contains("uuid"))
        files[path] = spec;
      else
        throw bad_request(fmt::format(
            "files['{}'] must be a file uuid from upload (or {{uuid, mode, uid, gid}})", path));
    }
  return files;
}

std::string run_text(const json& s) {
  std::string t = fmt::format("state: {}", s.value("state", ""));
  if (s.contains("exit_code") && !s["exit_code"].is_null())
    t += fmt::format("  exit_code: {}", s["exit_code"].dump());
  if (s.value("timed_out", false)) t += "  TIMED OUT";
  t += fmt::format("  result_image: {}", s["result_image"].is_string()
                                             ? s["result_image"].get<std::string>()
                                             : "none (disposable run or nothing kept)");
  if (s.contains("error")) t += "\nerror: " + s["error"].get<std::string>();
  for (const char* n : {"stdout", "stderr"})
    if (s.contains(n) && !s[n].get<std::string>().empty())
      t += fmt::format("\n--- {} ---\n{}", n, s[n].get<std::string>());
  if (s.contains("notes"))
    for (const auto& n : s["notes"]) t += "\nnote: " + n.get<std::string>();
  if (s.contains("hint")) t += "\nnext: " + s["hint"].get<std::string>();
  return t;
}

ToolResult run_tool(const json& a, CallContext& ctx) {
  std::string image = resolve_image(ctx.api, a["image"].get<std::string>());
  bool shell = a.value("shell", true);
  int timeout = a.value("timeout", 30);
  size_t limit = a.value("truncate_output_at", 8000);
  bool disposable = a.value("disposable", true);
  json body = {{"command", a["command"]},
               {"image", image},
               {"shell", shell},
               {"args", a.value("args", json::array())},
               {"env", a.value("env", json::object())},
               {"cwd", a.value("cwd", "/")},
               {"timeout", timeout},
               {"disposable", disposable},
               {"truncate_output_at", std::max<size_t>(limit, 1)},
               {"files", files_field(a, ctx)}};
  if (a.contains("stdin") && a["stdin"].is_string()) body["stdin"] = stdin_repr(a["stdin"]);
  if (shell && !body["args"].empty())
    throw bad_request("args only apply with shell=false; put the whole line in command");
  json created = ctx.api.send_json("POST", "/instances", body, "start the run");
  std::string op = created.value("uuid", "");
  if (!a.value("wait", true))
    return {{{"operation_id", op},
             {"state", "PENDING"},
             {"hint", "call wait_operations or get_operation with this operation_id"}},
            "",
            false};
  json final_op;
  try {
    final_op = wait_operation(ctx.api, op, timeout + 120.0, [&](double elapsed, size_t bytes) {
      ctx.progress(elapsed, static_cast<double>(timeout),
                   fmt::format("running for {:.0f} s, {} bytes of output so far", elapsed, bytes));
    });
  } catch (const Error& e) {
    if (e.status() == 499 && ctx.cancelled()) {
      ctx.api.set_abort(nullptr);
      ctx.api.request("DELETE", fmt::format("/operations/{}", path_segment(op)));
      throw Error(499, fmt::format("cancelled: operation {} was cancelled", op));
    }
    throw;
  }
  json s = summarize_operation(final_op, limit);
  if (!is_terminal(s.value("state", "")))
    s["hint"] = "still running: call wait_operations with this operation_id";
  else if (s["result_image"].is_string() && s["result_image"] != image)
    s["hint"] =
        "pass result_image as `image` to continue from this state; run again from the "
        "same image to branch";
  else if (!disposable && s.value("state", "") == "SUCCESS")
    s["hint"] = "the run changed no files, so the result image is the input image";
  // A platform failure (bad cwd, missing image layer, …) is an error the model must see as one;
  // a command's own non-zero exit is a normal result.
  return {s, run_text(s), s.value("state", "") == "FAILED"};
}

}  // namespace

void add_run_tools(std::vector<Tool>& out) {
  json files_schema = {
      {"type", "object"},
      {"description",
       "Files to place before the command starts: {\"/abs/path\": \"file-uuid from upload\"} "
       "(mode 0644), or {\"/abs/path\": {\"uuid\": …, \"mode\": \"0755\", \"uid\": 0, \"gid\": "
       "0}}"},
      {"additionalProperties", {{"type", json::array({"string", "object"})}}}};
  json props = {
      {"command", prop("string",
                       "The command. With shell=true (default) a /bin/sh line, e.g. "
                       "'cd /src && make test'; with shell=false a program path.")},
      {"image", prop("string",
                     "Image to start from: a UUID (e.g. a previous run's result_image) "
                     "or a tag such as 'busybox:latest' or 'tag:busybox:latest'.")},
      {"shell", prop_default("boolean", "Run command through /bin/sh -c.", true)},
      {"args",
       {{"type", "array"},
        {"items", {{"type", "string"}}},
        {"description", "Arguments (only with shell=false)."}}},
      {"env",
       {{"type", "object"},
        {"additionalProperties", {{"type", "string"}}},
        {"description", "Environment variables (PATH has a sane default)."}}},
      {"cwd",
       prop_default("string", "Absolute working directory; it must exist in the image.", "/")},
      {"timeout",
       {{"type", "integer"},
        {"minimum", 1},
        {"default", 30},
        {"description", "Seconds before every process of the run is killed."}}},
      {"disposable", prop_default("boolean",
                                  "true: throw the filesystem changes away (cheaper, no image). "
                                  "false: keep them as a new image (result_image) you can run "
                                  "from again or branch.",
                                  true)},
      {"stdin", prop("string", "Text fed to the command's standard input.")},
      {"directory_state_id", prop("integer",
                                  "An id from rsync: places that local directory's "
                                  "files at the destination rsync was given.")},
      {"files", files_schema},
      {"wait", prop_default("boolean",
                            "true: wait and return the result. false: return the operation_id at "
                            "once (start several runs in parallel, then wait_operations).",
                            true)},
      {"truncate_output_at",
       {{"type", "integer"},
        {"minimum", 1},
        {"default", 8000},
        {"description", "Bytes of stdout and of stderr kept (each)."}}}};
  out.push_back(Tool{
      "run",
      "Run a command in a sandbox",
      "Runs a command in a fresh, isolated Linux sandbox (no network) started from an image, and "
      "returns exit_code, stdout and stderr. Costs about 10 ms plus the command's own time. With "
      "disposable=false the resulting filesystem becomes a new immutable image (result_image): "
      "pass it as `image` to continue from that state, or run several commands from the same "
      "image to explore branches side by side (each gets its own copy; nothing is shared). The "
      "input image never changes, so going back is just using an older image UUID. Long runs "
      "report progress; cancelling the request cancels the run. Next: read files of a "
      "result_image with list_files/read_file (no sandbox needed).",
      object_schema(props, {"command", "image"}),
      {{"readOnlyHint", false},
       {"destructiveHint", false},
       {"idempotentHint", false},
       {"openWorldHint", false}},
      run_tool});
}

}  // namespace coppice::mcp
