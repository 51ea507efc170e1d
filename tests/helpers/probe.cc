// coppice-test-probe: a static helper that integration tests inject into sandboxes (images
// have no compiler) to do what a shell cannot.
//
//   coppice-test-probe syscall NR [ARG...]
//       Makes syscall NR with the given integer arguments and prints "ok <result>" or
//       "errno <NAME>" (ENOSYS, EPERM, ...): what the sandbox's seccomp policy answers.
//   coppice-test-probe hijack-port restart|quiet
//       Inside a microVM guest, as root: what hostile guest root can do to the host's
//       protocol. Takes a copy of the agent's virtio-serial port descriptor (pidfd_getfd on
//       pid 1), stops the agent (ptrace), so that it no longer enforces the timeout, then
//       every 500 ms writes a frame to the port: a kStarted (restart: would have moved the host's
//       deadline) or a kStdout "tick" (quiet: only the host's deadline ends the run). Gives up
//       after 300 s.
#include <fcntl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "guest/protocol.h"

namespace {

int syscall_probe(int argc, char** argv) {
  long nr = std::strtol(argv[2], nullptr, 0);
  long a[6] = {0, 0, 0, 0, 0, 0};
  for (int i = 3; i < argc && i < 9; ++i) a[i - 3] = std::strtol(argv[i], nullptr, 0);
  errno = 0;
  long rc = ::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
  if (rc == -1) {
    const char* name = strerrorname_np(errno);
    std::printf("errno %s\n", name ? name : std::to_string(errno).c_str());
  } else {
    std::printf("ok %ld\n", rc);
  }
  return 0;
}

// The major number of virtio-serial ports, from /proc/devices.
int ports_major() {
  std::ifstream f("/proc/devices");
  std::string line;
  while (std::getline(f, line)) {
    int major = 0;
    char name[64] = {0};
    if (std::sscanf(line.c_str(), "%d %63s", &major, name) == 2 &&
        std::strcmp(name, "virtio-portsdev") == 0)
      return major;
  }
  return -1;
}

int hijack_port(const char* mode) {
  bool restart = std::strcmp(mode, "restart") == 0;
  int major = ports_major();
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, 1, 0));
  if (major < 0 || pidfd < 0) {
    std::fprintf(stderr, "probe: no virtio ports (%d) or pidfd_open: %s\n", major,
                 std::strerror(errno));
    return 2;
  }
  int port = -1;
  for (int fd = 0; fd < 256 && port < 0; ++fd) {
    int got = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, fd, 0));
    if (got < 0) continue;
    struct stat st {};
    if (::fstat(got, &st) == 0 && S_ISCHR(st.st_mode) &&
        static_cast<int>(major(st.st_rdev)) == major)
      port = got;
    else
      ::close(got);
  }
  if (port < 0) {
    std::fprintf(stderr, "probe: the agent holds no port\n");
    return 3;
  }
  if (::ptrace(PTRACE_SEIZE, 1, 0, 0) != 0 || ::ptrace(PTRACE_INTERRUPT, 1, 0, 0) != 0) {
    std::fprintf(stderr, "probe: ptrace the agent: %s\n", std::strerror(errno));
    return 4;
  }
  int st = 0;
  ::waitpid(1, &st, __WALL);
  for (int i = 0; i < 600; ++i) {
    bool ok = restart ? coppice::guest::write_frame(port, coppice::guest::kStarted,
                                                    "{\"pid\": 1, \"boot_ms\": 1}")
                      : coppice::guest::write_frame(port, coppice::guest::kStdout, "tick\n");
    if (!ok) return 5;
    ::usleep(500000);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "syscall") == 0) return syscall_probe(argc, argv);
  if (argc == 3 && std::strcmp(argv[1], "hijack-port") == 0) return hijack_port(argv[2]);
  std::fprintf(stderr,
               "usage: coppice-test-probe syscall NR [ARG...] | hijack-port restart|quiet\n");
  return 2;
}
