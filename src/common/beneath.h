// Opening paths beneath a directory fd, with the kernel (openat2) enforcing that resolution
// never leaves that directory: no "..", no absolute path, no symlink (RESOLVE_NO_SYMLINKS), no
// magic link, no other mount. Every host write of image content (layer unpack, archive import,
// microVM change replay) goes through these instead of building a path string and hoping that
// nothing on the way is a symlink: a string check can be raced or cached wrongly, the kernel's
// walk cannot.
#pragma once

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/fd.h"

namespace coppice {

// What store writes resolve with.
constexpr uint64_t kResolveBeneath =
    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;

// openat2(2); returns the fd, or -1 with errno set. Async-signal-safe (usable between clone and
// execve).
int openat2_fd(int dirfd, const char* path, int flags, mode_t mode, uint64_t resolve) noexcept;

// `rel` (relative, "" or "." for the directory itself) opened beneath `dirfd` with
// kResolveBeneath. Returns an invalid fd with errno set when it cannot be opened (ENOENT, ELOOP
// for a symlink on the way or at the end, EXDEV, ENOTDIR, …).
UniqueFd try_open_beneath(int dirfd, std::string_view rel, int flags, mode_t mode = 0);

// The same, but throws Error (with `rel` in the message) on failure.
UniqueFd open_beneath(int dirfd, std::string_view rel, int flags, mode_t mode = 0);

// mkdir -p of `rel` beneath `dirfd` (each missing directory made with `mode`, nothing followed);
// returns the last directory opened O_PATH. Throws Error on failure (ELOOP/ENOTDIR when the way
// goes through a symlink or a non-directory).
UniqueFd make_dirs_beneath(int dirfd, std::string_view rel, mode_t mode = 0755);

// rm -rf of the entry `name` of the directory open as `dirfd` (a file, or a whole tree), never
// following symlinks. (Defined in fsutil.cc, beside remove_tree, whose walk it shares.)
void remove_tree_at(int dirfd, const std::string& name);

// A directory of the host opened O_PATH|O_DIRECTORY (the root that later opens are beneath).
// The path itself is trusted (it is the server's own: a layer or run directory).
UniqueFd open_dir_path(const std::filesystem::path& p);

}  // namespace coppice
