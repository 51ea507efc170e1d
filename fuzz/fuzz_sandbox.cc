#include "fuzz_sandbox.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <mutex>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace coppice::fuzz {

namespace {

namespace fs = std::filesystem;

// The jail is built on /tmp of the jail thread's own mount namespace (the host's /tmp is
// untouched) and then becomes that thread's root.
constexpr const char* kBase = "/tmp";
constexpr const char* kScratchOpts = "size=256m,nr_inodes=65536,mode=0755";

struct Bind {
  std::string path;  // the same path outside and inside the jail
  bool writable;
};

struct Stamp {
  std::string path;  // inside the jail
  struct stat st;
  ssize_t xattrs;
};

struct State {
  std::mutex m;
  std::condition_variable cv;
  const std::function<void()>* job = nullptr;
  bool done = false;
  bool ready = false;
  std::exception_ptr err;
  std::vector<Stamp> stamps;
  unsigned long long root_free_inodes = 0;
};

State& state() {
  // Never destroyed: the jail thread waits on its condition variable until the process
  // exits, and destroying a condition variable with a waiter blocks forever.
  static State* s = new State;  // NOLINT(cppcoreguidelines-owning-memory)
  return *s;
}

[[noreturn]] void fail(const std::string& what) {
  finding("fuzz jail: " + what + ": " + std::strerror(errno));
}

void mount_scratch() {
  if (::mount("coppice-fuzz-scratch", "/scratch", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              kScratchOpts) != 0)
    fail("mount /scratch");
}

// Creates the directories of `path` (absolute, inside the jail) below `kBase` that do not
// exist yet, remembering those that are on the jail's root tmpfs.
void make_dirs(const std::string& path, dev_t root_dev, std::vector<std::string>& made) {
  std::string cur;
  size_t i = 1;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) {
      cur += "/" + path.substr(i, j - i);
      std::string host = kBase + cur;
      if (::mkdir(host.c_str(), 0755) != 0 && errno != EEXIST) fail("mkdir " + host);
      struct stat st;
      if (::lstat(host.c_str(), &st) != 0) fail("lstat " + host);
      if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        fail("bind target " + host);
      }
      if (st.st_dev == root_dev && std::find(made.begin(), made.end(), cur) == made.end())
        made.push_back(cur);
    }
    i = j + 1;
  }
}

std::string dir_of_artifact(std::string_view arg, std::string_view flag) {
  std::string v(arg.substr(flag.size()));
  fs::path p = fs::absolute(v);
  // "-artifact_prefix=dir/" names a directory; "-artifact_prefix=dir/x-" a file prefix.
  if (flag == "-artifact_prefix=" && !v.empty() && v.back() == '/') return p.string();
  return p.parent_path().string();
}

void build(const std::vector<Bind>& binds_in, const std::string& cwd) {
  if (::unshare(CLONE_NEWNS | CLONE_FS) != 0) fail("unshare(CLONE_NEWNS) (run as root)");
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) fail("make / private");

  // Clone every tree to bind before /tmp is covered (a bound directory may live under /tmp).
  std::vector<Bind> binds = binds_in;
  std::sort(binds.begin(), binds.end(),
            [](const Bind& a, const Bind& b) { return a.path.size() < b.path.size(); });
  std::vector<int> trees;
  for (const auto& b : binds) {
    int fd = static_cast<int>(
        ::open_tree(AT_FDCWD, b.path.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE));
    if (fd < 0) fail("open_tree " + b.path);
    struct mount_attr attr {};
    attr.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (b.writable ? 0 : MOUNT_ATTR_RDONLY);
    attr.propagation = MS_PRIVATE;
    if (::mount_setattr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) != 0)
      fail("mount_setattr " + b.path);
    trees.push_back(fd);
  }

  if (::mount("coppice-fuzz-jail", kBase, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=1m,nr_inodes=4096,mode=0755") != 0)
    fail("mount the jail's tmpfs");
  struct stat root_st;
  if (::stat(kBase, &root_st) != 0) fail("stat jail root");
  std::vector<std::string> made{"/"};

  // Merged-/usr symlinks (/lib -> usr/lib, …) are recreated as they are.
  for (const char* l : {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}) {
    char buf[4096];
    ssize_t n = ::readlink(l, buf, sizeof buf - 1);
    if (n <= 0) continue;
    if (::symlink(std::string(buf, static_cast<size_t>(n)).c_str(),
                  (std::string(kBase) + l).c_str()) != 0)
      fail(std::string("symlink ") + l);
  }
  for (size_t i = 0; i < binds.size(); ++i) {
    make_dirs(binds[i].path, root_st.st_dev, made);
    std::string target = kBase + binds[i].path;
    if (::move_mount(trees[i], "", AT_FDCWD, target.c_str(), MOVE_MOUNT_F_EMPTY_PATH) != 0)
      fail("bind " + binds[i].path);
    ::close(trees[i]);
  }
  if (::mkdir((std::string(kBase) + "/scratch").c_str(), 0755) != 0) fail("mkdir /scratch");

  if (::chdir(kBase) != 0 || ::chroot(".") != 0) fail("chroot into the jail");
  bool cwd_bound = std::any_of(binds.begin(), binds.end(),
                               [&](const Bind& b) { return b.path == cwd && b.writable; });
  if (::chdir(cwd_bound ? cwd.c_str() : "/") != 0) fail("chdir in the jail");
  mount_scratch();

  State& s = state();
  struct stat jail_root;
  if (::lstat("/", &jail_root) != 0) fail("lstat /");
  for (const auto& p : made) {
    Stamp st{p, {}, 0};
    if (::lstat(p.c_str(), &st.st) != 0) fail("lstat " + p);
    if (st.st.st_dev != jail_root.st_dev) continue;  // a mount point: the host's directory
    st.xattrs = ::llistxattr(p.c_str(), nullptr, 0);
    s.stamps.push_back(st);
  }
  struct statfs sf;
  if (::statfs("/", &sf) != 0) fail("statfs /");
  s.root_free_inodes = sf.f_ffree;
}

void thread_main(std::vector<Bind> binds, std::string cwd) {
  build(binds, cwd);
  State& s = state();
  std::unique_lock lk(s.m);
  s.ready = true;
  s.cv.notify_all();
  for (;;) {
    s.cv.wait(lk, [&] { return s.job != nullptr; });
    const std::function<void()>* job = s.job;
    lk.unlock();
    std::exception_ptr err;
    try {
      (*job)();
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    s.job = nullptr;
    s.err = err;
    s.done = true;
    s.cv.notify_all();
  }
}

// The entries of the jail's root tmpfs (not below mount points), for a finding's message.
std::string list_root() {
  struct stat root;
  if (::lstat("/", &root) != 0) return "?";
  std::string out;
  std::vector<std::string> todo{"/"};
  while (!todo.empty()) {
    std::string d = todo.back();
    todo.pop_back();
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec)) {
      struct stat st;
      if (::lstat(e.path().c_str(), &st) != 0 || st.st_dev != root.st_dev) continue;
      out += e.path().string() + (S_ISDIR(st.st_mode) ? "/ " : " ");
      if (S_ISDIR(st.st_mode)) todo.push_back(e.path().string());
    }
  }
  return out;
}

}  // namespace

void jail_init(int argc, char** argv) {
  std::vector<Bind> binds{{"/usr", false}, {"/etc", false}};
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    errno = ec.value();
    fail("readlink /proc/self/exe");
  }
  std::string exe_dir = exe.parent_path().string();
  if (exe_dir.rfind("/usr/", 0) != 0) binds.push_back({exe_dir, false});
  std::string cwd = fs::current_path().string();
  bool artifact_dir = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    for (std::string_view flag : {"-artifact_prefix=", "-exact_artifact_path="}) {
      if (a.rfind(flag, 0) != 0) continue;
      binds.push_back({dir_of_artifact(a, flag), true});
      artifact_dir = true;
    }
  }
  // Without an artifact directory, crash reports go to the working directory.
  if (!artifact_dir) binds.push_back({cwd, true});
  for (const auto& b : binds)
    if (b.writable && (b.path == "/" || b.path.empty())) {
      errno = EINVAL;
      fail(
          "refusing to bind / into the jail (run from another directory or pass "
          "-artifact_prefix=DIR/)");
    }
  std::thread(thread_main, binds, cwd).detach();
  State& s = state();
  std::unique_lock lk(s.m);
  s.cv.wait(lk, [&] { return s.ready; });
}

void jail_run(const std::function<void()>& fn) {
  State& s = state();
  std::unique_lock lk(s.m);
  s.job = &fn;
  s.done = false;
  s.cv.notify_all();
  s.cv.wait(lk, [&] { return s.done; });
  std::exception_ptr err = std::exchange(s.err, nullptr);
  lk.unlock();
  if (err) std::rethrow_exception(err);
}

void jail_reset_scratch() {
  if (::umount2("/scratch", MNT_DETACH) != 0) fail("umount /scratch");
  mount_scratch();
}

std::string jail_escape() {
  State& s = state();
  struct statfs sf;
  if (::statfs("/", &sf) != 0) return "statfs / failed";
  if (sf.f_ffree != s.root_free_inodes)
    return "an inode was created or removed on the jail's root, outside /scratch (its entries "
           "now: " +
           list_root() + ")";
  for (const auto& stamp : s.stamps) {
    struct stat st;
    if (::lstat(stamp.path.c_str(), &st) != 0) return "jail directory " + stamp.path + " is gone";
    if (st.st_mode != stamp.st.st_mode || st.st_uid != stamp.st.st_uid ||
        st.st_gid != stamp.st.st_gid || st.st_mtim.tv_sec != stamp.st.st_mtim.tv_sec ||
        st.st_mtim.tv_nsec != stamp.st.st_mtim.tv_nsec ||
        st.st_ctim.tv_sec != stamp.st.st_ctim.tv_sec ||
        st.st_ctim.tv_nsec != stamp.st.st_ctim.tv_nsec)
      return "jail directory " + stamp.path + " was modified (mode, owner or entries)";
    if (::llistxattr(stamp.path.c_str(), nullptr, 0) != stamp.xattrs)
      return "jail directory " + stamp.path + " got extended attributes";
  }
  return "";
}

}  // namespace coppice::fuzz
