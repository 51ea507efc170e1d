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
  make_dirs(root_, 0711);
  root_ = fs::absolute(root_);
  // Sandboxes mount layers as an unprivileged uid: every directory above a layer must be
  // searchable by others.
  struct stat st;
  if (::stat(root_.c_str(), &st) == 0 && !(st.st_mode & S_IXOTH))
    ::chmod(root_.c_str(), (st.st_mode & 07777) | 0011);
  for (fs::path p = root_.parent_path(); !p.empty(); p = p.parent_path()) {
    if (::stat(p.c_str(), &st) == 0 && !(st.st_mode & S_IXOTH))
      throw internal(
          fmt::format("data dir {}: {} is not searchable by other users (chmod o+x "
                      "it, or choose another --data-dir)",
                      root_.string(), p.string()));
    if (p == p.parent_path()) break;
  }
  for (const char* sub : {"layers", "runs", "files", "tmp"}) make_dirs(root_ / sub, 0711);
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
