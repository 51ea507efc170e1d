// Getting local bytes to the server: upload (one file or literal content) and rsync (a whole
// directory, uploaded once by content; later calls send only files that changed).
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fnmatch.h>
#include <sys/stat.h>

#include <filesystem>
#include <memory>

#include "cli/file_upload.h"
#include "common/base64.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/sha256.h"
#include "mcp/tool.h"

namespace coppice::mcp {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxRsyncFiles = 20000;
constexpr size_t kMaxRsyncDepth = 64;
constexpr size_t kMaxLocalFile = size_t{1} << 30;  // the server's default upload cap

struct DirClose {
  void operator()(DIR* d) const { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirClose>;

// Takes ownership of `fd` (a directory opened under the file root).
DirPtr open_listing(UniqueFd fd, const std::string& shown) {
  DIR* d = ::fdopendir(fd.get());
  if (!d) throw sys_error("cannot read " + shown);
  fd.release();
  return DirPtr(d);
}

ToolResult upload(const json& a, CallContext& ctx) {
  int given = 0;
  for (const char* k : {"path", "content", "content_base64"})
    given += a.contains(k) && a[k].is_string() ? 1 : 0;
  if (given != 1)
    throw bad_request("give exactly one of path (a local file), content (text) or content_base64");
  std::string data, what;
  if (a.contains("path") && a["path"].is_string()) {
    what = a["path"];
    UniqueFd fd = ctx.files.open_file(what);
    data = read_fd(fd.get(), what, kMaxLocalFile);
  } else if (a.contains("content") && a["content"].is_string()) {
    data = a["content"];
    what = "content";
  } else {
    auto d = base64_decode(a["content_base64"].get<std::string>());
    if (!d) throw bad_request("content_base64 is not valid base64");
    data = *d;
    what = "content";
  }
  std::string sha = sha256_hex(data);
  std::string uuid = cli::ensure_uploaded_bytes(ctx.api, data, what, sha);
  return {{{"uuid", uuid},
           {"sha256", sha},
           {"size", data.size()},
           {"hint", "pass it to run as files: {\"/path/in/sandbox\": \"" + uuid + "\"}"}},
          "",
          false};
}

bool excluded(const std::string& rel, const std::vector<std::string>& patterns) {
  std::string base = rel.substr(rel.rfind('/') + 1);
  for (const auto& p : patterns) {
    if (::fnmatch(p.c_str(), rel.c_str(), 0) == 0 || ::fnmatch(p.c_str(), base.c_str(), 0) == 0)
      return true;
    // A pattern naming a directory excludes what is under it.
    std::string dir = p;
    while (!dir.empty() && dir.back() == '/') dir.pop_back();
    if (!dir.empty() &&
        (rel.rfind(dir + "/", 0) == 0 || rel.find("/" + dir + "/") != std::string::npos))
      return true;
  }
  return false;
}

ToolResult rsync(const json& a, CallContext& ctx) {
  std::string source_arg = a["source"], dest = a["destination"];
  if (dest.empty() || dest[0] != '/')
    throw bad_request("destination must be an absolute path in the sandbox, e.g. /src");
  for (const auto& part : fs::path(dest))
    if (part == "..") throw bad_request("destination must not contain '..'");
  std::string source = ctx.files.absolute(ctx.files.relative(source_arg));
  UniqueFd top;
  try {
    top = ctx.files.open_dir(source_arg);
  } catch (const Error& e) {
    if (e.status() != 404) throw;
    throw not_found(fmt::format("{} is not a local directory ({})", source_arg, e.what()));
  }
  std::vector<std::string> excludes = a.value("exclude", std::vector<std::string>{});
  DirectoryState state{0, source, dest, {}};
  size_t uploaded = 0, unchanged = 0, skipped = 0, bytes = 0;
  double step = 0;
  // Depth-first over directory fds: each entry is looked at with fstatat(AT_SYMLINK_NOFOLLOW)
  // relative to its directory's fd, and opened by its single name with O_NOFOLLOW, so the
  // walk never leaves `source`, whatever is renamed or replaced while it runs.
  struct Frame {
    DirPtr dir;
    std::string rel;  // "" for the source itself
  };
  std::vector<Frame> stack;
  stack.push_back({open_listing(std::move(top), source), ""});
  while (!stack.empty()) {
    if (ctx.cancelled()) throw Error(499, "cancelled by the client");
    Frame& f = stack.back();
    errno = 0;
    struct dirent* e = ::readdir(f.dir.get());
    if (!e) {
      if (errno != 0) throw sys_error("cannot read " + source + "/" + f.rel);
      stack.pop_back();
      continue;
    }
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string rel = f.rel.empty() ? name : f.rel + "/" + name;
    if (excluded(rel, excludes)) continue;
    int dfd = ::dirfd(f.dir.get());
    struct stat st {};
    if (::fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone
    if (S_ISDIR(st.st_mode)) {
      if (stack.size() > kMaxRsyncDepth)
        throw bad_request(fmt::format("{} is nested deeper than {} directories", source + "/" + rel,
                                      kMaxRsyncDepth));
      UniqueFd sub(::openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub.valid()) {
        ++skipped;  // replaced by a symlink meanwhile, or unreadable
        continue;
      }
      stack.push_back({open_listing(std::move(sub), source + "/" + rel), rel});
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      ++skipped;  // symlinks, sockets, devices
      continue;
    }
    if (state.files.size() >= kMaxRsyncFiles)
      throw bad_request(
          fmt::format("{} has more than {} files: exclude build outputs and "
                      "dependencies (exclude: [\"node_modules\", \".git\"])",
                      source, kMaxRsyncFiles));
    std::string abs = source + "/" + rel;
    int64_t mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    auto hit = ctx.state.cached(abs, st.st_size, mtime);
    std::string uuid;
    if (hit) {
      uuid = hit->uuid;
      ++unchanged;
    } else {
      UniqueFd fd(
          ::openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
      struct stat fst {};
      if (!fd.valid() || ::fstat(fd.get(), &fst) != 0 || !S_ISREG(fst.st_mode)) {
        ++skipped;  // replaced by something else meanwhile
        continue;
      }
      std::string data = read_fd(fd.get(), abs, kMaxLocalFile);
      std::string sha = sha256_hex(data);
      uuid = cli::ensure_uploaded_bytes(ctx.api, data, rel, sha);
      mtime = static_cast<int64_t>(fst.st_mtim.tv_sec) * 1000000000 + fst.st_mtim.tv_nsec;
      ctx.state.remember(abs, fst.st_size, mtime, {sha, uuid});
      st = fst;
      ++uploaded;
      bytes += data.size();
      ctx.progress(++step, std::nullopt, fmt::format("uploaded {}", rel));
    }
    state.files.push_back({rel, uuid, static_cast<unsigned>(st.st_mode & 07777)});
  }
  int64_t id = ctx.state.save_state(state);
  json out = {{"directory_state_id", id},    {"source", source},     {"destination", dest},
              {"files", state.files.size()}, {"uploaded", uploaded}, {"unchanged", unchanged},
              {"bytes_uploaded", bytes}};
  if (skipped) out["skipped_non_regular"] = skipped;
  out["hint"] =
      fmt::format("call run with directory_state_id={} to have these files at {}", id, dest);
  return {out, "", false};
}

}  // namespace

void add_file_tools(std::vector<Tool>& out) {
  out.push_back({"upload",
                 "Upload a file",
                 "Uploads one file (a local path under the file root, text content or base64 "
                 "content) once by its "
                 "SHA-256 and returns its uuid, for run's `files` argument. Sending the same "
                 "bytes again costs one lookup.",
                 object_schema({{"path", prop("string",
                                              "Local file under the file root (whoami shows "
                                              "it): absolute, or relative to the root.")},
                                {"content", prop("string", "Text content.")},
                                {"content_base64", prop("string", "Binary content, base64.")}},
                               {}),
                 {{"readOnlyHint", false}, {"idempotentHint", true}, {"openWorldHint", false}},
                 upload});
  out.push_back(
      {"rsync",
       "Sync a local directory for runs",
       "Uploads a local directory (e.g. a project checkout) by content and returns a "
       "directory_state_id; pass it to run to have the files at `destination`. Later "
       "calls send only files that changed, so call it again after editing locally. "
       "Symlinks and empty directories are not carried.",
       object_schema(
           {{"source", prop("string", "Absolute local directory.")},
            {"destination", prop("string", "Absolute directory in the sandbox, e.g. /src.")},
            {"exclude",
             {{"type", "array"},
              {"items", {{"type", "string"}}},
              {"description", "Glob patterns to skip (e.g. .git, node_modules, *.pyc)."}}}},
           {"source", "destination"}),
       {{"readOnlyHint", false}, {"idempotentHint", true}, {"openWorldHint", false}},
       rsync});
}

}  // namespace coppice::mcp
