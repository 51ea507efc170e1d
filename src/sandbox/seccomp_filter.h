// The seccomp policy of sandboxed commands: a deny-list at least as strict as Docker's
// default profile (mount family, namespaces, kernel modules, keyrings, bpf, io_uring, clock
// setting, ...), compiled once with libseccomp into classic BPF so that loading it in the
// child between clone() and execve() needs no allocation.
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <vector>

namespace coppice::sandbox {

class SeccompPolicy {
 public:
  // Compiles the policy; throws coppice::Error when libseccomp fails.
  SeccompPolicy();
  SeccompPolicy(const SeccompPolicy&) = delete;
  SeccompPolicy& operator=(const SeccompPolicy&) = delete;

  // Installs both filters on the calling thread. Async-signal-safe: call after
  // PR_SET_NO_NEW_PRIVS in the child. Returns 0, or -1 with errno set.
  int install() const noexcept;

  size_t instructions() const { return main_.size() + extra_.size(); }

 private:
  // libseccomp's filter: default allow, EPERM for the deny-list, ENOSYS for clone3, and
  // kill-process for any architecture other than x86-64 (so 32-bit and x32 entry points
  // cannot bypass the rules).
  std::vector<sock_filter> main_;
  // A small hand-written filter stacked on top, for what libseccomp 2.5 cannot express:
  // personality() restricted to Docker's allowed values, and syscalls newer than its tables.
  std::vector<sock_filter> extra_;
  sock_fprog main_prog_{};
  sock_fprog extra_prog_{};
};

}  // namespace coppice::sandbox
