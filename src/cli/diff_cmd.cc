// diff: what changed between two images, read through the inspect API (no sandbox).
//   coppice diff A [B]      A, B: image references (uuid, tag); B defaults to the session's image
// Walks both trees with GET /v1/inspect/{uuid}/list, one request per directory that differs,
// and prints `A path` (added in B), `D path` (deleted), `M path` (type, mode, owner, size,
// mtime or link target changed). Directories present in both are walked (two requests each).
#include <CLI/CLI.hpp>
#include <map>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/output.h"
#include "common/error.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

std::map<std::string, json> listing(Context& ctx, const std::string& image,
                                    const std::string& dir) {
  auto j = ctx.api().get_json(
      fmt::format("/inspect/{}/list{}", path_segment(image), query_string({{"path", dir}})),
      "list " + dir);
  std::map<std::string, json> out;
  if (j.contains("files"))
    for (const auto& f : j["files"]) {
      std::string name = f.value("path", "");
      out[name.substr(name.rfind('/') + 1)] = f;
    }
  return out;
}

std::string signature(const json& f) {
  return fmt::format("{}|{}|{}|{}|{}|{}|{}", f.value("is_dir", false), f.value("mode", 0),
                     f.value("uid", 0), f.value("gid", 0),
                     f.value("is_dir", false) ? 0 : f.value("size", 0),
                     f.value("is_dir", false) ? 0 : f.value("mtime", 0), f.value("symlink_to", ""));
}

void walk(Context& ctx, const std::string& a, const std::string& b, const std::string& dir,
          std::vector<json>& rows) {
  auto la = listing(ctx, a, dir), lb = listing(ctx, b, dir);
  auto path_of = [&](const std::string& n) { return (dir == "/" ? "" : dir) + "/" + n; };
  for (const auto& [n, f] : lb) {
    auto it = la.find(n);
    if (it == la.end()) {
      rows.push_back({{"change", "A"}, {"path", path_of(n)}});
      continue;
    }
    // Directories compare by type, mode and owner; their contents are walked.
    if (signature(f) != signature(it->second))
      rows.push_back({{"change", "M"}, {"path", path_of(n)}});
    if (f.value("is_dir", false) && it->second.value("is_dir", false))
      walk(ctx, a, b, path_of(n), rows);
  }
  for (const auto& [n, f] : la)
    if (!lb.count(n)) rows.push_back({{"change", "D"}, {"path", path_of(n)}});
}

}  // namespace

void add_diff_command(CLI::App& app, Context& ctx) {
  auto* d = app.add_subcommand("diff", "Files added, deleted and modified between two images");
  auto a = std::make_shared<std::string>(), b = std::make_shared<std::string>();
  d->add_option("A", *a, "the older image (uuid or tag)")->required();
  d->add_option("B", *b, "the newer image (default: the session's current image)");
  d->callback([&ctx, a, b] {
    std::string ia = ctx.resolve_image(*a);
    std::string ib = b->empty() ? ctx.current_image() : ctx.resolve_image(*b);
    std::vector<json> rows;
    walk(ctx, ia, ib, "/", rows);
    std::sort(rows.begin(), rows.end(), [](const json& x, const json& y) {
      return x["path"].get<std::string>() < y["path"].get<std::string>();
    });
    if (ctx.format() == Format::standard) {
      std::string out;
      for (const auto& r : rows)
        out += r["change"].get<std::string>() + " " + r["path"].get<std::string>() + "\n";
      return write_all(out);
    }
    write_all(render(rows, {{"change", "CHANGE"}, {"path", "PATH"}}, ctx.format()));
  });
}

}  // namespace coppice::cli
