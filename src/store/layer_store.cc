#include "store/layer_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"

namespace coppice::store {

LayerStore::LayerStore(fs::path root, bool durable) : root_(std::move(root)), durable_(durable) {
  make_dirs(root_, 0700);
  root_ = fs::absolute(root_);
  // Sandboxes mount layers as an unprivileged uid: every directory above DATA must be
  // searchable by others (DATA itself is opened to the sandbox group by restrict_access).
  struct stat st;
  for (fs::path p = root_.parent_path(); !p.empty(); p = p.parent_path()) {
    if (::stat(p.c_str(), &st) == 0 && !(st.st_mode & S_IXOTH))
      throw internal(
          fmt::format("data dir {}: {} is not searchable by other users (chmod o+x "
                      "it, or choose another --data-dir)",
                      root_.string(), p.string()));
    if (p == p.parent_path()) break;
  }
  for (const char* sub : {"layers", "runs", "files", "tmp"}) make_dirs(root_ / sub, 0700);
}

void LayerStore::restrict_access(gid_t sandbox_gid) {
  auto set = [&](const fs::path& p, gid_t gid, mode_t mode) {
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd || ::fchown(fd.get(), 0, gid) != 0 || ::fchmod(fd.get(), mode) != 0)
      throw sys_error("restrict access to " + p.string());
  };
  set(root_, sandbox_gid, 0710);
  set(root_ / "layers", sandbox_gid, 0710);
  set(root_ / "runs", sandbox_gid, 0710);
  set(root_ / "files", 0, 0700);
  set(root_ / "tmp", 0, 0700);
}

std::vector<fs::path> LayerStore::layer_paths(const std::vector<std::string>& ids) const {
  std::vector<fs::path> out;
  out.reserve(ids.size());
  for (const auto& id : ids) out.push_back(layer_path(id));
  return out;
}

namespace {
constexpr size_t kMaxSpareRunDirs = 64;

// Whether `dir` can be read and holds no entry but the names in `allowed`.
bool only_entries(const fs::path& dir, std::initializer_list<const char*> allowed) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    bool ok = false;
    for (const char* a : allowed) ok = ok || n == a;
    if (!ok) return false;
  }
  return !ec;
}
}  // namespace

fs::path LayerStore::acquire_run_dir(const std::string& op_uuid) {
  fs::path dst = run_path(op_uuid);
  std::lock_guard lk(spare_mu_);
  while (!spare_.empty()) {
    fs::path spare = std::move(spare_.back());
    spare_.pop_back();
    if (::rename(spare.c_str(), dst.c_str()) == 0) return dst;
    spdlog::warn("spare run directory {}: {}", spare.string(), std::strerror(errno));
    remove_tree(spare);
  }
  return dst;
}

void LayerStore::release_run_dir(const fs::path& dir, bool reusable) noexcept {
  try {
    if (reusable && only_entries(dir, {"upper", "work", "merged"}) &&
        only_entries(dir / "work", {"work"}) && only_entries(dir / "work" / "work", {}) &&
        only_entries(dir / "merged", {})) {
      if (fs::exists(dir / "upper") && !only_entries(dir / "upper", {})) remove_tree(dir / "upper");
      std::lock_guard lk(spare_mu_);
      if (spare_.size() < kMaxSpareRunDirs) {
        fs::path spare = root_ / "runs" / fmt::format("spare-{}", ++spare_seq_);
        if (::rename(dir.c_str(), spare.c_str()) == 0) {
          spare_.push_back(std::move(spare));
          return;
        }
      }
    }
    remove_tree(dir);
  } catch (const std::exception& e) {
    spdlog::warn("could not remove run directory {}: {}", dir.string(), e.what());
  }
}

void LayerStore::commit_layer(const fs::path& dir, const std::string& id) {
  if (durable_) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd || ::syncfs(fd.get()) != 0) throw sys_error("syncfs " + dir.string());
  }
  fs::path dst = layer_path(id);
  if (::rename(dir.c_str(), dst.c_str()) != 0) throw sys_error("rename into " + dst.string());
  if (durable_) fsync_dir(root_ / "layers");
}

void LayerStore::commit_file(const fs::path& upload, const std::string& sha256) {
  fs::path dst = file_path(sha256);
  if (::access(dst.c_str(), F_OK) == 0) {
    ::unlink(upload.c_str());
    return;
  }
  {
    UniqueFd fd(::open(upload.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd || ::fchmod(fd.get(), 0600) != 0) throw sys_error("store upload " + upload.string());
    if (durable_ && ::fsync(fd.get()) != 0) throw sys_error("fsync " + upload.string());
  }
  if (::rename(upload.c_str(), dst.c_str()) != 0) throw sys_error("store upload");
  if (durable_) fsync_dir(root_ / "files");
}

size_t LayerStore::recover(const std::set<std::string>& referenced) {
  for (const char* sub : {"runs", "tmp"})
    for (const auto& e : fs::directory_iterator(root_ / sub)) remove_tree(e.path());
  size_t removed = 0;
  for (const auto& e : fs::directory_iterator(root_ / "layers")) {
    if (referenced.count(e.path().filename().string())) continue;
    remove_tree(e.path());
    ++removed;
  }
  return removed;
}

}  // namespace coppice::store
