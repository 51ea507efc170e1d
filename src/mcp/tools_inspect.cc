// Reading images without starting a sandbox: list_files, read_file, download, grep.
#include <fmt/format.h>

#include <filesystem>

#include "common/error.h"
#include "mcp/api_helpers.h"
#include "mcp/tool.h"

namespace coppice::mcp {

using cli::path_segment;
using cli::query_string;

namespace {

constexpr size_t kMaxEntries = 500;
constexpr size_t kDefaultReadBytes = 64 * 1024;

std::string abs_path(const json& a, const char* key, const std::string& def) {
  std::string p = a.contains(key) && a[key].is_string() ? a[key].get<std::string>() : def;
  if (p.empty() || p == ".") p = "/";
  if (p[0] != '/') p = "/" + p;
  return p;
}

// GET /inspect/{uuid}/download?path= with errors a model can act on.
std::string fetch_file(cli::ApiClient& api, const std::string& uuid, const std::string& path) {
  auto r = api.request("GET", fmt::format("/inspect/{}/download{}", path_segment(uuid),
                                          query_string({{"path", path}})));
  if (r.status == 404)
    throw not_found(
        fmt::format("{} does not exist in image {}: call list_files on its directory", path, uuid));
  if (r.status == 422 || r.status == 400)
    throw Error(r.status, fmt::format("cannot read {}: it is a directory or not a regular file "
                                      "(use list_files)",
                                      path));
  if (r.status < 200 || r.status >= 300) api.fail(r, "read " + path);
  return r.body;
}

std::string file_type(const json& f) {
  if (f.value("is_dir", false)) return "dir";
  if (f.value("is_symlink", false)) return "symlink";
  if (f.value("is_regular", false)) return "file";
  return "other";
}

ToolResult list_files(const json& a, CallContext& ctx) {
  std::string uuid = resolve_image(ctx.api, a["image"]);
  std::string path = abs_path(a, "path", "/");
  auto r = ctx.api.request(
      "GET", fmt::format("/inspect/{}/list{}", path_segment(uuid), query_string({{"path", path}})));
  if (r.status == 404)
    throw not_found(
        fmt::format("{} does not exist in image {}: list its parent directory", path, uuid));
  if (r.status == 422 || r.status == 400)
    throw Error(r.status, fmt::format("{} is not a directory: read it with read_file", path));
  if (r.status < 200 || r.status >= 300) ctx.api.fail(r, "list " + path);
  json j = json::parse(r.body);
  json files = json::array();
  const json all = j.value("files", json::array());
  for (const auto& f : all) {
    if (files.size() >= kMaxEntries) break;
    std::string name = f.value("path", "");
    name = name.substr(name.rfind('/') + 1);
    json e = {{"name", name},
              {"path", (path == "/" ? "" : path) + "/" + name},
              {"type", file_type(f)},
              {"size", f.value("size", 0)},
              {"mode", fmt::format("{:04o}", f.value("mode", 0) & 07777)}};
    if (f.value("is_symlink", false)) e["target"] = f.value("symlink_to", "");
    files.push_back(e);
  }
  json out = {{"path", path}, {"count", all.size()}, {"files", files}};
  if (all.size() > files.size())
    out["note"] = fmt::format(
        "only the first {} of {} entries are shown: list subdirectories, "
        "or use grep with a glob to find files",
        files.size(), all.size());
  std::string text = fmt::format("{} ({} entries)\n", path, all.size());
  for (const auto& e : files)
    text +=
        fmt::format("{} {:>5} {:>10} {}{}\n", e["type"].get<std::string>()[0],
                    e["mode"].get<std::string>(), e["size"].dump(), e["name"].get<std::string>(),
                    e.contains("target") ? " -> " + e["target"].get<std::string>() : "");
  if (out.contains("note")) text += "note: " + out["note"].get<std::string>();
  return {out, text, false};
}

ToolResult read_file(const json& a, CallContext& ctx) {
  std::string uuid = resolve_image(ctx.api, a["image"]);
  std::string path = abs_path(a, "path", "/");
  std::string data = fetch_file(ctx.api, uuid, path);
  size_t total = data.size();
  size_t offset = a.value("offset", 0);
  size_t limit = a.value("max_bytes", kDefaultReadBytes);
  data = offset < data.size() ? data.substr(offset) : "";
  size_t dropped = truncate_utf8(data, limit);
  bool b64 = false;
  std::string content = text_or_base64(data, &b64);
  if (b64) content = content.substr(7);  // "base64:" is said by `encoding`
  json out = {{"path", path},
              {"content", content},
              {"encoding", b64 ? "base64" : "utf-8"},
              {"bytes_size", total}};
  if (offset || dropped) out["range"] = {{"offset", offset}, {"bytes", data.size()}};
  if (dropped)
    out["note"] = fmt::format(
        "{} more bytes after this: call read_file with offset={} (or use "
        "download to get the whole file)",
        dropped, offset + data.size());
  std::string text =
      b64 ? fmt::format("{} is binary ({} bytes); base64 content:\n{}", path, total, content)
          : content;
  if (dropped) text += "\n[note: " + out["note"].get<std::string>() + "]";
  return {out, text, false};
}

ToolResult download(const json& a, CallContext& ctx) {
  std::string uuid = resolve_image(ctx.api, a["image"]);
  std::string path = abs_path(a, "path", "/");
  std::string dest = a["destination"];
  ctx.files.relative(dest);  // refuses a destination outside the file root before fetching
  std::string data = fetch_file(ctx.api, uuid, path);
  bool exec = a.value("executable", false);
  std::string name = std::filesystem::path(path).filename().string();
  if (name.empty()) name = "download";
  // 0644 unless the caller asked for an executable (less the umask either way).
  std::string written = ctx.files.write_file(dest, data, exec ? 0755 : 0644, name);
  return {{{"success", true},
           {"source", {{"image", uuid}, {"path", path}}},
           {"destination", written},
           {"size", data.size()},
           {"executable", exec}},
          "",
          false};
}

ToolResult grep(const json& a, CallContext& ctx) {
  std::string uuid = resolve_image(ctx.api, a["image"]);
  cli::Query q{{"pattern", a["pattern"]}};
  if (a.contains("path") && a["path"].is_string()) q.emplace_back("path", abs_path(a, "path", "/"));
  if (a.contains("glob") && a["glob"].is_string()) q.emplace_back("glob", a["glob"]);
  if (a.contains("case") && a["case"].is_string()) q.emplace_back("case", a["case"]);
  if (a.contains("max_count"))
    q.emplace_back("max_count", std::to_string(a["max_count"].get<int>()));
  size_t max_total = a.value("max_total", 200);
  q.emplace_back("max_total", std::to_string(max_total));
  auto r = ctx.api.request("GET",
                           fmt::format("/inspect/{}/grep{}", path_segment(uuid), query_string(q)));
  if (r.status == 400 || r.status == 422) {
    auto j = json::parse(r.body, nullptr, false);
    throw bad_request(
        fmt::format("grep refused: {}", j.is_object() ? j.value("error", r.body) : r.body));
  }
  if (r.status == 404) throw not_found(fmt::format("the path does not exist in image {}", uuid));
  if (r.status < 200 || r.status >= 300) ctx.api.fail(r, "grep");
  json j = json::parse(r.body);
  json matches = json::array();
  std::string text;
  for (const auto& m : j.value("matches", json::array())) {
    std::string line = m.value("line_text", "");
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    truncate_utf8(line, 300);
    matches.push_back({{"path", m.value("path", "")},
                       {"line_number", m.value("line_number", 0)},
                       {"line", line}});
    text += fmt::format("{}:{}: {}\n", m.value("path", ""), m.value("line_number", 0), line);
  }
  json out = {
      {"count", matches.size()}, {"truncated", j.value("truncated", false)}, {"matches", matches}};
  if (out["truncated"].get<bool>())
    out["note"] = "more matches exist: narrow with path/glob, or raise max_total";
  if (matches.empty()) text = "no matches";
  return {out, text, false};
}

}  // namespace

void add_inspect_tools(std::vector<Tool>& out) {
  json ro = {{"readOnlyHint", true}, {"idempotentHint", true}, {"openWorldHint", false}};
  json image = prop("string", "Image UUID (e.g. a run's result_image) or tag.");
  out.push_back({"list_files", "List a directory of an image",
                 "Lists a directory of any image without starting a sandbox (milliseconds). "
                 "Next: read_file for a file's content.",
                 object_schema({{"image", image},
                                {"path", prop_default("string", "Absolute directory path.", "/")}},
                               {"image"}),
                 ro, list_files});
  out.push_back({"read_file", "Read a file of an image",
                 "Returns a file's content from any image without starting a sandbox. Text comes "
                 "back as UTF-8, binary as base64. At most max_bytes (64 KiB) per call; page "
                 "with offset.",
                 object_schema({{"image", image},
                                {"path", prop("string", "Absolute file path.")},
                                {"offset",
                                 {{"type", "integer"},
                                  {"minimum", 0},
                                  {"default", 0},
                                  {"description", "Start at this byte."}}},
                                {"max_bytes",
                                 {{"type", "integer"},
                                  {"minimum", 1},
                                  {"default", 65536},
                                  {"description", "Return at most this many bytes."}}}},
                               {"image", "path"}),
                 ro, read_file});
  out.push_back(
      {"download",
       "Copy a file of an image to the local machine",
       "Writes a file of an image to a local path (where this MCP server runs), under "
       "its file root (whoami shows it; symlinks are not followed). Use it for build "
       "artifacts; for reading, read_file is simpler.",
       object_schema(
           {{"image", image},
            {"path", prop("string", "Absolute file path in the image.")},
            {"destination",
             prop("string",
                  "Local path (file or existing directory) under the file root: absolute, or "
                  "relative to the root. Missing directories are created.")},
            {"executable",
             prop_default("boolean", "Make the local file executable (0755, else 0644).", false)}},
           {"image", "path", "destination"}),
       {{"readOnlyHint", false}, {"idempotentHint", true}, {"openWorldHint", false}},
       download});
  out.push_back(
      {"grep", "Search file contents of an image",
       "Searches files of an image for a regular expression without starting a sandbox "
       "(like ripgrep: binary files and symlinks skipped). Returns path, line number "
       "and line for each match.",
       object_schema({{"image", image},
                      {"pattern", prop("string", "Regular expression (RE2 syntax).")},
                      {"path", prop("string", "Directory or file to search (default /).")},
                      {"glob", prop("string", "Only files whose name matches, e.g. *.py.")},
                      {"max_count",
                       {{"type", "integer"}, {"minimum", 1}, {"description", "Matches per file."}}},
                      {"max_total",
                       {{"type", "integer"},
                        {"minimum", 1},
                        {"default", 200},
                        {"description", "Matches in all."}}},
                      {"case",
                       {{"type", "string"},
                        {"enum", {"sensitive", "insensitive", "smart"}},
                        {"default", "sensitive"},
                        {"description", "Case matching."}}}},
                     {"image", "pattern"}),
       ro, grep});
}

}  // namespace coppice::mcp
