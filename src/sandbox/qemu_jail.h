// QEMU's jail: how the microVM runtime starts QEMU. QEMU is the host process that parses what
// the guest controls (virtio rings, device registers, the serial port), so a QEMU bug is a
// hostile guest's way out of its VM; the jail bounds what such a bug reaches:
//  - a mount namespace whose root is an empty, read-only tmpfs holding only what QEMU opens by
//    path: /usr read-only (the binary, its libraries, firmware), the merged-/usr links,
//    /dev/null, zero, random and urandom (and /dev/kvm with KVM), and the files the caller names
//    (kernel, initramfs) as read-only binds. No store, no run directory, no /proc, no /tmp;
//  - its own network namespace (a loopback, down; QEMU runs with `-nic none`), pid namespace
//    (QEMU is its pid 1 and sees no other process, so it cannot signal or ptrace another
//    run's QEMU running as the same uid), and IPC, UTS and cgroup namespaces;
//  - a dedicated uid/gid that owns nothing on the host (outside the sandbox range), no
//    supplementary group except kvm when KVM is used, no_new_privs, no core dumps (they would
//    hold guest memory);
//  - the files of the run (disks, control and console sockets) as descriptors the server
//    opened, never paths, so they stay root's 0600 files;
//  - QEMU's own seccomp filter, which it installs itself from its arguments (qemu_sandbox_args).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace coppice::sandbox {

namespace fs = std::filesystem;

// QEMU's seccomp sandbox: its deny-list of obsolete syscalls, no set*id, no fork/exec, no
// scheduler or affinity changes. Supported by Debian's qemu 7.2 (built with libseccomp).
std::vector<std::string> qemu_sandbox_args();

struct QemuJailConfig {
  std::string qemu;  // absolute path of QEMU, under /usr (it is run by that path)
  uid_t uid = 0;     // QEMU's uid and gid: must not be 0
  gid_t gid = 0;
  gid_t kvm_gid = 0;     // added as the only supplementary group when kvm is set
  bool kvm = false;      // bind /dev/kvm into the jail
  fs::path mount_point;  // an empty directory of the run: the jail's root is mounted on it, in
                         // QEMU's mount namespace only
  std::vector<std::pair<fs::path, std::string>> files;  // host file -> absolute path in the jail
};

// A launch prepared in the parent: every string the child needs is built before the clone,
// since the child of a multi-threaded server may not allocate.
class QemuLaunch {
 public:
  // `args`: QEMU's arguments after the binary. `fds`: descriptors of the server that QEMU
  // gets as 3, 4, ... in that order (for -add-fd and chardev fd=). Throws coppice::Error when
  // the configuration is unusable (uid 0, QEMU outside /usr, a missing file).
  QemuLaunch(const QemuJailConfig& cfg, const std::vector<std::string>& args, std::vector<int> fds);
  QemuLaunch(const QemuLaunch&) = delete;
  QemuLaunch& operator=(const QemuLaunch&) = delete;

  // Starts QEMU in its jail: clone3 into new mount, network, pid, IPC, UTS and cgroup
  // namespaces (and into cgroup2_fd when >= 0), writes "0" to each v1 `tasks` file descriptor,
  // puts /dev/null on stdin/stdout and err_fd on stderr, where a setup failure is reported as
  // one line before the child exits 125. Returns QEMU's pid; *pidfd receives its pidfd.
  pid_t start(int cgroup2_fd, const std::vector<int>& task_fds, int err_fd, int* pidfd) const;

 private:
  struct Op {
    enum Kind { kDir, kFile, kSymlink, kBind, kBindDevice } kind;
    std::string path;    // inside the jail, relative to its root
    std::string source;  // host path (binds) or link target
  };
  void add_bind_file(const fs::path& host, const std::string& inside);
  [[noreturn]] void child(const std::vector<int>& task_fds, int err_fd) const noexcept;

  QemuJailConfig cfg_;
  std::vector<Op> ops_;
  std::vector<std::string> argv_store_;
  std::vector<char*> argv_;
  std::vector<int> fds_;
};

}  // namespace coppice::sandbox
