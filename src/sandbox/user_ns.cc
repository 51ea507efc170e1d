#include "sandbox/user_ns.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>

#include "common/error.h"
#include "common/fd.h"

namespace coppice::sandbox {

namespace {
void write_proc(pid_t pid, const char* file, const std::string& data) {
  std::string path = fmt::format("/proc/{}/{}", pid, file);
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) throw sys_error("open " + path);
  if (::write(fd.get(), data.data(), data.size()) != static_cast<ssize_t>(data.size()))
    throw sys_error("write " + path);
}
}  // namespace

void write_id_maps(pid_t pid, uid_t base, uid_t range) {
  std::string map = fmt::format("0 {} {}\n", base, range);
  write_proc(pid, "uid_map", map);
  write_proc(pid, "gid_map", map);
}

// glibc's set*id()/setgroups() wrappers broadcast the change to every thread the library
// believes exists (taking locks and signalling tids of the parent process), which is wrong
// and can hang in a child made with a raw clone(): use the plain syscalls.
int become_namespace_root() noexcept {
  return switch_identity(0, 0);
}

int switch_identity(uid_t uid, gid_t gid) noexcept {
  if (::syscall(SYS_setgroups, 0, nullptr) != 0) return -1;
  if (::syscall(SYS_setresgid, gid, gid, gid) != 0) return -1;
  if (::syscall(SYS_setresuid, uid, uid, uid) != 0) return -1;
  return 0;
}

}  // namespace coppice::sandbox
