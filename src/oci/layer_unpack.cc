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

#include "common/beneath.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"

namespace coppice::oci {

namespace {

struct ReadFree {
  void operator()(archive* a) const { archive_read_free(a); }
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

// One entry of the layer being written: the directory fd of its parent (beneath the layer's
// root) and its name there.
struct Target {
  UniqueFd dir;
  std::string name;
};

constexpr size_t kMaxSkippedNotes = 20;

class Unpacker {
 public:
  Unpacker(const std::filesystem::path& dest, const UnpackOptions& opt)
      : root_(open_dir_path(dest)), opt_(opt) {}

  UnpackStats run(int fd) {
    std::unique_ptr<archive, ReadFree> in(archive_read_new());
    if (!in) throw internal("libarchive allocation failed");
    archive_read_support_filter_gzip(in.get());
    archive_read_support_filter_zstd(in.get());
    archive_read_support_format_tar(in.get());
    if (archive_read_open_fd(in.get(), fd, 256 * 1024) != ARCHIVE_OK)
      throw unprocessable(fmt::format("layer is not a readable archive: {}", err(in.get())));
    archive_entry* e = nullptr;
    for (;;) {
      int r = archive_read_next_header(in.get(), &e);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN)
        throw unprocessable(fmt::format("layer tar is malformed: {}", err(in.get())));
      apply(in.get(), e);
    }
    finish_dir_times();
    return stats_;
  }

 private:
  static std::string err(archive* a) {
    const char* s = archive_error_string(a);
    return s ? s : "unknown error";
  }

  // The lower layers must not have a symlink where this layer puts a directory on the way to
  // `rel`: the merged view would not follow it the way the layer's author meant. (A symlink or
  // non-directory of this layer itself is refused by the kernel's walk, see open_dir.)
  void check_lower_parents(const std::string& rel) {
    if (!opt_.lower) return;
    size_t pos = 0;
    while ((pos = rel.find('/', pos)) != std::string::npos) {
      std::string prefix = rel.substr(0, pos);
      ++pos;
      if (lower_checked_.count(prefix)) continue;
      // Whether this layer has the prefix (ELOOP: it goes through one of its symlinks, which
      // open_dir refuses): only then do the layers below decide.
      UniqueFd here = try_open_beneath(root_.get(), prefix, O_PATH);
      if (!here && errno == ENOENT) {
        auto below = opt_.lower->lookup("/" + prefix);
        if (below && S_ISLNK(below->st.st_mode))
          throw hostile(
              fmt::format("{} goes through the symlink /{} of a lower layer", rel, prefix));
      }
      // Only what the lower layers say is cached: it does not change while this layer unpacks.
      lower_checked_.insert(prefix);
    }
  }

  // Opens the directory `rel` of the layer, creating the missing ones on the way. Each step is
  // an openat2 beneath the previous directory that refuses symlinks, so a symlink planted by an
  // earlier entry (or anything that is not a directory) fails the layer instead of being
  // followed.
  UniqueFd open_dir(const std::string& rel) {
    if (rel == cached_rel_ && cached_dir_) return UniqueFd(::dup(cached_dir_.get()));
    UniqueFd cur(::dup(root_.get()));
    if (!cur) throw sys_error("dup");
    size_t pos = 0;
    while (pos < rel.size()) {
      size_t next = rel.find('/', pos);
      if (next == std::string::npos) next = rel.size();
      std::string name = rel.substr(pos, next - pos);
      std::string prefix = rel.substr(0, next);
      UniqueFd child = try_open_beneath(cur.get(), name, O_PATH | O_DIRECTORY);
      if (!child && errno == ENOENT) {
        make_implied_dir(cur.get(), name, prefix);
        child = try_open_beneath(cur.get(), name, O_PATH | O_DIRECTORY);
      }
      if (!child) {
        if (errno == ELOOP)
          throw hostile(
              fmt::format("{} goes through the symlink {} of the same layer", rel, prefix));
        if (errno == ENOTDIR)
          throw hostile(fmt::format("{} goes through the non-directory {}", rel, prefix));
        throw sys_error("open " + prefix + " in the layer");
      }
      cur = std::move(child);
      pos = next + 1;
    }
    cached_rel_ = rel;
    cached_dir_.reset(::dup(cur.get()));
    return cur;
  }

  // A directory on the way to an entry that the layer does not describe (yet): it keeps what
  // the layers below say of it (mode, owner, user xattrs, mtime), as an overlay copy-up would;
  // without one below it is 0755 and owned by the sandbox's root.
  void make_implied_dir(int parent, const std::string& name, const std::string& prefix) {
    if (::mkdirat(parent, name.c_str(), 0755) != 0 && errno != EEXIST)
      throw sys_error("mkdir " + prefix + " in the layer");
    UniqueFd d = open_beneath(parent, name, O_RDONLY | O_DIRECTORY);
    std::optional<store::Entry> below;
    if (opt_.lower) below = opt_.lower->lookup("/" + prefix);
    if (below && S_ISDIR(below->st.st_mode)) {
      copy_dir_attrs(*below, d.get(), prefix);
      stats_.depends_on_lower = true;
    } else if (::fchown(d.get(), opt_.uid_shift, opt_.uid_shift) != 0) {
      throw sys_error("chown " + prefix + " in the layer");
    }
  }

  void copy_dir_attrs(const store::Entry& below, int fd, const std::string& prefix) {
    if (::fchown(fd, below.st.st_uid + opt_.uid_shift, below.st.st_gid + opt_.uid_shift) != 0)
      throw sys_error("chown " + prefix + " in the layer");
    if (::fchmod(fd, below.st.st_mode & 07777) != 0)
      throw sys_error("chmod " + prefix + " in the layer");
    // Read the lower directory through a descriptor that did not follow a final symlink.
    UniqueFd src(::open(below.host_path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (src) {
      std::vector<char> names(4096);
      ssize_t n = ::flistxattr(src.get(), names.data(), names.size());
      std::vector<char> value(65536);
      for (ssize_t off = 0; n > 0 && off < n;) {
        std::string name(names.data() + off);
        off += static_cast<ssize_t>(name.size()) + 1;
        if (name.rfind("user.", 0) != 0 || name.rfind("user.overlay.", 0) == 0) continue;
        ssize_t len = ::fgetxattr(src.get(), name.c_str(), value.data(), value.size());
        if (len >= 0) ::fsetxattr(fd, name.c_str(), value.data(), static_cast<size_t>(len), 0);
      }
    }
    dir_times_.push_back({prefix, below.st.st_atim, below.st.st_mtim});
  }

  Target target(const std::string& rel) {
    size_t slash = rel.rfind('/');
    std::string parent = slash == std::string::npos ? "" : rel.substr(0, slash);
    return {open_dir(parent), slash == std::string::npos ? rel : rel.substr(slash + 1)};
  }

  // Makes room for a new entry: anything at the name goes, unless both are directories (a
  // directory described twice keeps its contents and takes the new attributes).
  bool clear(const Target& t, bool new_is_dir) {
    struct stat st;
    if (::fstatat(t.dir.get(), t.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return false;
      throw sys_error("stat " + t.name + " in the layer");
    }
    if (new_is_dir && S_ISDIR(st.st_mode)) return true;
    if (S_ISDIR(st.st_mode)) invalidate_dir_cache();
    remove_tree_at(t.dir.get(), t.name);
    return false;
  }

  void invalidate_dir_cache() {
    cached_rel_.clear();
    cached_dir_.reset();
  }

  void mark_opaque(int dirfd, const std::string& rel) {
    if (::fsetxattr(dirfd, "user.overlay.opaque", "y", 1, 0) != 0)
      throw sys_error("marking " + rel + " opaque");
  }

  void make_whiteout(const Target& t, const std::string& rel) {
    if (::mknodat(t.dir.get(), t.name.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0)
      throw sys_error("mknod " + rel);
    if (::fchownat(t.dir.get(), t.name.c_str(), opt_.uid_shift, opt_.uid_shift,
                   AT_SYMLINK_NOFOLLOW) != 0)
      throw sys_error("chown " + rel);
  }

  void whiteout(const std::string& parent, const std::string& base) {
    const std::string rel = parent.empty() ? base : parent + "/" + base;
    check_lower_parents(rel);
    if (base == ".wh..opq") {  // the opaque marker ".wh..wh..opq"
      UniqueFd d = open_beneath(open_dir(parent).get(), "", O_RDONLY | O_DIRECTORY);
      mark_opaque(d.get(), parent.empty() ? "/" : parent);
      return;
    }
    if (base.rfind(".wh.", 0) == 0) return;  // other AUFS bookkeeping (.wh..wh.plnk, …)
    if (base.empty() || base == "." || base == "..")
      throw hostile("whiteout with an invalid name in " + parent);
    whiteouts_.insert(rel);
    Target t = target(rel);
    struct stat st;
    if (::fstatat(t.dir.get(), t.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      // Deleted and recreated in this layer: the entry stays; a directory becomes opaque.
      if (S_ISDIR(st.st_mode)) {
        UniqueFd d = open_beneath(t.dir.get(), t.name, O_RDONLY | O_DIRECTORY);
        mark_opaque(d.get(), rel);
      }
      return;
    }
    make_whiteout(t, rel);
  }

  struct Xattr {
    std::string name, value;
  };

  // The extended attributes the layer may set: user.* (not overlay's own) and file
  // capabilities, rewritten for the sandbox's user namespace.
  std::vector<Xattr> kept_xattrs(archive_entry* e) {
    std::vector<Xattr> kept;
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
    return kept;
  }

  void skip(const std::string& rel, const char* why) {
    ++stats_.skipped_count;
    if (stats_.skipped.size() < kMaxSkippedNotes)
      stats_.skipped.push_back(fmt::format("/{} ({})", rel, why));
  }

  void count_entry(archive_entry* e, const std::string& rel) {
    ++stats_.entries;
    if (opt_.max_entries && stats_.entries > opt_.max_entries)
      throw Error(413, fmt::format("layer has more than {} entries", opt_.max_entries));
    if (archive_entry_filetype(e) == AE_IFREG && archive_entry_size_is_set(e)) {
      const int64_t size = archive_entry_size(e);
      if (size < 0) throw hostile(fmt::format("{} has a negative size", rel));
      stats_.bytes += static_cast<uint64_t>(size);
      if (opt_.max_bytes && stats_.bytes > opt_.max_bytes)
        throw Error(413, fmt::format("layer holds more than {} bytes of files", opt_.max_bytes));
    }
  }

  void apply(archive* in, archive_entry* e) {
    const char* raw = archive_entry_pathname(e);
    if (!raw) throw hostile("an entry has no name");
    std::string rel = normalize_member_name(raw);
    count_entry(e, rel);
    if (rel.empty()) return;  // the layer's root directory: the image root keeps its own
    size_t slash = rel.rfind('/');
    std::string parent = slash == std::string::npos ? "" : rel.substr(0, slash);
    std::string base = slash == std::string::npos ? rel : rel.substr(slash + 1);
    if (base.rfind(".wh.", 0) == 0) return whiteout(parent, base.substr(4));
    const mode_t type = archive_entry_filetype(e);
    if (type == AE_IFSOCK) return skip(rel, "a socket");
    const bool is_whiteout_dev = type == AE_IFCHR && archive_entry_rdev(e) == 0;
    if ((type == AE_IFCHR && !is_whiteout_dev) || type == AE_IFBLK)
      return skip(rel, type == AE_IFCHR ? "a character device" : "a block device");
    check_lower_parents(rel);
    const int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
    if (uid < 0 || gid < 0 || uid >= opt_.uid_range || gid >= opt_.uid_range)
      throw hostile(fmt::format("{} is owned by {}:{}, outside the sandbox's id range 0-{}", rel,
                                uid, gid, opt_.uid_range - 1));
    const uid_t huid = static_cast<uid_t>(uid) + opt_.uid_shift;
    const gid_t hgid = static_cast<gid_t>(gid) + opt_.uid_shift;
    const mode_t mode = archive_entry_perm(e) & 07777;
    Target t = target(rel);

    if (const char* link = archive_entry_hardlink(e)) return hard_link(t, rel, link);
    const bool existing_dir = clear(t, type == AE_IFDIR);
    const char* n = t.name.c_str();
    UniqueFd fd;  // the new entry, for everything but symlinks and fifos
    switch (type) {
      case AE_IFDIR:
        if (!existing_dir && ::mkdirat(t.dir.get(), n, 0700) != 0) throw sys_error("mkdir " + rel);
        fd = open_beneath(t.dir.get(), t.name, O_RDONLY | O_DIRECTORY);
        break;
      case AE_IFREG:
        fd = open_beneath(t.dir.get(), t.name, O_WRONLY | O_CREAT | O_EXCL, 0600);
        copy_data(in, fd.get(), rel, archive_entry_size(e));
        break;
      case AE_IFLNK: {
        const char* to = archive_entry_symlink(e);
        if (!to || !*to) throw hostile(fmt::format("symlink {} has no target", rel));
        if (::symlinkat(to, t.dir.get(), n) != 0) throw sys_error("symlink " + rel);
        break;
      }
      case AE_IFIFO:
        if (::mknodat(t.dir.get(), n, S_IFIFO | 0600, 0) != 0) throw sys_error("mkfifo " + rel);
        break;
      case AE_IFCHR:  // the 0:0 whiteout, the one device a layer may hold
        make_whiteout(t, rel);
        return;
      default:
        throw hostile(fmt::format("{} has an unknown file type {:o}", rel, type));
    }
    if (::fchownat(t.dir.get(), n, huid, hgid, AT_SYMLINK_NOFOLLOW) != 0)
      throw sys_error("chown " + rel);
    if (type == AE_IFLNK) {
      set_times(t, e, rel);
      return;
    }
    // After the chown, which clears setuid bits and file capabilities.
    if (::fchmodat(t.dir.get(), n, mode, 0) != 0) throw sys_error("chmod " + rel);
    if (fd)
      for (const auto& x : kept_xattrs(e))
        if (::fsetxattr(fd.get(), x.name.c_str(), x.value.data(), x.value.size(), 0) != 0)
          throw sys_error(fmt::format("setting {} on {}", x.name, rel));
    if (type == AE_IFDIR) {
      if (whiteouts_.count(rel)) mark_opaque(fd.get(), rel);
      dir_times_.push_back({rel, entry_time(e, true), entry_time(e, false)});
      return;
    }
    set_times(t, e, rel);
  }

  void hard_link(const Target& t, const std::string& rel, const char* link) {
    std::string to = normalize_member_name(link);
    if (to.empty()) throw hostile(fmt::format("hard link {} to the root", rel));
    if (to == rel) throw hostile(fmt::format("hard link {} to itself", rel));
    Target src;
    try {
      src = target(to);
    } catch (const Error&) {
      throw hostile(fmt::format("hard link {} points outside the layer ({})", rel, to));
    }
    struct stat st;
    if (::fstatat(src.dir.get(), src.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      throw hostile(fmt::format("hard link {} points outside the layer ({})", rel, to));
    if (S_ISDIR(st.st_mode)) throw hostile(fmt::format("hard link {} to a directory", rel));
    if (S_ISCHR(st.st_mode)) throw hostile(fmt::format("hard link {} to a whiteout", rel));
    clear(t, false);
    // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points to.
    if (::linkat(src.dir.get(), src.name.c_str(), t.dir.get(), t.name.c_str(), 0) != 0)
      throw sys_error("hard link " + rel);
  }

  static timespec entry_time(archive_entry* e, bool atime) {
    timespec ts{};
    if (atime && archive_entry_atime_is_set(e)) {
      ts.tv_sec = archive_entry_atime(e);
      ts.tv_nsec = archive_entry_atime_nsec(e);
    } else if (archive_entry_mtime_is_set(e)) {
      ts.tv_sec = archive_entry_mtime(e);
      ts.tv_nsec = archive_entry_mtime_nsec(e);
    } else {
      ts.tv_nsec = UTIME_OMIT;
    }
    return ts;
  }

  void set_times(const Target& t, archive_entry* e, const std::string& rel) {
    timespec ts[2] = {entry_time(e, true), entry_time(e, false)};
    if (::utimensat(t.dir.get(), t.name.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0)
      throw sys_error("set the times of " + rel);
  }

  // Directory times are set last, deepest first: creating entries inside changes them.
  void finish_dir_times() {
    for (auto it = dir_times_.rbegin(); it != dir_times_.rend(); ++it) {
      UniqueFd d = try_open_beneath(root_.get(), it->rel, O_RDONLY | O_DIRECTORY);
      if (!d) continue;  // replaced by a later entry
      timespec ts[2] = {it->atime, it->mtime};
      ::futimens(d.get(), ts);
    }
  }

  void copy_data(archive* in, int fd, const std::string& rel, int64_t size) {
    const void* buf;
    size_t n;
    la_int64_t offset;
    for (;;) {
      int r = archive_read_data_block(in, &buf, &n, &offset);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) throw unprocessable(fmt::format("reading {}: {}", rel, err(in)));
      if (offset < 0 || (size >= 0 && offset + static_cast<int64_t>(n) > size))
        throw hostile(fmt::format("{} has data beyond its size", rel));
      const char* p = static_cast<const char*>(buf);
      while (n > 0) {
        ssize_t w = ::pwrite(fd, p, n, offset);
        if (w < 0) {
          if (errno == EINTR) continue;
          if (errno == ENOSPC) throw Error(507, "the data filesystem is full");
          throw sys_error("write " + rel);
        }
        p += w;
        n -= static_cast<size_t>(w);
        offset += w;
        written_ += static_cast<uint64_t>(w);
      }
      check_space();
    }
    // A sparse file's trailing hole, and its full length.
    if (size > 0 && ::ftruncate(fd, size) != 0) throw sys_error("truncate " + rel);
  }

  void check_space() {
    if (!opt_.min_free_bytes || written_ - last_space_check_ < (64u << 20)) return;
    last_space_check_ = written_;
    struct statvfs vfs;
    if (::fstatvfs(root_.get(), &vfs) == 0 &&
        static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize < opt_.min_free_bytes)
      throw Error(507, "the data filesystem is nearly full");
  }

  struct DirTimes {
    std::string rel;
    timespec atime, mtime;
  };

  UniqueFd root_;
  const UnpackOptions& opt_;
  UnpackStats stats_;
  std::unordered_set<std::string> lower_checked_;
  std::set<std::string> whiteouts_;
  std::vector<DirTimes> dir_times_;
  std::string cached_rel_;
  UniqueFd cached_dir_;
  uint64_t written_ = 0, last_space_check_ = 0;
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
