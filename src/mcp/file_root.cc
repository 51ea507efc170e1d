#include "mcp/file_root.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "common/error.h"
#include "common/ids.h"

namespace coppice::mcp {

namespace fs = std::filesystem;

int open_beneath(int dirfd, const std::string& rel, int flags, mode_t mode) {
  struct open_how how {};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  for (int attempt = 0;; ++attempt) {
    long fd = ::syscall(SYS_openat2, dirfd, rel.c_str(), &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != EAGAIN || attempt >= 16) return -1;  // EAGAIN: a rename raced the lookup
  }
}

std::string read_fd(int fd, const std::string& what, size_t max) {
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("cannot read " + what);
    }
    if (n == 0) return out;
    if (out.size() + static_cast<size_t>(n) > max)
      throw Error(413, fmt::format("{} is larger than {} bytes", what, max));
    out.append(buf, static_cast<size_t>(n));
  }
}

FileRoot::FileRoot(const fs::path& dir) {
  std::error_code ec;
  fs::path abs = fs::absolute(dir, ec);
  if (ec) throw bad_request(fmt::format("--file-root {}: {}", dir.string(), ec.message()));
  given_ = abs.lexically_normal().string();
  if (given_.size() > 1 && given_.back() == '/') given_.pop_back();
  fs::path canon = fs::canonical(abs, ec);
  if (ec) throw bad_request(fmt::format("--file-root {}: {}", dir.string(), ec.message()));
  path_ = canon.string();
  fd_.reset(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd_.valid())
    throw bad_request(fmt::format("--file-root {}: {}", path_, std::strerror(errno)));
}

std::string FileRoot::relative(const std::string& p) const {
  if (p.empty()) throw bad_request("the path is empty");
  if (p.find('\0') != std::string::npos) throw bad_request("the path contains a NUL byte");
  if (p[0] != '/') return p;
  for (const std::string& root : {path_, given_}) {
    if (root == "/") {
      size_t i = p.find_first_not_of('/');
      return i == std::string::npos ? "." : p.substr(i);
    }
    if (p.compare(0, root.size(), root) != 0) continue;
    if (p.size() == root.size()) return ".";
    if (p[root.size()] != '/') continue;  // /root-other is not under /root
    size_t i = p.find_first_not_of('/', root.size());
    return i == std::string::npos ? "." : p.substr(i);
  }
  throw Error(403, fmt::format("{} is outside the file root {} (coppice mcp --file-root): give a "
                               "path under it",
                               p, path_));
}

std::string FileRoot::absolute(const std::string& rel) const {
  if (rel == "." || rel.empty()) return path_;
  return path_ == "/" ? "/" + rel : path_ + "/" + rel;
}

void FileRoot::fail(int err, const std::string& rel, const std::string& what) const {
  std::string shown = absolute(rel);
  switch (err) {
    case ELOOP:
      throw Error(403, fmt::format("{}: {} is a symlink or passes through one, and symlinks are "
                                   "not followed under the file root {}",
                                   what, shown, path_));
    case EXDEV:
      throw Error(403, fmt::format("{}: {} leads outside the file root {}", what, shown, path_));
    case ENOENT:
      throw not_found(fmt::format("{}: {} does not exist", what, shown));
    case ENOTDIR:
      throw not_found(fmt::format("{}: a component of {} is not a directory", what, shown));
    case EACCES:
    case EPERM:
      throw Error(403, fmt::format("{}: {}: permission denied", what, shown));
    case EISDIR:
      throw conflict(fmt::format("{}: {} is a directory", what, shown));
    default:
      throw sys_error(fmt::format("{}: {}", what, shown), err);
  }
}

UniqueFd FileRoot::open_file(const std::string& client_path) const {
  std::string rel = relative(client_path);
  UniqueFd fd(open_beneath(fd_.get(), rel, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY));
  if (!fd.valid()) fail(errno, rel, "cannot read");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(errno, rel, "cannot read");
  if (!S_ISREG(st.st_mode)) throw not_found(fmt::format("{} is not a regular file", absolute(rel)));
  int fl = ::fcntl(fd.get(), F_GETFL);
  if (fl >= 0) ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK);
  return fd;
}

UniqueFd FileRoot::open_dir(const std::string& client_path) const {
  std::string rel = relative(client_path);
  UniqueFd fd(open_beneath(fd_.get(), rel, O_RDONLY | O_DIRECTORY));
  if (!fd.valid()) {
    if (errno == ENOTDIR) throw not_found(fmt::format("{} is not a directory", absolute(rel)));
    fail(errno, rel, "cannot open directory");
  }
  return fd;
}

UniqueFd FileRoot::open_parent_dirs(const std::string& rel_dir) const {
  UniqueFd cur(open_beneath(fd_.get(), rel_dir, O_RDONLY | O_DIRECTORY));
  if (cur.valid() || errno != ENOENT) {
    if (!cur.valid()) fail(errno, rel_dir, "cannot open directory");
    return cur;
  }
  // Some directories are missing: walk down from the root one name at a time, creating them
  // (after checking every name, so that a refused path creates nothing).
  for (size_t i = 0; i <= rel_dir.size();) {
    size_t j = std::min(rel_dir.find('/', i), rel_dir.size());
    if (rel_dir.compare(i, j - i, "..") == 0)
      throw bad_request("the destination must not contain '..'");
    i = j + 1;
  }
  cur.reset(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!cur.valid()) throw sys_error("dup");
  std::string done;
  size_t i = 0;
  while (i < rel_dir.size()) {
    size_t j = rel_dir.find('/', i);
    if (j == std::string::npos) j = rel_dir.size();
    std::string name = rel_dir.substr(i, j - i);
    i = j + 1;
    if (name.empty() || name == ".") continue;
    done += (done.empty() ? "" : "/") + name;
    if (::mkdirat(cur.get(), name.c_str(), 0755) != 0 && errno != EEXIST)
      fail(errno, done, "cannot create directory");
    UniqueFd next(open_beneath(cur.get(), name, O_RDONLY | O_DIRECTORY));
    if (!next.valid()) fail(errno, done, "cannot open directory");
    cur = std::move(next);
  }
  return cur;
}

std::string FileRoot::write_file(const std::string& client_path, std::string_view data, mode_t mode,
                                 const std::string& name_in_dir) const {
  std::string rel = relative(client_path);
  bool trailing_slash = rel.back() == '/';
  while (rel.size() > 1 && rel.back() == '/') rel.pop_back();
  std::string dir_rel, name;
  if (rel == "." || trailing_slash) {
    dir_rel = rel;
  } else {
    size_t slash = rel.rfind('/');
    dir_rel = slash == std::string::npos ? "." : rel.substr(0, slash);
    name = slash == std::string::npos ? rel : rel.substr(slash + 1);
    if (name == "." || name == "..")
      throw bad_request(fmt::format("{} does not name a file", client_path));
  }
  UniqueFd dir = open_parent_dirs(dir_rel);
  std::string shown_dir = dir_rel;
  auto check_target = [&](const std::string& n, const std::string& shown) {
    struct stat st {};
    if (::fstatat(dir.get(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return 0;  // a new file
      fail(errno, shown, "cannot write");
    }
    if (S_ISLNK(st.st_mode))
      throw Error(403, fmt::format("{} is a symlink: files are not written through symlinks "
                                   "under the file root {}",
                                   absolute(shown), path_));
    if (S_ISREG(st.st_mode)) return 1;  // replaced
    if (S_ISDIR(st.st_mode)) return 2;
    throw conflict(fmt::format("{} exists and is not a regular file", absolute(shown)));
  };
  if (name.empty()) {
    name = name_in_dir;
  } else if (check_target(name, rel) == 2) {  // an existing directory: write into it
    UniqueFd sub(open_beneath(dir.get(), name, O_RDONLY | O_DIRECTORY));
    if (!sub.valid()) fail(errno, rel, "cannot open directory");
    dir = std::move(sub);
    shown_dir = rel;
    name = name_in_dir;
  }
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
    throw bad_request(fmt::format("cannot name a file '{}' in {}", name, absolute(shown_dir)));
  std::string target_rel = shown_dir == "." ? name : shown_dir + "/" + name;
  if (check_target(name, target_rel) == 2)
    throw conflict(fmt::format("{} is a directory", absolute(target_rel)));

  std::string tmp = ".coppice-part-" + random_hex(8);
  UniqueFd out(
      ::openat(dir.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!out.valid()) fail(errno, shown_dir, "cannot create a file in");
  auto drop_tmp = [&] { ::unlinkat(dir.get(), tmp.c_str(), 0); };
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(out.get(), data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      drop_tmp();
      throw sys_error("cannot write " + absolute(target_rel), err);
    }
    off += static_cast<size_t>(n);
  }
  out.reset();
  // renameat never follows a symlink at the target name: if one appeared since the check, it
  // is replaced, never written through.
  if (::renameat(dir.get(), tmp.c_str(), dir.get(), name.c_str()) != 0) {
    int err = errno;
    drop_tmp();
    fail(err, target_rel, "cannot replace");
  }
  return absolute(target_rel);
}

}  // namespace coppice::mcp
