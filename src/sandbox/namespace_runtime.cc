// The namespace runtime: new user/mount/pid/net/ipc/uts namespaces (and a cgroup namespace),
// overlay root, pid 1 = our reaping init, the command with reduced capabilities, no_new_privs
// and seccomp. See runtime.h for the contract.
//
// Process tree of a run (the server's memory is never copied: see ns_init.h):
//   server thread (run())  posix_spawn -> coppice-sandbox-init (launcher, host root)
//                                           clone -> init (pid 1 of the sandbox)
//                                                      fork -> command (pid 2, execve)
// The server writes the plan, enters the run's network namespace for the spawn, then
// supervises: output, the init's status records, the launcher's exit, timeout and cancel.
#include <fcntl.h>
#include <fmt/format.h>
#include <limits.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
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

namespace coppice::sandbox {

namespace {

using nlohmann::json;
// The posix_spawn() of the launcher: its fds at exec (ns_init.h), an empty signal mask and
// default dispositions.
struct LauncherSpawn {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  std::vector<UniqueFd> high;  // the sources, duplicated above every target

  LauncherSpawn() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  }
  ~LauncherSpawn() {
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
  }
  LauncherSpawn(const LauncherSpawn&) = delete;
  LauncherSpawn& operator=(const LauncherSpawn&) = delete;

  // fds[i] becomes fd i; every other fd is closed.
  void place(const std::vector<int>& fds) {
    const int n = static_cast<int>(fds.size());
    for (int fd : fds) {
      high.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, n));  // so no dup2 overwrites a source
      if (!high.back()) throw sys_error("dup a sandbox fd");
    }
    for (int i = 0; i < n; ++i)
      if (posix_spawn_file_actions_adddup2(&actions, high[i].get(), i) != 0)
        throw internal("posix_spawn_file_actions_adddup2");
    if (posix_spawn_file_actions_addclosefrom_np(&actions, n) != 0)
      throw internal("posix_spawn_file_actions_addclosefrom_np");
  }
};

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
    init_path_ = cfg.init_path.empty() ? default_init_path().string() : cfg.init_path;
    if (::access(init_path_.c_str(), X_OK) != 0)
      throw sys_error("the sandbox init " + init_path_ +
                      " (it is built next to coppiced: ninja coppice-sandbox-init)");
    seccomp_fd_ = memfd_with("coppice-seccomp", seccomp_.serialized());
  }

  std::string name() const override { return "namespace"; }
  RunResult run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) override;

 private:
  // The init's plan (ns_init.h); opens the file blobs in plan order into `blobs`.
  std::string build_plan(const RunSpec& spec, std::vector<UniqueFd>& blobs, size_t tasks_files,
                         bool cgroup2) const;

  NamespaceConfig cfg_;
  CapPolicy caps_;
  SeccompPolicy seccomp_;
  CgroupManager cgroups_;
  NetnsPool netns_;
  std::string init_path_;  // coppice-sandbox-init
  UniqueFd seccomp_fd_;    // memfd with the seccomp programs, read by every init
};

std::string NamespaceRuntime::build_plan(const RunSpec& spec, std::vector<UniqueFd>& blobs,
                                         size_t tasks_files, bool cgroup2) const {
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
               {"caps", {{"last_cap", caps_.last_cap}, {"keep", caps_.keep}}},
               {"uid_base", cfg_.uid_base},
               {"uid_range", cfg_.uid_range},
               {"v1_tasks_files", tasks_files},
               {"cgroup2", cgroup2}};
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
  }
};
RunResult NamespaceRuntime::run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) {
  validate_spec(spec, cfg_.uid_range);
  prepare_run_dir(spec.run_dir, cfg_.uid_base);
  Pipe sync, status, in, out, err;
  RunState st;
  st.upper = spec.run_dir / "upper";
  CgroupLimits lim;
  lim.memory_bytes =
      spec.limits.memory_bytes ? spec.limits.memory_bytes : cfg_.default_memory_bytes;
  lim.pids = spec.limits.pids ? spec.limits.pids : cfg_.default_pids;
  lim.cpus = spec.limits.cpus;
  st.cgroups = cgroups_.create(lim);
  const std::vector<int> task_fds = st.cgroups->open_v1_task_files();
  const int cgroup2 = st.cgroups->v2_fd();
  std::vector<UniqueFd> blobs;
  UniqueFd plan =
      memfd_with("coppice-plan", build_plan(spec, blobs, task_fds.size(), cgroup2 >= 0));

  // The launcher's fds, in the order of ns_init.h.
  std::vector<int> fds = {in.rd.get(),       out.wr.get(),  err.wr.get(),   plan.get(),
                          seccomp_fd_.get(), sync.rd.get(), status.wr.get()};
  for (const auto& b : blobs) fds.push_back(b.get());
  fds.insert(fds.end(), task_fds.begin(), task_fds.end());
  if (cgroup2 >= 0) fds.push_back(cgroup2);
  LauncherSpawn launcher;
  launcher.place(fds);
  std::string arg0 = "coppice-sandbox-init";
  char* argv[] = {arg0.data(), nullptr};
  char* envp[] = {nullptr};

  SigpipeBlock sigpipe;  // for our writes to the command's stdin

  // The sandbox's network namespace comes from the pool: this thread enters it for the spawn
  // (the launcher, then the sandbox, inherit it) and leaves it right after.
  UniqueFd netns = netns_.take();
  std::optional<ScopedNetns> in_netns(std::in_place, netns.get());
  auto t0 = Clock::now();
  pid_t pid = -1;
  // posix_spawn is a vfork (CLONE_VM): the server's memory is neither copied nor shared
  // copy-on-write with a long-lived child.
  int rc = posix_spawn(&pid, init_path_.c_str(), &launcher.actions, &launcher.attr, argv, envp);
  in_netns.reset();
  netns.reset();
  if (rc != 0) throw sys_error("spawn " + init_path_, rc);
  st.pid = pid;
  st.pidfd.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!st.pidfd) throw sys_error("pidfd_open of the sandbox launcher");
  // Our copies of the launcher's ends.
  launcher.high.clear();
  sync.rd.reset();
  status.wr.reset();
  in.rd.reset();
  out.wr.reset();
  err.wr.reset();
  blobs.clear();
  plan.reset();
  st.cgroups->close_v1_task_files();
  // sync.wr stays open until the end of the run (the init's "server alive" check).

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
  r.write_limit_hit = sv.write_limit_hit;
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
