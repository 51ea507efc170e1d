// Flattening: materializes a LayerView as one self-contained layer (a hard-link farm).
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "common/beneath.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "store/layer_view.h"

namespace coppice::store {

namespace {

bool is_overlay_xattr(std::string_view name) {
  return name.starts_with("user.overlay.") || name.starts_with("trusted.overlay.");
}

// Copies every xattr but overlayfs' bookkeeping from the layer file `src` (not followed) onto
// the open file `dst`.
void copy_xattrs(const std::string& src, int dst, const std::string& what) {
  std::vector<char> names(4096);
  ssize_t n;
  while (true) {
    n = ::llistxattr(src.c_str(), names.data(), names.size());
    if (n >= 0) break;
    if (errno == ERANGE) {
      names.resize(names.size() * 4);
      continue;
    }
    if (errno == ENOTSUP) return;
    throw sys_error(fmt::format("llistxattr {}", src));
  }
  std::vector<char> value(4096);
  for (size_t off = 0; off < static_cast<size_t>(n);) {
    std::string name(names.data() + off);
    off += name.size() + 1;
    if (name.empty() || is_overlay_xattr(name)) continue;
    ssize_t v;
    while (true) {
      v = ::lgetxattr(src.c_str(), name.c_str(), value.data(), value.size());
      if (v >= 0 || errno != ERANGE) break;
      value.resize(value.size() * 4);
    }
    if (v < 0) {
      if (errno == ENODATA) continue;
      throw sys_error(fmt::format("lgetxattr {} {}", src, name));
    }
    if (::fsetxattr(dst, name.c_str(), value.data(), static_cast<size_t>(v), 0) != 0)
      throw sys_error(fmt::format("setxattr {} {}", what, name));
  }
}

// Ownership as stored in the layer (host ids, still shifted).
struct stat host_stat(const Entry& e) {
  struct stat st;
  if (::lstat(e.host_path.c_str(), &st) != 0)
    throw sys_error(fmt::format("lstat {}", e.host_path.string()));
  return st;
}

// The flat copy being written: every write is relative to a directory fd resolved beneath its
// root by the kernel (common/beneath.h), never through a path string.
class FlatDest {
 public:
  explicit FlatDest(const std::string& root) : root_(open_dir_path(root)) {}

  struct Target {
    UniqueFd dir;
    std::string name;
    std::string what;  // for messages
  };
  Target target(const std::string& image_path) {
    size_t slash = image_path.rfind('/');
    std::string parent = image_path.substr(1, slash == 0 ? 0 : slash - 1);
    if (parent != cached_rel_ || !cached_) {
      cached_ = open_beneath(root_.get(), parent, O_PATH | O_DIRECTORY);
      cached_rel_ = parent;
    }
    return {UniqueFd(::dup(cached_.get())), image_path.substr(slash + 1), image_path};
  }
  int root() const { return root_.get(); }

 private:
  UniqueFd root_, cached_;
  std::string cached_rel_;
};

void set_owner_mode(const FlatDest::Target& t, const struct stat& st, bool set_mode) {
  if (::fchownat(t.dir.get(), t.name.c_str(), st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) != 0)
    throw sys_error(fmt::format("lchown {}", t.what));
  // chmod after chown: chown clears set-id bits.
  if (set_mode && ::fchmodat(t.dir.get(), t.name.c_str(), st.st_mode & 07777, 0) != 0)
    throw sys_error(fmt::format("chmod {}", t.what));
}

void set_times(int dir, const char* name, const struct stat& st, const std::string& what) {
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  if (::utimensat(dir, name, ts, AT_SYMLINK_NOFOLLOW) != 0)
    throw sys_error(fmt::format("utimensat {}", what));
}

void copy_xattrs_to(const Entry& e, const FlatDest::Target& t, int flags) {
  UniqueFd fd(::openat(t.dir.get(), t.name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) throw sys_error(fmt::format("open {}", t.what));
  copy_xattrs(e.host_path.string(), fd.get(), t.what);
}

// A full copy, for when hard-linking fails (the inode's link count is at its maximum).
void copy_regular(const Entry& e, const FlatDest::Target& t) {
  UniqueFd in(::open(e.host_path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!in) throw sys_error(fmt::format("open {}", e.host_path.string()));
  UniqueFd out(::openat(t.dir.get(), t.name.c_str(),
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!out) throw sys_error(fmt::format("create {}", t.what));
  struct stat st;
  if (::fstat(in.get(), &st) != 0) throw sys_error("fstat");
  for (off_t left = st.st_size; left > 0;) {
    ssize_t n =
        ::copy_file_range(in.get(), nullptr, out.get(), nullptr, static_cast<size_t>(left), 0);
    if (n < 0) throw sys_error(fmt::format("copy {}", t.what));
    if (n == 0) break;
    left -= n;
  }
  set_owner_mode(t, st, true);
  copy_xattrs(e.host_path.string(), out.get(), t.what);
  set_times(t.dir.get(), t.name.c_str(), st, t.what);
}

}  // namespace

void flatten(const LayerView& view, const fs::path& dest) {
  struct stat dst_st;
  if (::lstat(dest.c_str(), &dst_st) == 0)
    throw conflict(fmt::format("{} already exists", dest.string()));
  const std::string tmp = dest.string() + ".tmp";
  remove_tree(tmp);  // a leftover from an interrupted flatten
  struct DirTimes {
    std::string path;  // image path
    struct stat st;
  };
  std::vector<DirTimes> dirs;
  try {
    if (::mkdir(tmp.c_str(), 0700) != 0) throw sys_error(fmt::format("mkdir {}", tmp));
    FlatDest out(tmp);
    view.walk("/", [&](const Entry& e) {
      const mode_t type = e.st.st_mode & S_IFMT;
      if (e.path == "/") {
        struct stat st = host_stat(e);
        UniqueFd root(::openat(out.root(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!root || ::fchown(root.get(), st.st_uid, st.st_gid) != 0 ||
            ::fchmod(root.get(), st.st_mode & 07777) != 0)
          throw sys_error(fmt::format("chown {}", tmp));
        copy_xattrs(e.host_path.string(), root.get(), "/");
        dirs.push_back({"/", st});
        return LayerView::Walk::kContinue;
      }
      FlatDest::Target t = out.target(e.path);
      const char* n = t.name.c_str();
      if (type == S_IFREG) {
        if (::linkat(AT_FDCWD, e.host_path.c_str(), t.dir.get(), n, 0) != 0) {
          if (errno != EMLINK && errno != EXDEV && errno != EPERM)
            throw sys_error(fmt::format("link {} {}", e.host_path.string(), e.path));
          copy_regular(e, t);
        }
        return LayerView::Walk::kContinue;
      }
      struct stat st = host_stat(e);
      if ((st.st_mode & S_IFMT) != type)
        throw internal(fmt::format("{} changed during flatten", e.host_path.string()));
      switch (type) {
        case S_IFDIR:
          if (::mkdirat(t.dir.get(), n, 0700) != 0)
            throw sys_error(fmt::format("mkdir {}", e.path));
          set_owner_mode(t, st, true);
          copy_xattrs_to(e, t, O_RDONLY | O_DIRECTORY);
          dirs.push_back({e.path, st});
          break;
        case S_IFLNK:  // symlinks cannot carry user.* xattrs
          if (::symlinkat(e.symlink_target.c_str(), t.dir.get(), n) != 0)
            throw sys_error(fmt::format("symlink {}", e.path));
          set_owner_mode(t, st, false);
          set_times(t.dir.get(), n, st, e.path);
          break;
        case S_IFIFO:
          if (::mknodat(t.dir.get(), n, S_IFIFO | 0600, 0) != 0)
            throw sys_error(fmt::format("mkfifo {}", e.path));
          set_owner_mode(t, st, true);
          copy_xattrs_to(e, t, O_RDONLY | O_NONBLOCK);
          set_times(t.dir.get(), n, st, e.path);
          break;
        default:  // sockets and devices: a layer holds no device but whiteouts (never seen here)
          spdlog::warn("flatten: not copying {} (type {:o})", e.path, type);
          break;
      }
      return LayerView::Walk::kContinue;
    });
    // Directory times last: creating entries inside a directory changes its mtime.
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
      if (it->path == "/") {
        set_times(out.root(), ".", it->st, "/");
        continue;
      }
      FlatDest::Target t = out.target(it->path);
      set_times(t.dir.get(), t.name.c_str(), it->st, it->path);
    }
    if (::rename(tmp.c_str(), dest.c_str()) != 0)
      throw sys_error(fmt::format("rename {} {}", tmp, dest.string()));
  } catch (...) {
    try {
      remove_tree(tmp);
    } catch (...) {
    }
    throw;
  }
  fsync_dir(dest.parent_path().empty() ? fs::path(".") : dest.parent_path());
}

}  // namespace coppice::store
