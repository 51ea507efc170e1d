// Fuzzes image path resolution and merged views (store/layer_view.h) against the kernel.
//
// The input is decoded (FuzzedDataProvider) into a stack of 1-3 layers in the overlay upper
// format (directories, files, symlinks with arbitrary targets, hard links, fifos, 0:0
// whiteouts, opaque directories; names drawn from a small alphabet so that layers collide),
// then into query paths. The layers are built in the fuzz jail's /scratch and also mounted
// read-only with overlayfs, as the runtimes mount them (lowerdir+ top first, userxattr): what
// the sandbox sees there is the ground truth LayerView claims to compute "exactly as overlayfs
// would show them".
//
// Oracles:
//  * walk("/") lists the same entries as a walk of the overlay mount (type, permission bits,
//    owner shifted back, size of regular files, symlink targets);
//  * resolve(p, follow) succeeds exactly when openat2(mount, p, RESOLVE_IN_ROOT) does (the
//    kernel's chroot-like resolution), to the same inode, and fails in the same class
//    (ENOENT = 404, ENOTDIR = 422, ELOOP = 400); lookup() of a resolved path exists;
//  * open_file() of a resolved regular file reads what the overlay shows;
//  * flatten() of the view gives a single layer whose view walks the same;
//  * only coppice::Errors are thrown, and nothing outside /scratch is written.
#include <dirent.h>
#include <fcntl.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "fuzz_sandbox.h"
#include "store/layer_view.h"

namespace fs = std::filesystem;
using coppice::UniqueFd;
using coppice::fuzz::finding;
using coppice::store::Entry;
using coppice::store::LayerView;

namespace {

constexpr uid_t kShift = 100000;
constexpr const char* kNames[] = {"a", "b", "c", "etc", "usr", "lib", "x", "passwd"};
constexpr size_t kMaxLayers = 3, kMaxEntries = 14, kMaxQueries = 12;

std::string pick_name(FuzzedDataProvider& in) {
  return kNames[in.ConsumeIntegralInRange<size_t>(0, std::size(kNames) - 1)];
}

// A relative path of 1-3 names ("a/etc/x").
std::string pick_rel(FuzzedDataProvider& in) {
  std::string p = pick_name(in);
  for (int n = in.ConsumeIntegralInRange(0, 2); n > 0; --n) p += "/" + pick_name(in);
  return p;
}

// A path as a user or a symlink writes it: names, ".", "..", empty components (a doubled or
// trailing slash), absolute or not; sometimes raw bytes.
std::string pick_path(FuzzedDataProvider& in, bool absolute) {
  if (in.ConsumeIntegralInRange(0, 15) == 0) {
    std::string raw = in.ConsumeRandomLengthString(48);
    raw.erase(std::remove(raw.begin(), raw.end(), '\0'), raw.end());
    if (absolute && (raw.empty() || raw[0] != '/')) raw.insert(0, "/");
    return raw;
  }
  std::string p = absolute || in.ConsumeBool() ? "/" : "";
  for (int n = in.ConsumeIntegralInRange(1, 4); n > 0; --n) {
    switch (in.ConsumeIntegralInRange(0, 7)) {
      case 0:
        p += "..";
        break;
      case 1:
        p += ".";
        break;
      case 2:
        break;  // empty component
      default:
        p += pick_name(in);
    }
    if (n > 1 || in.ConsumeIntegralInRange(0, 5) == 0) p += "/";
  }
  return p;
}

bool lexists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}

// Creates the missing parents of `rel`; false when one is not a directory (a symlink: never
// go through it, it may point anywhere in the jail).
bool make_parents(const std::string& root, const std::string& rel) {
  size_t pos = 0;
  while ((pos = rel.find('/', pos)) != std::string::npos) {
    std::string p = root + "/" + rel.substr(0, pos);
    ++pos;
    struct stat st;
    if (::lstat(p.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) return false;
      continue;
    }
    if (::mkdir(p.c_str(), 0755) != 0 || ::lchown(p.c_str(), kShift, kShift) != 0) return false;
  }
  return true;
}

// Decodes one layer into `root` (an existing directory).
void build_layer(FuzzedDataProvider& in, const std::string& root) {
  if (in.ConsumeIntegralInRange(0, 7) == 0)
    ::lsetxattr(root.c_str(), "user.overlay.opaque", "y", 1, 0);
  std::vector<std::string> files;
  for (size_t n = in.ConsumeIntegralInRange<size_t>(0, kMaxEntries); n > 0; --n) {
    if (in.remaining_bytes() == 0) break;
    const int kind = in.ConsumeIntegralInRange(0, 7);
    std::string rel = pick_rel(in);
    std::string p = root + "/" + rel;
    if (!make_parents(root, rel) || lexists(p)) continue;
    const mode_t perm = in.ConsumeBool() ? 0755 : (in.ConsumeIntegral<uint16_t>() & 07777);
    const uid_t owner = kShift + in.ConsumeIntegralInRange<uid_t>(0, 3);
    int r = 0;
    switch (kind) {
      case 0:
      case 1:  // a directory, opaque for kind 1
        r = ::mkdir(p.c_str(), 0700);
        if (r == 0 && kind == 1) r = ::lsetxattr(p.c_str(), "user.overlay.opaque", "y", 1, 0);
        break;
      case 2: {  // a regular file
        UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
        std::string body = in.ConsumeRandomLengthString(32);
        r = fd && ::write(fd.get(), body.data(), body.size()) == static_cast<ssize_t>(body.size())
                ? 0
                : -1;
        if (r == 0) files.push_back(p);
        break;
      }
      case 3:
      case 4: {  // a symlink (twice as likely: resolution is what is fuzzed)
        std::string target = pick_path(in, in.ConsumeBool());
        if (target.empty()) target = ".";
        r = ::symlink(target.c_str(), p.c_str());
        break;
      }
      case 5:  // a whiteout
        r = ::mknod(p.c_str(), S_IFCHR | 0, makedev(0, 0));
        break;
      case 6:  // a fifo
        r = ::mknod(p.c_str(), S_IFIFO | 0644, 0);
        break;
      case 7:  // a hard link to a file of this layer
        if (files.empty()) continue;
        r = ::link(files[in.ConsumeIntegralInRange<size_t>(0, files.size() - 1)].c_str(),
                   p.c_str());
        break;
    }
    if (r != 0) finding("building a layer: " + p + ": " + std::strerror(errno));
    if (kind == 7) continue;  // keeps its file's owner and mode
    ::lchown(p.c_str(), owner, owner);
    if (kind != 3 && kind != 4 && kind != 5) ::chmod(p.c_str(), perm);
  }
}

struct Info {
  mode_t type = 0, perm = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  off_t size = 0;
  dev_t rdev = 0;
  std::string target;
  bool operator==(const Info&) const = default;
};
using Tree = std::map<std::string, Info>;

std::string describe(const Info& i) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "type=%o perm=%o uid=%u gid=%u size=%lld", i.type, i.perm, i.uid,
                i.gid, static_cast<long long>(i.size));
  return std::string(buf) + (i.target.empty() ? "" : " -> " + i.target);
}

Info info_of(const struct stat& st, uid_t shift, std::string target) {
  Info i;
  i.type = st.st_mode & S_IFMT;
  i.perm = st.st_mode & 07777;
  i.uid = st.st_uid >= shift ? st.st_uid - shift : st.st_uid;
  i.gid = st.st_gid >= shift ? st.st_gid - shift : st.st_gid;
  i.size = S_ISREG(st.st_mode) ? st.st_size : 0;
  i.rdev = S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? st.st_rdev : 0;
  i.target = std::move(target);
  return i;
}

Tree view_tree(const LayerView& v) {
  Tree t;
  coppice::fuzz::only_client_errors("LayerView::walk", [&] {
    v.walk("/", [&](const Entry& e) {
      t[e.path] = info_of(e.st, 0, e.symlink_target);
      return LayerView::Walk::kContinue;
    });
  });
  return t;
}

void kernel_walk(int dirfd, const std::string& path, Tree& t) {
  int dup = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = dup < 0 ? nullptr : ::fdopendir(dup);
  if (!d) finding("overlay: opendir " + path + ": " + std::strerror(errno));
  std::vector<std::pair<std::string, unsigned char>> names;
  while (struct dirent* de = ::readdir(d)) {
    std::string nm = de->d_name;
    if (nm != "." && nm != "..") names.emplace_back(nm, de->d_type);
  }
  ::closedir(d);
  for (const auto& [nm, type] : names) {
    std::string p = path == "/" ? "/" + nm : path + "/" + nm;
    struct stat st;
    if (::fstatat(dirfd, nm.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      // overlayfs lists the whiteouts of a directory that only one layer has (it reads that
      // directory directly) but a lookup of one finds nothing: the name is absent.
      if (errno == ENOENT && type == DT_CHR) continue;
      finding("overlay: stat " + p + ": " + std::strerror(errno));
    }
    std::string target;
    if (S_ISLNK(st.st_mode)) {
      char buf[4096];
      ssize_t n = ::readlinkat(dirfd, nm.c_str(), buf, sizeof buf);
      if (n < 0) finding("overlay: readlink " + p);
      target.assign(buf, static_cast<size_t>(n));
    }
    t[p] = info_of(st, kShift, target);
    if (S_ISDIR(st.st_mode)) {
      UniqueFd sub(::openat(dirfd, nm.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub) finding("overlay: open " + p + ": " + std::strerror(errno));
      kernel_walk(sub.get(), p, t);
    }
  }
}

Tree kernel_tree(int mnt) {
  Tree t;
  struct stat st;
  if (::fstat(mnt, &st) != 0) finding("overlay: fstat root");
  t["/"] = info_of(st, kShift, "");
  kernel_walk(mnt, "/", t);
  return t;
}

void compare(const Tree& want, const Tree& got, const char* what) {
  for (const auto& [p, i] : want) {
    auto it = got.find(p);
    if (it == got.end())
      finding(std::string(what) + ": " + p + " is missing (" + describe(i) + ")");
    if (!(it->second == i))
      finding(std::string(what) + ": " + p + " differs: " + describe(it->second) + " vs " +
              describe(i));
  }
  for (const auto& [p, i] : got)
    if (!want.count(p))
      finding(std::string(what) + ": extra entry " + p + " (" + describe(i) + ")");
}

UniqueFd mount_overlay(const std::vector<std::string>& lowers_top_first) {
  UniqueFd fsfd(::fsopen("overlay", FSOPEN_CLOEXEC));
  if (!fsfd) finding("fsopen overlay");
  for (const auto& l : lowers_top_first)
    if (::fsconfig(fsfd.get(), FSCONFIG_SET_STRING, "lowerdir+", l.c_str(), 0) != 0)
      finding("fsconfig lowerdir+ " + l + ": " + std::strerror(errno));
  if (::fsconfig(fsfd.get(), FSCONFIG_SET_FLAG, "userxattr", nullptr, 0) != 0 ||
      ::fsconfig(fsfd.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0)
    finding(std::string("overlay create: ") + std::strerror(errno));
  UniqueFd mnt(static_cast<int>(
      ::fsmount(fsfd.get(), FSMOUNT_CLOEXEC,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)));
  if (!mnt) finding(std::string("fsmount overlay: ") + std::strerror(errno));
  return mnt;  // detached: used through this fd only, gone when it closes
}

long kernel_open(int mnt, const std::string& path, bool follow, int flags = O_PATH) {
  struct open_how how {};
  how.flags = flags | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW);
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
  std::string rel = path;
  while (!rel.empty() && rel[0] == '/') rel.erase(0, 1);
  if (rel.empty()) rel = ".";
  // EAGAIN: a rename or mount anywhere on the host raced with a ".." (RESOLVE_IN_ROOT checks
  // the global rename and mount sequence counters); retry.
  for (int tries = 0;; ++tries) {
    long fd = ::syscall(SYS_openat2, mnt, rel.c_str(), &how, sizeof how);
    if (fd >= 0 || errno != EAGAIN || tries == 1000) return fd;
  }
}

std::string read_all(int fd) {
  std::string s;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<size_t>(n));
  return s;
}

void check_query(const LayerView& v, int mnt, const std::string& q, bool follow) {
  std::string resolved;
  int status = 0;
  try {
    resolved = v.resolve(q, follow);
  } catch (const coppice::Error& e) {
    status = e.status();
    if (status >= 500) finding("resolve " + q + ": " + e.what());
  } catch (const std::exception& e) {
    finding("resolve " + q + ": " + typeid(e).name() + " escaped: " + e.what());
  }
  long kfd = kernel_open(mnt, q, follow);
  int kerr = kfd < 0 ? errno : 0;
  UniqueFd kernel(kfd < 0 ? -1 : static_cast<int>(kfd));
  std::string what = "resolve(\"" + q + "\", " + (follow ? "true" : "false") + ")";
  if (kerr == ENAMETOOLONG) return;  // the kernel's PATH_MAX; the view has no such limit
  if (status != 0 || kerr != 0) {
    int want = kerr == ENOENT ? 404 : kerr == ENOTDIR ? 422 : kerr == ELOOP ? 400 : -kerr;
    if (status != want)
      finding(what + ": the view says " +
              (status ? std::to_string(status) : "ok (" + resolved + ")") + ", the kernel " +
              (kerr ? std::strerror(kerr) : "ok"));
    return;
  }
  // Same inode: open the view's answer in the mount without following any symlink.
  struct open_how how {};
  how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV;
  std::string rel = resolved == "/" ? "." : resolved.substr(1);
  UniqueFd mine(static_cast<int>(::syscall(SYS_openat2, mnt, rel.c_str(), &how, sizeof how)));
  if (!mine)
    finding(what + " = " + resolved +
            ", which the overlay cannot open without symlinks: " + std::strerror(errno));
  struct stat a, b;
  if (::fstat(kernel.get(), &a) != 0 || ::fstat(mine.get(), &b) != 0) finding("fstat");
  if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
    finding(what + " = " + resolved + ", the kernel resolves to another inode");
  std::optional<Entry> e;
  coppice::fuzz::only_client_errors("lookup", [&] { e = v.lookup(resolved); });
  if (!e) finding(what + " = " + resolved + ", which lookup() does not find");
  if (S_ISREG(e->st.st_mode)) {
    UniqueFd f;
    if (!coppice::fuzz::only_client_errors("open_file", [&] { f = v.open_file(resolved); }))
      finding("open_file(" + resolved + ") refused a regular file");
    long kf = kernel_open(mnt, resolved, false, O_RDONLY);
    if (kf < 0) finding("overlay: open " + resolved + ": " + std::strerror(errno));
    UniqueFd kfile(static_cast<int>(kf));
    if (read_all(f.get()) != read_all(kfile.get()))
      finding("open_file(" + resolved + ") reads other bytes than the overlay");
  }
}

// COPPICE_FUZZ_VERBOSE=1: prints the decoded layers and queries (to read a finding).
void dump_layer(const std::string& dir, const std::string& rel) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (struct dirent* de = ::readdir(d))
    if (std::string(de->d_name) != "." && std::string(de->d_name) != "..")
      names.push_back(de->d_name);
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& nm : names) {
    std::string p = dir + "/" + nm;
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) continue;
    char opq[4] = {};
    bool opaque = ::lgetxattr(p.c_str(), "user.overlay.opaque", opq, sizeof opq) == 1;
    std::string target;
    if (S_ISLNK(st.st_mode)) {
      char buf[4096];
      ssize_t n = ::readlink(p.c_str(), buf, sizeof buf);
      if (n > 0) target = " -> " + std::string(buf, static_cast<size_t>(n));
    }
    const char* kind = S_ISDIR(st.st_mode)    ? "dir"
                       : S_ISREG(st.st_mode)  ? "file"
                       : S_ISLNK(st.st_mode)  ? "symlink"
                       : S_ISCHR(st.st_mode)  ? "whiteout"
                       : S_ISFIFO(st.st_mode) ? "fifo"
                                              : "other";
    std::fprintf(stderr, "  %s/%s %s %o%s%s\n", rel.c_str(), nm.c_str(), kind, st.st_mode & 07777,
                 opaque ? " opaque" : "", target.c_str());
    if (S_ISDIR(st.st_mode)) dump_layer(p, rel + "/" + nm);
  }
}

void one_input(const uint8_t* data, size_t size) {
  coppice::fuzz::jail_reset_scratch();
  FuzzedDataProvider in(data, size);
  size_t nlayers = in.ConsumeIntegralInRange<size_t>(1, kMaxLayers);
  std::vector<std::string> layers;
  for (size_t i = 0; i < nlayers; ++i) {
    std::string root = "/scratch/l" + std::to_string(i);
    if (::mkdir(root.c_str(), 0755) != 0 || ::lchown(root.c_str(), kShift, kShift) != 0)
      finding("mkdir " + root);
    build_layer(in, root);
    layers.push_back(root);
  }
  // overlayfs needs two layers without an upper one: an empty bottom layer changes nothing.
  const std::string base = "/scratch/base";
  if (::mkdir(base.c_str(), 0755) != 0) finding("mkdir base");
  layers.push_back(base);
  std::vector<std::string> queries;
  std::vector<bool> follow;
  while (in.remaining_bytes() > 0 && queries.size() < kMaxQueries) {
    follow.push_back(in.ConsumeBool());
    queries.push_back(pick_path(in, true));
  }

  if (std::getenv("COPPICE_FUZZ_VERBOSE")) {
    for (size_t i = 0; i < nlayers; ++i) {
      char opq[4] = {};
      bool opaque = ::lgetxattr(layers[i].c_str(), "user.overlay.opaque", opq, sizeof opq) == 1;
      std::fprintf(stderr, "layer %zu (top first)%s:\n", i, opaque ? ", root opaque" : "");
      dump_layer(layers[i], "");
    }
    for (size_t i = 0; i < queries.size(); ++i)
      std::fprintf(stderr, "query %s follow=%d\n", queries[i].c_str(), int(follow[i]));
  }
  LayerView view(std::vector<fs::path>(layers.begin(), layers.end()), kShift);
  UniqueFd mnt = mount_overlay(layers);
  Tree truth = kernel_tree(mnt.get());
  Tree mine = view_tree(view);
  compare(truth, mine, "LayerView vs overlayfs");
  for (size_t i = 0; i < queries.size(); ++i) check_query(view, mnt.get(), queries[i], follow[i]);
  // Every symlink in the image, as a query too.
  for (const auto& [p, i] : truth)
    if (i.type == S_IFLNK) {
      check_query(view, mnt.get(), p, true);
      check_query(view, mnt.get(), p + "/", false);
    }

  coppice::fuzz::only_client_errors("flatten",
                                    [&] { coppice::store::flatten(view, "/scratch/flat"); });
  LayerView flat({"/scratch/flat"}, kShift);
  Tree flat_tree = view_tree(flat);
  compare(mine, flat_tree, "flatten vs the view");
  if (std::string esc = coppice::fuzz::jail_escape(); !esc.empty())
    finding("LayerView wrote outside /scratch: " + esc);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  coppice::fuzz::jail_init(*argc, *argv);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  coppice::fuzz::jail_run([&] { one_input(data, size); });
  return 0;
}
