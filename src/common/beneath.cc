#include "common/beneath.h"

#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common/error.h"

namespace coppice {

int openat2_fd(int dirfd, const char* path, int flags, mode_t mode, uint64_t resolve) noexcept {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = resolve;
  for (;;) {
    long fd = ::syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != EAGAIN && errno != EINTR) return -1;  // EAGAIN: a rename raced the walk
  }
}

UniqueFd try_open_beneath(int dirfd, std::string_view rel, int flags, mode_t mode) {
  std::string p = rel.empty() ? std::string(".") : std::string(rel);
  return UniqueFd(openat2_fd(dirfd, p.c_str(), flags, mode, kResolveBeneath));
}

UniqueFd open_beneath(int dirfd, std::string_view rel, int flags, mode_t mode) {
  UniqueFd fd = try_open_beneath(dirfd, rel, flags, mode);
  if (!fd) throw sys_error("open " + std::string(rel.empty() ? "." : rel) + " beneath its root");
  return fd;
}

UniqueFd make_dirs_beneath(int dirfd, std::string_view rel, mode_t mode) {
  UniqueFd cur(::dup(dirfd));
  if (!cur) throw sys_error("dup");
  size_t pos = 0;
  while (pos < rel.size()) {
    size_t next = rel.find('/', pos);
    if (next == std::string_view::npos) next = rel.size();
    std::string name(rel.substr(pos, next - pos));
    pos = next + 1;
    if (name.empty() || name == ".") continue;
    UniqueFd child = try_open_beneath(cur.get(), name, O_PATH | O_DIRECTORY);
    if (!child && errno == ENOENT) {
      if (::mkdirat(cur.get(), name.c_str(), mode) != 0 && errno != EEXIST)
        throw sys_error("mkdir " + std::string(rel.substr(0, next)));
      child = try_open_beneath(cur.get(), name, O_PATH | O_DIRECTORY);
    }
    if (!child) throw sys_error("open " + std::string(rel.substr(0, next)) + " beneath its root");
    cur = std::move(child);
  }
  return cur;
}

UniqueFd open_dir_path(const std::filesystem::path& p) {
  UniqueFd fd(::open(p.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) throw sys_error("open " + p.string());
  return fd;
}

}  // namespace coppice
