// Fuzzes layer unpack (oci/layer_unpack.h `unpack_layer`) with arbitrary tar streams, plain,
// gzip or zstd: what a registry or an uploaded archive gives the server, which unpacks it as
// root. Only the header's API is used.
//
// The input is one layer, or two separated by the line kSeparator: the first is unpacked
// alone and becomes the `lower` of the second (so that entries going through a lower layer's
// symlink are tried too). Every input is unpacked inside the fuzz jail (fuzz_sandbox.h), into
// a fresh /scratch.
//
// Oracles, whether the unpack succeeds or is refused:
//  * nothing outside the layer's directory was written (the jail's escape check, and
//    /scratch holds nothing but the layer directories) — issue 12 item 2;
//  * a refusal is a coppice::Error (4xx for a hostile layer; 5xx messages are printed once
//    each, for review: an I/O failure is possible in a 256 MiB scratch);
// and when it succeeds, for every entry of the layer:
//  * no device node except the 0:0 whiteout (item 1); skipped when COPPICE_FUZZ_ALLOW names
//    "devices", to fuzz past that known bug;
//  * owner and group inside the sandbox's id range;
//  * no extended attribute but user.* and security.capability (v3, root id = the shift), and
//    of user.overlay.* only the opaque marker "y" on a directory;
//  * the layer reads back through store::LayerView (list, walk, resolve) without a non-Error
//    exception.
#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "fuzz_sandbox.h"
#include "oci/layer_unpack.h"
#include "store/layer_view.h"

namespace fs = std::filesystem;
using coppice::UniqueFd;
using coppice::fuzz::finding;

namespace {

constexpr std::string_view kSeparator = "\n--coppice-fuzz-next-layer--\n";
constexpr uid_t kShift = 100000;
constexpr uid_t kRange = 65536;

bool allowed(const char* what) {
  const char* env = std::getenv("COPPICE_FUZZ_ALLOW");
  return env && std::string_view(env).find(what) != std::string_view::npos;
}

UniqueFd memfd_with(std::string_view bytes) {
  UniqueFd fd(::memfd_create("layer", MFD_CLOEXEC));
  if (!fd) finding(std::string("memfd_create: ") + std::strerror(errno));
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + off, bytes.size() - off);
    if (n <= 0) finding(std::string("write memfd: ") + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) finding("lseek memfd");
  return fd;
}

// Prints each distinct 5xx message once (a refusal of a hostile layer should be a 4xx; these
// are for review, not findings: the scratch filesystem may fill).
void note_5xx(const coppice::Error& e) {
  static std::set<std::string> seen;
  if (seen.size() < 64 && seen.insert(e.what()).second)
    std::fprintf(stderr, "==coppice-fuzz== unpack %d: %s\n", e.status(), e.what());
}

// Unpacks `bytes` into `dest` (created here). True when the layer was accepted.
bool unpack(std::string_view bytes, const fs::path& dest, const coppice::store::LayerView* lower) {
  if (::mkdir(dest.c_str(), 0755) != 0) finding("mkdir " + dest.string());
  UniqueFd fd = memfd_with(bytes);
  coppice::oci::UnpackOptions opt;
  opt.uid_shift = kShift;
  opt.uid_range = kRange;
  opt.lower = lower;
  opt.max_bytes = 16u << 20;
  try {
    auto stats = coppice::oci::unpack_layer(fd.get(), dest, opt);
    if (std::getenv("COPPICE_FUZZ_VERBOSE"))
      std::fprintf(stderr, "%s: accepted, %llu entries\n", dest.c_str(),
                   static_cast<unsigned long long>(stats.entries));
    return true;
  } catch (const coppice::Error& e) {
    if (e.status() >= 500) note_5xx(e);
    if (std::getenv("COPPICE_FUZZ_VERBOSE"))
      std::fprintf(stderr, "%s: refused (%d): %s\n", dest.c_str(), e.status(), e.what());
    return false;
  } catch (const std::exception& e) {
    finding(std::string("unpack_layer: ") + typeid(e).name() + " escaped: " + e.what());
  }
}

// `name`: in the working directory; `p`: its path, for messages.
void check_xattrs(const std::string& name_in_dir, const std::string& p, const struct stat& st) {
  char names[65536];
  ssize_t n = ::llistxattr(name_in_dir.c_str(), names, sizeof names);
  if (n < 0) return;
  for (ssize_t off = 0; off < n;) {
    std::string name(names + off);
    off += static_cast<ssize_t>(name.size()) + 1;
    char value[65536];
    ssize_t len = ::lgetxattr(name_in_dir.c_str(), name.c_str(), value, sizeof value);
    if (name == "user.overlay.opaque") {
      if (!S_ISDIR(st.st_mode) || len != 1 || value[0] != 'y') finding("bad opaque marker on " + p);
    } else if (name.rfind("user.overlay.", 0) == 0) {
      finding("layer entry " + p + " carries overlay bookkeeping " + name);
    } else if (name == "security.capability") {
      vfs_ns_cap_data cap{};
      if (len != static_cast<ssize_t>(sizeof cap)) finding("capability xattr not v3 on " + p);
      std::memcpy(&cap, value, sizeof cap);
      if ((cap.magic_etc & VFS_CAP_REVISION_MASK) != VFS_CAP_REVISION_3 || cap.rootid != kShift)
        finding("capability xattr on " + p + " is not owned by the sandbox's root");
    } else if (name.rfind("user.", 0) != 0) {
      finding("layer entry " + p + " carries xattr " + name);
    }
  }
}

// Walks the layer by directory fds, with the jail thread's working directory in the directory
// being read (so xattrs are read by name): a layer's paths may be longer than PATH_MAX.
void check_dir(int dirfd, const std::string& path) {
  if (::fchdir(dirfd) != 0) finding("fchdir " + path);
  int dup = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* dp = dup < 0 ? nullptr : ::fdopendir(dup);
  if (!dp) finding("opendir " + path + ": " + std::strerror(errno));
  std::vector<std::string> subdirs;
  while (struct dirent* de = ::readdir(dp)) {
    std::string nm = de->d_name;
    if (nm == "." || nm == "..") continue;
    std::string p = path + "/" + nm;
    struct stat st;
    if (::fstatat(dirfd, nm.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) finding("lstat " + p);
    bool whiteout = S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0);
    if ((S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) && !whiteout && !allowed("devices"))
      finding("the layer holds a device node: " + p + " (" + std::to_string(major(st.st_rdev)) +
              ":" + std::to_string(minor(st.st_rdev)) + ")");
    if (st.st_uid < kShift || st.st_uid >= kShift + kRange || st.st_gid < kShift ||
        st.st_gid >= kShift + kRange)
      finding("layer entry " + p + " is owned by " + std::to_string(st.st_uid) + ":" +
              std::to_string(st.st_gid) + ", outside the sandbox's range");
    check_xattrs(nm, p, st);
    if (S_ISDIR(st.st_mode)) subdirs.push_back(nm);
  }
  ::closedir(dp);
  for (const auto& nm : subdirs) {
    UniqueFd sub(::openat(dirfd, nm.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) finding("open " + path + "/" + nm + ": " + std::strerror(errno));
    check_dir(sub.get(), path + "/" + nm);
    if (::fchdir(dirfd) != 0) finding("fchdir " + path);
  }
}

void check_layer(const fs::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) finding("open " + dir.string());
  check_dir(fd.get(), dir.string());
  if (::chdir("/") != 0) finding("chdir /");
}

// Reads the layers back the way inspect does; only Errors may come out.
void read_back(const std::vector<fs::path>& layers) {
  coppice::store::LayerView view(layers, kShift);
  coppice::fuzz::only_client_errors("LayerView over an unpacked layer", [&] {
    size_t n = 0;
    view.walk("/", [&](const coppice::store::Entry& e) {
      if (S_ISLNK(e.st.st_mode)) {
        try {
          (void)view.resolve(e.path, true);
        } catch (const coppice::Error&) {
        }
      }
      return ++n > 4096 ? coppice::store::LayerView::Walk::kStop
                        : coppice::store::LayerView::Walk::kContinue;
    });
  });
}

void scratch_holds_only(const std::set<std::string>& names) {
  std::set<std::string> got;
  DIR* dp = ::opendir("/scratch");
  if (!dp) finding("opendir /scratch");
  while (struct dirent* de = ::readdir(dp)) {
    std::string nm = de->d_name;
    if (nm != "." && nm != "..") got.insert(nm);
  }
  ::closedir(dp);
  for (const auto& g : got)
    if (!names.count(g)) finding("unpack wrote outside its layer: /scratch/" + g);
}

void one_input(std::string_view in) {
  coppice::fuzz::jail_reset_scratch();
  std::string_view upper_bytes = in, lower_bytes;
  bool two = false;
  if (size_t sep = in.find(kSeparator); sep != std::string_view::npos) {
    lower_bytes = in.substr(0, sep);
    upper_bytes = in.substr(sep + kSeparator.size());
    two = true;
  }
  std::vector<fs::path> accepted;
  std::optional<coppice::store::LayerView> lower_view;
  if (two && unpack(lower_bytes, "/scratch/lower", nullptr)) {
    check_layer("/scratch/lower");
    lower_view.emplace(std::vector<fs::path>{"/scratch/lower"}, kShift);
    accepted.push_back("/scratch/lower");
  }
  bool ok = unpack(upper_bytes, "/scratch/upper", lower_view ? &*lower_view : nullptr);
  if (std::string esc = coppice::fuzz::jail_escape(); !esc.empty())
    finding("unpack wrote outside its layer: " + esc);
  scratch_holds_only({"lower", "upper"});
  if (!ok) return;
  check_layer("/scratch/upper");
  accepted.insert(accepted.begin(), "/scratch/upper");
  read_back(accepted);
  if (std::string esc = coppice::fuzz::jail_escape(); !esc.empty())
    finding("reading the layer back wrote outside it: " + esc);
}

// Tar headers carry a checksum, so most mutations of a header would only test its check.
// After each mutation, every block that looks like a ustar header gets its checksum fixed.
void fix_tar_checksums(uint8_t* p, size_t n) {
  size_t off = 0;
  while (off + 512 <= n) {
    uint8_t* h = p + off;
    off += 512;
    if (std::memcmp(h + 257, "ustar", 5) != 0) continue;
    unsigned sum = 0;
    for (size_t i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? ' ' : h[i];
    char field[8];
    std::snprintf(field, sizeof field, "%06o", sum & 0777777);
    std::memcpy(h + 148, field, 6);
    h[154] = 0;
    h[155] = ' ';
    uint64_t size = 0;  // octal, NUL- or space-terminated; skip the entry's data blocks
    for (size_t i = 124; i < 136 && h[i] >= '0' && h[i] <= '7'; ++i) size = size * 8 + (h[i] - '0');
    if (size < n) off += (size + 511) / 512 * 512;
  }
}

}  // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int /*seed*/) {
  size = LLVMFuzzerMutate(data, size, max_size);
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t sep = in.find(kSeparator);
  if (sep == std::string_view::npos) {
    fix_tar_checksums(data, size);
  } else {
    fix_tar_checksums(data, sep);
    size_t upper = sep + kSeparator.size();
    fix_tar_checksums(data + upper, size - upper);
  }
  return size;
}

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  coppice::fuzz::jail_init(*argc, *argv);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  coppice::fuzz::jail_run([&] { one_input(in); });
  return 0;
}
