// Inspect: streaming a PAX tar of an image subtree.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <utility>

#include "common/error.h"
#include "inspect/inspect.h"

namespace coppice::inspect {

namespace {

constexpr size_t kBlock = 64 * 1024;

struct Sink {
  const std::function<void(std::string_view)>* sink;
  std::exception_ptr error;  // thrown by the sink; rethrown once libarchive has returned
};

la_ssize_t write_cb(struct archive*, void* ctx, const void* buf, size_t n) {
  auto* s = static_cast<Sink*>(ctx);
  try {
    (*s->sink)(std::string_view(static_cast<const char*>(buf), n));
    return static_cast<la_ssize_t>(n);
  } catch (...) {
    s->error = std::current_exception();
    return -1;
  }
}

struct ArchiveFree {
  void operator()(struct archive* a) const { archive_write_free(a); }
};
struct EntryFree {
  void operator()(struct archive_entry* e) const { archive_entry_free(e); }
};

// Non-overlay xattrs of a layer file, for SCHILY.xattr records.
void add_xattrs(struct archive_entry* ae, const std::string& host) {
  std::vector<char> names(4096);
  ssize_t n;
  while (true) {
    n = ::llistxattr(host.c_str(), names.data(), names.size());
    if (n >= 0) break;
    if (errno != ERANGE || names.size() > (1 << 20)) return;
    names.resize(names.size() * 4);
  }
  std::vector<char> value(4096);
  for (size_t off = 0; off < static_cast<size_t>(n);) {
    std::string name(names.data() + off);
    off += name.size() + 1;
    if (name.empty() || name.starts_with("user.overlay.") || name.starts_with("trusted.overlay."))
      continue;
    ssize_t v;
    while (true) {
      v = ::lgetxattr(host.c_str(), name.c_str(), value.data(), value.size());
      if (v >= 0 || errno != ERANGE || value.size() > (1 << 20)) break;
      value.resize(value.size() * 4);
    }
    if (v >= 0)
      archive_entry_xattr_add_entry(ae, name.c_str(), value.data(), static_cast<size_t>(v));
  }
}

class Writer {
 public:
  Writer(const store::LayerView& view, const std::function<void(std::string_view)>& sink)
      : view_(view), names_(detail::IdNames::load(view)), sink_{&sink, nullptr} {
    a_.reset(archive_write_new());
    if (!a_) throw internal("archive_write_new failed");
    check(archive_write_set_format_pax_restricted(a_.get()));
    check(archive_write_set_bytes_per_block(a_.get(), static_cast<int>(kBlock)));
    check(archive_write_set_bytes_in_last_block(a_.get(), 1));
    check(archive_write_open2(a_.get(), &sink_, nullptr, write_cb, nullptr, nullptr));
  }

  // Adds one entry (not its children); `name` is the member name.
  void add(const store::Entry& e, const std::string& name) {
    const auto& st = e.st;
    if (S_ISSOCK(st.st_mode)) return;  // tar cannot store sockets
    std::unique_ptr<struct archive_entry, EntryFree> ae(archive_entry_new());
    archive_entry_copy_pathname(ae.get(), name.c_str());
    archive_entry_set_mode(ae.get(), st.st_mode);
    archive_entry_set_uid(ae.get(), st.st_uid);
    archive_entry_set_gid(ae.get(), st.st_gid);
    if (auto u = names_.user(st.st_uid)) archive_entry_copy_uname(ae.get(), u->c_str());
    if (auto g = names_.group(st.st_gid)) archive_entry_copy_gname(ae.get(), g->c_str());
    archive_entry_set_mtime(ae.get(), st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    archive_entry_set_size(ae.get(), 0);
    bool data = false;
    if (S_ISLNK(st.st_mode)) {
      archive_entry_copy_symlink(ae.get(), e.symlink_target.c_str());
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      archive_entry_set_rdev(ae.get(), st.st_rdev);
    } else if (S_ISREG(st.st_mode)) {
      auto key = std::make_pair(st.st_dev, st.st_ino);
      auto it = st.st_nlink > 1 ? links_.find(key) : links_.end();
      if (it != links_.end()) {
        archive_entry_copy_hardlink(ae.get(), it->second.c_str());
      } else {
        if (st.st_nlink > 1) links_.emplace(key, name);
        archive_entry_set_size(ae.get(), st.st_size);
        data = st.st_size > 0;
      }
    }
    if (!S_ISLNK(st.st_mode)) add_xattrs(ae.get(), e.host_path.string());
    check(archive_write_header(a_.get(), ae.get()));
    if (data) write_data(e);
    check(archive_write_finish_entry(a_.get()));
  }

  void close() {
    check(archive_write_close(a_.get()));
    a_.reset();
  }

 private:
  void write_data(const store::Entry& e) {
    UniqueFd fd = view_.open_file(e.path);
    auto left = static_cast<uint64_t>(e.st.st_size);
    std::unique_ptr<char[]> buf(new char[kBlock]);
    while (left > 0) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(left, kBlock));
      ssize_t n = ::read(fd.get(), buf.get(), want);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw sys_error(fmt::format("read {}", e.path));
      if (n == 0) {  // the file shrank: pad to the size in the header
        std::memset(buf.get(), 0, want);
        n = static_cast<ssize_t>(want);
      }
      if (archive_write_data(a_.get(), buf.get(), static_cast<size_t>(n)) < 0) fail();
      left -= static_cast<uint64_t>(n);
    }
  }

  void check(int r) {
    if (r < ARCHIVE_WARN) fail();
  }
  [[noreturn]] void fail() {
    if (sink_.error) std::rethrow_exception(sink_.error);
    const char* msg = a_ ? archive_error_string(a_.get()) : nullptr;
    throw internal(fmt::format("writing archive: {}", msg ? msg : "unknown error"));
  }

  const store::LayerView& view_;
  detail::IdNames names_;
  Sink sink_;
  std::unique_ptr<struct archive, ArchiveFree> a_;
  std::map<std::pair<dev_t, ino_t>, std::string> links_;  // first member name per inode
};

}  // namespace

void write_archive(const store::LayerView& view, std::string_view path,
                   const std::function<void(std::string_view)>& sink) {
  // Intermediate symlinks are followed; the last component only with a trailing slash (as
  // tar does): archiving a symlink stores the symlink.
  std::string resolved = view.resolve(path, false);
  if (!view.lookup(resolved)) throw not_found(fmt::format("{}: no such file or directory", path));
  Writer w(view, sink);
  view.walk(resolved, [&](const store::Entry& e) {
    if (e.path == "/") return store::LayerView::Walk::kContinue;  // no member for the root
    w.add(e, e.path.substr(1));
    return store::LayerView::Walk::kContinue;
  });
  w.close();
}

}  // namespace coppice::inspect
