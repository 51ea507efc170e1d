#include "sandbox/seccomp_filter.h"

#include <linux/audit.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <map>
#include <memory>

#include "common/error.h"
#include "common/fd.h"

namespace coppice::sandbox {

namespace {

// x86-64 numbers from the kernel's arch/x86/entry/syscalls/syscall_64.tbl, so that the policy
// does not depend on libseccomp's tables (2.5 stops at 453); a unit test checks the names
// against libseccomp's where it knows them.
//
// Allowed: what Docker's default profile allows to a container without extra capabilities,
// less what is in the EPERM list below, plus the reviewed newer syscalls that libc uses or
// may use (close_range, openat2, faccessat2, epoll_pwait2, fchmodat2, futex_waitv, cachestat,
// map_shadow_stack, landlock, memfd_secret, process_mrelease). ptrace and process_vm_* stay
// allowed as in Docker (kernels >= 4.8 check ptrace against seccomp): a sandbox can only
// reach its own processes, and its init is not dumpable.
// clang-format off
const std::vector<SyscallEntry> kAllowed = {
    {"read", 0}, {"write", 1}, {"open", 2}, {"close", 3}, {"stat", 4}, {"fstat", 5}, {"lstat", 6},
    {"poll", 7}, {"lseek", 8}, {"mmap", 9}, {"mprotect", 10}, {"munmap", 11}, {"brk", 12},
    {"rt_sigaction", 13}, {"rt_sigprocmask", 14}, {"rt_sigreturn", 15}, {"ioctl", 16},
    {"pread64", 17}, {"pwrite64", 18}, {"readv", 19}, {"writev", 20}, {"access", 21}, {"pipe", 22},
    {"select", 23}, {"sched_yield", 24}, {"mremap", 25}, {"msync", 26}, {"mincore", 27},
    {"madvise", 28}, {"shmget", 29}, {"shmat", 30}, {"shmctl", 31}, {"dup", 32}, {"dup2", 33},
    {"pause", 34}, {"nanosleep", 35}, {"getitimer", 36}, {"alarm", 37}, {"setitimer", 38},
    {"getpid", 39}, {"sendfile", 40}, {"socket", 41}, {"connect", 42}, {"accept", 43},
    {"sendto", 44}, {"recvfrom", 45}, {"sendmsg", 46}, {"recvmsg", 47}, {"shutdown", 48},
    {"bind", 49}, {"listen", 50}, {"getsockname", 51}, {"getpeername", 52}, {"socketpair", 53},
    {"setsockopt", 54}, {"getsockopt", 55}, {"clone", 56}, {"fork", 57}, {"vfork", 58},
    {"execve", 59}, {"exit", 60}, {"wait4", 61}, {"kill", 62}, {"uname", 63}, {"semget", 64},
    {"semop", 65}, {"semctl", 66}, {"shmdt", 67}, {"msgget", 68}, {"msgsnd", 69}, {"msgrcv", 70},
    {"msgctl", 71}, {"fcntl", 72}, {"flock", 73}, {"fsync", 74}, {"fdatasync", 75},
    {"truncate", 76}, {"ftruncate", 77}, {"getdents", 78}, {"getcwd", 79}, {"chdir", 80},
    {"fchdir", 81}, {"rename", 82}, {"mkdir", 83}, {"rmdir", 84}, {"creat", 85}, {"link", 86},
    {"unlink", 87}, {"symlink", 88}, {"readlink", 89}, {"chmod", 90}, {"fchmod", 91},
    {"chown", 92}, {"fchown", 93}, {"lchown", 94}, {"umask", 95}, {"gettimeofday", 96},
    {"getrlimit", 97}, {"getrusage", 98}, {"sysinfo", 99}, {"times", 100}, {"ptrace", 101},
    {"getuid", 102}, {"getgid", 104}, {"setuid", 105}, {"setgid", 106}, {"geteuid", 107},
    {"getegid", 108}, {"setpgid", 109}, {"getppid", 110}, {"getpgrp", 111}, {"setsid", 112},
    {"setreuid", 113}, {"setregid", 114}, {"getgroups", 115}, {"setgroups", 116},
    {"setresuid", 117}, {"getresuid", 118}, {"setresgid", 119}, {"getresgid", 120},
    {"getpgid", 121}, {"setfsuid", 122}, {"setfsgid", 123}, {"getsid", 124}, {"capget", 125},
    {"capset", 126}, {"rt_sigpending", 127}, {"rt_sigtimedwait", 128}, {"rt_sigqueueinfo", 129},
    {"rt_sigsuspend", 130}, {"sigaltstack", 131}, {"utime", 132}, {"mknod", 133},
    {"personality", 135}, {"statfs", 137}, {"fstatfs", 138}, {"getpriority", 140},
    {"setpriority", 141}, {"sched_setparam", 142}, {"sched_getparam", 143},
    {"sched_setscheduler", 144}, {"sched_getscheduler", 145}, {"sched_get_priority_max", 146},
    {"sched_get_priority_min", 147}, {"sched_rr_get_interval", 148}, {"mlock", 149},
    {"munlock", 150}, {"mlockall", 151}, {"munlockall", 152}, {"prctl", 157}, {"arch_prctl", 158},
    {"setrlimit", 160}, {"chroot", 161}, {"sync", 162}, {"gettid", 186}, {"readahead", 187},
    {"setxattr", 188}, {"lsetxattr", 189}, {"fsetxattr", 190}, {"getxattr", 191},
    {"lgetxattr", 192}, {"fgetxattr", 193}, {"listxattr", 194}, {"llistxattr", 195},
    {"flistxattr", 196}, {"removexattr", 197}, {"lremovexattr", 198}, {"fremovexattr", 199},
    {"tkill", 200}, {"time", 201}, {"futex", 202}, {"sched_setaffinity", 203},
    {"sched_getaffinity", 204}, {"set_thread_area", 205}, {"io_setup", 206}, {"io_destroy", 207},
    {"io_getevents", 208}, {"io_submit", 209}, {"io_cancel", 210}, {"get_thread_area", 211},
    {"epoll_create", 213}, {"remap_file_pages", 216}, {"getdents64", 217},
    {"set_tid_address", 218}, {"restart_syscall", 219}, {"semtimedop", 220}, {"fadvise64", 221},
    {"timer_create", 222}, {"timer_settime", 223}, {"timer_gettime", 224},
    {"timer_getoverrun", 225}, {"timer_delete", 226}, {"clock_gettime", 228},
    {"clock_getres", 229}, {"clock_nanosleep", 230}, {"exit_group", 231}, {"epoll_wait", 232},
    {"epoll_ctl", 233}, {"tgkill", 234}, {"utimes", 235}, {"get_mempolicy", 239}, {"mq_open", 240},
    {"mq_unlink", 241}, {"mq_timedsend", 242}, {"mq_timedreceive", 243}, {"mq_notify", 244},
    {"mq_getsetattr", 245}, {"waitid", 247}, {"ioprio_set", 251}, {"ioprio_get", 252},
    {"inotify_init", 253}, {"inotify_add_watch", 254}, {"inotify_rm_watch", 255}, {"openat", 257},
    {"mkdirat", 258}, {"mknodat", 259}, {"fchownat", 260}, {"futimesat", 261}, {"newfstatat", 262},
    {"unlinkat", 263}, {"renameat", 264}, {"linkat", 265}, {"symlinkat", 266}, {"readlinkat", 267},
    {"fchmodat", 268}, {"faccessat", 269}, {"pselect6", 270}, {"ppoll", 271},
    {"set_robust_list", 273}, {"get_robust_list", 274}, {"splice", 275}, {"tee", 276},
    {"sync_file_range", 277}, {"vmsplice", 278}, {"utimensat", 280}, {"epoll_pwait", 281},
    {"signalfd", 282}, {"timerfd_create", 283}, {"eventfd", 284}, {"fallocate", 285},
    {"timerfd_settime", 286}, {"timerfd_gettime", 287}, {"accept4", 288}, {"signalfd4", 289},
    {"eventfd2", 290}, {"epoll_create1", 291}, {"dup3", 292}, {"pipe2", 293},
    {"inotify_init1", 294}, {"preadv", 295}, {"pwritev", 296}, {"rt_tgsigqueueinfo", 297},
    {"recvmmsg", 299}, {"fanotify_mark", 301}, {"prlimit64", 302}, {"syncfs", 306},
    {"sendmmsg", 307}, {"getcpu", 309}, {"process_vm_readv", 310}, {"process_vm_writev", 311},
    {"sched_setattr", 314}, {"sched_getattr", 315}, {"renameat2", 316}, {"seccomp", 317},
    {"getrandom", 318}, {"memfd_create", 319}, {"execveat", 322}, {"userfaultfd", 323},
    {"membarrier", 324}, {"mlock2", 325}, {"copy_file_range", 326}, {"preadv2", 327},
    {"pwritev2", 328}, {"pkey_mprotect", 329}, {"pkey_alloc", 330}, {"pkey_free", 331},
    {"statx", 332}, {"io_pgetevents", 333}, {"rseq", 334}, {"pidfd_send_signal", 424},
    {"pidfd_open", 434}, {"close_range", 436}, {"openat2", 437}, {"faccessat2", 439},
    {"epoll_pwait2", 441}, {"landlock_create_ruleset", 444}, {"landlock_add_rule", 445},
    {"landlock_restrict_self", 446}, {"memfd_secret", 447}, {"process_mrelease", 448},
    {"futex_waitv", 449}, {"cachestat", 451}, {"fchmodat2", 452}, {"map_shadow_stack", 453},
};
// clang-format on

// EPERM: known-dangerous syscalls that Docker denies without extra capabilities (or that we
// deny although Docker would allow them with the capability set we give: clock and NUMA
// policy setting, handles, kcmp, pidfd_getfd, modify_ldt).
// clang-format off
const std::vector<SyscallEntry> kDenied = {
    // mounts, old and new API (the init mounts everything before it loads the filter)
    {"mount", 165}, {"umount2", 166}, {"pivot_root", 155}, {"open_tree", 428}, {"move_mount", 429},
    {"fsopen", 430}, {"fsconfig", 431}, {"fsmount", 432}, {"fspick", 433}, {"mount_setattr", 442},
    {"open_tree_attr", 467},
    // namespaces (clone's namespace flags below)
    {"unshare", 272}, {"setns", 308},
    // kernel code: bpf, perf, modules, kexec
    {"bpf", 321}, {"perf_event_open", 298}, {"kexec_load", 246}, {"kexec_file_load", 320},
    {"init_module", 175}, {"finit_module", 313}, {"delete_module", 176}, {"create_module", 174},
    {"get_kernel_syms", 177}, {"query_module", 178},
    // keyrings (kernel-wide state with a long history of bugs)
    {"keyctl", 250}, {"add_key", 248}, {"request_key", 249},
    // host-wide state: accounting, swap, reboot, clocks, names, kernel log, quotas, obsolete
    {"acct", 163}, {"swapon", 167}, {"swapoff", 168}, {"reboot", 169}, {"settimeofday", 164},
    {"clock_settime", 227}, {"clock_adjtime", 305}, {"adjtimex", 159}, {"sethostname", 170},
    {"setdomainname", 171}, {"syslog", 103}, {"quotactl", 179}, {"quotactl_fd", 443},
    {"nfsservctl", 180}, {"sysfs", 139}, {"_sysctl", 156}, {"uselib", 134}, {"ustat", 136},
    {"lookup_dcookie", 212}, {"vhangup", 153},
    // attack surface and information leaks: file handles, kcmp, other processes' descriptors,
    // fanotify, io_uring
    {"open_by_handle_at", 304}, {"name_to_handle_at", 303}, {"kcmp", 312}, {"pidfd_getfd", 438},
    {"fanotify_init", 300}, {"io_uring_setup", 425}, {"io_uring_enter", 426},
    {"io_uring_register", 427},
    // raw hardware and the LDT
    {"iopl", 172}, {"ioperm", 173}, {"modify_ldt", 154},
    // NUMA policy (Docker allows these only with CAP_SYS_NICE)
    {"mbind", 237}, {"set_mempolicy", 238}, {"move_pages", 279}, {"migrate_pages", 256},
    {"set_mempolicy_home_node", 450},
};
// clang-format on

constexpr int kClone = 56, kPersonality = 135, kSocket = 41, kUserfaultfd = 323;

// Any of these in clone's flags creates a namespace.
constexpr uint64_t kNamespaceFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
                                     CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;

struct CtxFree {
  void operator()(void* c) const { seccomp_release(static_cast<scmp_filter_ctx>(c)); }
};

void check(int rc, const char* what) {
  if (rc < 0) throw sys_error(std::string("seccomp: ") + what, -rc);
}

std::vector<sock_filter> compile_main() {
  std::unique_ptr<void, CtxFree> ctx(seccomp_init(SCMP_ACT_ERRNO(ENOSYS)));
  if (!ctx) throw internal("seccomp_init failed");
  scmp_filter_ctx c = ctx.get();
  check(seccomp_attr_set(c, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS), "badarch");
  check(seccomp_attr_set(c, SCMP_FLTATR_CTL_NNP, 0), "nnp");            // the child sets it itself
  check(seccomp_attr_set(c, SCMP_FLTATR_CTL_OPTIMIZE, 2), "optimize");  // a binary tree
  for (const SyscallEntry& e : kAllowed) {
    if (e.nr == kClone) continue;
    check(seccomp_rule_add(c, SCMP_ACT_ALLOW, e.nr, 0), e.name);
  }
  for (const SyscallEntry& e : kDenied)
    check(seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), e.nr, 0), e.name);
  // clone: allowed without namespace flags (clone's flags are a full unsigned long, so the
  // 64-bit comparison is the right one), EPERM with any of them.
  check(seccomp_rule_add(c, SCMP_ACT_ALLOW, kClone, 1,
                         SCMP_A0_64(SCMP_CMP_MASKED_EQ, kNamespaceFlags, 0)),
        "clone");
  for (uint64_t bit = 1; bit; bit <<= 1)
    if (kNamespaceFlags & bit)
      check(seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), kClone, 1,
                             SCMP_A0_64(SCMP_CMP_MASKED_EQ, bit, bit)),
            "clone");
  // clone3 (not listed, so ENOSYS, as the default) passes its flags in memory, which seccomp
  // cannot inspect: ENOSYS makes libc fall back to clone(), which is filtered above.

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

// A classic BPF program with symbolic jump targets.
class Bpf {
 public:
  void label(int l) { labels_[l] = static_cast<int>(code_.size()); }
  void load(uint32_t offset) { add(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset)); }
  void ret(uint32_t action) { add(BPF_STMT(BPF_RET | BPF_K, action)); }
  // if (A == k) goto t else goto f; -1: the next instruction
  void jeq(uint32_t k, int t, int f = -1) { jump(BPF_JEQ, k, t, f); }
  // if (A & k) goto t else goto f
  void jset(uint32_t k, int t, int f = -1) { jump(BPF_JSET, k, t, f); }
  std::vector<sock_filter> done() {
    for (const Fix& x : fixes_) {
      auto rel = [&](int l) {
        if (l < 0) return 0;
        int d = labels_.at(l) - (x.at + 1);
        if (d < 0 || d > 255) throw internal("seccomp: bad jump");
        return d;
      };
      code_[static_cast<size_t>(x.at)].jt = static_cast<uint8_t>(rel(x.t));
      code_[static_cast<size_t>(x.at)].jf = static_cast<uint8_t>(rel(x.f));
    }
    return code_;
  }

 private:
  struct Fix {
    int at, t, f;
  };
  void add(sock_filter s) { code_.push_back(s); }
  void jump(uint16_t op, uint32_t k, int t, int f) {
    fixes_.push_back({static_cast<int>(code_.size()), t, f});
    add(BPF_JUMP(BPF_JMP | op | BPF_K, k, 0, 0));
  }
  std::vector<sock_filter> code_;
  std::map<int, int> labels_;
  std::vector<Fix> fixes_;
};

std::vector<sock_filter> compile_extra() {
  constexpr uint32_t kAllow = SECCOMP_RET_ALLOW;
  constexpr uint32_t kEperm = SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA);
  constexpr uint32_t kNoFamily = SECCOMP_RET_ERRNO | (EAFNOSUPPORT & SECCOMP_RET_DATA);
  // seccomp_data.args[0] as the kernel reads an int: its low half (little endian)
  const uint32_t arg0_lo = offsetof(seccomp_data, args[0]);
  enum { kAllowL, kEpermL, kPersonalityL, kSocketL, kUffdL };
  Bpf b;
  b.load(offsetof(seccomp_data, arch));
  b.jeq(AUDIT_ARCH_X86_64, -1, kAllowL);  // other archs: the main filter kills
  b.load(offsetof(seccomp_data, nr));
  b.jeq(kPersonality, kPersonalityL);
  b.jeq(kSocket, kSocketL);
  b.jeq(kUserfaultfd, kUffdL);
  b.ret(kAllow);  // the main filter decides
  // personality: Docker's values (Linux, UNAME26, LINUX32, both, and the query 0xffffffff)
  b.label(kPersonalityL);
  b.load(arg0_lo);
  for (uint32_t v : {0x0u, 0x8u, 0x20000u, 0x20008u, 0xffffffffu}) b.jeq(v, kAllowL);
  b.ret(kEperm);
  // socket: vsock is not network-namespaced, it would reach the host or the hypervisor
  b.label(kSocketL);
  b.load(arg0_lo);
  b.jeq(AF_VSOCK, -1, kAllowL);
  b.ret(kNoFamily);
  // userfaultfd: only for faults of user memory (the kernel's own faults are what make it an
  // exploitation aid), as unprivileged users may
  b.label(kUffdL);
  b.load(arg0_lo);
  b.jset(UFFD_USER_MODE_ONLY, kAllowL, kEpermL);
  b.label(kEpermL);
  b.ret(kEperm);
  b.label(kAllowL);
  b.ret(kAllow);
  return b.done();
}

}  // namespace

const std::vector<SyscallEntry>& seccomp_allowed_syscalls() {
  return kAllowed;
}
const std::vector<SyscallEntry>& seccomp_denied_syscalls() {
  return kDenied;
}

SeccompPolicy::SeccompPolicy() : main_(compile_main()), extra_(compile_extra()) {}

std::string SeccompPolicy::serialized() const {
  uint32_t n[2] = {static_cast<uint32_t>(main_.size()), static_cast<uint32_t>(extra_.size())};
  std::string out(reinterpret_cast<const char*>(n), sizeof n);
  out.append(reinterpret_cast<const char*>(main_.data()), main_.size() * sizeof(sock_filter));
  out.append(reinterpret_cast<const char*>(extra_.data()), extra_.size() * sizeof(sock_filter));
  return out;
}

}  // namespace coppice::sandbox
