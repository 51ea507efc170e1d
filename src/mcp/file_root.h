// The one local directory the MCP tools may read (`upload`, `rsync`) and write (`download`):
// `coppice mcp --file-root DIR` (default: the working directory), on both transports.
//
// Invariant: every local file a tool touches is opened relative to a directory fd of the root
// (held for the server's life) with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
// RESOLVE_NO_MAGICLINKS), or, below a directory opened that way, with openat() of a single
// name and O_NOFOLLOW. So neither `..` nor a symlink anywhere on the path (the last component
// included) leads outside the root, whatever a client names and whatever changes under the
// root meanwhile; there is no string check to race. Writes go to a new temporary file in the
// target's directory (O_CREAT|O_EXCL) renamed over the target, so they never write through a
// symlink or into a file that is not a regular file.
//
// Errors are coppice::Error values a model can act on: 403 outside the root or through a
// symlink, 404 missing, 400 a bad name, 409 the target is something else (a directory, …).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>

#include "common/fd.h"

namespace coppice::mcp {

class FileRoot {
 public:
  // Opens `dir` (made absolute and canonical). Throws Error 400 when it is not a directory.
  explicit FileRoot(const std::filesystem::path& dir);

  // The canonical absolute path of the root, as shown to clients.
  const std::string& path() const { return path_; }

  // The root-relative name of a client's path: an absolute path under the root (given in its
  // canonical form or as the operator spelt it) or a path relative to the root. "." is the
  // root itself. Throws 403 for an absolute path elsewhere, 400 for an empty one or one with
  // a NUL byte. Purely lexical: `..` is left for openat2 to refuse.
  std::string relative(const std::string& client_path) const;
  // The absolute path shown for a root-relative name.
  std::string absolute(const std::string& rel) const;

  // Opens a regular file for reading (O_RDONLY, never blocking on a FIFO).
  UniqueFd open_file(const std::string& client_path) const;
  // Opens a directory for reading its entries.
  UniqueFd open_dir(const std::string& client_path) const;

  // Writes `data` to `client_path`: a file (replaced atomically when it exists) or an existing
  // directory, into which the file goes as `name_in_dir`. Missing parent directories are
  // created (0755). The new file has `mode` less the umask. Refuses (403) when the target or
  // a directory on the way is a symlink. Returns the absolute path written.
  std::string write_file(const std::string& client_path, std::string_view data, mode_t mode,
                         const std::string& name_in_dir) const;

 private:
  [[noreturn]] void fail(int err, const std::string& rel, const std::string& what) const;
  UniqueFd open_parent_dirs(const std::string& rel_dir) const;

  std::string path_;   // canonical
  std::string given_;  // absolute, as given
  UniqueFd fd_;
};

// openat2(dirfd, rel, flags | O_CLOEXEC, mode) resolving beneath `dirfd` with no symlinks and
// no magic links; -1 with errno set on failure (EAGAIN from a concurrent rename is retried).
int open_beneath(int dirfd, const std::string& rel, int flags, mode_t mode = 0);

// Reads an open file to its end; Error 413 past `max` bytes.
std::string read_fd(int fd, const std::string& what, size_t max);

}  // namespace coppice::mcp
