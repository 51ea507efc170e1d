// file: files for the session's next run, and the server's uploaded files.
//   coppice file cp LOCAL PATH[:uUID][:gGID][:mMODE]   upload (once, by content) and stage
//   coppice file edit PATH [-E EDITOR]                   edit a file of the current image in
//                                                        $EDITOR; the result is staged
//   coppice file ls [--limit N] [--since T] [--until T] [-q]   the server's files
// Staged files are injected into the next `coppice run` of the session (its -F wins for the
// same path), then forgotten.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <filesystem>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/file_upload.h"
#include "cli/output.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"
#include "common/sha256.h"

namespace coppice::cli {

namespace fs = std::filesystem;

namespace {

// The entry for `path` in its directory's listing (mode, uid, gid), or null.
nlohmann::json remote_entry(Context& ctx, const std::string& image, const std::string& path) {
  auto slash = path.rfind('/');
  std::string dir = slash == 0 ? "/" : path.substr(0, slash);
  std::string name = path.substr(slash + 1);
  auto r = ctx.api().request(
      "GET", fmt::format("/inspect/{}/list{}", path_segment(image), query_string({{"path", dir}})));
  if (r.status != 200) return nullptr;
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("files")) return nullptr;
  for (const auto& f : j["files"]) {
    std::string p = f.value("path", "");
    if (p == name || p == path || (p.size() > name.size() && p.ends_with("/" + name))) return f;
  }
  return nullptr;
}

int run_editor(const std::string& editor, const std::string& file) {
  pid_t pid = ::fork();
  if (pid < 0) throw sys_error("fork");
  if (pid == 0) {
    // Through the shell, so that EDITOR="code --wait" works.
    std::string cmd = editor + " \"$1\"";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), "sh", file.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

void add_file_commands(CLI::App& app, Context& ctx) {
  auto* file = app.add_subcommand("file", "Stage files for the next run; list uploaded files");
  file->alias("f");
  file->require_subcommand(1);

  auto* cp = file->add_subcommand("cp", "Upload LOCAL and stage it at PATH for the next run");
  auto src = std::make_shared<std::string>(), dst = std::make_shared<std::string>();
  cp->add_option("LOCAL", *src, "local file")->required();
  cp->add_option("PATH", *dst, "sandbox path, optionally :uUID:gGID:mMODE")->required();
  cp->callback([&ctx, src, dst] {
    auto info = ctx.session();
    auto [path, spec] = prepare_file(ctx.api(), parse_file_spec(*src + ":" + *dst), info.cwd);
    ctx.sessions().stage_file(info.key, path, spec);
    write_all(fmt::format("staged {} for the next run\n", path), 2);
  });

  auto* edit = file->add_subcommand("edit", "Edit a file of the current image; stage the result");
  edit->alias("e");
  auto epath = std::make_shared<std::string>(), editor = std::make_shared<std::string>();
  edit->add_option("PATH", *epath, "file in the image (a new file when absent)")->required();
  edit->add_option("-E,--editor", *editor, "editor command (default $VISUAL, $EDITOR, vi)");
  edit->callback([&ctx, epath, editor] {
    auto info = ctx.session();
    const std::string image = info.head->image;
    const std::string path = ctx.remote_path(*epath);
    std::string cmd = *editor;
    for (const char* var : {"VISUAL", "EDITOR"})
      if (cmd.empty() && std::getenv(var) && *std::getenv(var)) cmd = std::getenv(var);
    if (cmd.empty()) cmd = "vi";
    char tmpl[] = "/tmp/coppice-edit-XXXXXX";
    if (!::mkdtemp(tmpl)) throw sys_error("mkdtemp");
    TempDir tmp{fs::path(tmpl)};
    fs::path local = tmp.path() / fs::path(path).filename();
    nlohmann::json entry = remote_entry(ctx, image, path);
    {
      UniqueFd fd(::open(local.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      if (!fd) throw sys_error("create " + local.string());
      if (!entry.is_null()) {
        BodySink sink = [&](std::string_view chunk) { write_all(chunk, fd.get()); };
        auto r = ctx.api().request("GET",
                                   fmt::format("/inspect/{}/download{}", path_segment(image),
                                               query_string({{"path", path}})),
                                   "", {}, &sink);
        if (r.status != 200) ctx.api().fail(r, "read " + path);
      }
    }
    std::string before = read_file(local);
    int rc = run_editor(cmd, local.string());
    if (rc != 0)
      throw Error(400, fmt::format("the editor ({}) exited with {}; nothing staged", cmd, rc));
    if (read_file(local) == before && !entry.is_null()) {
      write_all(fmt::format("{} unchanged; nothing staged\n", path), 2);
      return;
    }
    FileSpec spec;
    spec.host = local.string();
    spec.remote = path;
    if (!entry.is_null()) {
      spec.uid = entry.value("uid", 0);
      spec.gid = entry.value("gid", 0);
      spec.mode = static_cast<unsigned>(entry.value("mode", 0644)) & 07777u;
    } else {
      spec.mode = 0644;
    }
    auto [p, fspec] = prepare_file(ctx.api(), spec, info.cwd);
    ctx.sessions().stage_file(info.key, p, fspec);
    write_all(fmt::format("staged {} for the next run\n", p), 2);
  });

  auto* ls = file->add_subcommand("ls", "List the files uploaded to the server");
  auto limit = std::make_shared<int>(100);
  auto since = std::make_shared<std::string>(), until = std::make_shared<std::string>();
  auto quiet = std::make_shared<bool>(false);
  ls->add_option("--limit", *limit, "at most this many (1..1000)")->check(CLI::Range(1, 1000));
  ls->add_option("--since", *since, "newer than (ISO time or 15m, 2h, 3d)");
  ls->add_option("--until", *until, "older than");
  ls->add_flag("-q,--quiet", *quiet, "uuids only");
  ls->callback([&ctx, limit, since, until, quiet] {
    Query q{{"limit", std::to_string(*limit)}};
    if (!since->empty()) q.push_back({"since", *since});
    if (!until->empty()) q.push_back({"until", *until});
    auto j = ctx.api().get_json("/files" + query_string(q), "list files");
    std::vector<nlohmann::json> rows;
    const nlohmann::json& arr = j.is_object() && j.contains("files") ? j["files"] : j;
    if (arr.is_array())
      for (const auto& f : arr) rows.push_back(f);
    if (*quiet) {
      std::string out;
      for (const auto& r : rows) out += r.value("uuid", "") + "\n";
      return write_all(out);
    }
    write_all(render(
        rows, {{"uuid", "UUID"}, {"sha256", "SHA256"}, {"size", "SIZE"}, {"created_at", "CREATED"}},
        ctx.format()));
  });
}

}  // namespace coppice::cli
