// Flattening: materializes a LayerView as one self-contained layer (a hard-link farm).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fsutil.h"
#include "store/layer_view.h"

namespace coppice::store {

namespace {

bool is_overlay_xattr(std::string_view name) {
  return name.starts_with("user.overlay.") || name.starts_with("trusted.overlay.");
}

// Copies every xattr but overlayfs' bookkeeping from `src` to `dst` (neither followed).
// Errors are fatal except for symlinks, which cannot carry user.* xattrs.
void copy_xattrs(const std::string& src, const std::string& dst, bool tolerant) {
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
    if (::lsetxattr(dst.c_str(), name.c_str(), value.data(), static_cast<size_t>(v), 0) != 0) {
      if (tolerant) continue;
      throw sys_error(fmt::format("lsetxattr {} {}", dst, name));
    }
  }
}

// Ownership as stored in the layer (host ids, still shifted).
struct stat host_stat(const Entry& e) {
  struct stat st;
  if (::lstat(e.host_path.c_str(), &st) != 0)
    throw sys_error(fmt::format("lstat {}", e.host_path.string()));
  return st;
}

void set_owner_mode(const std::string& dst, const struct stat& st, bool set_mode) {
  if (::lchown(dst.c_str(), st.st_uid, st.st_gid) != 0)
    throw sys_error(fmt::format("lchown {}", dst));
  // chmod after chown: chown clears set-id bits.
  if (set_mode && ::chmod(dst.c_str(), st.st_mode & 07777) != 0)
    throw sys_error(fmt::format("chmod {}", dst));
}

void set_times(const std::string& dst, const struct stat& st) {
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  if (::utimensat(AT_FDCWD, dst.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0)
    throw sys_error(fmt::format("utimensat {}", dst));
}

// A full copy, for when hard-linking fails (the inode's link count is at its maximum).
void copy_regular(const Entry& e, const std::string& dst) {
  UniqueFd in(::open(e.host_path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!in) throw sys_error(fmt::format("open {}", e.host_path.string()));
  UniqueFd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!out) throw sys_error(fmt::format("create {}", dst));
  struct stat st;
  if (::fstat(in.get(), &st) != 0) throw sys_error("fstat");
  for (off_t left = st.st_size; left > 0;) {
    ssize_t n =
        ::copy_file_range(in.get(), nullptr, out.get(), nullptr, static_cast<size_t>(left), 0);
    if (n < 0) throw sys_error(fmt::format("copy {}", dst));
    if (n == 0) break;
    left -= n;
  }
  set_owner_mode(dst, st, true);
  copy_xattrs(e.host_path.string(), dst, false);
  set_times(dst, st);
}

}  // namespace

void flatten(const LayerView& view, const fs::path& dest) {
  struct stat dst_st;
  if (::lstat(dest.c_str(), &dst_st) == 0)
    throw conflict(fmt::format("{} already exists", dest.string()));
  const std::string tmp = dest.string() + ".tmp";
  remove_tree(tmp);  // a leftover from an interrupted flatten
  struct DirTimes {
    std::string path;
    struct stat st;
  };
  std::vector<DirTimes> dirs;
  try {
    view.walk("/", [&](const Entry& e) {
      const std::string dst = e.path == "/" ? tmp : tmp + e.path;
      const mode_t type = e.st.st_mode & S_IFMT;
      if (type == S_IFREG) {
        if (::link(e.host_path.c_str(), dst.c_str()) != 0) {
          if (errno != EMLINK && errno != EXDEV && errno != EPERM)
            throw sys_error(fmt::format("link {} {}", e.host_path.string(), dst));
          copy_regular(e, dst);
        }
        return LayerView::Walk::kContinue;
      }
      struct stat st = host_stat(e);
      if ((st.st_mode & S_IFMT) != type)
        throw internal(fmt::format("{} changed during flatten", e.host_path.string()));
      switch (type) {
        case S_IFDIR:
          if (::mkdir(dst.c_str(), 0700) != 0) throw sys_error(fmt::format("mkdir {}", dst));
          set_owner_mode(dst, st, true);
          copy_xattrs(e.host_path.string(), dst, false);
          dirs.push_back({dst, st});
          break;
        case S_IFLNK:
          if (::symlink(e.symlink_target.c_str(), dst.c_str()) != 0)
            throw sys_error(fmt::format("symlink {}", dst));
          set_owner_mode(dst, st, false);
          copy_xattrs(e.host_path.string(), dst, true);
          set_times(dst, st);
          break;
        default:  // fifos, sockets, devices (whiteouts never reach here)
          if (::mknod(dst.c_str(), st.st_mode, st.st_rdev) != 0)
            throw sys_error(fmt::format("mknod {}", dst));
          set_owner_mode(dst, st, true);
          copy_xattrs(e.host_path.string(), dst, false);
          set_times(dst, st);
          break;
      }
      return LayerView::Walk::kContinue;
    });
    // Directory times last: creating entries inside a directory changes its mtime.
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) set_times(it->path, it->st);
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
