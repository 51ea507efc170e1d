#include "sandbox/qemu_jail.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <set>

#include "common/error.h"
#include "sandbox/child_msg.h"
#include "sandbox/mounts.h"

namespace coppice::sandbox {

std::vector<std::string> qemu_sandbox_args() {
  return {"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"};
}

namespace {

bool safe_inside(const std::string& p) {
  if (p.size() < 2 || p[0] != '/' || p.back() == '/') return false;
  for (size_t i = 0; i < p.size();) {
    size_t next = p.find('/', i + 1);
    std::string part = p.substr(i + 1, next == std::string::npos ? next : next - i - 1);
    if (part.empty() || part == "." || part == "..") return false;
    if (next == std::string::npos) break;
    i = next;
  }
  return p.rfind("/usr/", 0) != 0 && p.rfind("/dev/", 0) != 0;
}

}  // namespace

QemuLaunch::QemuLaunch(const QemuJailConfig& cfg, const std::vector<std::string>& args,
                       std::vector<int> fds)
    : cfg_(cfg), fds_(std::move(fds)) {
  if (cfg_.uid == 0 || cfg_.gid == 0) throw Error(500, "microvm: QEMU must not run as root");
  if (cfg_.qemu.rfind("/usr/", 0) != 0)
    throw Error(500,
                "microvm: QEMU must be installed under /usr (it runs in a jail that shows "
                "only /usr): " +
                    cfg_.qemu);
  if (fds_.size() > 32) throw Error(500, "microvm: too many descriptors for QEMU");
  const std::string root = cfg_.mount_point.string();
  auto at = [&](const std::string& rel) { return root + "/" + rel; };
  ops_.push_back({Op::kDir, at("usr"), ""});
  ops_.push_back({Op::kBind, at("usr"), "/usr"});
  // merged /usr: /lib -> usr/lib and so on; a host that still has real directories there gets
  // them bound read-only
  for (const char* name : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) {
    std::string host = std::string("/") + name;
    struct stat st {};
    if (::lstat(host.c_str(), &st) != 0) continue;
    if (S_ISLNK(st.st_mode)) {
      std::error_code ec;
      fs::path target = fs::read_symlink(host, ec);
      if (!ec) ops_.push_back({Op::kSymlink, at(name), target.string()});
    } else if (S_ISDIR(st.st_mode)) {
      ops_.push_back({Op::kDir, at(name), ""});
      ops_.push_back({Op::kBind, at(name), host});
    }
  }
  ops_.push_back({Op::kDir, at("dev"), ""});
  std::vector<std::string> devices = {"null", "zero", "random", "urandom"};
  if (cfg_.kvm) devices.push_back("kvm");
  for (const auto& d : devices) {
    ops_.push_back({Op::kFile, at("dev/" + d), ""});
    ops_.push_back({Op::kBindDevice, at("dev/" + d), "/dev/" + d});
  }
  std::set<std::string> dirs;
  for (const auto& [host, inside] : cfg_.files) {
    if (!safe_inside(inside)) throw Error(500, "microvm: bad path in QEMU's jail: " + inside);
    struct stat st {};
    if (::stat(host.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      throw sys_error("microvm: QEMU needs the file " + host.string());
    for (size_t slash = inside.find('/', 1); slash != std::string::npos;
         slash = inside.find('/', slash + 1)) {
      std::string dir = inside.substr(1, slash - 1);
      if (dirs.insert(dir).second) ops_.push_back({Op::kDir, at(dir), ""});
    }
    ops_.push_back({Op::kFile, at(inside.substr(1)), ""});
    ops_.push_back({Op::kBind, at(inside.substr(1)), host.string()});
  }
  argv_store_.push_back(cfg_.qemu);
  argv_store_.insert(argv_store_.end(), args.begin(), args.end());
  for (auto& a : argv_store_) argv_.push_back(a.data());
  argv_.push_back(nullptr);
}

void QemuLaunch::child(const std::vector<int>& task_fds, int err_fd) const noexcept {
  ChildMsg m;
  auto die = [&](const char* what, const char* path) {
    int e = errno;
    m.add("QEMU's jail: ").add(what);
    if (path) m.add(" ").add(path);
    m.add_errno(e).add("\n");
    write_all(2, m.buf, m.len);
    _exit(125);
  };
  // the run's v1 cgroups (hybrid hosts), while still host root
  for (int fd : task_fds)
    if (::write(fd, "0", 1) != 1) die("join cgroup v1", nullptr);
  if (::dup2(err_fd, 2) != 2) _exit(125);
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0 || ::dup2(null, 0) != 0 || ::dup2(null, 1) != 1) die("open", "/dev/null");
  // the run's descriptors as 3, 4, ...: first out of the way (a source may sit on a target)
  int moved[32];
  size_t n = fds_.size();
  for (size_t i = 0; i < n; ++i)
    if ((moved[i] = ::fcntl(fds_[i], F_DUPFD_CLOEXEC, 64)) < 0) die("dup a descriptor", nullptr);
  for (size_t i = 0; i < n; ++i)
    if (::dup2(moved[i], static_cast<int>(3 + i)) < 0) die("dup a descriptor", nullptr);
  ::syscall(SYS_close_range, static_cast<unsigned>(3 + n), ~0U, 0);

  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    die("make / private", nullptr);
  const char* root = cfg_.mount_point.c_str();
  if (::mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0755,size=64k,nr_inodes=256") != 0)
    die("mount its root", root);
  for (const Op& op : ops_) {
    const char* p = op.path.c_str();
    switch (op.kind) {
      case Op::kDir:
        if (::mkdir(p, 0755) != 0 && errno != EEXIST) die("mkdir", p);
        break;
      case Op::kFile: {
        int fd = ::open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) die("create", p);
        ::close(fd);
        break;
      }
      case Op::kSymlink:
        if (::symlink(op.source.c_str(), p) != 0) die("symlink", p);
        break;
      case Op::kBind:
      case Op::kBindDevice: {
        unsigned long flags =
            op.kind == Op::kBind ? MS_RDONLY | MS_NOSUID | MS_NODEV : MS_NOSUID | MS_NOEXEC;
        if (::mount(op.source.c_str(), p, nullptr, MS_BIND, nullptr) != 0 ||
            ::mount(nullptr, p, nullptr, MS_REMOUNT | MS_BIND | flags, nullptr) != 0)
          die("bind", op.source.c_str());
        break;
      }
    }
  }
  if (::mount(nullptr, root, nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              nullptr) != 0)
    die("make its root read-only", root);
  if (::chdir(root) != 0) die("chdir", root);
  if (pivot_into_cwd(m) != 0) {
    m.add("\n");
    write_all(2, m.buf, m.len);
    _exit(125);
  }
  rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  gid_t groups[1] = {cfg_.kvm_gid};
  bool kvm_group = cfg_.kvm && cfg_.kvm_gid != 0;
  if (::setgroups(kvm_group ? 1 : 0, groups) != 0 ||
      ::setresgid(cfg_.gid, cfg_.gid, cfg_.gid) != 0 ||
      ::setresuid(cfg_.uid, cfg_.uid, cfg_.uid) != 0)
    die("switch to QEMU's uid", nullptr);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("no_new_privs", nullptr);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);  // after the uid change, which clears it
  char* envp[] = {nullptr};
  ::execve(argv_[0], argv_.data(), envp);
  die("exec", argv_[0]);
  _exit(125);
}

pid_t QemuLaunch::start(int cgroup2_fd, const std::vector<int>& task_fds, int err_fd,
                        int* pidfd) const {
  clone_args ca{};
  ca.flags = CLONE_PIDFD | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS |
             CLONE_NEWCGROUP;
  ca.pidfd = reinterpret_cast<uint64_t>(pidfd);
  ca.exit_signal = SIGCHLD;
  if (cgroup2_fd >= 0) {
    ca.flags |= CLONE_INTO_CGROUP;
    ca.cgroup = static_cast<uint64_t>(cgroup2_fd);
  }
  long rc = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (rc == 0) child(task_fds, err_fd);
  if (rc < 0) throw sys_error("microvm: clone3 QEMU into its jail");
  return static_cast<pid_t>(rc);
}

}  // namespace coppice::sandbox
