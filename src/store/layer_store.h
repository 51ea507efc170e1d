// The on-disk layout of a data directory and the operations on layer directories.
//
//   DATA/coppice.db          metadata (MetaStore)
//   DATA/layers/<id>/        one immutable layer per directory (overlay upper format)
//   DATA/runs/<op-uuid>/     scratch of a running sandbox: upper/ work/ merged/
//   DATA/runs/spare-<n>/     a finished run's work/ merged/ (upper/), kept for the next run
//   DATA/files/<sha256>      uploaded file contents, content-addressed
//   DATA/tmp/                partial uploads and flattening in progress
//
// Access (restrict_access): DATA is root:<sandbox gid> 0710 and layers/ and runs/ the same,
// because the namespace runtime mounts a run's overlay as the sandbox's root (host uid and gid
// = the store's uid base), which must walk to its lower, upper and work directories, and the
// microVM runtime's disk builder and QEMU run as that uid and gid too; files/ and tmp/ are
// 0700 and the database 0600 (root only: the server opens file blobs for the sandboxes). No
// other host user can reach anything in the data directory. Every directory above DATA must be
// searchable by others.
//
// Everything lives on one filesystem so that a finished run's upper directory becomes a layer
// with one rename(2). Crash-safety protocol: (1) rename the upper into layers/<id>, (2) commit
// the image row that names it. Recovery deletes runs/, tmp/ and every layer no image names, so
// a crash between (1) and (2) leaks nothing and no image can name a missing layer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace coppice::store {

namespace fs = std::filesystem;

class LayerStore {
 public:
  // Creates the directory layout when missing. `durable`: fsync directories after renames
  // (and syncfs before committing a layer), at a cost of a few ms per snapshot.
  LayerStore(fs::path root, bool durable);

  // Sets the modes and owners above (see "Access") on DATA and its subdirectories; run at
  // every start, so older data directories (0711, 0644 files) are fixed. `sandbox_gid` is
  // the host gid of sandbox root (the store's uid base). Throws Error.
  void restrict_access(gid_t sandbox_gid);

  const fs::path& root() const { return root_; }
  fs::path layer_path(const std::string& id) const { return root_ / "layers" / id; }
  fs::path run_path(const std::string& op_uuid) const { return root_ / "runs" / op_uuid; }
  fs::path file_path(const std::string& sha256) const { return root_ / "files" / sha256; }
  fs::path tmp_path(const std::string& name) const { return root_ / "tmp" / name; }
  fs::path db_path() const { return root_ / "coppice.db"; }

  std::vector<fs::path> layer_paths(const std::vector<std::string>& ids) const;

  // The scratch directory of a run, runs/<op_uuid>: a spare one renamed there when there is
  // one (its work/ and merged/, maybe an empty upper/, exist then), else a path that does
  // not exist yet. Throws Error.
  fs::path acquire_run_dir(const std::string& op_uuid);
  // After the run, once its upper/ was committed or is to be dropped: keeps the directory as
  // a spare when `reusable` and it holds nothing but work/ (with an empty work/work),
  // merged/ and upper/ (removed here unless empty), else removes it. Spares exist because every
  // inode freed on an ext4 without a journal stays "recently deleted" for seconds, and each inode
  // allocation scans past those: fan-outs spent a seventh of their CPU time there.
  // Never throws (logs).
  void release_run_dir(const fs::path& dir, bool reusable) noexcept;

  // Moves `dir` (on the same filesystem) into the store as layer `id`.
  void commit_layer(const fs::path& dir, const std::string& id);

  // Moves a complete upload (a file on the same filesystem, e.g. under tmp/) into the store as
  // files/<sha256>, mode 0600, or removes it when that content is stored already. With
  // `durable`, the content and the directory entry are on disk (fsync of the file, then of
  // files/) before this returns, so a recorded file survives power loss.
  void commit_file(const fs::path& upload, const std::string& sha256);
  bool durable() const { return durable_; }

  // Startup recovery: removes runs/ and tmp/ contents and every layer not in `referenced`.
  // Returns how many layers were removed.
  size_t recover(const std::set<std::string>& referenced);

 private:
  fs::path root_;
  bool durable_;
  std::mutex spare_mu_;
  std::vector<fs::path> spare_;  // runs/spare-<n>, ready for acquire_run_dir
  uint64_t spare_seq_ = 0;
};

}  // namespace coppice::store
