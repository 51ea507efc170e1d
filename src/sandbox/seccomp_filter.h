// The seccomp policy of sandboxed commands: a deny-list at least as strict as Docker's
// default profile (mount family, namespaces, kernel modules, keyrings, bpf, io_uring, clock
// setting, ...), compiled once with libseccomp into classic BPF, so that the sandbox's init
// only loads it.
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <string>
#include <vector>

namespace coppice::sandbox {

class SeccompPolicy {
 public:
  // Compiles the policy; throws coppice::Error when libseccomp fails.
  SeccompPolicy();
  SeccompPolicy(const SeccompPolicy&) = delete;
  SeccompPolicy& operator=(const SeccompPolicy&) = delete;

  size_t instructions() const { return main_.size() + extra_.size(); }

  // Both programs for another process to load (the namespace runtime's init): u32 count of
  // the first, u32 count of the second, then their sock_filter instructions, first to last.
  // Load them in that order.
  std::string serialized() const;

 private:
  // libseccomp's filter: default allow, EPERM for the deny-list, ENOSYS for clone3, and
  // kill-process for any architecture other than x86-64 (so 32-bit and x32 entry points
  // cannot bypass the rules).
  std::vector<sock_filter> main_;
  // A small hand-written filter stacked on top, for what libseccomp 2.5 cannot express:
  // personality() restricted to Docker's allowed values, and syscalls newer than its tables.
  std::vector<sock_filter> extra_;
};

}  // namespace coppice::sandbox
