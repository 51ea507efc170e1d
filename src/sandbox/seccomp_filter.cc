#include "sandbox/seccomp_filter.h"

#include <linux/audit.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <memory>

#include "common/error.h"
#include "common/fd.h"

namespace coppice::sandbox {

namespace {

// Denied with EPERM (names unknown to this libseccomp version are skipped).
constexpr const char* kDenied[] = {
    // mounts, old and new API
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // namespaces
    "unshare",
    "setns",
    // kernel code, modules, kexec, bpf
    "bpf",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    // keyrings
    "keyctl",
    "add_key",
    "request_key",
    // host-wide state
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "sysfs",
    "_sysctl",
    "uselib",
    "ustat",
    "lookup_dcookie",
    "vhangup",
    // information leaks and attack surface
    "perf_event_open",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "kcmp",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // raw hardware access
    "iopl",
    "ioperm",
    "pciconfig_read",
    "pciconfig_write",
    "pciconfig_iobase",
    // NUMA policy (Docker allows these only with CAP_SYS_NICE)
    "mbind",
    "set_mempolicy",
    "move_pages",
    "migrate_pages",
};

constexpr unsigned long kNamespaceFlags[] = {CLONE_NEWNS,  CLONE_NEWCGROUP, CLONE_NEWUTS,
                                             CLONE_NEWIPC, CLONE_NEWUSER,   CLONE_NEWPID,
                                             CLONE_NEWNET};

// x86-64 numbers of syscalls newer than libseccomp 2.5's tables that must be denied.
constexpr uint32_t kSetMempolicyHomeNode = 450;
constexpr uint32_t kOpenTreeAttr = 467;

struct CtxFree {
  void operator()(void* c) const { seccomp_release(static_cast<scmp_filter_ctx>(c)); }
};

void check(int rc, const char* what) {
  if (rc < 0) throw sys_error(std::string("seccomp: ") + what, -rc);
}

std::vector<sock_filter> compile_main() {
  std::unique_ptr<void, CtxFree> ctx(seccomp_init(SCMP_ACT_ALLOW));
  if (!ctx) throw internal("seccomp_init failed");
  scmp_filter_ctx c = ctx.get();
  check(seccomp_attr_set(c, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS), "badarch");
  check(seccomp_attr_set(c, SCMP_FLTATR_CTL_NNP, 0), "nnp");  // the child sets it itself
  for (const char* name : kDenied) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;
    check(seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), nr, 0), name);
  }
  for (unsigned long f : kNamespaceFlags)
    check(seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                           SCMP_A0(SCMP_CMP_MASKED_EQ, f, f)),
          "clone");
  // clone3 passes its flags in memory, which seccomp cannot inspect: ENOSYS makes libc fall
  // back to clone(), which is filtered above.
  check(seccomp_rule_add(c, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0), "clone3");
  // vsock is not network-namespaced: it would reach the host or hypervisor.
  check(seccomp_rule_add(c, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                         SCMP_A0(SCMP_CMP_EQ, AF_VSOCK)),
        "socket");

  UniqueFd mem(static_cast<int>(::syscall(SYS_memfd_create, "seccomp", MFD_CLOEXEC)));
  if (!mem) throw sys_error("memfd_create");
  check(seccomp_export_bpf(c, mem.get()), "export");
  off_t size = ::lseek(mem.get(), 0, SEEK_END);
  if (size <= 0 || size % sizeof(sock_filter) != 0) throw internal("seccomp: bad BPF export");
  std::vector<sock_filter> prog(static_cast<size_t>(size) / sizeof(sock_filter));
  if (::pread(mem.get(), prog.data(), static_cast<size_t>(size), 0) != size)
    throw sys_error("seccomp: read BPF export");
  return prog;
}

std::vector<sock_filter> compile_extra() {
  constexpr uint32_t kAllow = SECCOMP_RET_ALLOW;
  constexpr uint32_t kDeny = SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA);
  const uint32_t arch_off = offsetof(seccomp_data, arch);
  const uint32_t nr_off = offsetof(seccomp_data, nr);
  const uint32_t arg0_lo = offsetof(seccomp_data, args[0]);  // little endian: low half
  // Layout (index: instruction). A jump's target is index + 1 + offset.
  return {
      /* 0*/ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arch_off),
      /* 1*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      /* 2*/ BPF_STMT(BPF_RET | BPF_K, kAllow),  // other archs: the main filter kills
      /* 3*/ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, nr_off),
      /* 4*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kSetMempolicyHomeNode, 8, 0),  // -> 13
      /* 5*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kOpenTreeAttr, 7, 0),          // -> 13
      /* 6*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_personality, 0, 7),        // else 14
      /* 7*/ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg0_lo),            // personality takes an int
      /* 8*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x0, 5, 0),         // PER_LINUX
      /* 9*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x8, 4, 0),         // UNAME26
      /*10*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x20000, 3, 0),     // PER_LINUX32
      /*11*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x20008, 2, 0),     // UNAME26|LINUX32
      /*12*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xffffffff, 1, 0),  // query
      /*13*/ BPF_STMT(BPF_RET | BPF_K, kDeny),
      /*14*/ BPF_STMT(BPF_RET | BPF_K, kAllow),
  };
}

}  // namespace

SeccompPolicy::SeccompPolicy() : main_(compile_main()), extra_(compile_extra()) {}

std::string SeccompPolicy::serialized() const {
  uint32_t n[2] = {static_cast<uint32_t>(main_.size()), static_cast<uint32_t>(extra_.size())};
  std::string out(reinterpret_cast<const char*>(n), sizeof n);
  out.append(reinterpret_cast<const char*>(main_.data()), main_.size() * sizeof(sock_filter));
  out.append(reinterpret_cast<const char*>(extra_.data()), extra_.size() * sizeof(sock_filter));
  return out;
}

}  // namespace coppice::sandbox
