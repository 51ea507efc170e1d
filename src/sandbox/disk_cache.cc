#include "sandbox/disk_cache.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <vector>

#include "common/error.h"
#include "common/fsutil.h"

namespace coppice::sandbox {

namespace fs = std::filesystem;

namespace {
bool is_tmp(const fs::path& p) {
  return p.extension() == ".tmp";
}
}  // namespace

DiskCache::DiskCache(fs::path dir, uint64_t budget_bytes)
    : dir_(std::move(dir)), budget_(budget_bytes) {
  make_dirs(dir_, 0755);
  ::chmod(dir_.c_str(), 0755);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec))
    if (is_tmp(e.path())) fs::remove(e.path(), ec);
}

DiskCache::Lease::~Lease() {
  if (cache_) cache_->release(name_);
}

fs::path DiskCache::Lease::path() const {
  return cache_->dir_ / name_;
}

void DiskCache::release(const std::string& name) {
  std::lock_guard lk(mu_);
  if (--leases_[name] <= 0) leases_.erase(name);
}

DiskCache::Lease DiskCache::get(const std::string& name,
                                const std::function<void(const fs::path&)>& build) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      is_tmp(name))
    throw Error(500, "disk cache: bad file name " + name);
  const fs::path file = dir_ / name;
  auto lease = [&] {
    std::lock_guard lk(mu_);
    ++leases_[name];
    return Lease(this, name);
  };
  // Leased before the existence check: a concurrent prune cannot take it in between.
  Lease l = lease();
  if (::utimensat(AT_FDCWD, file.c_str(), nullptr, 0) == 0) return l;  // cached: now used
  std::lock_guard build_lock(build_mu_);
  if (::utimensat(AT_FDCWD, file.c_str(), nullptr, 0) == 0) return l;  // built meanwhile
  const fs::path tmp = file.string() + ".tmp";
  try {
    build(tmp);
    fs::rename(tmp, file);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  prune(name);
  return l;
}

std::vector<DiskCache::Entry> DiskCache::entries() const {
  std::vector<Entry> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    struct stat st {};
    if (is_tmp(e.path()) || ::lstat(e.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    out.push_back(
        {e.path().filename().string(), st.st_mtim, static_cast<uint64_t>(st.st_blocks) * 512});
  }
  return out;
}

uint64_t DiskCache::allocated_bytes() const {
  uint64_t total = 0;
  for (const Entry& e : entries()) total += e.bytes;
  return total;
}

void DiskCache::prune(const std::string& keep) {
  std::vector<Entry> entries = this->entries();
  uint64_t total = 0;
  for (const Entry& e : entries) total += e.bytes;
  if (total <= budget_) return;
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.used.tv_sec != b.used.tv_sec ? a.used.tv_sec < b.used.tv_sec
                                          : a.used.tv_nsec < b.used.tv_nsec;
  });
  for (const Entry& e : entries) {
    if (total <= budget_) break;
    if (e.name == keep) continue;
    {
      std::lock_guard lk(mu_);
      if (leases_.count(e.name)) continue;
      // Removed under mu_: a get() leases before it looks, so it either holds a lease now
      // (skipped above) or will find the file gone and build it again.
      if (::unlink((dir_ / e.name).c_str()) != 0) continue;
    }
    total -= e.bytes;
    spdlog::info("disk cache {}: removed {} ({:.1f} MiB, least recently used)", dir_.string(),
                 e.name, e.bytes / 1048576.0);
  }
  if (total > budget_)
    spdlog::warn("disk cache {}: {:.1f} MiB kept, over its {:.1f} MiB budget (files in use)",
                 dir_.string(), total / 1048576.0, budget_ / 1048576.0);
}

}  // namespace coppice::sandbox
