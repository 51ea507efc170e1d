// coppice-guest-agent: /init of the microVM runtime's guest (a static binary, see
// docs/RUNTIMES.md). It loads the virtio modules listed in /modules, finds the "coppice"
// virtio-serial port, reads the run's spec, mounts the image (/dev/vda, ext4, read-only) under
// an overlay whose upper is /dev/vdb, injects files, runs the command with the requested
// uid/gid/cwd/env/stdin, streams its output, enforces the timeout and the output cap, reports
// the exit status and rusage, sends the upper directory's entries back when asked, and powers
// the VM off. Any failure powers off too: the host notices the missing kExit.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/base64.h"
#include "guest/protocol.h"

using nlohmann::json;
using namespace coppice::guest;

namespace {

int g_ctl = -1;

[[noreturn]] void power_off() {
  ::sync();
  ::reboot(RB_POWER_OFF);
  for (;;) ::pause();
}

// After the guest's last frame: wait (bounded) for the host's kDone, which says the frames
// queued on the port have all been read, then power off.
[[noreturn]] void finish() {
  if (g_ctl >= 0) {
    pollfd p{g_ctl, POLLIN, 0};
    char buf[64];
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      until - std::chrono::steady_clock::now())
                      .count();
      if (left <= 0) break;
      int rc = ::poll(&p, 1, static_cast<int>(left));
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) break;
      ssize_t n = ::read(g_ctl, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || std::memchr(buf, kDone, static_cast<size_t>(n))) break;
    }
  }
  power_off();
}

[[noreturn]] void fail(const std::string& msg) {
  if (g_ctl >= 0) write_frame(g_ctl, kError, msg);
  finish();
}

std::string read_text(const std::string& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void load_modules() {
  std::istringstream list(read_text("/modules"));
  std::string name;
  while (std::getline(list, name)) {
    if (name.empty()) continue;
    std::string path = "/lib/modules/" + name;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("open module " + path);
    if (::syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
      fail("load module " + name + ": " + std::strerror(errno));
    ::close(fd);
  }
}

// /dev/vportNpM of the port named "coppice" (devtmpfs names them; the name is in sysfs).
int open_port() {
  for (int attempt = 0; attempt < 500; ++attempt) {
    if (DIR* d = ::opendir("/sys/class/virtio-ports")) {
      while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::string name = read_text(std::string("/sys/class/virtio-ports/") + e->d_name + "/name");
        while (!name.empty() && (name.back() == '\n' || name.back() == '\0')) name.pop_back();
        if (name == "coppice") {
          std::string dev = std::string("/dev/") + e->d_name;
          int fd = ::open(dev.c_str(), O_RDWR | O_CLOEXEC);
          ::closedir(d);
          return fd;
        }
      }
      ::closedir(d);
    }
    ::usleep(10000);
  }
  return -1;
}

bool read_frame(FrameReader& r, FrameType& t, std::string& payload) {
  char buf[65536];
  while (!r.next(t, payload)) {
    ssize_t n = ::read(g_ctl, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    r.feed(buf, static_cast<size_t>(n));
  }
  return true;
}

void must(int rc, const std::string& what) {
  if (rc != 0) fail(what + ": " + std::strerror(errno));
}

void write_text(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) fail("open " + path + ": " + std::strerror(errno));
  ssize_t n = ::write(fd, text.data(), text.size());
  int e = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(text.size())) fail("write " + path + ": " + std::strerror(e));
}

// The run's pids limit, enforced by the guest's kernel: a cgroup with pids.max that the
// command joins before its exec (on the host, the limit only bounds QEMU's threads). Returns
// that group's cgroup.procs, open, or -1 when the spec sets no limit.
int pids_cgroup(const json& spec) {
  uint64_t pids = spec.value("pids", uint64_t{0});
  if (pids == 0) return -1;
  must(::mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr),
       "mount cgroup2");
  write_text("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
  must(::mkdir("/sys/fs/cgroup/run", 0755), "mkdir the run's cgroup");
  write_text("/sys/fs/cgroup/run/pids.max", std::to_string(pids));
  int fd = ::open("/sys/fs/cgroup/run/cgroup.procs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) fail(std::string("open the run's cgroup.procs: ") + std::strerror(errno));
  return fd;
}
int g_pids_procs = -1;  // pids_cgroup()'s fd, or -1

void mkdir_p(const std::string& path, uid_t uid, gid_t gid) {
  std::string cur;
  size_t pos = 1;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    cur = path.substr(0, next);
    if (::mkdir(cur.c_str(), 0755) == 0) {
      if (::chown(cur.c_str(), uid, gid) != 0) fail("chown " + cur);
    } else if (errno != EEXIST) {
      fail("mkdir " + cur + ": " + std::strerror(errno));
    }
    pos = next + 1;
  }
}

// Mount points the image lacks are created for the run and removed after it (if still empty),
// so they do not become part of the snapshot.
std::vector<std::string> g_created;

// The scratch disk (its root, kept open across the chroot) and the bytes it used before the
// run: the host learns how much the run's changes took (its write limit is the disk's size).
int g_rw_fd = -1;
uint64_t g_rw_base = 0;

uint64_t rw_used() {
  struct statvfs v {};
  if (g_rw_fd < 0 || ::fstatvfs(g_rw_fd, &v) != 0) return 0;
  return static_cast<uint64_t>(v.f_blocks - v.f_bfree) * v.f_frsize;
}

void mount_root(const json& spec) {
  // The image disk is the read-only one (its order on the bus is not a promise).
  bool vda_ro = read_text("/sys/block/vda/ro").rfind("1", 0) == 0;
  const char* image = vda_ro ? "/dev/vda" : "/dev/vdb";
  const char* scratch = vda_ro ? "/dev/vdb" : "/dev/vda";
  must(::mount(image, "/lower", "ext4", MS_RDONLY, "noload"),
       std::string("mount the image ") + image);
  must(::mount(scratch, "/rw", "ext4", 0, nullptr),
       std::string("mount the scratch disk ") + scratch);
  g_rw_fd = ::open("/rw", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  g_rw_base = rw_used();
  ::mkdir("/rw/upper", 0755);
  ::mkdir("/rw/work", 0755);
  // The root directory's attributes come from the upper: those of the image's root.
  struct stat st {};
  if (::stat("/lower", &st) == 0) {
    ::chown("/rw/upper", st.st_uid, st.st_gid);
    ::chmod("/rw/upper", st.st_mode & 07777);
  }
  must(::mount("overlay", "/root", "overlay", 0,
               "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work"),
       "mount the overlay root");
  for (const char* p : {"proc", "dev", "tmp"}) {
    std::string path = std::string("/root/") + p;
    if (::lstat(path.c_str(), &st) == 0) continue;
    must(::mkdir(path.c_str(), std::strcmp(p, "tmp") == 0 ? 01777 : 0755), "mkdir " + path);
    if (std::strcmp(p, "tmp") == 0) ::chmod(path.c_str(), 01777);
    g_created.push_back(p);
  }
  must(::mount("proc", "/root/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr),
       "mount /proc");
  must(::mount("tmpfs", "/root/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k"),
       "mount /dev");
  struct Node {
    const char* name;
    int major, minor;
  };
  for (Node n : {Node{"null", 1, 3}, Node{"zero", 1, 5}, Node{"full", 1, 7}, Node{"random", 1, 8},
                 Node{"urandom", 1, 9}, Node{"tty", 5, 0}}) {
    std::string p = std::string("/root/dev/") + n.name;
    must(::mknod(p.c_str(), S_IFCHR | 0666, makedev(n.major, n.minor)), "mknod " + p);
    ::chmod(p.c_str(), 0666);
  }
  ::symlink("/proc/self/fd", "/root/dev/fd");
  ::symlink("/proc/self/fd/0", "/root/dev/stdin");
  ::symlink("/proc/self/fd/1", "/root/dev/stdout");
  ::symlink("/proc/self/fd/2", "/root/dev/stderr");
  ::mkdir("/root/dev/shm", 01777);
  (void)spec;
}

void inject_files(const json& spec) {
  for (const auto& f : spec.value("files", json::array())) {
    std::string path = f["path"];
    auto data = coppice::base64_decode(f["data"].get<std::string>());
    if (!data) fail("file " + path + ": bad base64");
    auto slash = path.rfind('/');
    if (slash > 0) mkdir_p(path.substr(0, slash), 0, 0);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) fail("400 file injection: cannot create " + path + ": " + std::strerror(errno));
    if (::write(fd, data->data(), data->size()) != static_cast<ssize_t>(data->size()))
      fail("write " + path);
    must(::fchown(fd, f["uid"].get<uid_t>(), f["gid"].get<gid_t>()), "chown " + path);
    must(::fchmod(fd, f["mode"].get<mode_t>()), "chmod " + path);
    ::close(fd);
  }
}

int64_t uptime_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

[[noreturn]] void exec_command(const json& spec, int in, int out, int err) {
  if (g_pids_procs >= 0 && ::write(g_pids_procs, "0", 1) != 1) _exit(126);  // join the group
  ::dup2(in, 0);
  ::dup2(out, 1);
  ::dup2(err, 2);
  ::setsid();
  gid_t gid = spec["gid"];
  uid_t uid = spec["uid"];
  if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 ||
      ::setresuid(uid, uid, uid) != 0)
    _exit(126);
  std::string cwd = spec["cwd"];
  if (::chdir(cwd.c_str()) != 0) {
    std::string m = "coppice: cwd not found: " + cwd + "\n";
    [[maybe_unused]] ssize_t n = ::write(2, m.data(), m.size());
    _exit(126);
  }
  std::vector<std::string> argv = spec["argv"], env = spec["env"];
  std::vector<char*> av, ev;
  for (auto& a : argv) av.push_back(a.data());
  av.push_back(nullptr);
  for (auto& e : env) ev.push_back(e.data());
  ev.push_back(nullptr);
  std::string path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (const auto& e : env)
    if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
  int e = ENOENT;
  if (argv[0].find('/') != std::string::npos) {
    ::execve(argv[0].c_str(), av.data(), ev.data());
    e = errno;
  } else {
    size_t start = 0;
    for (;;) {
      size_t end = path.find(':', start);
      std::string dir = path.substr(start, end == std::string::npos ? end : end - start);
      std::string cand = (dir.empty() ? "." : dir) + "/" + argv[0];
      ::execve(cand.c_str(), av.data(), ev.data());
      if (errno == EACCES) e = EACCES;
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  std::string m = "coppice: " + argv[0] + ": " + std::strerror(e) + "\n";
  [[maybe_unused]] ssize_t n = ::write(2, m.data(), m.size());
  _exit(e == ENOENT ? 127 : 126);
}

json run_command(const json& spec) {
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) || ::pipe2(out, O_CLOEXEC) || ::pipe2(err, O_CLOEXEC)) fail("pipe");
  pid_t pid = ::fork();
  if (pid < 0) fail("fork the command");
  if (pid == 0) exec_command(spec, in[0], out[1], err[1]);
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  write_frame(g_ctl, kStarted, json{{"pid", pid}, {"boot_ms", uptime_ms()}}.dump());
  auto stdin_data = coppice::base64_decode(spec.value("stdin", std::string()));
  std::string input = stdin_data ? *stdin_data : "";
  size_t in_off = 0;
  int in_fd = in[1];
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  } else {
    ::fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  uint64_t limit = spec.value("truncate", 1u << 20);
  uint64_t totals[2] = {0, 0};
  int fds[2] = {out[0], err[0]};
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(spec.value("timeout_ms", 60000));
  bool timed_out = false;
  std::vector<char> buf(65536);
  while (fds[0] >= 0 || fds[1] >= 0) {
    pollfd p[3];
    int n = 0, idx[3];
    for (int i = 0; i < 2; ++i)
      if (fds[i] >= 0) idx[n] = i, p[n++] = {fds[i], POLLIN, 0};
    int i_in = -1;
    if (in_fd >= 0) i_in = n, p[n++] = {in_fd, POLLOUT, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (!timed_out && left <= 0) {
      timed_out = true;
      ::kill(-1, SIGKILL);  // every process but us
    }
    int rc = ::poll(p, static_cast<nfds_t>(n),
                    timed_out ? 200 : static_cast<int>(std::max<int64_t>(left, 0)));
    if (rc < 0 && errno != EINTR) break;
    for (int k = 0; k < n; ++k) {
      if (!p[k].revents) continue;
      if (k == i_in) {
        ssize_t w = ::write(in_fd, input.data() + in_off, input.size() - in_off);
        if (w > 0) in_off += static_cast<size_t>(w);
        if ((w < 0 && errno != EAGAIN) || in_off == input.size() ||
            (p[k].revents & (POLLERR | POLLHUP))) {
          ::close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      int i = idx[k];
      ssize_t r = ::read(fds[i], buf.data(), buf.size());
      if (r <= 0) {
        ::close(fds[i]);
        fds[i] = -1;
        continue;
      }
      uint64_t kept =
          std::min<uint64_t>(static_cast<uint64_t>(r), totals[i] < limit ? limit - totals[i] : 0);
      totals[i] += static_cast<uint64_t>(r);
      if (kept) write_frame(g_ctl, i == 0 ? kStdout : kStderr, std::string(buf.data(), kept));
    }
  }
  if (in_fd >= 0) ::close(in_fd);
  int status = 0;
  rusage ru{};
  while (::wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  ::kill(-1, SIGKILL);
  while (::waitpid(-1, nullptr, 0) > 0) {
  }
  json x = {{"timed_out", timed_out},
            {"stdout_bytes", totals[0]},
            {"stderr_bytes", totals[1]},
            {"user_us", ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec},
            {"sys_us", ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec},
            {"max_rss_kb", ru.ru_maxrss},
            {"minflt", ru.ru_minflt},
            {"majflt", ru.ru_majflt},
            {"nvcsw", ru.ru_nvcsw},
            {"nivcsw", ru.ru_nivcsw},
            {"inblock", ru.ru_inblock},
            {"oublock", ru.ru_oublock}};
  if (WIFEXITED(status)) {
    x["exit_code"] = WEXITSTATUS(status);
    x["signal"] = -1;
  } else {
    x["signal"] = WTERMSIG(status);
    x["exit_code"] = 128 + WTERMSIG(status);
    x["core_dump"] = static_cast<bool>(WCOREDUMP(status));
  }
  return x;
}

// Sends the upper directory's entries (pre-order, so parents come first).
void send_changes(const std::string& dir, const std::string& rel) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) fail("read " + dir);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d))
    if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
  ::closedir(d);
  for (const auto& name : names) {
    std::string path = dir + "/" + name, r = rel.empty() ? name : rel + "/" + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) continue;
    json h = {{"path", r},
              {"mode", st.st_mode & 07777},
              {"uid", st.st_uid},
              {"gid", st.st_gid},
              {"mtime", st.st_mtim.tv_sec}};
    if (S_ISDIR(st.st_mode)) {
      h["type"] = "dir";
      char v[4];
      ssize_t n = ::lgetxattr(path.c_str(), "trusted.overlay.opaque", v, sizeof v);
      h["opaque"] = n == 1 && v[0] == 'y';
      write_frame(g_ctl, kEntry, h.dump());
      send_changes(path, r);
    } else if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {
      h["type"] = "whiteout";
      write_frame(g_ctl, kEntry, h.dump());
    } else if (S_ISLNK(st.st_mode)) {
      std::string target(4096, '\0');
      ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
      target.resize(n > 0 ? static_cast<size_t>(n) : 0);
      h["type"] = "symlink";
      h["target"] = target;
      write_frame(g_ctl, kEntry, h.dump());
    } else if (S_ISREG(st.st_mode)) {
      h["type"] = "file";
      h["size"] = st.st_size;
      write_frame(g_ctl, kEntry, h.dump());
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) fail("open " + path);
      std::vector<char> buf(256 * 1024);
      for (;;) {
        ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n <= 0) break;
        write_frame(g_ctl, kData, std::string(buf.data(), static_cast<size_t>(n)));
      }
      ::close(fd);
    }  // sockets, fifos and devices are not kept (as in the namespace runtime's images)
  }
}

}  // namespace

int main() {
  ::mount("devtmpfs", "/dev", "devtmpfs", 0, nullptr);
  ::mount("proc", "/proc", "proc", 0, nullptr);
  ::mount("sysfs", "/sys", "sysfs", 0, nullptr);
  load_modules();
  // A probe boot (the host checking that this accelerator can run us): done once booted.
  if (read_text("/proc/cmdline").find("coppice.probe") != std::string::npos) power_off();
  g_ctl = open_port();
  if (g_ctl < 0) power_off();
  FrameReader reader;
  FrameType t;
  std::string payload;
  if (!read_frame(reader, t, payload) || t != kSpec) fail("no run spec");
  json spec = json::parse(payload, nullptr, false);
  if (spec.is_discarded()) fail("bad run spec");
  mount_root(spec);
  g_pids_procs = pids_cgroup(spec);
  int real_root = ::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  must(::chroot("/root"), "chroot");
  must(::chdir("/"), "chdir /");
  std::string host = spec.value("hostname", "coppice");
  ::sethostname(host.data(), host.size());
  inject_files(spec);
  json result = run_command(spec);
  uint64_t used = rw_used();
  result["scratch_used_bytes"] = used > g_rw_base ? used - g_rw_base : 0;
  write_frame(g_ctl, kExit, result.dump());
  if (spec.value("changes", false)) {
    // Back to the initramfs root; take the run's mounts down so the upper holds only the
    // image's changes, then send them.
    must(::fchdir(real_root), "fchdir");
    must(::chroot("."), "leave the root");
    ::umount2("/root/dev", MNT_DETACH);
    ::umount2("/root/proc", MNT_DETACH);
    must(::umount("/root"), "unmount the overlay");
    for (const auto& p : g_created) ::rmdir(("/rw/upper/" + p).c_str());  // only when empty
    send_changes("/rw/upper", "");
    write_frame(g_ctl, kEnd, "");
  }
  finish();
}
