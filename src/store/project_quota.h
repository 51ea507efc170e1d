// Filesystem project quotas on the data directory: how each run's writes are capped while it
// writes, the way Docker's overlay2 `--storage-opt size=` does it.
//
// A run's upper/ and work/ directories get a project id of their own with PROJINHERIT, so
// every file and directory the run creates below them is charged to that project, and the
// project gets a block (and inode) hard limit: a write past it fails inside the sandbox
// (XFS reports ENOSPC for a project quota, ext4 EDQUOT). work/ needs the same id as upper/:
// overlayfs creates files in work/work and renames them into upper/, and XFS and ext4 refuse
// (EXDEV) a rename into a PROJINHERIT directory of another project. layers/ never carries
// PROJINHERIT, so renaming an upper into layers/ stays allowed; the files of a committed layer keep
// their project id (with no limit left on it).
//
// Supported: XFS mounted with prjquota (pquota), and ext4 with the `project` and `quota`
// features mounted with prjquota. Needs a kernel with quota support for that filesystem
// (CONFIG_XFS_QUOTA, or CONFIG_QFMT_V2 for ext4) and Linux 5.14 (quotactl_fd). Whether a
// kernel enforces the limit on processes with CAP_SYS_RESOURCE depends on the filesystem:
// XFS always does, ext4 lets them pass (so writes must come from processes without it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "common/fd.h"

namespace coppice::store {

namespace fs = std::filesystem;

// Project ids never handed out twice for one data directory: the next free id is kept in
// `file`, reserved kBlock at a time (written and fsynced before any id of the block is used),
// so a crash never leads to an id being used twice; ids start at `first`. Thread-safe.
class ProjectIdCounter {
 public:
  static constexpr uint64_t kBlock = 1024;
  ProjectIdCounter(fs::path file, uint32_t first);
  // Throws Error when the file cannot be written or the ids ran out.
  uint32_t next();

 private:
  fs::path file_;
  std::mutex mu_;
  uint64_t next_ = 0;      // next id to hand out
  uint64_t reserved_ = 0;  // ids below this are reserved in the file
};

class ProjectQuota {
 public:
  // Project ids handed out start here, so that the small ids an operator may assign by hand
  // (/etc/projid) are left alone.
  static constexpr uint32_t kFirstId = 1u << 20;

  // Probes the filesystem of `data_dir`: its type, that it enforces project quotas, and that
  // a project id and a limit can be set on a directory of `data_dir/tmp` (made and removed).
  // Returns nullptr and sets *why (one line for the log and whoami) when any of it fails.
  // Ids are kept in `data_dir/project-quota-next` (see new_id()).
  static std::unique_ptr<ProjectQuota> open(const fs::path& data_dir, std::string* why);

  // "xfs" or "ext4".
  const std::string& fs_type() const { return fs_type_; }

  // A project id never handed out before in this data directory (ProjectIdCounter).
  uint32_t new_id() { return ids_.next(); }

  // Gives the directory `dirfd` project `id` and FS_XFLAG_PROJINHERIT (its other flags are
  // kept). Throws Error.
  static void tag(int dirfd, uint32_t id);
  // The project id of `fd` (FS_IOC_FSGETXATTR). Throws Error.
  static uint32_t project_of(int fd);

  // Hard limits of project `id`: `bytes` (rounded up to KiB) and `inodes`; 0 = none. Throws.
  void set_limit(uint32_t id, uint64_t bytes, uint64_t inodes);
  // Removes both limits of `id`. Never throws (logs).
  void clear_limit(uint32_t id) noexcept;

  struct Usage {
    uint64_t bytes = 0;
    uint64_t inodes = 0;
  };
  // What project `id` holds now. Throws Error.
  Usage usage(uint32_t id) const;

 private:
  ProjectQuota(UniqueFd root, fs::path counter, std::string fs_type);
  UniqueFd root_;  // the data directory, for quotactl_fd
  std::string fs_type_;
  ProjectIdCounter ids_;
};

}  // namespace coppice::store
