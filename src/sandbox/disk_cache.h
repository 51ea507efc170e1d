// A directory of files that are expensive to build and cheap to keep, such as the microVM
// runtime's image disks (one ext4 file per layer stack), held under a byte budget.
//
// Invariants: a file is only ever visible under its final name once completely built (built
// as NAME.tmp, then renamed); a file with a live Lease is never removed; after each build the
// least recently used files that are not leased are removed until the allocated bytes of the
// directory fit the budget (the file just built always stays, even alone over budget). "Used"
// is the file's mtime, refreshed on every get(), so the order survives restarts. One process
// owns a directory at a time.
#pragma once

#include <time.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace coppice::sandbox {

class DiskCache {
 public:
  // Creates `dir` (mode 0755) and removes NAME.tmp files a crash left behind.
  DiskCache(std::filesystem::path dir, uint64_t budget_bytes);
  DiskCache(const DiskCache&) = delete;
  DiskCache& operator=(const DiskCache&) = delete;

  // Keeps its file from being pruned while it lives.
  class Lease {
   public:
    Lease(Lease&& o) noexcept : cache_(o.cache_), name_(std::move(o.name_)) { o.cache_ = nullptr; }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    std::filesystem::path path() const;

   private:
    friend class DiskCache;
    Lease(DiskCache* cache, std::string name) : cache_(cache), name_(std::move(name)) {}
    DiskCache* cache_;
    std::string name_;
  };

  // The file `name` (a plain file name), built first with build(tmp path) when missing; build
  // must create the file at the path it is given (and may throw: nothing is kept then). Builds
  // are serialised.
  Lease get(const std::string& name,
            const std::function<void(const std::filesystem::path&)>& build);
  // Allocated bytes of the cached files (they are usually sparse).
  uint64_t allocated_bytes() const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  struct Entry {
    std::string name;
    timespec used;   // mtime
    uint64_t bytes;  // allocated
  };
  std::vector<Entry> entries() const;  // the built files (not NAME.tmp)
  void release(const std::string& name);
  void prune(const std::string& keep);  // with build_mu_ held

  const std::filesystem::path dir_;
  const uint64_t budget_;
  std::mutex build_mu_;                // one build (and prune) at a time
  mutable std::mutex mu_;              // leases_
  std::map<std::string, int> leases_;  // name -> live leases
};

}  // namespace coppice::sandbox
