// Small filesystem helpers used across components. All throw coppice::Error with the path in
// the message on failure.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>

namespace coppice {

namespace fs = std::filesystem;

// mkdir -p with `mode` for the directories it creates.
void make_dirs(const fs::path& p, mode_t mode = 0755);
// rm -rf that never follows symlinks and never crosses into other mounts' contents on purpose
// (it removes entries with unlinkat on directory fds). Missing paths are fine.
void remove_tree(const fs::path& p);
// fsync a directory (after renames into it).
void fsync_dir(const fs::path& p);
// Whole file contents; throws when unreadable.
std::string read_file(const fs::path& p);
// Writes `data` to `p` through a temporary file and rename, fsynced when `durable`.
void write_file_atomic(const fs::path& p, std::string_view data, bool durable = true);
// Bytes allocated and entries below `p` (lstat walk; counts each inode once).
struct TreeSize {
  uint64_t bytes = 0;
  uint64_t entries = 0;
  uint64_t apparent_bytes = 0;  // sum of st_size of regular files: a sparse file counts in full
};
TreeSize tree_size(const fs::path& p);
// Recursively chowns every entry below and including `p` by adding `shift` to its uid and gid
// (used to move a root filesystem into the sandbox uid range). Never follows symlinks.
void shift_ownership(const fs::path& p, uid_t shift);

// A scratch directory, created on construction and removed (remove_tree) on destruction.
class TempDir {
 public:
  explicit TempDir(fs::path p, mode_t mode = 0700) : path_(std::move(p)) { make_dirs(path_, mode); }
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace coppice
