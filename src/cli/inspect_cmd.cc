// Reading the session's image without a sandbox (the inspect API), and its working directory.
//   coppice ls [PATH]           listing (`ls -l` text by default; records with -f)
//   coppice cat PATH            file bytes to stdout
//   coppice cp PATH LOCAL       download (LOCAL may be a directory, or - for stdout)
//   coppice cd [PATH]           set the session's cwd (checked to be a directory); none = reset
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>

#include "cli/commands.h"
#include "cli/context.h"
#include "common/error.h"
#include "common/fd.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

std::string inspect_path(const std::string& image, const std::string& what, const std::string& path,
                         Query extra = {}) {
  Query q{{"path", path}};
  for (auto& e : extra) q.push_back(std::move(e));
  return fmt::format("/inspect/{}/{}{}", path_segment(image), what, query_string(q));
}

// Streams a file of the image to `fd`; Error naming the path on any failure.
void download(Context& ctx, const std::string& image, const std::string& path, int fd) {
  BodySink sink = [fd](std::string_view chunk) { write_all(chunk, fd); };
  auto r = ctx.api().request("GET", inspect_path(image, "download", path), "", {}, &sink);
  if (r.status < 200 || r.status >= 300) ctx.api().fail(r, "read " + path);
}

}  // namespace

void add_inspect_commands(CLI::App& app, Context& ctx) {
  auto* ls = app.add_subcommand("ls", "List a directory of the session's image");
  auto lpath = std::make_shared<std::string>();
  ls->add_option("PATH", *lpath, "directory (default: the session's cwd)");
  ls->callback([&ctx, lpath] {
    std::string image = ctx.current_image();
    std::string path = ctx.remote_path(*lpath);
    Format f = ctx.format();
    if (f == Format::standard) {
      auto r = ctx.api().request("GET", inspect_path(image, "list", path, {{"text", "1"}}));
      if (r.status < 200 || r.status >= 300) ctx.api().fail(r, "list " + path);
      write_all(r.body);
      return;
    }
    auto j = ctx.api().get_json(inspect_path(image, "list", path), "list " + path);
    std::vector<json> rows;
    for (auto& e : j.value("files", json::array())) {
      e["mode_octal"] = fmt::format("{:o}", e.value("mode", 0));
      rows.push_back(e);
    }
    write_all(render(rows,
                     {{"mode_octal", "MODE"},
                      {"owner", "OWNER"},
                      {"group", "GROUP"},
                      {"size", "SIZE"},
                      {"mtime", "MTIME"},
                      {"path", "NAME"},
                      {"symlink_to", "TARGET"}},
                     f));
  });

  auto* cat = app.add_subcommand("cat", "Print files of the session's image");
  auto cpaths = std::make_shared<std::vector<std::string>>();
  cat->add_option("PATH", *cpaths, "files")->required();
  cat->callback([&ctx, cpaths] {
    std::string image = ctx.current_image();
    for (const auto& p : *cpaths) download(ctx, image, ctx.remote_path(p), 1);
  });

  auto* cp = app.add_subcommand("cp", "Copy a file out of the session's image");
  auto src = std::make_shared<std::string>();
  auto dst = std::make_shared<std::string>();
  cp->add_option("PATH", *src, "file in the image")->required();
  cp->add_option("LOCAL", *dst, "local file or directory (- for stdout)")->required();
  cp->callback([&ctx, src, dst] {
    std::string image = ctx.current_image();
    std::string path = ctx.remote_path(*src);
    if (*dst == "-") return download(ctx, image, path, 1);
    std::filesystem::path target = *dst;
    std::error_code ec;
    if (std::filesystem::is_directory(target, ec)) target /= std::filesystem::path(path).filename();
    std::filesystem::path tmp = target;
    tmp += ".coppice-part";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) throw sys_error("cannot write " + tmp.string());
    try {
      download(ctx, image, path, fd.get());
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
    fd.reset();
    if (::rename(tmp.c_str(), target.c_str()) != 0)
      throw sys_error("cannot write " + target.string());
  });

  auto* cd = app.add_subcommand("cd", "Set the session's working directory");
  auto dir = std::make_shared<std::string>();
  cd->add_option("PATH", *dir, "directory (none: back to the image's own)");
  cd->callback([&ctx, dir] {
    auto info = ctx.session();
    if (dir->empty()) {
      ctx.sessions().set_cwd(info.key, "");
      write_all("cwd reset to the image's working directory\n", 2);
      return;
    }
    std::string path = normalize_path(info.cwd, *dir);
    auto r = ctx.api().request("GET", inspect_path(info.head->image, "list", path));
    if (r.status == 404 || r.status == 422)
      throw Error(
          static_cast<int>(r.status),
          fmt::format("cd {}: {} in image {}", path,
                      r.status == 404 ? "no such directory" : "not a directory", info.head->image));
    if (r.status < 200 || r.status >= 300) ctx.api().fail(r, "cd " + path);
    ctx.sessions().set_cwd(info.key, path);
    write_all(path + "\n");
  });
}

}  // namespace coppice::cli
