#include "common/fsutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "common/beneath.h"
#include "common/error.h"
#include "common/fd.h"

namespace coppice {

void make_dirs(const fs::path& p, mode_t mode) {
  // Walk the prefixes of the path in place ("/a", "/a/b", ...), creating each missing one.
  std::string s = p.string();
  for (size_t pos = s.find('/', 1);; pos = s.find('/', pos + 1)) {
    std::string prefix = s.substr(0, pos);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST)
      throw sys_error("mkdir " + prefix);
    if (pos == std::string::npos) break;
  }
}

namespace {

// Depth-first walk of the tree below the directory `root` that never follows symlinks and
// holds one directory fd at a time, whatever the depth (trees written by sandboxed code can be
// arbitrarily deep): a level's names are read into memory, children are entered with
// openat(O_NOFOLLOW) and left through "..". `on_entry(dirfd, name, st)` sees every entry
// before its contents; `on_dir_exit(dirfd, name)` runs after a directory's contents, with the
// parent's fd. Throws Error on any failure (nothing is silently skipped).
template <typename OnEntry, typename OnDirExit>
void walk_tree(UniqueFd cur, const std::string& root, OnEntry on_entry, OnDirExit on_dir_exit) {
  struct Level {
    std::vector<std::string> names;
    size_t next = 0;
    std::string name;  // this directory's name in its parent
  };
  auto list = [&](int fd, std::string name) {
    Level lv;
    lv.name = std::move(name);
    UniqueFd dup(::dup(fd));
    DIR* d = dup ? ::fdopendir(dup.get()) : nullptr;
    if (!d) throw sys_error("opendir below " + root);
    dup.release();
    std::unique_ptr<DIR, int (*)(DIR*)> guard(d, ::closedir);
    ::rewinddir(d);
    while (dirent* e = ::readdir(d)) {
      std::string_view n = e->d_name;
      if (n != "." && n != "..") lv.names.emplace_back(n);
    }
    return lv;
  };
  std::vector<Level> stack;
  stack.push_back(list(cur.get(), ""));
  while (!stack.empty()) {
    Level& lv = stack.back();
    if (lv.next == lv.names.size()) {
      std::string name = lv.name;
      stack.pop_back();
      if (stack.empty()) break;
      UniqueFd up(::openat(cur.get(), "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!up) throw sys_error("open .. below " + root);
      cur = std::move(up);
      on_dir_exit(cur.get(), name);
      continue;
    }
    std::string name = lv.names[lv.next++];
    struct stat st;
    if (::fstatat(cur.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      throw sys_error("stat " + name + " below " + root);
    }
    on_entry(cur.get(), name, st);
    if (!S_ISDIR(st.st_mode)) continue;
    UniqueFd child(
        ::openat(cur.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!child) throw sys_error("open " + name + " below " + root);
    cur = std::move(child);
    stack.push_back(list(cur.get(), name));
  }
}

template <typename OnEntry, typename OnDirExit>
void walk_path(const fs::path& root, OnEntry on_entry, OnDirExit on_dir_exit) {
  UniqueFd cur(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!cur) throw sys_error("open " + root.string());
  walk_tree(std::move(cur), root.string(), on_entry, on_dir_exit);
}

// Removes everything below the directory open as `dir` (never following symlinks).
void empty_dir(UniqueFd dir, const std::string& label) {
  walk_tree(
      std::move(dir), label,
      [&](int dirfd, const std::string& name, const struct stat& st) {
        if (!S_ISDIR(st.st_mode) && ::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT)
          throw sys_error("unlink " + name + " below " + label);
      },
      [&](int dirfd, const std::string& name) {
        if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
          throw sys_error("rmdir " + name + " below " + label);
      });
}

}  // namespace

void remove_tree(const fs::path& p) {
  if (::unlink(p.c_str()) == 0 || errno == ENOENT) return;
  if (errno != EISDIR && errno != EPERM) throw sys_error("unlink " + p.string());
  UniqueFd dir(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) throw sys_error("open " + p.string());
  empty_dir(std::move(dir), p.string());
  if (::rmdir(p.c_str()) != 0 && errno != ENOENT) throw sys_error("rmdir " + p.string());
}

void remove_tree_at(int dirfd, const std::string& name) {
  if (::unlinkat(dirfd, name.c_str(), 0) == 0 || errno == ENOENT) return;
  if (errno != EISDIR && errno != EPERM) throw sys_error("unlink " + name);
  UniqueFd dir(::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) throw sys_error("open " + name);
  empty_dir(std::move(dir), name);
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
    throw sys_error("rmdir " + name);
}

void fsync_dir(const fs::path& p) {
  UniqueFd d(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d) throw sys_error("open " + p.string());
  if (::fsync(d.get()) != 0) throw sys_error("fsync " + p.string());
}

std::string read_file(const fs::path& p) {
  UniqueFd f(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f) throw sys_error("open " + p.string());
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(f.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("read " + p.string());
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void write_file_atomic(const fs::path& p, std::string_view data, bool durable) {
  fs::path tmp = p;
  tmp += ".tmp";
  {
    UniqueFd f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!f) throw sys_error("open " + tmp.string());
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(f.get(), data.data() + off, data.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw sys_error("write " + tmp.string());
      }
      off += static_cast<size_t>(n);
    }
    if (durable && ::fsync(f.get()) != 0) throw sys_error("fsync " + tmp.string());
  }
  if (::rename(tmp.c_str(), p.c_str()) != 0) throw sys_error("rename " + tmp.string());
  if (durable) fsync_dir(p.parent_path());
}

TreeSize tree_size(const fs::path& p) {
  TreeSize ts;
  std::set<std::pair<dev_t, ino_t>> seen;
  walk_path(
      p,
      [&](int, const std::string&, const struct stat& st) {
        ts.entries++;
        if (st.st_nlink > 1 && !S_ISDIR(st.st_mode) && !seen.insert({st.st_dev, st.st_ino}).second)
          return;
        ts.bytes += static_cast<uint64_t>(st.st_blocks) * 512;
        if (S_ISREG(st.st_mode)) ts.apparent_bytes += static_cast<uint64_t>(st.st_size);
      },
      [](int, const std::string&) {});
  return ts;
}

namespace {
void shift_one(int dirfd, const char* name, const struct stat& st, uid_t shift,
               const std::string& what) {
  if (st.st_uid >= shift && st.st_gid >= shift) return;
  if (::fchownat(dirfd, name, st.st_uid % shift + shift, st.st_gid % shift + shift,
                 AT_SYMLINK_NOFOLLOW) != 0)
    throw sys_error("chown " + what);
  // chown clears setuid/setgid bits on regular files: restore the mode afterwards.
  if (!S_ISLNK(st.st_mode) && (st.st_mode & 06000)) ::fchmodat(dirfd, name, st.st_mode & 07777, 0);
}
}  // namespace

void shift_ownership(const fs::path& p, uid_t shift) {
  struct stat st;
  if (::lstat(p.c_str(), &st) != 0) throw sys_error("stat " + p.string());
  shift_one(AT_FDCWD, p.c_str(), st, shift, p.string());
  walk_path(
      p,
      [&](int dirfd, const std::string& name, const struct stat& est) {
        shift_one(dirfd, name.c_str(), est, shift, name + " below " + p.string());
      },
      [](int, const std::string&) {});
}

TempDir::~TempDir() {
  try {
    remove_tree(path_);
  } catch (const std::exception& e) {
    spdlog::warn("could not remove scratch directory {}: {}", path_.string(), e.what());
  }
}

}  // namespace coppice
