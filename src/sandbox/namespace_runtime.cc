// The namespace runtime: clone() into new user/mount/pid/net/ipc/uts namespaces (and a cgroup
// namespace), overlay root, pid 1 = our reaping init, the command with reduced capabilities,
// no_new_privs and seccomp. See runtime.h for the contract.
//
// Process tree of a run:
//   server thread (run())         clone()  ->  sandbox init (pid 1, our code)
//                                                 fork -> command (pid 2, execve)
// Between clone() and execve() the children only use syscalls and data prepared before the
// clone (ChildPlan): the server is multi-threaded, so malloc or any lock could deadlock.
#include <fcntl.h>
#include <fmt/format.h>
#include <limits.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>

#include "common/error.h"
#include "common/fsutil.h"
#include "sandbox/caps.h"
#include "sandbox/cgroups.h"
#include "sandbox/child_msg.h"
#include "sandbox/mounts.h"
#include "sandbox/network.h"
#include "sandbox/runtime.h"
#include "sandbox/seccomp_filter.h"
#include "sandbox/supervise.h"
#include "sandbox/user_ns.h"

namespace coppice::sandbox {

namespace {

constexpr size_t kChildStack = 256 * 1024;

// Everything the sandbox's processes need, built before clone().
struct ChildPlan {
  // Owned storage the C-string views below point into.
  std::vector<std::string> lower_paths;
  std::string upper, work, merged, hostname, cwd, argv0;
  std::vector<std::string> argv_store, env_store, candidate_store, file_paths;
  std::vector<UniqueFd> blob_fds;

  MountPlan mounts;
  std::vector<char*> argv, envp;
  std::vector<const char*> candidates;  // full paths to try with execve, in order
  std::vector<InjectedFile> files;
  std::vector<int> keep_fds;  // sorted; every other fd is closed in the child
  uid_t uid = 0;
  gid_t gid = 0;
  int sync_rd = -1, status_wr = -1, stdin_rd = -1, stdout_wr = -1, stderr_wr = -1;
  std::vector<int> cgroup_task_fds;  // v1 `tasks` files init writes "0" to (joins itself)
  const CapPolicy* caps = nullptr;
  const SeccompPolicy* seccomp = nullptr;
};

// ---------------------------------------------------------------- child side (no allocation)

[[noreturn]] void child_fail(const ChildPlan& p, int status, const ChildMsg& m) {
  send_error(p.status_wr, status, m);
  _exit(1);
}

[[noreturn]] void child_fail_errno(const ChildPlan& p, const char* what) {
  ChildMsg m;
  m.add(what).add_errno(errno);
  child_fail(p, 500, m);
}

void close_other_fds(const std::vector<int>& keep) {
  unsigned next = 3;
  for (int k : keep) {
    if (k < 3 || static_cast<unsigned>(k) < next) continue;
    if (static_cast<unsigned>(k) > next) ::syscall(SYS_close_range, next, k - 1, 0);
    next = static_cast<unsigned>(k) + 1;
  }
  ::syscall(SYS_close_range, next, ~0U, 0);
}

void reset_signals() {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  for (int s = 1; s < _NSIG; ++s)
    if (s != SIGKILL && s != SIGSTOP) ::sigaction(s, &sa, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

void move_fd(int from, int to) {
  if (from == to)
    ::fcntl(to, F_SETFD, 0);
  else
    ::dup2(from, to);
}

[[noreturn]] void command_main(const ChildPlan& p) {
  move_fd(p.stdin_rd, 0);
  move_fd(p.stdout_wr, 1);
  move_fd(p.stderr_wr, 2);
  if (drop_bounding_set(*p.caps) != 0) child_fail_errno(p, "drop capability bounding set");
  if (switch_identity(p.uid, p.gid) != 0) child_fail_errno(p, "switch to the command's uid/gid");
  if (restrict_capabilities(*p.caps, p.uid == 0) != 0) child_fail_errno(p, "capset");
  if (::chdir(p.cwd.c_str()) != 0) {
    int e = errno;
    ChildMsg m;
    if (e == ENOENT || e == ENOTDIR)
      m.add("cwd not found: ").add(p.cwd.c_str());
    else
      m.add("cannot change to cwd ").add(p.cwd.c_str()).add_errno(e);
    child_fail(p, 400, m);
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail_errno(p, "PR_SET_NO_NEW_PRIVS");
  ::syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
  if (p.seccomp->install() != 0) child_fail_errno(p, "load seccomp filter");

  int err = ENOENT;
  if (p.candidates.empty()) {
    ::execve(p.argv0.c_str(), p.argv.data(), p.envp.data());
    err = errno;
  } else {
    bool eacces = false;
    for (const char* c : p.candidates) {
      ::execve(c, p.argv.data(), p.envp.data());
      if (errno == EACCES) {
        eacces = true;
      } else if (errno != ENOENT && errno != ENOTDIR) {
        err = errno;
        break;
      }
    }
    if (err == ENOENT && eacces) err = EACCES;
  }
  ChildMsg m;
  m.add("coppice: ").add(p.argv0.c_str()).add_errno(err).add("\n");
  write_all(2, m.buf, m.len);
  _exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
}

// The sandbox's pid 1.
int init_main(void* arg) {
  const ChildPlan& p = *static_cast<const ChildPlan*>(arg);
  close_other_fds(p.keep_fds);
  reset_signals();
  // Join the v1 cgroups first, before we allocate anything (still host root here).
  for (int fd : p.cgroup_task_fds) {
    if (::write(fd, "0", 1) != 1) child_fail_errno(p, "join cgroup v1 (tasks)");
    ::close(fd);
  }
  char go;
  ssize_t n;
  do n = ::read(p.sync_rd, &go, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1) _exit(1);  // the server gave up on us

  if (become_namespace_root() != 0) child_fail_errno(p, "setresuid(0) in the user namespace");
  // Credential changes reset the parent-death signal, so arm it now. The server keeps the
  // sync pipe's write end open for the whole run: a hangup means it died before that.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  pollfd pf{p.sync_rd, POLLIN, 0};
  if (::poll(&pf, 1, 0) > 0 && (pf.revents & (POLLHUP | POLLERR))) _exit(1);
  ::setsid();

  if (::unshare(CLONE_NEWCGROUP) != 0) child_fail_errno(p, "unshare(CLONE_NEWCGROUP)");
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    child_fail_errno(p, "make / private");
  ChildMsg m;
  if (mount_overlay(p.mounts, m) != 0) child_fail(p, 500, m);
  if (::chdir(p.merged.c_str()) != 0) child_fail_errno(p, "chdir to the merged root");
  int created = 0;
  if (mount_pseudo_filesystems(&created, p.status_wr, m) != 0) child_fail(p, 500, m);
  if (pivot_into_cwd(m) != 0) child_fail(p, 500, m);
  int before = created;
  if (ensure_tmp(&created, m) != 0) child_fail(p, 500, m);
  if (created != before) send_record(p.status_wr, RecordType::kMountpoints, created);
  if (::sethostname(p.hostname.data(), p.hostname.size()) != 0) child_fail_errno(p, "sethostname");
  if (bring_up_loopback() != 0) child_fail_errno(p, "bring up lo");
  for (const InjectedFile& f : p.files) {
    int status = 500;
    if (inject_file(f, &status, m) != 0) child_fail(p, status, m);
    ::close(f.blob_fd);
  }

  long pid = ::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);  // fork without libc's atfork locks
  if (pid == 0) command_main(p);
  if (pid < 0) child_fail_errno(p, "fork the command");
  send_record(p.status_wr, RecordType::kSpawned, static_cast<int32_t>(pid));
  ::close(p.stdin_rd);
  ::close(p.stdout_wr);
  ::close(p.stderr_wr);
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);  // the command must not ptrace or read us

  // Reap everything; when the command exits, kill what is left and reap that too, so the
  // rusage of every process adds up in ours (orphans left at init exit are not accounted).
  int main_status = 0;
  bool main_done = false;
  for (;;) {
    int st;
    pid_t w = ::waitpid(-1, &st, __WALL);
    if (w < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD
    }
    if (w == pid && !main_done) {
      main_done = true;
      main_status = st;
      ::kill(-1, SIGKILL);
    }
  }
  send_record(p.status_wr, RecordType::kExited, static_cast<int32_t>(pid), main_status);
  _exit(0);
}

// ---------------------------------------------------------------- parent side

class NamespaceRuntime final : public Runtime {
 public:
  explicit NamespaceRuntime(const NamespaceConfig& cfg)
      : cfg_(cfg),
        caps_(docker_default_caps()),
        cgroups_(cfg.cgroup_name),
        netns_(cfg.netns_pool) {}

  std::string name() const override { return "namespace"; }
  RunResult run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) override;

 private:
  void build_plan(const RunSpec& spec, ChildPlan& p) const;

  NamespaceConfig cfg_;
  CapPolicy caps_;
  SeccompPolicy seccomp_;
  CgroupManager cgroups_;
  NetnsPool netns_;
};

void NamespaceRuntime::build_plan(const RunSpec& spec, ChildPlan& p) const {
  for (const auto& l : spec.lower_layers) p.lower_paths.push_back(l.string());
  p.upper = (spec.run_dir / "upper").string();
  p.work = (spec.run_dir / "work").string();
  p.merged = (spec.run_dir / "merged").string();
  for (const auto& l : p.lower_paths) p.mounts.lowers.push_back(l.c_str());
  p.mounts.upper = p.upper.c_str();
  p.mounts.work = p.work.c_str();
  p.mounts.merged = p.merged.c_str();
  p.hostname = spec.hostname;
  p.cwd = spec.cwd;
  p.uid = spec.uid;
  p.gid = spec.gid;

  p.argv_store = spec.argv;
  p.env_store = spec.env;
  for (auto& a : p.argv_store) p.argv.push_back(a.data());
  p.argv.push_back(nullptr);
  for (auto& e : p.env_store) p.envp.push_back(e.data());
  p.envp.push_back(nullptr);
  p.argv0 = spec.argv[0];
  if (p.argv0.find('/') == std::string::npos) {
    std::string path = kDefaultPath;
    for (const auto& e : spec.env)
      if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
    size_t start = 0;
    for (;;) {
      size_t end = path.find(':', start);
      std::string dir = path.substr(start, end == std::string::npos ? end : end - start);
      if (dir.empty()) dir = ".";
      p.candidate_store.push_back(dir + "/" + p.argv0);
      if (end == std::string::npos) break;
      start = end + 1;
    }
    for (const auto& c : p.candidate_store) p.candidates.push_back(c.c_str());
  }

  for (const auto& f : spec.files) {
    UniqueFd fd(::open(f.host_blob.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw sys_error(fmt::format("open file blob {} for {}", f.host_blob.string(), f.path));
    p.file_paths.push_back(f.path);
    p.blob_fds.push_back(std::move(fd));
  }
  for (size_t i = 0; i < spec.files.size(); ++i)
    p.files.push_back(InjectedFile{p.file_paths[i].c_str(), p.blob_fds[i].get(),
                                   static_cast<mode_t>(spec.files[i].mode), spec.files[i].uid,
                                   spec.files[i].gid});
  p.caps = &caps_;
  p.seccomp = &seccomp_;
}

// Kills and reaps the sandbox and removes what the run left, in the right order, whether
// run() returns or throws.
struct RunState {
  std::unique_ptr<RunCgroups> cgroups;
  fs::path upper;
  int created_mountpoints = 0;
  pid_t pid = -1;
  UniqueFd pidfd;
  bool reaped = false;
  int wait_status = 0;
  rusage usage{};
  void* stack = nullptr;

  void kill() {
    if (pid <= 0 || reaped) return;
    if (cgroups) cgroups->kill_all();
    if (pidfd)
      ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
    else
      ::kill(pid, SIGKILL);
  }
  void reap() {
    if (pid <= 0 || reaped) return;
    while (::wait4(pid, &wait_status, __WALL, &usage) < 0 && errno == EINTR) {
    }
    reaped = true;
  }
  ~RunState() {
    if (pid > 0 && !reaped) {
      kill();
      reap();
    }
    if (cgroups) cgroups->remove();
    if (created_mountpoints) remove_created_mountpoints(upper, created_mountpoints);
    if (stack) ::munmap(stack, kChildStack);
  }
};

RunResult NamespaceRuntime::run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) {
  validate_spec(spec, cfg_.uid_range);
  prepare_run_dir(spec.run_dir, cfg_.uid_base);
  ChildPlan p;
  build_plan(spec, p);

  Pipe sync, status, in, out, err;
  p.sync_rd = sync.rd.get();
  p.status_wr = status.wr.get();
  p.stdin_rd = in.rd.get();
  p.stdout_wr = out.wr.get();
  p.stderr_wr = err.wr.get();
  p.keep_fds = {p.sync_rd, p.status_wr, p.stdin_rd, p.stdout_wr, p.stderr_wr};
  for (const auto& f : p.blob_fds) p.keep_fds.push_back(f.get());

  RunState st;
  st.upper = spec.run_dir / "upper";
  CgroupLimits lim;
  lim.memory_bytes =
      spec.limits.memory_bytes ? spec.limits.memory_bytes : cfg_.default_memory_bytes;
  lim.pids = spec.limits.pids ? spec.limits.pids : cfg_.default_pids;
  lim.cpus = spec.limits.cpus;
  st.cgroups = cgroups_.create(lim);
  p.cgroup_task_fds = st.cgroups->open_v1_task_files();
  for (int fd : p.cgroup_task_fds) p.keep_fds.push_back(fd);
  std::sort(p.keep_fds.begin(), p.keep_fds.end());

  st.stack = ::mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (st.stack == MAP_FAILED) {
    st.stack = nullptr;
    throw sys_error("mmap child stack");
  }
  SigpipeBlock sigpipe;  // before clone: the child resets its mask itself

  // The sandbox's network namespace comes from the pool: this thread enters it for the clone
  // (the child inherits it) and leaves it right after.
  UniqueFd netns = netns_.take();
  std::optional<ScopedNetns> in_netns(std::in_place, netns.get());
  const uint64_t ns_flags =
      CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
  int pidfd = -1;
  bool in_v2 = false;
  auto t0 = Clock::now();
  pid_t pid = -1;
  if (st.cgroups->v2_fd() >= 0) {
    // clone3 into the cgroup2 group, fork-like (no new stack: the child continues on a
    // copy of ours, which is safe without CLONE_VM).
    clone_args ca{};
    ca.flags = ns_flags | CLONE_PIDFD | CLONE_INTO_CGROUP;
    ca.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    ca.exit_signal = SIGCHLD;
    ca.cgroup = static_cast<uint64_t>(st.cgroups->v2_fd());
    long rc = ::syscall(SYS_clone3, &ca, sizeof ca);
    if (rc == 0) _exit(init_main(&p));
    if (rc > 0) {
      pid = static_cast<pid_t>(rc);
      in_v2 = true;
    } else if (errno != ENOSYS && errno != EINVAL && errno != E2BIG && errno != EOPNOTSUPP) {
      throw sys_error("clone3 sandbox");
    }
  }
  if (pid < 0) {
    pid = ::clone(init_main, static_cast<char*>(st.stack) + kChildStack,
                  static_cast<int>(ns_flags) | CLONE_PIDFD | SIGCHLD, &p, &pidfd);
    if (pid < 0) throw sys_error("clone sandbox");
  }
  in_netns.reset();
  netns.reset();
  st.pid = pid;
  st.pidfd.reset(pidfd);
  // Our copies of the child's ends.
  sync.rd.reset();
  status.wr.reset();
  in.rd.reset();
  out.wr.reset();
  err.wr.reset();
  p.blob_fds.clear();

  write_id_maps(pid, cfg_.uid_base, cfg_.uid_range);
  if (!in_v2) st.cgroups->attach_v2(pid);
  if (::write(sync.wr.get(), "g", 1) != 1) throw sys_error("release sandbox");
  // sync.wr stays open until the end of the run (the child's "server alive" check).

  RunResult r;
  bool setup_error = false, have_exit = false;
  int error_status = 500, exit_status = 0;
  std::string error_msg;

  // Records from the sandbox's init (status pipe); false at EOF.
  StatusReader status_reader(status.rd.get());
  auto read_status = [&]() {
    return status_reader.read([&](const StatusRecord& rec) {
      switch (rec.type) {
        case RecordType::kMountpoints:
          st.created_mountpoints |= rec.a;
          break;
        case RecordType::kSpawned:
          r.pid = rec.a;
          observer.on_spawn(rec.a);
          break;
        case RecordType::kSetupError:
          if (!setup_error) {
            setup_error = true;
            error_status = rec.status;
            error_msg = rec.msg;
          }
          break;
        case RecordType::kExited:
          have_exit = true;
          exit_status = rec.b;
          break;
      }
    });
  };

  SuperviseIo io;
  io.stdout_rd = std::move(out.rd);
  io.stderr_rd = std::move(err.rd);
  io.stdin_wr = std::move(in.wr);
  io.exit_fd = st.pidfd.get();
  io.extra_fd = status.rd.get();
  io.on_extra = read_status;
  Supervised sv = supervise(
      io, spec, observer, cancel, t0, [&] { st.kill(); }, [&] { st.reap(); });
  bool killed = sv.killed;
  r.timed_out = sv.timed_out;
  r.cancelled = sv.cancelled;
  auto elapsed = sv.elapsed;

  CgroupStats cs = st.cgroups->stats();
  st.cgroups->remove();
  if (st.created_mountpoints) {
    remove_created_mountpoints(st.upper, st.created_mountpoints);
    st.created_mountpoints = 0;
  }
  // A kill (cancel, timeout) can cut the setup short: the kill is the outcome then.
  if (setup_error && !sv.killed) throw Error(error_status, "sandbox setup failed: " + error_msg);

  int ws;
  if (have_exit) {
    ws = exit_status;
  } else if (killed) {
    ws = SIGKILL;  // the command died with the namespace
  } else if (WIFSIGNALED(st.wait_status)) {
    ws = st.wait_status;  // init itself was killed (e.g. by the OOM killer)
  } else {
    throw internal(
        fmt::format("sandbox init exited without reporting (wait status {:#x})", st.wait_status));
  }
  if (WIFEXITED(ws)) {
    r.exit_code = WEXITSTATUS(ws);
    r.signal = -1;
  } else if (WIFSIGNALED(ws)) {
    r.signal = WTERMSIG(ws);
    r.exit_code = 128 + r.signal;
    r.core_dump = WCOREDUMP(ws);
  }
  r.oom_killed = cs.oom_killed;
  r.stdout_bytes = sv.stdout_bytes;
  r.stderr_bytes = sv.stderr_bytes;

  fill_resources(r.resources, st.usage, cs, elapsed);
  return r;
}

}  // namespace

std::unique_ptr<Runtime> make_namespace_runtime(const NamespaceConfig& cfg) {
  return std::make_unique<NamespaceRuntime>(cfg);
}

}  // namespace coppice::sandbox
