// The seccomp policy of the namespace runtime's commands: an allow-list in the manner of
// Docker's default profile (our own list, from the kernel's x86-64 syscall table), compiled
// once at server start into classic BPF, so that each sandbox's init only loads it.
//
//  - A syscall on the allow-list runs (a few only with the arguments Docker allows: clone
//    without namespace flags, personality with Docker's five values, socket of any family but
//    AF_VSOCK, userfaultfd with UFFD_USER_MODE_ONLY).
//  - A known-dangerous syscall (mount API, namespaces, modules, kexec, keyrings, bpf,
//    perf_event_open, io_uring, clock setting, handles, ...) fails with EPERM, as Docker's does.
//  - Every other syscall, including any the kernel adds later, fails with ENOSYS until it is
//    reviewed and listed: programs take ENOSYS as "an old kernel" and fall back. clone3 is
//    ENOSYS on purpose: its flags live in memory seccomp cannot read, and libc falls back to
//    clone, whose flags are checked.
//  - Only the x86-64 ABI: an x32 syscall (x86-64's arch with bit 30 of the number set) or an
//    i386 one (int 0x80, a 32-bit process) kills the process with SIGSYS. Docker allows i386
//    (and x32) with the same list; we do not, because the 32-bit compat layer is a second
//    implementation of many syscalls with its own history of bugs, and sandboxes run 64-bit
//    images.
// The gVisor runtime does not use this policy (the Sentry implements the syscalls itself and
// runs under gVisor's own host filter), nor does the microVM runtime (the guest has its own
// kernel; QEMU runs under QEMU's own filter).
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <string>
#include <vector>

namespace coppice::sandbox {

// One entry of the policy's tables: an x86-64 syscall by name and number.
struct SyscallEntry {
  const char* name;
  int nr;
};

// The allow-list (including the argument-checked ones above) and the EPERM list.
const std::vector<SyscallEntry>& seccomp_allowed_syscalls();
const std::vector<SyscallEntry>& seccomp_denied_syscalls();

class SeccompPolicy {
 public:
  // Compiles the policy; throws coppice::Error when libseccomp fails.
  SeccompPolicy();
  SeccompPolicy(const SeccompPolicy&) = delete;
  SeccompPolicy& operator=(const SeccompPolicy&) = delete;

  size_t instructions() const { return main_.size() + extra_.size(); }

  // Both programs for another process to load (the namespace runtime's init): u32 count of
  // the first, u32 count of the second, then their sock_filter instructions, first to last.
  // Load them in that order (the kernel applies the stricter answer of the two).
  std::string serialized() const;

 private:
  // libseccomp's filter: the tables above, default ENOSYS, the clone flags, and kill-process
  // for any architecture other than x86-64 and for x32 numbers.
  std::vector<sock_filter> main_;
  // A small hand-written filter stacked on top for the checks of int arguments, which must
  // compare only the low 32 bits (the kernel ignores the upper half of an int argument, so a
  // 64-bit comparison, all libseccomp 2.5 makes, is bypassed by setting it): personality's
  // value, socket's family and userfaultfd's flags.
  std::vector<sock_filter> extra_;
};

}  // namespace coppice::sandbox
