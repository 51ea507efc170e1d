#include "sandbox/mounts.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace coppice::sandbox {

namespace {

int fail(ChildMsg& err, const char* what, const char* path, int e) {
  err.add(what);
  if (path) err.add(" ").add(path);
  err.add_errno(e);
  errno = e;
  return -1;
}

// Appends the kernel's fs_context messages ("e overlay: ...") to `err`.
void add_fs_log(int fsfd, ChildMsg& err) {
  char buf[512];
  for (int i = 0; i < 4; ++i) {
    ssize_t n = ::read(fsfd, buf, sizeof buf - 1);
    if (n <= 0) break;
    buf[n] = 0;
    if (buf[n - 1] == '\n') buf[n - 1] = 0;
    err.add(" [").add(buf).add("]");
  }
}

int fsconfig_fail(int fsfd, ChildMsg& err, const char* what, const char* value) {
  int e = errno;
  err.add("overlay mount: ").add(what);
  if (value) err.add(" ").add(value);
  err.add_errno(e);
  add_fs_log(fsfd, err);
  ::close(fsfd);
  errno = e;
  return -1;
}

// mkdir `name` (relative to cwd) when it does not exist; refuses non-directories.
int ensure_dir(const char* name, mode_t mode, bool* made, ChildMsg& err) {
  struct stat st;
  *made = false;
  if (::lstat(name, &st) == 0) {
    if (S_ISDIR(st.st_mode)) return 0;
    err.add("the image's /").add(name).add(" is not a directory");
    errno = ENOTDIR;
    return -1;
  }
  if (errno != ENOENT) return fail(err, "stat", name, errno);
  if (::mkdir(name, mode) != 0) return fail(err, "mkdir", name, errno);
  *made = true;
  return 0;
}

int bind_dev(const char* name, bool required, ChildMsg& err) {
  char target[64] = "dev/";
  char source[64] = "/dev/";
  strncat(target, name, sizeof target - 5);
  strncat(source, name, sizeof source - 6);
  int fd = ::open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
  if (fd < 0) return fail(err, "create", target, errno);
  ::close(fd);
  if (::mount(source, target, nullptr, MS_BIND, nullptr) != 0) {
    if (!required) {
      ::unlink(target);
      return 0;
    }
    return fail(err, "bind mount", source, errno);
  }
  return 0;
}

}  // namespace

int mount_overlay(const MountPlan& plan, ChildMsg& err) noexcept {
  int fsfd = ::fsopen("overlay", FSOPEN_CLOEXEC);
  if (fsfd < 0) return fail(err, "fsopen overlay", nullptr, errno);
  for (const char* lower : plan.lowers)
    if (::fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir+", lower, 0) != 0)
      return fsconfig_fail(fsfd, err, "lowerdir+", lower);
  if (::fsconfig(fsfd, FSCONFIG_SET_STRING, "upperdir", plan.upper, 0) != 0)
    return fsconfig_fail(fsfd, err, "upperdir", plan.upper);
  if (::fsconfig(fsfd, FSCONFIG_SET_STRING, "workdir", plan.work, 0) != 0)
    return fsconfig_fail(fsfd, err, "workdir", plan.work);
  if (::fsconfig(fsfd, FSCONFIG_SET_FLAG, "userxattr", nullptr, 0) != 0)
    return fsconfig_fail(fsfd, err, "userxattr", nullptr);
  if (::fsconfig(fsfd, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0)
    return fsconfig_fail(fsfd, err, "create", nullptr);
  int mfd = ::fsmount(fsfd, FSMOUNT_CLOEXEC, plan.attrs);
  if (mfd < 0) return fsconfig_fail(fsfd, err, "fsmount", nullptr);
  ::close(fsfd);
  if (::move_mount(mfd, "", AT_FDCWD, plan.merged, MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    int e = errno;
    ::close(mfd);
    return fail(err, "move_mount overlay onto", plan.merged, e);
  }
  ::close(mfd);
  return 0;
}

// Child: hides what Docker hides in /proc (host-wide kernel data) and makes the kernel tunables
// read-only, as defence in depth (sandboxed root already lacks the capabilities to use them).
// Paths the kernel does not have are skipped.
int mask_proc(ChildMsg& err) noexcept {
  for (const char* f : {"proc/kcore", "proc/keys", "proc/latency_stats", "proc/timer_list",
                        "proc/timer_stats", "proc/sched_debug"}) {
    if (::access(f, F_OK) != 0) continue;
    if (::mount("/dev/null", f, nullptr, MS_BIND, nullptr) != 0) return fail(err, "mask", f, errno);
  }
  for (const char* d : {"proc/acpi", "proc/asound", "proc/scsi"}) {
    if (::access(d, F_OK) != 0) continue;
    if (::mount("tmpfs", d, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0") != 0)
      return fail(err, "mask", d, errno);
  }
  for (const char* r : {"proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger"}) {
    if (::access(r, F_OK) != 0) continue;
    if (::mount(r, r, nullptr, MS_BIND | MS_REC, nullptr) != 0 ||
        ::mount(nullptr, r, nullptr,
                MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
      return fail(err, "make read-only", r, errno);
  }
  return 0;
}

int mount_pseudo_filesystems(int* created, int status_fd, ChildMsg& err) noexcept {
  bool made_proc = false, made_dev = false;
  int rc = ensure_dir("proc", 0555, &made_proc, err);
  if (rc == 0) rc = ensure_dir("dev", 0755, &made_dev, err);
  if (made_proc) *created |= kCreatedProc;
  if (made_dev) *created |= kCreatedDev;
  // Report right away so the parent cleans them up even if a later step fails.
  if (*created) send_record(status_fd, RecordType::kMountpoints, *created);
  if (rc != 0) return rc;

  if (::mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    return fail(err, "mount proc on /proc", nullptr, errno);
  if (mask_proc(err) != 0) return -1;
  if (::mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC | MS_STRICTATIME,
              "mode=755,size=65536k") != 0)
    return fail(err, "mount tmpfs on /dev", nullptr, errno);
  for (const char* n : {"null", "zero", "full", "random", "urandom"})
    if (bind_dev(n, true, err) != 0) return -1;
  if (bind_dev("tty", false, err) != 0) return -1;
  struct Link {
    const char* target;
    const char* name;
  };
  for (Link l : {Link{"/proc/self/fd", "dev/fd"}, Link{"/proc/self/fd/0", "dev/stdin"},
                 Link{"/proc/self/fd/1", "dev/stdout"}, Link{"/proc/self/fd/2", "dev/stderr"},
                 Link{"/proc/kcore", "dev/core"}})
    if (::symlink(l.target, l.name) != 0) return fail(err, "symlink", l.name, errno);
  if (::mkdir("dev/shm", 01777) != 0 || ::chmod("dev/shm", 01777) != 0)
    return fail(err, "mkdir", "dev/shm", errno);
  if (::mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k") != 0)
    return fail(err, "mount tmpfs on /dev/shm", nullptr, errno);
  if (::mkdir("dev/pts", 0755) != 0) return fail(err, "mkdir", "dev/pts", errno);
  // Best effort: a private devpts instance for programs that want a pty.
  if (::mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") == 0)
    ::symlink("pts/ptmx", "dev/ptmx");
  return 0;
}

int pivot_into_cwd(ChildMsg& err) noexcept {
  if (::syscall(SYS_pivot_root, ".", ".") != 0) return fail(err, "pivot_root", nullptr, errno);
  if (::umount2(".", MNT_DETACH) != 0) return fail(err, "detach old root", nullptr, errno);
  if (::chdir("/") != 0) return fail(err, "chdir /", nullptr, errno);
  return 0;
}

int ensure_tmp(int* created, ChildMsg& err) noexcept {
  struct stat st;
  if (::stat("/tmp", &st) == 0) return 0;  // a symlink to a directory is fine
  if (errno != ENOENT) return fail(err, "stat", "/tmp", errno);
  if (::mkdir("/tmp", 01777) != 0 || ::chmod("/tmp", 01777) != 0)
    return fail(err, "mkdir", "/tmp", errno);
  *created |= kCreatedTmp;
  return 0;
}

int inject_file(const InjectedFile& f, int* status, ChildMsg& err) noexcept {
  *status = 400;
  char buf[PATH_MAX];
  size_t n = strlen(f.path);
  if (f.path[0] != '/' || n >= sizeof buf) {
    err.add("file injection: path must be absolute: ").add(f.path);
    return -1;
  }
  memcpy(buf, f.path, n + 1);
  // mkdir -p of every parent.
  for (size_t i = 1; i < n; ++i) {
    if (buf[i] != '/') continue;
    buf[i] = 0;
    if (::mkdir(buf, 0755) == 0) {
      if (::lchown(buf, 0, 0) != 0 || ::chmod(buf, 0755) != 0)
        return fail(err, "file injection: chown/chmod", buf, errno);
    } else if (errno != EEXIST) {
      return fail(err, "file injection: mkdir", buf, errno);
    }
    buf[i] = '/';
  }
  // No magic links (/proc/self/fd/N would reach the init's own pipes); symlinks of the image
  // itself resolve inside the root we are in, except at the file's own name (O_NOFOLLOW).
  // O_NONBLOCK: opening a fifo planted there must not hang the run.
  open_how how{};
  how.flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
  how.mode = 0600;
  how.resolve = RESOLVE_NO_MAGICLINKS;
  int fd = static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, f.path, &how, sizeof how));
  if (fd < 0 && errno == ELOOP) {
    err.add("file injection: ").add(f.path).add(" is a symlink in the image");
    return -1;
  }
  struct stat st;
  // ENXIO: a fifo without a reader; EISDIR: a directory.
  if (fd < 0 && errno != ENXIO && errno != EISDIR)
    return fail(err, "file injection: create", f.path, errno);
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) ::close(fd);
    err.add("file injection: ").add(f.path).add(" exists in the image and is not a regular file");
    return -1;
  }
  if (::ftruncate(fd, 0) != 0 || ::fcntl(fd, F_SETFL, 0) != 0) {
    int e = errno;
    ::close(fd);
    return fail(err, "file injection: truncate", f.path, e);
  }
  *status = 500;
  bool use_cfr = true, use_sendfile = true;
  off_t in_off = 0;
  for (;;) {
    ssize_t w = -1;
    if (use_cfr) {
      loff_t off = in_off;
      w = ::copy_file_range(f.blob_fd, &off, fd, nullptr, 1 << 30, 0);
      if (w < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
        use_cfr = false;
        continue;
      }
    } else if (use_sendfile) {
      off_t off = in_off;
      w = ::sendfile(fd, f.blob_fd, &off, 1 << 30);
      if (w < 0 && (errno == EINVAL || errno == ENOSYS)) {
        use_sendfile = false;
        continue;
      }
    } else {
      char chunk[8192];
      ssize_t r = ::pread(f.blob_fd, chunk, sizeof chunk, in_off);
      if (r > 0 && !write_all(fd, chunk, static_cast<size_t>(r))) r = -1;
      w = r;
    }
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return fail(err, "file injection: copy to", f.path, e);
    }
    if (w == 0) break;
    in_off += w;
  }
  if (::fchown(fd, f.uid, f.gid) != 0 || ::fchmod(fd, f.mode & 07777) != 0) {
    int e = errno;
    ::close(fd);
    *status = 400;
    return fail(err, "file injection: chown/chmod", f.path, e);
  }
  ::close(fd);
  return 0;
}

}  // namespace coppice::sandbox
