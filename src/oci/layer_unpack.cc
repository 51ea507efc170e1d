#include "oci/layer_unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/error.h"

namespace coppice::oci {

namespace {

struct ReadFree {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct WriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};

Error hostile(const std::string& why) {
  return unprocessable("refusing layer: " + why);
}

// Rewrites a security.capability value as VFS_CAP_REVISION_3 owned by the sandbox's root, so
// that file capabilities work inside the sandbox's user namespace and nowhere else.
std::string capability_v3(const void* value, size_t size, uid_t root_id) {
  vfs_ns_cap_data out{};
  if (size < sizeof(uint32_t)) return {};
  uint32_t magic;
  std::memcpy(&magic, value, sizeof magic);
  uint32_t rev = magic & VFS_CAP_REVISION_MASK;
  const size_t n = rev == VFS_CAP_REVISION_1 ? XATTR_CAPS_SZ_1 : XATTR_CAPS_SZ_2;
  if (rev != VFS_CAP_REVISION_1 && rev != VFS_CAP_REVISION_2 && rev != VFS_CAP_REVISION_3)
    return {};
  if (size < n) return {};
  std::memcpy(&out, value, std::min(size, sizeof out));
  out.magic_etc = VFS_CAP_REVISION_3 | (magic & VFS_CAP_FLAGS_EFFECTIVE);
  if (rev == VFS_CAP_REVISION_1) {
    out.data[1].permitted = 0;
    out.data[1].inheritable = 0;
  }
  out.rootid = root_id;
  return std::string(reinterpret_cast<const char*>(&out), sizeof out);
}

class Unpacker {
 public:
  Unpacker(const std::filesystem::path& dest, const UnpackOptions& opt)
      : root_(std::filesystem::canonical(dest).string()), opt_(opt) {}

  UnpackStats run(int fd) {
    std::unique_ptr<archive, ReadFree> in(archive_read_new());
    std::unique_ptr<archive, WriteFree> out(archive_write_disk_new());
    if (!in || !out) throw internal("libarchive allocation failed");
    archive_read_support_filter_gzip(in.get());
    archive_read_support_filter_zstd(in.get());
    archive_read_support_format_tar(in.get());
    archive_write_disk_set_options(
        out.get(), ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                       ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_UNLINK |
                       ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT);
    if (archive_read_open_fd(in.get(), fd, 256 * 1024) != ARCHIVE_OK)
      throw unprocessable(fmt::format("layer is not a readable archive: {}", err(in.get())));
    archive_entry* e = nullptr;
    for (;;) {
      int r = archive_read_next_header(in.get(), &e);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN)
        throw unprocessable(fmt::format("layer tar is malformed: {}", err(in.get())));
      apply(in.get(), out.get(), e);
    }
    if (archive_write_close(out.get()) < ARCHIVE_WARN)
      throw unprocessable(fmt::format("finishing the layer failed: {}", err(out.get())));
    return stats_;
  }

 private:
  static std::string err(archive* a) {
    const char* s = archive_error_string(a);
    return s ? s : "unknown error";
  }

  std::string host(const std::string& rel) const { return rel.empty() ? root_ : root_ + "/" + rel; }

  // Every directory on the way to `rel` must be a real directory: in this layer when it has
  // it, else in the layers below.
  void check_parents(const std::string& rel) {
    size_t pos = 0;
    while ((pos = rel.find('/', pos)) != std::string::npos) {
      std::string prefix = rel.substr(0, pos);
      ++pos;
      if (checked_.count(prefix)) continue;
      struct stat st;
      if (::lstat(host(prefix).c_str(), &st) == 0) {
        if (S_ISLNK(st.st_mode))
          throw hostile(
              fmt::format("{} goes through the symlink {} of the same layer", rel, prefix));
        if (!S_ISDIR(st.st_mode))
          throw hostile(fmt::format("{} goes through the non-directory {}", rel, prefix));
      } else if (opt_.lower) {
        auto below = opt_.lower->lookup("/" + prefix);
        if (below && S_ISLNK(below->st.st_mode))
          throw hostile(
              fmt::format("{} goes through the symlink /{} of a lower layer", rel, prefix));
      }
      checked_.insert(prefix);
    }
  }

  // Creates the missing directories on the way to `rel`. A directory the layer does not
  // describe keeps what the layers below say of it (mode, owner, user xattrs, mtime), as an
  // overlay copy-up would; without one below it is 0755 and owned by the sandbox's root.
  void ensure_dir(const std::string& rel) {
    if (rel.empty()) return;
    size_t pos = 0;
    for (;;) {
      size_t next = rel.find('/', pos);
      std::string prefix = rel.substr(0, next);
      std::string p = host(prefix);
      if (::mkdir(p.c_str(), 0755) == 0) {
        std::optional<store::Entry> below;
        if (opt_.lower) below = opt_.lower->lookup("/" + prefix);
        if (below && S_ISDIR(below->st.st_mode)) {
          copy_dir_attrs(*below, p);
        } else if (::lchown(p.c_str(), opt_.uid_shift, opt_.uid_shift) != 0) {
          throw sys_error("chown " + p);
        }
      } else if (errno != EEXIST) {
        throw sys_error("mkdir " + p);
      }
      if (next == std::string::npos) break;
      pos = next + 1;
    }
  }

  void copy_dir_attrs(const store::Entry& below, const std::string& p) {
    if (::lchown(p.c_str(), below.st.st_uid + opt_.uid_shift, below.st.st_gid + opt_.uid_shift) !=
        0)
      throw sys_error("chown " + p);
    if (::chmod(p.c_str(), below.st.st_mode & 07777) != 0) throw sys_error("chmod " + p);
    std::vector<char> names(4096);
    ssize_t n = ::llistxattr(below.host_path.c_str(), names.data(), names.size());
    std::vector<char> value(65536);
    for (ssize_t off = 0; n > 0 && off < n;) {
      std::string name(names.data() + off);
      off += static_cast<ssize_t>(name.size()) + 1;
      if (name.rfind("user.", 0) != 0 || name.rfind("user.overlay.", 0) == 0) continue;
      ssize_t len = ::lgetxattr(below.host_path.c_str(), name.c_str(), value.data(), value.size());
      if (len >= 0) ::lsetxattr(p.c_str(), name.c_str(), value.data(), static_cast<size_t>(len), 0);
    }
    struct timespec times[2] = {below.st.st_atim, below.st.st_mtim};
    ::utimensat(AT_FDCWD, p.c_str(), times, AT_SYMLINK_NOFOLLOW);
  }

  void mark_opaque(const std::string& rel) {
    std::string p = host(rel);
    if (::lsetxattr(p.c_str(), "user.overlay.opaque", "y", 1, 0) != 0)
      throw sys_error("marking " + p + " opaque");
  }

  void whiteout(const std::string& parent, const std::string& base) {
    check_parents(parent.empty() ? base : parent + "/" + base);
    if (base == ".wh..opq") {  // the opaque marker ".wh..wh..opq"
      ensure_dir(parent);
      mark_opaque(parent);
      return;
    }
    if (base.rfind(".wh.", 0) == 0) return;  // other AUFS bookkeeping (.wh..wh.plnk, …)
    if (base.empty() || base == "." || base == "..")
      throw hostile("whiteout with an invalid name in " + parent);
    std::string rel = parent.empty() ? base : parent + "/" + base;
    ensure_dir(parent);
    whiteouts_.insert(rel);
    struct stat st;
    std::string p = host(rel);
    if (::lstat(p.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) mark_opaque(rel);  // deleted and recreated in this layer
      return;
    }
    if (::mknod(p.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0) throw sys_error("mknod " + p);
    if (::lchown(p.c_str(), opt_.uid_shift, opt_.uid_shift) != 0) throw sys_error("chown " + p);
  }

  void filter_xattrs(archive_entry* e) {
    struct Kept {
      std::string name, value;
    };
    std::vector<Kept> kept;
    archive_entry_xattr_reset(e);
    const char* name;
    const void* value;
    size_t size;
    while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
      std::string n = name;
      if (n.rfind("user.overlay.", 0) == 0) continue;
      if (n.rfind("user.", 0) == 0) {
        kept.push_back({n, std::string(static_cast<const char*>(value), size)});
      } else if (n == "security.capability") {
        std::string v = capability_v3(value, size, opt_.uid_shift);
        if (!v.empty()) kept.push_back({n, v});
      }
    }
    archive_entry_xattr_clear(e);
    for (const auto& k : kept)
      archive_entry_xattr_add_entry(e, k.name.c_str(), k.value.data(), k.value.size());
  }

  void apply(archive* in, archive* out, archive_entry* e) {
    const char* raw = archive_entry_pathname(e);
    if (!raw) throw hostile("an entry has no name");
    std::string rel = normalize_member_name(raw);
    ++stats_.entries;
    if (rel.empty()) return;  // the layer's root directory: the image root keeps its own
    size_t slash = rel.rfind('/');
    std::string parent = slash == std::string::npos ? "" : rel.substr(0, slash);
    std::string base = slash == std::string::npos ? rel : rel.substr(slash + 1);
    if (base.rfind(".wh.", 0) == 0) return whiteout(parent, base.substr(4));
    check_parents(rel);
    const mode_t type = archive_entry_filetype(e);
    if (type == AE_IFSOCK) return;  // sockets cannot be stored meaningfully
    if (const char* link = archive_entry_hardlink(e)) {
      std::string target = normalize_member_name(link);
      if (target.empty()) throw hostile(fmt::format("hard link {} to the root", rel));
      check_parents(target);
      struct stat st;
      if (::lstat(host(target).c_str(), &st) != 0)
        throw hostile(fmt::format("hard link {} points outside the layer ({})", rel, target));
      if (S_ISDIR(st.st_mode)) throw hostile(fmt::format("hard link {} to a directory", rel));
      archive_entry_set_hardlink(e, host(target).c_str());
    }
    const int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
    if (uid < 0 || gid < 0 || uid >= opt_.uid_range || gid >= opt_.uid_range)
      throw hostile(fmt::format("{} is owned by {}:{}, outside the sandbox's id range 0-{}", rel,
                                uid, gid, opt_.uid_range - 1));
    archive_entry_set_uid(e, uid + opt_.uid_shift);
    archive_entry_set_gid(e, gid + opt_.uid_shift);
    archive_entry_set_uname(e, nullptr);
    archive_entry_set_gname(e, nullptr);
    filter_xattrs(e);
    archive_entry_set_pathname(e, host(rel).c_str());
    ensure_dir(parent);
    int r = archive_write_header(out, e);
    if (r < ARCHIVE_WARN) throw unprocessable(fmt::format("writing {}: {}", rel, err(out)));
    if (archive_entry_size(e) > 0 && type == AE_IFREG) copy_data(in, out, rel);
    if (archive_write_finish_entry(out) < ARCHIVE_WARN)
      throw unprocessable(fmt::format("finishing {}: {}", rel, err(out)));
    if (type == AE_IFDIR && whiteouts_.count(rel)) mark_opaque(rel);
  }

  void copy_data(archive* in, archive* out, const std::string& rel) {
    const void* buf;
    size_t size;
    la_int64_t offset;
    for (;;) {
      int r = archive_read_data_block(in, &buf, &size, &offset);
      if (r == ARCHIVE_EOF) return;
      if (r < ARCHIVE_WARN) throw unprocessable(fmt::format("reading {}: {}", rel, err(in)));
      if (archive_write_data_block(out, buf, size, offset) < ARCHIVE_WARN)
        throw unprocessable(fmt::format("writing {}: {}", rel, err(out)));
      stats_.bytes += size;
      if (opt_.max_bytes && stats_.bytes > opt_.max_bytes)
        throw unprocessable(fmt::format("layer holds more than {} bytes", opt_.max_bytes));
      if (opt_.min_free_bytes && stats_.bytes - last_space_check_ > (64u << 20)) {
        last_space_check_ = stats_.bytes;
        struct statvfs vfs;
        if (::statvfs(root_.c_str(), &vfs) == 0 &&
            static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize < opt_.min_free_bytes)
          throw Error(507, "the data filesystem is nearly full");
      }
    }
  }

  std::string root_;
  const UnpackOptions& opt_;
  UnpackStats stats_;
  std::unordered_set<std::string> checked_;
  std::set<std::string> whiteouts_;
  uint64_t last_space_check_ = 0;
};

}  // namespace

std::string normalize_member_name(std::string_view name) {
  if (name.size() > 4096) throw hostile("member name longer than 4096 bytes");
  if (name.find('\0') != std::string_view::npos) throw hostile("member name with a NUL byte");
  if (!name.empty() && name.front() == '/')
    throw hostile(fmt::format("absolute member name {}", std::string(name)));
  std::string out;
  size_t i = 0;
  while (i <= name.size()) {
    size_t j = name.find('/', i);
    if (j == std::string_view::npos) j = name.size();
    std::string_view c = name.substr(i, j - i);
    if (c == "..")
      throw hostile(fmt::format("member name {} has a .. component", std::string(name)));
    if (!c.empty() && c != ".") {
      if (!out.empty()) out += '/';
      out += c;
    }
    i = j + 1;
  }
  return out;
}

UnpackStats unpack_layer(int fd, const std::filesystem::path& dest, const UnpackOptions& opt) {
  Unpacker u(dest, opt);
  return u.run(fd);
}

}  // namespace coppice::oci
