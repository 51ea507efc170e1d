#include "common/fsutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>
#include <utility>

#include "common/error.h"
#include "common/fd.h"

namespace coppice {

void make_dirs(const fs::path& p, mode_t mode) {
  // Walk the prefixes of the path in place ("/a", "/a/b", ...), creating each missing one.
  std::string s = p.string();
  for (size_t pos = s.find('/', 1); ; pos = s.find('/', pos + 1)) {
    std::string prefix = s.substr(0, pos);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST)
      throw sys_error("mkdir " + prefix);
    if (pos == std::string::npos) break;
  }
}

namespace {
void remove_children(int dirfd, const std::string& where) {
  UniqueFd dup(::dup(dirfd));
  DIR* d = ::fdopendir(dup.get());
  if (!d) throw sys_error("fdopendir " + where);
  dup.release();
  std::unique_ptr<DIR, int (*)(DIR*)> guard(d, ::closedir);
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n == "." || n == "..") continue;
    if (::unlinkat(dirfd, e->d_name, 0) == 0) continue;
    if (errno != EISDIR && errno != EPERM) throw sys_error("unlink " + where + "/" + e->d_name);
    UniqueFd child(::openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!child) throw sys_error("open " + where + "/" + e->d_name);
    remove_children(child.get(), where + "/" + e->d_name);
    if (::unlinkat(dirfd, e->d_name, AT_REMOVEDIR) != 0)
      throw sys_error("rmdir " + where + "/" + e->d_name);
  }
}
}  // namespace

void remove_tree(const fs::path& p) {
  if (::unlink(p.c_str()) == 0 || errno == ENOENT) return;
  UniqueFd d(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!d) {
    if (errno == ENOENT) return;
    throw sys_error("open " + p.string());
  }
  remove_children(d.get(), p.string());
  if (::rmdir(p.c_str()) != 0 && errno != ENOENT) throw sys_error("rmdir " + p.string());
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

namespace {
void walk_size(int dirfd, TreeSize& ts, std::set<std::pair<dev_t, ino_t>>& seen) {
  UniqueFd dup(::dup(dirfd));
  DIR* d = ::fdopendir(dup.get());
  if (!d) throw sys_error("fdopendir");
  dup.release();
  std::unique_ptr<DIR, int (*)(DIR*)> guard(d, ::closedir);
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n == "." || n == "..") continue;
    struct stat st;
    if (::fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    ts.entries++;
    if (st.st_nlink > 1 && !S_ISDIR(st.st_mode) && !seen.insert({st.st_dev, st.st_ino}).second)
      continue;
    ts.bytes += static_cast<uint64_t>(st.st_blocks) * 512;
    if (S_ISDIR(st.st_mode)) {
      UniqueFd c(::openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (c) walk_size(c.get(), ts, seen);
    }
  }
}

void walk_shift(int dirfd, const std::string& where, uid_t shift) {
  UniqueFd dup(::dup(dirfd));
  DIR* d = ::fdopendir(dup.get());
  if (!d) throw sys_error("fdopendir " + where);
  dup.release();
  std::unique_ptr<DIR, int (*)(DIR*)> guard(d, ::closedir);
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n == "." || n == "..") continue;
    struct stat st;
    if (::fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
      throw sys_error("stat " + where + "/" + e->d_name);
    if (st.st_uid < shift || st.st_gid < shift) {
      // chown clears setuid/setgid bits on regular files: restore the mode afterwards.
      if (::fchownat(dirfd, e->d_name, st.st_uid % shift + shift, st.st_gid % shift + shift,
                     AT_SYMLINK_NOFOLLOW) != 0)
        throw sys_error("chown " + where + "/" + e->d_name);
      if (!S_ISLNK(st.st_mode) && (st.st_mode & 06000))
        ::fchmodat(dirfd, e->d_name, st.st_mode & 07777, 0);
    }
    if (S_ISDIR(st.st_mode)) {
      UniqueFd c(::openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!c) throw sys_error("open " + where + "/" + e->d_name);
      walk_shift(c.get(), where + "/" + e->d_name, shift);
    }
  }
}
}  // namespace

TreeSize tree_size(const fs::path& p) {
  TreeSize ts;
  UniqueFd d(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!d) throw sys_error("open " + p.string());
  std::set<std::pair<dev_t, ino_t>> seen;
  walk_size(d.get(), ts, seen);
  return ts;
}

void shift_ownership(const fs::path& p, uid_t shift) {
  struct stat st;
  if (::lstat(p.c_str(), &st) != 0) throw sys_error("stat " + p.string());
  if (st.st_uid < shift || st.st_gid < shift)
    if (::lchown(p.c_str(), st.st_uid % shift + shift, st.st_gid % shift + shift) != 0)
      throw sys_error("chown " + p.string());
  UniqueFd d(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!d) throw sys_error("open " + p.string());
  walk_shift(d.get(), p.string(), shift);
}

}  // namespace coppice
