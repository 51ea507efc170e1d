// The on-disk layout of a data directory and the operations on layer directories.
//
//   DATA/coppice.db          metadata (MetaStore)
//   DATA/layers/<id>/        one immutable layer per directory (overlay upper format)
//   DATA/runs/<op-uuid>/     scratch of a running sandbox: upper/ work/ merged/
//   DATA/files/<sha256>      uploaded file contents, content-addressed
//   DATA/tmp/                partial uploads and flattening in progress
//
// Everything lives on one filesystem so that a finished run's upper directory becomes a layer
// with one rename(2). Crash-safety protocol: (1) rename the upper into layers/<id>, (2) commit
// the image row that names it. Recovery deletes runs/, tmp/ and every layer no image names, so
// a crash between (1) and (2) leaks nothing and no image can name a missing layer.
#pragma once

#include <filesystem>
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

  const fs::path& root() const { return root_; }
  fs::path layer_path(const std::string& id) const { return root_ / "layers" / id; }
  fs::path run_path(const std::string& op_uuid) const { return root_ / "runs" / op_uuid; }
  fs::path file_path(const std::string& sha256) const { return root_ / "files" / sha256; }
  fs::path tmp_path(const std::string& name) const { return root_ / "tmp" / name; }
  fs::path db_path() const { return root_ / "coppice.db"; }

  std::vector<fs::path> layer_paths(const std::vector<std::string>& ids) const;

  // Moves `dir` (on the same filesystem) into the store as layer `id`.
  void commit_layer(const fs::path& dir, const std::string& id);

  // Startup recovery: removes runs/ and tmp/ contents and every layer not in `referenced`.
  // Returns how many layers were removed.
  size_t recover(const std::set<std::string>& referenced);

 private:
  fs::path root_;
  bool durable_;
};

}  // namespace coppice::store
