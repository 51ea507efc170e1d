// coppice-sandbox-init: starts one namespace-runtime sandbox and is its pid 1 (see
// sandbox/ns_init.h for what it is given). A static binary, so that its execve costs little.
//
// The server posix_spawn()s it (a vfork: the server's memory is never copied) as host root in
// the run's network namespace. This launcher process clone()s the sandbox's init into new
// user, mount, pid, ipc and uts namespaces and the run's cgroups, writes the init's uid/gid
// maps, releases it and waits for it; the init mounts the root, forks the command and reaps.
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sandbox/caps.h"
#include "sandbox/child_msg.h"
#include "sandbox/mounts.h"
#include "sandbox/network.h"
#include "sandbox/ns_init.h"
#include "sandbox/user_ns.h"

using nlohmann::json;
using namespace coppice::sandbox;
using namespace coppice::sandbox::ns_init;

namespace {

[[noreturn]] void fail(int status, const ChildMsg& m) {
  send_error(kStatusFd, status, m);
  _exit(1);
}

[[noreturn]] void fail_errno(const char* what) {
  ChildMsg m;
  m.add(what).add_errno(errno);
  fail(500, m);
}

std::string read_all(int fd) {
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno("read the run plan");
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

// Everything the init and the command need, decoded from the plan before any mount.
struct Plan {
  std::vector<std::string> lowers, argv_store, env_store, candidate_store, file_paths;
  std::string upper, work, merged, hostname, cwd, argv0;
  uid_t uid = 0;
  gid_t gid = 0;
  CapPolicy caps;
  std::vector<InjectedFile> files;
  std::vector<char*> argv, envp;
  std::vector<const char*> candidates;
  MountPlan mounts;
  std::vector<sock_filter> seccomp_main, seccomp_extra;
  uid_t uid_base = 0, uid_range = 0;
  int first_task_fd = 0, task_fds = 0;  // v1 `tasks` files, after the blobs
  int cgroup2_fd = -1;                  // the run's cgroup2 directory, after the tasks files
};

void decode(Plan& p) {
  json j = json::parse(read_all(kPlanFd), nullptr, false);
  if (j.is_discarded()) {
    ChildMsg m;
    fail(500, m.add("the run plan is not JSON"));
  }
  try {
    p.lowers = j.at("lowers").get<std::vector<std::string>>();
    p.upper = j.at("upper");
    p.work = j.at("work");
    p.merged = j.at("merged");
    p.hostname = j.at("hostname");
    p.cwd = j.at("cwd");
    p.uid = j.at("uid");
    p.gid = j.at("gid");
    p.argv_store = j.at("argv").get<std::vector<std::string>>();
    p.env_store = j.at("env").get<std::vector<std::string>>();
    p.argv0 = j.at("argv0");
    p.candidate_store = j.at("candidates").get<std::vector<std::string>>();
    p.caps.last_cap = j.at("caps").at("last_cap");
    p.caps.keep = j.at("caps").at("keep");
    int fd = kFirstBlobFd;
    for (const auto& f : j.at("files")) {
      p.file_paths.push_back(f.at("path"));
      p.files.push_back(InjectedFile{nullptr, fd++, f.at("mode").get<mode_t>(),
                                     f.at("uid").get<uid_t>(), f.at("gid").get<gid_t>()});
    }
    p.uid_base = j.at("uid_base");
    p.uid_range = j.at("uid_range");
    p.first_task_fd = fd;
    p.task_fds = j.at("v1_tasks_files");
    if (j.at("cgroup2")) p.cgroup2_fd = fd + p.task_fds;
  } catch (const std::exception& e) {
    ChildMsg m;
    fail(500, m.add("bad run plan: ").add(e.what()));
  }
  for (size_t i = 0; i < p.files.size(); ++i) p.files[i].path = p.file_paths[i].c_str();
  for (auto& a : p.argv_store) p.argv.push_back(a.data());
  p.argv.push_back(nullptr);
  for (auto& e : p.env_store) p.envp.push_back(e.data());
  p.envp.push_back(nullptr);
  for (const auto& c : p.candidate_store) p.candidates.push_back(c.c_str());
  for (const auto& l : p.lowers) p.mounts.lowers.push_back(l.c_str());
  p.mounts.upper = p.upper.c_str();
  p.mounts.work = p.work.c_str();
  p.mounts.merged = p.merged.c_str();
  // Mounted inside the sandbox's user namespace: setuid binaries of the image work for the
  // sandbox (as in any container); devices are off (and could not be used there anyway).
  p.mounts.attrs = MOUNT_ATTR_NODEV;

  // The seccomp programs: u32 count of the first, u32 count of the second, the instructions.
  std::string s = read_all(kSeccompFd);
  uint32_t n[2] = {0, 0};
  if (s.size() >= sizeof n) std::memcpy(n, s.data(), sizeof n);
  if (!n[0] || !n[1] || s.size() != sizeof n + (n[0] + n[1]) * sizeof(sock_filter)) {
    ChildMsg m;
    fail(500, m.add("bad seccomp programs"));
  }
  p.seccomp_main.resize(n[0]);
  p.seccomp_extra.resize(n[1]);
  std::memcpy(p.seccomp_main.data(), s.data() + sizeof n, n[0] * sizeof(sock_filter));
  std::memcpy(p.seccomp_extra.data(), s.data() + sizeof n + n[0] * sizeof(sock_filter),
              n[1] * sizeof(sock_filter));
  ::close(kPlanFd);
  ::close(kSeccompFd);
}

void reset_signals() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  for (int s = 1; s < _NSIG; ++s)
    if (s != SIGKILL && s != SIGSTOP) ::sigaction(s, &sa, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

int install_seccomp(std::vector<sock_filter>& prog) {
  sock_fprog f{static_cast<unsigned short>(prog.size()), prog.data()};
  return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &f, 0, 0);
}

// The command (pid 2): stdio is in place already (fds 0-2).
[[noreturn]] void command_main(Plan& p) {
  if (drop_bounding_set(p.caps) != 0) fail_errno("drop capability bounding set");
  if (switch_identity(p.uid, p.gid) != 0) fail_errno("switch to the command's uid/gid");
  if (restrict_capabilities(p.caps, p.uid == 0) != 0) fail_errno("capset");
  if (::chdir(p.cwd.c_str()) != 0) {
    int e = errno;
    ChildMsg m;
    if (e == ENOENT || e == ENOTDIR)
      m.add("cwd not found: ").add(p.cwd.c_str());
    else
      m.add("cannot change to cwd ").add(p.cwd.c_str()).add_errno(e);
    fail(400, m);
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail_errno("PR_SET_NO_NEW_PRIVS");
  ::syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
  if (install_seccomp(p.seccomp_main) != 0 || install_seccomp(p.seccomp_extra) != 0)
    fail_errno("load seccomp filter");

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

// The sandbox's pid 1, forked by the launcher into the new namespaces.
[[noreturn]] void init_main(Plan& p, int go_fd) {
  // Join the v1 cgroups while still host root (the launcher joined us to cgroup2 at clone).
  for (int i = 0; i < p.task_fds; ++i) {
    if (::write(p.first_task_fd + i, "0", 1) != 1) fail_errno("join cgroup v1 (tasks)");
    ::close(p.first_task_fd + i);
  }
  if (p.cgroup2_fd >= 0) ::close(p.cgroup2_fd);
  char go;
  ssize_t n;
  do n = ::read(go_fd, &go, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1) _exit(1);  // the launcher gave up on us
  ::close(go_fd);
  if (become_namespace_root() != 0) fail_errno("setresuid(0) in the user namespace");
  // Credential changes reset the parent-death signal, so arm it now.
  // (A launcher killed before this point leaves us to the server's kill of the run's cgroups.)
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  // The server keeps the sync pipe's write end open for the whole run: a hangup means it
  // died.
  pollfd pf{kSyncFd, POLLIN, 0};
  if (::poll(&pf, 1, 0) > 0 && (pf.revents & (POLLHUP | POLLERR))) _exit(1);
  ::setsid();

  if (::unshare(CLONE_NEWCGROUP) != 0) fail_errno("unshare(CLONE_NEWCGROUP)");
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    fail_errno("make / private");
  ChildMsg m;
  if (mount_overlay(p.mounts, m) != 0) fail(500, m);
  if (::chdir(p.merged.c_str()) != 0) fail_errno("chdir to the merged root");
  int created = 0;
  if (mount_pseudo_filesystems(&created, kStatusFd, m) != 0) fail(500, m);
  if (pivot_into_cwd(m) != 0) fail(500, m);
  int before = created;
  if (ensure_tmp(&created, m) != 0) fail(500, m);
  if (created != before) send_record(kStatusFd, RecordType::kMountpoints, created);
  if (::sethostname(p.hostname.data(), p.hostname.size()) != 0) fail_errno("sethostname");
  if (bring_up_loopback() != 0) fail_errno("bring up lo");
  for (const InjectedFile& f : p.files) {
    int status = 500;
    if (inject_file(f, &status, m) != 0) fail(status, m);
    ::close(f.blob_fd);
  }

  pid_t pid = ::fork();
  if (pid == 0) command_main(p);
  if (pid < 0) fail_errno("fork the command");
  send_record(kStatusFd, RecordType::kSpawned, static_cast<int32_t>(pid));
  for (int fd = 0; fd < 3; ++fd) ::close(fd);
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
  send_record(kStatusFd, RecordType::kExited, static_cast<int32_t>(pid), main_status);
  _exit(0);
}

}  // namespace

// The launcher.
int main() {
  reset_signals();
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);  // the server thread that spawned us
  Plan p;
  decode(p);
  int go[2];
  if (::pipe2(go, O_CLOEXEC) != 0) fail_errno("pipe");
  clone_args ca{};
  ca.flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
  ca.exit_signal = SIGCHLD;
  if (p.cgroup2_fd >= 0) {
    ca.flags |= CLONE_INTO_CGROUP;
    ca.cgroup = static_cast<uint64_t>(p.cgroup2_fd);
  }
  long rc = ::syscall(SYS_clone3, &ca, sizeof ca);  // fork-like: we are single-threaded
  if (rc == 0) {
    ::close(go[1]);
    init_main(p, go[0]);
  }
  if (rc < 0) fail_errno("clone the sandbox into its namespaces");
  const pid_t init = static_cast<pid_t>(rc);
  ::close(go[0]);
  // Only the init keeps the run's fds: the command's pipes must see EOF when it is done.
  for (int fd : {0, 1, 2, kSyncFd}) ::close(fd);
  for (const InjectedFile& f : p.files) ::close(f.blob_fd);
  for (int i = 0; i < p.task_fds; ++i) ::close(p.first_task_fd + i);
  if (p.cgroup2_fd >= 0) ::close(p.cgroup2_fd);
  try {
    write_id_maps(init, p.uid_base, p.uid_range);
  } catch (const std::exception& e) {
    ::kill(init, SIGKILL);
    ChildMsg m;
    fail(500, m.add(e.what()));
  }
  if (::write(go[1], "g", 1) != 1) fail_errno("release the sandbox init");
  ::close(go[1]);
  ::close(kStatusFd);
  int st = 0;
  while (::waitpid(init, &st, __WALL) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(st)) {  // end the same way, for the server (an OOM kill, say)
    rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    ::kill(::getpid(), WTERMSIG(st));
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
