#include "oci/layer_pack.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <exception>
#include <map>
#include <memory>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "common/sha256.h"

namespace coppice::oci {

namespace fs = std::filesystem;

namespace {

// Receives the uncompressed tar from libarchive: hashes it (diff_id), gzips it into the output
// file and hashes the compressed bytes (digest).
class GzipFileSink {
 public:
  explicit GzipFileSink(const fs::path& out) : path_(out) {
    fd_.reset(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd_) throw sys_error("create " + out.string());
    // windowBits 15 + 16: a gzip wrapper; zlib writes mtime 0, so the output is reproducible.
    if (deflateInit2(&zs_, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK)
      throw internal("deflateInit2 failed");
  }
  ~GzipFileSink() { deflateEnd(&zs_); }
  GzipFileSink(const GzipFileSink&) = delete;
  GzipFileSink& operator=(const GzipFileSink&) = delete;

  void write(const void* data, size_t n) {
    raw_.update(std::string_view(static_cast<const char*>(data), n));
    deflate_some(data, n, Z_NO_FLUSH);
  }
  void finish() { deflate_some(nullptr, 0, Z_FINISH); }

  PackedLayer result() {
    return {path_, "sha256:" + packed_.hex_digest(), "sha256:" + raw_.hex_digest(), size_};
  }

 private:
  void deflate_some(const void* data, size_t n, int flush) {
    zs_.next_in = static_cast<Bytef*>(const_cast<void*>(data));
    zs_.avail_in = static_cast<uInt>(n);
    char out[65536];
    int rc;
    do {
      zs_.next_out = reinterpret_cast<Bytef*>(out);
      zs_.avail_out = sizeof out;
      rc = deflate(&zs_, flush);
      if (rc == Z_STREAM_ERROR) throw internal("deflate failed");
      size_t have = sizeof out - zs_.avail_out;
      emit(out, have);
    } while (zs_.avail_out == 0 || (flush == Z_FINISH && rc != Z_STREAM_END));
  }
  void emit(const char* p, size_t n) {
    packed_.update(std::string_view(p, n));
    size_ += static_cast<int64_t>(n);
    while (n) {
      ssize_t w = ::write(fd_.get(), p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw sys_error("write " + path_.string());
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  fs::path path_;
  UniqueFd fd_;
  z_stream zs_{};
  Sha256 raw_, packed_;
  int64_t size_ = 0;
};

struct CallbackCtx {
  GzipFileSink* sink;
  std::exception_ptr error;
};

la_ssize_t write_cb(archive*, void* ud, const void* buf, size_t n) {
  auto* c = static_cast<CallbackCtx*>(ud);
  try {
    c->sink->write(buf, n);
    return static_cast<la_ssize_t>(n);
  } catch (...) {
    c->error = std::current_exception();
    return -1;
  }
}

struct WriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

class Packer {
 public:
  Packer(archive* a, uid_t shift, uid_t range, const std::function<bool()>& abort)
      : a_(a), shift_(shift), range_(range), abort_(abort) {}

  void dir(const std::string& host, const std::string& rel) {
    std::vector<std::string> names;
    {
      DIR* d = ::opendir(host.c_str());
      if (!d) throw sys_error("opendir " + host);
      while (dirent* de = ::readdir(d)) {
        std::string n = de->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      ::closedir(d);
    }
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      check_abort();
      std::string h = host + "/" + n;
      std::string r = rel.empty() ? n : rel + "/" + n;
      struct stat st;
      if (::lstat(h.c_str(), &st) != 0) throw sys_error("lstat " + h);
      if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {
        whiteout(rel.empty() ? ".wh." + n : rel + "/.wh." + n, st);
        continue;
      }
      entry(h, r, st);
      if (S_ISDIR(st.st_mode)) {
        char v[4];
        ssize_t len = ::lgetxattr(h.c_str(), "user.overlay.opaque", v, sizeof v);
        if (len == 1 && v[0] == 'y') whiteout(r + "/.wh..wh..opq", st);
        dir(h, r);
      }
    }
  }

 private:
  void check_abort() const {
    if (abort_ && abort_()) throw Error(499, "cancelled");
  }

  int64_t sandbox_id(uid_t host_id) const {
    return host_id >= shift_ && host_id < shift_ + range_ ? host_id - shift_ : 0;
  }

  void write_header(archive_entry* e, const std::string& what) {
    if (archive_write_header(a_, e) < ARCHIVE_WARN)
      throw internal(fmt::format("tar header for {}: {}", what, archive_error_string(a_)));
  }

  void whiteout(const std::string& rel, const struct stat& like) {
    std::unique_ptr<archive_entry, EntryFree> e(archive_entry_new());
    archive_entry_set_pathname(e.get(), rel.c_str());
    archive_entry_set_filetype(e.get(), AE_IFREG);
    archive_entry_set_perm(e.get(), 0);
    archive_entry_set_size(e.get(), 0);
    archive_entry_set_mtime(e.get(), like.st_mtim.tv_sec, 0);
    write_header(e.get(), rel);
  }

  void add_xattrs(archive_entry* e, const std::string& host) {
    std::vector<char> names(4096);
    ssize_t n;
    while ((n = ::llistxattr(host.c_str(), names.data(), names.size())) < 0) {
      if (errno != ERANGE || names.size() > (1u << 20)) return;
      names.resize(names.size() * 4);
    }
    std::vector<std::string> sorted;
    for (ssize_t off = 0; off < n;) {
      std::string name(names.data() + off);
      off += static_cast<ssize_t>(name.size()) + 1;
      if (name.rfind("user.", 0) == 0 && name.rfind("user.overlay.", 0) != 0)
        sorted.push_back(name);
    }
    std::sort(sorted.begin(), sorted.end());
    std::vector<char> value(65536);
    for (const auto& name : sorted) {
      ssize_t len = ::lgetxattr(host.c_str(), name.c_str(), value.data(), value.size());
      if (len >= 0)
        archive_entry_xattr_add_entry(e, name.c_str(), value.data(), static_cast<size_t>(len));
    }
  }

  void entry(const std::string& host, const std::string& rel, const struct stat& st) {
    std::unique_ptr<archive_entry, EntryFree> e(archive_entry_new());
    archive_entry_copy_stat(e.get(), &st);
    archive_entry_set_pathname(e.get(), rel.c_str());
    archive_entry_set_uid(e.get(), sandbox_id(st.st_uid));
    archive_entry_set_gid(e.get(), sandbox_id(st.st_gid));
    archive_entry_set_ino64(e.get(), 0);
    archive_entry_set_dev(e.get(), 0);
    archive_entry_set_nlink(e.get(), 1);
    archive_entry_unset_atime(e.get());
    archive_entry_unset_ctime(e.get());
    archive_entry_set_mtime(e.get(), st.st_mtim.tv_sec, 0);
    if (S_ISLNK(st.st_mode)) {
      std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
      ssize_t len = ::readlink(host.c_str(), target.data(), target.size());
      if (len < 0) throw sys_error("readlink " + host);
      target.resize(static_cast<size_t>(len));
      archive_entry_set_symlink(e.get(), target.c_str());
    }
    add_xattrs(e.get(), host);
    if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
      auto key = std::make_pair(st.st_dev, st.st_ino);
      auto it = links_.find(key);
      if (it != links_.end()) {
        archive_entry_set_hardlink(e.get(), it->second.c_str());
        archive_entry_set_size(e.get(), 0);
        write_header(e.get(), rel);
        return;
      }
      links_[key] = rel;
    }
    write_header(e.get(), rel);
    if (S_ISREG(st.st_mode) && st.st_size > 0) {
      UniqueFd fd(::open(host.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
      if (!fd) throw sys_error("open " + host);
      std::vector<char> buf(1 << 20);
      int64_t left = st.st_size;
      while (left > 0) {
        check_abort();
        ssize_t n = ::read(fd.get(), buf.data(), buf.size());
        if (n < 0) {
          if (errno == EINTR) continue;
          throw sys_error("read " + host);
        }
        if (n == 0) throw internal(fmt::format("{} shrank while being packed", host));
        n = std::min<ssize_t>(n, left);
        if (archive_write_data(a_, buf.data(), static_cast<size_t>(n)) < 0)
          throw internal(fmt::format("tar data for {}: {}", rel, archive_error_string(a_)));
        left -= n;
      }
    }
  }

  archive* a_;
  uid_t shift_, range_;
  const std::function<bool()>& abort_;
  std::map<std::pair<dev_t, ino_t>, std::string> links_;
};

}  // namespace

PackedLayer pack_layer(const fs::path& layer_dir, const fs::path& out, uid_t uid_shift,
                       uid_t uid_range, const std::function<bool()>& abort) {
  GzipFileSink sink(out);
  CallbackCtx ctx{&sink, nullptr};
  std::unique_ptr<archive, WriteFree> a(archive_write_new());
  archive_write_set_format_pax_restricted(a.get());
  archive_write_set_bytes_per_block(a.get(), 10240);
  if (archive_write_open(a.get(), &ctx, nullptr, write_cb, nullptr) != ARCHIVE_OK)
    throw internal(fmt::format("tar writer: {}", archive_error_string(a.get())));
  try {
    Packer(a.get(), uid_shift, uid_range, abort).dir(layer_dir.string(), "");
  } catch (...) {
    if (ctx.error) std::rethrow_exception(ctx.error);
    throw;
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) {
    if (ctx.error) std::rethrow_exception(ctx.error);
    throw internal(fmt::format("tar writer: {}", archive_error_string(a.get())));
  }
  sink.finish();
  return sink.result();
}

}  // namespace coppice::oci
