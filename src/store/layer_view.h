// A read-only merged view of an image's layers, computed in user space exactly as overlayfs
// would show them, without mounting anything. Used by inspect (list, download, archive, grep)
// and by flattening.
//
// Layer format (what overlayfs with `userxattr` writes into an upper directory):
//  * a whiteout is a character device 0:0; it hides the name in every lower layer;
//  * an opaque directory carries the xattr `user.overlay.opaque` = "y"; lower layers'
//    contents of that directory are hidden;
//  * other `user.overlay.*` xattrs are bookkeeping and never shown.
// Host ownership in layers is shifted by `uid_shift` (sandbox uid 0 = host uid_shift); the view
// reports sandbox ids.
//
// Paths are image-absolute ("/etc/passwd"). Resolution happens inside the image only: ".."
// stops at the image root and symlinks (absolute or relative) are followed within the image,
// so no path can name a host file outside the layers.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"

namespace coppice::store {

namespace fs = std::filesystem;

struct Entry {
  std::string name;            // last path component ("" for the root)
  std::string path;            // normalized image-absolute path
  struct stat st {};           // lstat of the visible entry, uid/gid shifted back to sandbox ids
  std::string symlink_target;  // for symlinks
  fs::path host_path;          // the file in the layer that provides the entry
  size_t layer = 0;            // index into the view's layers
};

class LayerView {
 public:
  // `layers_top_first`: layer directories, the top-most (newest) first.
  LayerView(std::vector<fs::path> layers_top_first, uid_t uid_shift);

  // Normalizes and resolves `path` inside the image. Intermediate symlinks are always
  // followed; the last component only when `follow_last`. At most 40 symlinks are followed.
  // Throws Error 404 when a component does not exist, 422 when an intermediate component is
  // not a directory, 400 for an empty or relative path or too many symlinks.
  std::string resolve(std::string_view path, bool follow_last = true) const;

  // The visible entry at a resolved path, or nullopt.
  std::optional<Entry> lookup(std::string_view resolved_path) const;

  // The merged contents of a resolved directory, sorted by name ("." and ".." excluded,
  // whiteouts applied). Throws 404 when absent, 422 when not a directory. At most
  // `max_names` distinct names are read (memory stays bounded on huge directories); past it
  // the rest is left out (the entries are then the sorted first names the layers returned)
  // and `*cut` is set.
  std::vector<Entry> list(std::string_view resolved_dir, size_t max_names = SIZE_MAX,
                          bool* cut = nullptr) const;

  // Opens a regular file for reading. Throws 404 when absent, 422 when not a regular file.
  UniqueFd open_file(std::string_view resolved_path) const;

  // What a walk does after visiting an entry.
  enum class Walk { kContinue, kSkip, kStop };  // kSkip: not into this directory's contents
  // Visits the subtree at a resolved path depth-first, never following symlinks: the entry
  // itself first, then (for a directory) its merged contents in name order, recursively.
  // Computes each directory's contributing layers once (cheaper than list() per directory).
  // Throws 404 when the path is absent. `max_names_per_dir` and `cut` as for list().
  void walk(std::string_view resolved_path, const std::function<Walk(const Entry&)>& visit,
            size_t max_names_per_dir = SIZE_MAX, bool* cut = nullptr) const;

  const std::vector<fs::path>& layers() const { return layers_; }
  uid_t uid_shift() const { return uid_shift_; }

 private:
  struct Node;  // an entry plus the layers merging into it (layer_view.cc)
  std::string host_of(size_t layer, const std::string& path) const;
  Entry make_entry(size_t layer, std::string name, std::string path, const struct stat& st) const;
  Node root_node() const;
  std::optional<Node> child_node(const Node& dir, std::string_view name) const;
  std::vector<Node> list_node(const Node& dir, size_t max_names = SIZE_MAX,
                              bool* cut = nullptr) const;
  std::optional<Node> node_at(std::string_view resolved_path) const;

  std::vector<fs::path> layers_;
  std::vector<std::string> layer_strs_;  // without trailing slashes
  uid_t uid_shift_;
};

// Materializes the merged view into `dest` (which must not exist; created on the same
// filesystem as the layers): directories are created with the same mode, ownership and
// non-overlay xattrs; regular files are hard-linked from their layer (layers are immutable, so
// sharing inodes is safe as long as the result is only ever used read-only, e.g. as a lower
// layer); symlinks, fifos, sockets and devices are recreated. Whiteouts and opaque markers
// are resolved away, so `dest` is a self-contained bottom layer. Host ownership is kept as-is
// (still shifted). Writes to `dest.tmp` first and renames at the end.
void flatten(const LayerView& view, const fs::path& dest);

}  // namespace coppice::store
