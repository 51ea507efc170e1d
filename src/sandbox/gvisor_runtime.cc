// The gVisor runtime. Process tree of a run:
//   server thread (run())  clone3(NEWNS|NEWPID, into the run's cgroup)  ->  execve(SELF
//   __gvisor-init PLAN)  = pid 1 of a new pid namespace: makes its mounts private, mounts the
//   overlay root (mount_overlay, as the namespace runtime does), creates missing mount points,
//   injects files from a chrooted child, then execs `runsc run` (still pid 1), which starts
//   gVisor's Sentry and gofer below it. When pid 1 exits, the kernel kills every process of
//   the pid namespace and the private overlay mount goes away with the mount namespace, so a
//   run can leave nothing behind, whatever happens to the server.
//
// The OCI bundle asks runsc for a user namespace that maps sandbox uid 0.. to
// uid_base.., so files the command creates reach the upper directory with the same shifted
// owners as in the namespace runtime, and existing files show their sandbox owners. Network:
// runsc --network=none (loopback only). /tmp is the image's own /tmp (bind-mounted), so it is
// part of the snapshot as in the namespace runtime; /proc and /dev are gVisor's.
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "sandbox/cgroups.h"
#include "sandbox/child_msg.h"
#include "sandbox/mounts.h"
#include "sandbox/run_dir.h"
#include "sandbox/runsc_end.h"
#include "sandbox/runtime.h"
#include "sandbox/supervise.h"
#include "sandbox/user_ns.h"

namespace coppice::sandbox {

using nlohmann::json;

namespace {

// Fixed descriptors of the init process (set up between clone and execve).
constexpr int kStatusFd = 3;
constexpr int kFirstTaskFd = 4;  // then the cgroup v1 `tasks` files, one after another

const std::vector<std::string>& docker_cap_names() {
  static const std::vector<std::string> caps = {
      "CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
      "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
      "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
      "CAP_KILL",    "CAP_AUDIT_WRITE"};
  return caps;
}

json oci_config(const RunSpec& spec, const GvisorConfig& cfg, uint64_t pids) {
  json env = spec.env;
  bool has_path = false;
  for (const auto& e : spec.env) has_path = has_path || e.rfind("PATH=", 0) == 0;
  if (!has_path) env.push_back(std::string("PATH=") + kDefaultPath);
  json caps = spec.uid == 0 ? json(docker_cap_names()) : json::array();
  std::string merged = (spec.run_dir / "merged").string();
  auto tmpfs = [](const char* dest, std::vector<std::string> opts) {
    return json{{"destination", dest}, {"type", "tmpfs"}, {"source", "tmpfs"}, {"options", opts}};
  };
  return {
      {"ociVersion", "1.0.2"},
      {"process",
       {{"terminal", false},
        {"user", {{"uid", spec.uid}, {"gid", spec.gid}}},
        {"args", spec.argv},
        {"env", env},
        {"cwd", spec.cwd},
        {"capabilities",
         {{"bounding", docker_cap_names()},
          {"effective", caps},
          {"permitted", caps},
          {"inheritable", json::array()},
          {"ambient", json::array()}}},
        {"rlimits", json::array({{{"type", "RLIMIT_NOFILE"}, {"hard", 1048576}, {"soft", 1048576}},
                                 {{"type", "RLIMIT_NPROC"}, {"hard", pids}, {"soft", pids}}})},
        {"noNewPrivileges", true}}},
      {"root", {{"path", merged}, {"readonly", false}}},
      {"hostname", spec.hostname},
      {"mounts",
       json::array(
           {{{"destination", "/proc"}, {"type", "proc"}, {"source", "proc"}},
            tmpfs("/dev", {"nosuid", "strictatime", "mode=755", "size=65536k"}),
            {{"destination", "/dev/pts"},
             {"type", "devpts"},
             {"source", "devpts"},
             {"options", {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}}},
            tmpfs("/dev/shm", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}),
            {{"destination", "/tmp"},
             {"type", "bind"},
             {"source", merged + "/tmp"},
             {"options", {"rbind", "rw", "nosuid", "nodev"}}}})},
      {"linux",
       {{"namespaces", json::array({{{"type", "pid"}},
                                    {{"type", "ipc"}},
                                    {{"type", "uts"}},
                                    {{"type", "mount"}},
                                    {{"type", "network"}},
                                    {{"type", "user"}}})},
        {"uidMappings",
         json::array({{{"containerID", 0}, {"hostID", cfg.uid_base}, {"size", cfg.uid_range}}})},
        {"gidMappings",
         json::array({{{"containerID", 0}, {"hostID", cfg.uid_base}, {"size", cfg.uid_range}}})}}}};
}

// After `runsc run` exited: sets *crashed when it left a container's state file behind in its
// --root directory (a clean runsc always deletes its container, whatever the command did) or
// when the panic log shows a crash (read_panic_log: runsc's informational lines there, such as
// the raw-socket warning, are no crash), and then returns the panic log from its first crash
// line and the end of runsc's own log, on one line, for the error and the server log. The
// informational lines go to the server's debug log.
std::string runsc_logs(const fs::path& state, const std::string& id, bool* crashed) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(state, ec))
    if (e.path().extension() == ".state") *crashed = true;
  std::string panic_text;
  try {
    panic_text = read_file(state / "panic.log");
  } catch (const std::exception&) {
  }
  PanicLog panic = read_panic_log(panic_text);
  for (const auto& note : panic.notes) spdlog::debug("gvisor run {}: runsc: {}", id, note);
  if (panic.crashed) *crashed = true;
  if (!*crashed) return "";
  // The crash starts with the reason (`fatal error: …`, `panic: …`) and goes on with goroutine
  // dumps; runsc's own log ends with its last word.
  std::string out;
  for (const char* name : {"panic.log", "runsc.log"}) {
    const bool head = std::string_view(name) == "panic.log";
    std::string text = panic.crash;
    if (!head) {
      try {
        text = read_file(state / name);
      } catch (const std::exception&) {
        continue;
      }
    }
    if (text.size() > 300) text = head ? text.substr(0, 300) : text.substr(text.size() - 300);
    for (char& c : text)
      if (c == '\n' || c == '\t') c = ' ';
    while (!text.empty() && text.back() == ' ') text.pop_back();
    if (!text.empty()) out += (out.empty() ? "" : " | ") + std::string(name) + ": " + text;
  }
  return out;
}

// The host pids limit of a gVisor run whose command may have `app` tasks. Under the ptrace
// platform each sandbox process costs the host a stub process plus one stub thread per Sentry
// thread that ran it (measured: 100 sleeping processes, 900 host tasks), so the host limit is
// a multiple of the command's, which the Sentry enforces itself (RLIMIT_NPROC), plus room for
// the churn of stubs while processes come and go (a fork bomb under a limit of 16 peaked at
// 370 host tasks). It stays under a quarter of the host's pid space, so that one sandbox
// cannot exhaust it.
uint64_t gvisor_host_pids(uint64_t app, uint64_t host_pid_max) {
  uint64_t want = app * 10 + 2048, cap = std::max(app + 256, host_pid_max / 4);
  return std::min(want, cap);
}

class GvisorRuntime final : public Runtime {
 public:
  explicit GvisorRuntime(const GvisorConfig& cfg)
      : cfg_(cfg), cgroups_(cfg.cgroup_name), host_pid_max_(read_pid_max()) {}
  std::string name() const override { return "gvisor"; }
  RunResult run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) override;

 private:
  static uint64_t read_pid_max() {
    try {
      return std::stoull(read_file("/proc/sys/kernel/pid_max"));
    } catch (const std::exception&) {
      return 32768;  // the kernel's default
    }
  }
  GvisorConfig cfg_;
  CgroupManager cgroups_;
  uint64_t host_pid_max_;
};

RunResult GvisorRuntime::run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) {
  validate_spec(spec, cfg_.uid_range);
  prepare_run_dir(spec.run_dir, cfg_.uid_base);
  fs::path bundle = spec.run_dir / "bundle", state = spec.run_dir / "runsc";
  make_dirs(bundle, 0700);
  make_dirs(state, 0700);
  const uint64_t app_pids = spec.limits.pids ? spec.limits.pids : cfg_.default_pids;
  write_file_atomic(bundle / "config.json", oci_config(spec, cfg_, app_pids).dump(), false);
  json files = json::array();
  for (const auto& f : spec.files)
    files.push_back({{"path", f.path},
                     {"blob", f.host_blob.string()},
                     {"mode", f.mode},
                     {"uid", f.uid},  // sandbox ids: the injector runs in a user namespace
                     {"gid", f.gid}});
  json lowers = json::array();
  for (const auto& l : spec.lower_layers) lowers.push_back(l.string());
  std::string id = "coppice-" + random_hex(8);
  json plan = {
      {"lowers", lowers},
      {"upper", (spec.run_dir / "upper").string()},
      {"work", (spec.run_dir / "work").string()},
      {"merged", (spec.run_dir / "merged").string()},
      {"root_uid", cfg_.uid_base},
      {"uid_range", cfg_.uid_range},
      {"cwd", spec.cwd},
      {"argv0", spec.argv[0]},
      {"path",
       [&] {
         for (const auto& e : spec.env)
           if (e.rfind("PATH=", 0) == 0) return e.substr(5);
         return std::string(kDefaultPath);
       }()},
      {"files", files},
      {"runsc",
       {cfg_.runsc, "--root=" + state.string(), "--log=" + (state / "runsc.log").string(),
        "--panic-log=" + (state / "panic.log").string(), "--network=none", "--ignore-cgroups",
        "--platform=" + cfg_.platform, "run", "--bundle", bundle.string(), id}}};
  fs::path plan_file = spec.run_dir / "gvisor-plan.json";
  write_file_atomic(plan_file, plan.dump(), false);

  Pipe status, in, out, err;
  SandboxProcess st;
  CgroupLimits lim;
  lim.memory_bytes =
      spec.limits.memory_bytes ? spec.limits.memory_bytes : cfg_.default_memory_bytes;
  lim.pids = gvisor_host_pids(app_pids, host_pid_max_);
  lim.cpus = spec.limits.cpus;
  st.cgroups = cgroups_.create(lim);
  const std::vector<int> task_fds = st.cgroups->open_v1_task_files();

  // Everything the child touches between clone and execve, prepared now.
  std::string exe = cfg_.self_exe, arg1 = "__gvisor-init", arg2 = plan_file.string();
  char* argv[] = {exe.data(), arg1.data(), arg2.data(), nullptr};
  char* envp[] = {nullptr};
  std::vector<int> src_fds = {in.rd.get(), out.wr.get(), err.wr.get(), status.wr.get()};
  for (int fd : task_fds) src_fds.push_back(fd);
  SigpipeBlock sigpipe;
  int pidfd = -1;
  clone_args ca{};
  ca.flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_PIDFD;
  ca.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  ca.exit_signal = SIGCHLD;
  if (st.cgroups->v2_fd() >= 0) {
    ca.flags |= CLONE_INTO_CGROUP;
    ca.cgroup = static_cast<uint64_t>(st.cgroups->v2_fd());
  }
  auto t0 = Clock::now();
  long rc = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (rc == 0) {
    // Child: only async-signal-safe calls until execve. Move the fds into place (dup first
    // above the targets so no source is overwritten), then exec our init.
    int n = static_cast<int>(src_fds.size());
    int moved[16];
    for (int i = 0; i < n && i < 16; ++i) moved[i] = ::fcntl(src_fds[i], F_DUPFD, 64);
    for (int i = 0; i < n && i < 16; ++i) ::dup2(moved[i], i < 3 ? i : kStatusFd + (i - 3));
    ::syscall(SYS_close_range, static_cast<unsigned>(kStatusFd + (n - 3)), ~0U, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(argv[0], argv, envp);
    _exit(127);
  }
  if (rc < 0) throw sys_error("clone3 gvisor init");
  st.pid = static_cast<pid_t>(rc);
  st.pidfd.reset(pidfd);
  if (st.cgroups->v2_fd() < 0) st.cgroups->attach_v2(st.pid);
  in.rd.reset();
  out.wr.reset();
  err.wr.reset();
  status.wr.reset();
  st.cgroups->close_v1_task_files();

  RunResult r;
  int created = 0;
  bool setup_error = false;
  int error_status = 500;
  std::string error_msg;
  StatusReader status_reader(status.rd.get());
  auto read_status = [&]() {
    return status_reader.read([&](const StatusRecord& rec) {
      if (rec.type == RecordType::kMountpoints) created |= rec.a;
      if (rec.type == RecordType::kSpawned) {
        r.pid = rec.a;
        observer.on_spawn(rec.a);
      }
      if (rec.type == RecordType::kSetupError && !setup_error) {
        setup_error = true;
        error_status = rec.status;
        error_msg = rec.msg;
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
  CgroupStats cs = st.cgroups->stats();
  LimitsHit hit = st.cgroups->limits_hit();
  st.cgroups->remove();
  RunscEnd end;
  end.wait_status = st.wait_status;
  end.oom_killed = cs.oom_killed;
  end.memory_limit_hit = hit.memory;
  end.pids_limit_hit = hit.pids;
  std::string runsc_log = runsc_logs(state, id, &end.runsc_crashed);
  remove_created_mountpoints(spec.run_dir / "upper", created);
  remove_tree(bundle);
  remove_tree(state);
  ::unlink(plan_file.c_str());
  // A kill (cancel, timeout) can cut the setup short: the kill is the outcome then.
  if (setup_error && !sv.killed) throw Error(error_status, "sandbox setup failed: " + error_msg);

  r.timed_out = sv.timed_out;
  r.cancelled = sv.cancelled;
  r.write_limit_hit = sv.write_limit_hit;
  if (sv.killed) {
    r.signal = SIGKILL;
    r.exit_code = 128 + SIGKILL;
    r.oom_killed = cs.oom_killed;
  } else {
    RunscOutcome o = read_runsc_end(end);
    if (end.runsc_crashed)
      spdlog::warn(
          "gvisor run {}: runsc crashed (wait status {:#x}, memory limit {}, pids limit "
          "{}): {}",
          id, end.wait_status, end.memory_limit_hit ? "reached" : "not reached",
          end.pids_limit_hit ? "reached" : "not reached", runsc_log);
    if (o.failure) throw Error(500, *o.failure + (runsc_log.empty() ? "" : ": " + runsc_log));
    r.exit_code = o.exit_code;
    r.signal = o.signal;
    r.oom_killed = o.oom_killed;
  }
  r.stdout_bytes = sv.stdout_bytes;
  r.stderr_bytes = sv.stderr_bytes;
  fill_resources(r.resources, st.usage, cs, sv.elapsed);
  return r;
}

// ---------------------------------------------------------------- the init (after execve)

[[noreturn]] void init_fail(int status, const std::string& msg) {
  ChildMsg m;
  m.add(msg.c_str());
  send_error(kStatusFd, status, m);
  _exit(1);
}

// Inside the chroot: 0 when the command can be executed, else 127 (not found) or 126 (not
// executable), as a shell reports it.
int command_status(const json& plan) {
  std::string argv0 = plan["argv0"], cwd = plan["cwd"];
  auto check = [](const std::string& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return 127;
    if (!S_ISREG(st.st_mode) || !(st.st_mode & 0111)) return 126;
    return 0;
  };
  if (argv0.find('/') != std::string::npos)
    return check(argv0[0] == '/' ? argv0 : cwd + "/" + argv0);
  std::string path = plan["path"];
  int best = 127;
  size_t start = 0;
  for (;;) {
    size_t end = path.find(':', start);
    std::string dir = path.substr(start, end == std::string::npos ? end : end - start);
    if (dir.empty()) dir = cwd;
    int st = check(dir + "/" + argv0);
    if (st == 0) return 0;
    best = std::min(best, st);
    if (end == std::string::npos) return best;
    start = end + 1;
  }
}

// In a child that enters a new user namespace mapped like the sandbox's (sandbox 0 = host
// uid_base) and chroots into the merged root, so that paths and symlinks resolve inside the
// image and every write is made as sandbox root, never as host root: checks the cwd, injects
// the files and finds the command. Returns the command_status.
int inject_files(const json& plan) {
  // Opened as host root before the user namespace: the blobs (host files) and the root.
  std::vector<UniqueFd> blobs;
  for (const auto& f : plan["files"]) {
    std::string blob = f["blob"];
    blobs.emplace_back(::open(blob.c_str(), O_RDONLY | O_CLOEXEC));
    if (!blobs.back()) init_fail(500, "open file blob " + blob);
  }
  std::string merged = plan["merged"];
  UniqueFd root(::open(merged.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) init_fail(500, "open the merged root");
  int ready[2], go[2];
  if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0)
    init_fail(500, "pipe for the file injector");
  UniqueFd ready_rd(ready[0]), ready_wr(ready[1]), go_rd(go[0]), go_wr(go[1]);
  pid_t pid = ::fork();
  if (pid < 0) init_fail(500, "fork the file injector");
  if (pid == 0) {
    char c = 0;
    if (::unshare(CLONE_NEWUSER) != 0) init_fail(500, "file injector: new user namespace");
    if (::write(ready_wr.get(), "u", 1) != 1 || ::read(go_rd.get(), &c, 1) != 1 || c != 'g')
      init_fail(500, "file injector: id maps");
    if (become_namespace_root() != 0) init_fail(500, "file injector: become sandbox root");
    if (::fchdir(root.get()) != 0 || ::chroot(".") != 0 || ::chdir("/") != 0)
      init_fail(500, "chroot into the root");
    size_t i = 0;
    for (const auto& f : plan["files"]) {
      std::string path = f["path"];
      InjectedFile inj{path.c_str(), blobs[i++].get(),
                       static_cast<mode_t>(f["mode"].get<unsigned>()), f["uid"].get<uid_t>(),
                       f["gid"].get<gid_t>()};
      int status = 500;
      ChildMsg m;
      if (inject_file(inj, &status, m) != 0) {
        send_error(kStatusFd, status, m);
        _exit(1);
      }
    }
    std::string cwd = plan["cwd"];
    struct stat st {};
    if (::stat(cwd.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      init_fail(400, "cwd not found: " + cwd);
    if (::chdir(cwd.c_str()) != 0) init_fail(400, "cannot change to cwd " + cwd);
    _exit(command_status(plan) == 0 ? 0 : 100 + command_status(plan) - 126);
  }
  ready_wr.reset();
  go_rd.reset();
  char c = 0;
  if (::read(ready_rd.get(), &c, 1) == 1 && c == 'u') {
    try {
      write_id_maps(pid, plan["root_uid"].get<uid_t>(), plan["uid_range"].get<uid_t>());
      [[maybe_unused]] ssize_t w = ::write(go_wr.get(), "g", 1);
    } catch (const std::exception& e) {
      ::kill(pid, SIGKILL);
      init_fail(500, std::string("file injector: ") + e.what());
    }
  }
  go_wr.reset();
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0) return 0;
  if (WIFEXITED(ws) && (WEXITSTATUS(ws) == 100 || WEXITSTATUS(ws) == 101))
    return 126 + WEXITSTATUS(ws) - 100;
  _exit(1);  // the injector reported why
}

}  // namespace

int gvisor_init_main(int argc, char** argv) {
  if (argc < 3) return 2;
  for (int fd = kFirstTaskFd; fd < 64; ++fd)
    if (::fcntl(fd, F_GETFD) >= 0) {
      if (::write(fd, "0", 1) != 1) init_fail(500, "join cgroup v1 (tasks)");
      ::close(fd);
    }
  ::fcntl(kStatusFd, F_SETFD, FD_CLOEXEC);
  json plan;
  try {
    plan = json::parse(read_file(argv[2]));
  } catch (const std::exception& e) {
    init_fail(500, std::string("read the run plan: ") + e.what());
  }
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    init_fail(500, "make / private");
  // A /proc of our own pid namespace: runsc creates its gofer through /proc/self/exe and
  // fails with EPERM while /proc belongs to the parent namespace.
  if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    init_fail(500, "mount /proc for the pid namespace");
  std::vector<std::string> lowers = plan["lowers"].get<std::vector<std::string>>();
  std::string upper = plan["upper"], work = plan["work"], merged = plan["merged"];
  MountPlan mp;
  for (const auto& l : lowers) mp.lowers.push_back(l.c_str());
  mp.upper = upper.c_str();
  mp.work = work.c_str();
  mp.merged = merged.c_str();
  ChildMsg m;
  // overlayfs writes to the upper with the credentials of whoever mounted it, and an ext4
  // project quota does not bind CAP_SYS_RESOURCE: mount without that capability in effect,
  // so the run's write limit binds what the gofer writes (XFS binds everyone anyway). runsc
  // gets it back (it raises rlimits).
  __user_cap_header_struct caph{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct caps[2]{}, saved[2]{};
  const bool capped = ::syscall(SYS_capget, &caph, saved) == 0;
  if (capped) {
    caps[0] = saved[0];
    caps[1] = saved[1];
    caps[CAP_SYS_RESOURCE / 32].effective &= ~(1u << (CAP_SYS_RESOURCE % 32));
    if (::syscall(SYS_capset, &caph, caps) != 0) init_fail(500, "drop CAP_SYS_RESOURCE");
  }
  if (mount_overlay(mp, m) != 0) {
    send_error(kStatusFd, 500, m);
    _exit(1);
  }
  if (capped && ::syscall(SYS_capset, &caph, saved) != 0) init_fail(500, "restore capabilities");
  // Mount points runsc needs: made here (and removed from the upper after the run) when the
  // image lacks them, so they never show up in the snapshot.
  uid_t root = plan["root_uid"];
  int created = 0;
  struct Point {
    const char* name;
    int bit;
    mode_t mode;
  };
  for (Point p : {Point{"proc", kCreatedProc, 0555}, Point{"dev", kCreatedDev, 0755},
                  Point{"tmp", kCreatedTmp, 01777}}) {
    std::string path = merged + "/" + p.name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode))
        init_fail(400, std::string("/") + p.name + " in the image is not a directory");
      continue;
    }
    if (::mkdir(path.c_str(), p.mode) != 0 || ::chown(path.c_str(), root, root) != 0 ||
        ::chmod(path.c_str(), p.mode) != 0)
      init_fail(500, "create /" + std::string(p.name));
    created |= p.bit;
  }
  if (created) send_record(kStatusFd, RecordType::kMountpoints, created);
  int cmd = inject_files(plan);
  send_record(kStatusFd, RecordType::kSpawned, 1);
  if (cmd != 0) {  // as the namespace runtime (and a shell) reports it
    std::string argv0 = plan["argv0"];
    std::string msg = "coppice: " + argv0 +
                      (cmd == 127 ? ": No such file or directory\n" : ": Permission denied\n");
    [[maybe_unused]] ssize_t n = ::write(2, msg.data(), msg.size());
    _exit(cmd);
  }
  std::vector<std::string> args = plan["runsc"].get<std::vector<std::string>>();
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  std::string path_env = std::string("PATH=") + kDefaultPath;
  char* envp[] = {path_env.data(), nullptr};
  ::execve(cargs[0], cargs.data(), envp);
  init_fail(500, "exec " + args[0] + ": " + std::strerror(errno));
}

std::unique_ptr<Runtime> make_gvisor_runtime(const GvisorConfig& cfg) {
  if (cfg.runsc.empty())
    throw Error(500, "gvisor runtime: runsc not found (apt-get install runsc)");
  return std::make_unique<GvisorRuntime>(cfg);
}

std::string find_runsc(const std::string& hint) {
  std::vector<std::string> candidates;
  if (!hint.empty()) {
    candidates.push_back(hint);
  } else {
    for (const char* d : {"/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"})
      candidates.push_back(std::string(d) + "/runsc");
  }
  for (const auto& c : candidates) {
    if (::access(c.c_str(), X_OK) != 0) continue;
    std::string cmd = c + " --version >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return c;
  }
  return "";
}

}  // namespace coppice::sandbox
