// The namespace runtime: clone() into new user/mount/pid/net/ipc/uts namespaces (and a cgroup
// namespace), overlay root, pid 1 = our reaping init, the command with reduced capabilities,
// no_new_privs and seccomp. See runtime.h for the contract.
//
// Process tree of a run:
//   server thread (run())  clone() -> execve(coppice-sandbox-init)  (pid 1, ns_init.h)
//                                       fork -> command (pid 2, execve)
// Between clone() and the init's execve() the child runs a copy of the server, which is
// multi-threaded: it only makes syscalls on data prepared before the clone (Launch), since
// malloc or any lock could deadlock there.
#include <fcntl.h>
#include <fmt/format.h>
#include <limits.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "common/fsutil.h"
#include "sandbox/caps.h"
#include "sandbox/cgroups.h"
#include "sandbox/child_msg.h"
#include "sandbox/network.h"
#include "sandbox/ns_init.h"
#include "sandbox/run_dir.h"
#include "sandbox/runtime.h"
#include "sandbox/seccomp_filter.h"
#include "sandbox/supervise.h"
#include "sandbox/user_ns.h"

namespace coppice::sandbox {

namespace {

using nlohmann::json;
constexpr size_t kChildStack = 64 * 1024;

// What the cloned child needs until it has exec'd the init, built before clone().
struct Launch {
  std::vector<int> fds;    // fds[i] becomes fd i in the init (see ns_init.h)
  std::vector<int> moved;  // scratch for the child, fds.size() entries
  int first_task_fd = 0;   // v1 `tasks` files at [first_task_fd, init_fd): joined, then closed
  int init_fd = 0;         // the init binary (last of fds)
  char* argv[2] = {nullptr, nullptr};
  char* envp[1] = {nullptr};
};

[[noreturn]] void launch_fail(const char* what) {
  ChildMsg m;
  m.add(what).add_errno(errno);
  send_error(ns_init::kStatusFd, 500, m);
  _exit(1);
}

// The child of clone(), still the server's code: fds into place, join the v1 cgroups (as
// host root), wait for the id maps, become root of the user namespace, exec the init.
int launch_init(void* arg) {
  Launch& l = *static_cast<Launch*>(arg);
  const int n = static_cast<int>(l.fds.size());
  // Duplicate every source above every target first, so that no dup2 overwrites a source.
  for (int i = 0; i < n; ++i) l.moved[i] = ::fcntl(l.fds[i], F_DUPFD, n);
  for (int i = 0; i < n; ++i) ::dup2(l.moved[i], i);
  ::syscall(SYS_close_range, static_cast<unsigned>(n), ~0U, 0);
  for (int fd = l.first_task_fd; fd < l.init_fd; ++fd) {
    if (::write(fd, "0", 1) != 1) launch_fail("join cgroup v1 (tasks)");
    ::close(fd);
  }
  char go;
  ssize_t r;
  do r = ::read(ns_init::kSyncFd, &go, 1);
  while (r < 0 && errno == EINTR);
  if (r != 1) _exit(1);  // the server gave up on us
  // execve keeps the capabilities of the user namespace only for its root.
  if (become_namespace_root() != 0) launch_fail("setresuid(0) in the user namespace");
  // Credential changes reset the parent-death signal, so arm it now (execve keeps it).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  ::fcntl(l.init_fd, F_SETFD, FD_CLOEXEC);
  ::syscall(SYS_execveat, l.init_fd, "", l.argv, l.envp, AT_EMPTY_PATH);
  launch_fail("exec coppice-sandbox-init");
}

// A memfd holding `data`, for the init to read.
UniqueFd memfd_with(const char* name, const std::string& data) {
  UniqueFd fd(static_cast<int>(::syscall(SYS_memfd_create, name, MFD_CLOEXEC)));
  if (!fd) throw sys_error("memfd_create");
  if (!write_all(fd.get(), data.data(), data.size())) throw sys_error("write the run plan");
  return fd;
}

fs::path default_init_path() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return self.parent_path() / "coppice-sandbox-init";
}

// ---------------------------------------------------------------- parent side

class NamespaceRuntime final : public Runtime {
 public:
  explicit NamespaceRuntime(const NamespaceConfig& cfg)
      : cfg_(cfg), caps_(docker_default_caps()), cgroups_(cfg.cgroup_name), netns_(cfg.netns_pool) {
    fs::path init = cfg.init_path.empty() ? default_init_path() : fs::path(cfg.init_path);
    init_fd_.reset(::open(init.c_str(), O_RDONLY | O_CLOEXEC));
    if (!init_fd_)
      throw sys_error("open the sandbox init " + init.string() +
                      " (it is built next to coppiced: ninja coppice-sandbox-init)");
    seccomp_fd_ = memfd_with("coppice-seccomp", seccomp_.serialized());
  }

  std::string name() const override { return "namespace"; }
  RunResult run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) override;

 private:
  // The init's plan (ns_init.h); opens the file blobs in plan order into `blobs`.
  std::string build_plan(const RunSpec& spec, std::vector<UniqueFd>& blobs) const;

  NamespaceConfig cfg_;
  CapPolicy caps_;
  SeccompPolicy seccomp_;
  CgroupManager cgroups_;
  NetnsPool netns_;
  UniqueFd init_fd_;     // coppice-sandbox-init, exec'd through this fd
  UniqueFd seccomp_fd_;  // memfd with the seccomp programs, read by every init
};

std::string NamespaceRuntime::build_plan(const RunSpec& spec, std::vector<UniqueFd>& blobs) const {
  json lowers = json::array();
  for (const auto& l : spec.lower_layers) lowers.push_back(l.string());
  json candidates = json::array();
  const std::string& argv0 = spec.argv[0];
  if (argv0.find('/') == std::string::npos) {
    std::string path = kDefaultPath;
    for (const auto& e : spec.env)
      if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
    size_t start = 0;
    for (;;) {
      size_t end = path.find(':', start);
      std::string dir = path.substr(start, end == std::string::npos ? end : end - start);
      if (dir.empty()) dir = ".";
      candidates.push_back(dir + "/" + argv0);
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  json files = json::array();
  for (const auto& f : spec.files) {
    UniqueFd fd(::open(f.host_blob.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw sys_error(fmt::format("open file blob {} for {}", f.host_blob.string(), f.path));
    blobs.push_back(std::move(fd));
    files.push_back({{"path", f.path}, {"mode", f.mode}, {"uid", f.uid}, {"gid", f.gid}});
  }
  json plan = {{"lowers", std::move(lowers)},
               {"upper", (spec.run_dir / "upper").string()},
               {"work", (spec.run_dir / "work").string()},
               {"merged", (spec.run_dir / "merged").string()},
               {"hostname", spec.hostname},
               {"cwd", spec.cwd},
               {"uid", spec.uid},
               {"gid", spec.gid},
               {"argv", spec.argv},
               {"env", spec.env},
               {"argv0", argv0},
               {"candidates", std::move(candidates)},
               {"files", std::move(files)},
               {"caps", {{"last_cap", caps_.last_cap}, {"keep", caps_.keep}}}};
  return plan.dump();
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
  std::vector<UniqueFd> blobs;
  UniqueFd plan = memfd_with("coppice-plan", build_plan(spec, blobs));

  Pipe sync, status, in, out, err;
  RunState st;
  st.upper = spec.run_dir / "upper";
  CgroupLimits lim;
  lim.memory_bytes =
      spec.limits.memory_bytes ? spec.limits.memory_bytes : cfg_.default_memory_bytes;
  lim.pids = spec.limits.pids ? spec.limits.pids : cfg_.default_pids;
  lim.cpus = spec.limits.cpus;
  st.cgroups = cgroups_.create(lim);

  // The init's fds, in the order of ns_init.h.
  Launch l;
  l.fds = {in.rd.get(),       out.wr.get(),  err.wr.get(),   plan.get(),
           seccomp_fd_.get(), sync.rd.get(), status.wr.get()};
  for (const auto& b : blobs) l.fds.push_back(b.get());
  l.first_task_fd = static_cast<int>(l.fds.size());
  for (int fd : st.cgroups->open_v1_task_files()) l.fds.push_back(fd);
  l.init_fd = static_cast<int>(l.fds.size());
  l.fds.push_back(init_fd_.get());
  l.moved.resize(l.fds.size());
  std::string arg0 = "coppice-sandbox-init";
  l.argv[0] = arg0.data();

  st.stack = ::mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (st.stack == MAP_FAILED) {
    st.stack = nullptr;
    throw sys_error("mmap child stack");
  }
  SigpipeBlock sigpipe;  // before clone: the init resets its mask itself

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
    if (rc == 0) launch_init(&l);
    if (rc > 0) {
      pid = static_cast<pid_t>(rc);
      in_v2 = true;
    } else if (errno != ENOSYS && errno != EINVAL && errno != E2BIG && errno != EOPNOTSUPP) {
      throw sys_error("clone3 sandbox");
    }
  }
  if (pid < 0) {
    pid = ::clone(launch_init, static_cast<char*>(st.stack) + kChildStack,
                  static_cast<int>(ns_flags) | CLONE_PIDFD | SIGCHLD, &l, &pidfd);
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
  blobs.clear();
  plan.reset();
  st.cgroups->close_v1_task_files();

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
