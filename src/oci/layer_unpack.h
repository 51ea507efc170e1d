// Applying an image layer (a tar, gzip- or zstd-compressed or not) as a store layer: the
// result is a directory in the overlay upper format the rest of the store uses (see
// store/layer_view.h).
//
// Conversions:
//  * OCI whiteouts: `.wh.NAME` becomes a whiteout (character device 0:0) named NAME, and
//    `.wh..wh..opq` marks its directory opaque (xattr user.overlay.opaque=y). A whiteout and
//    an entry of the same name in one layer mean "replaced": the entry is kept, and a
//    directory becomes opaque.
//  * Ownership is shifted into the sandbox range (uid + uid_shift); ids outside the range are
//    refused. Modes (setuid included), mtimes, hard links, symlinks and fifos are kept.
//    Extended attributes: user.* (except user.overlay.*) and security.capability are kept
//    (file capabilities rewritten as v3 with the sandbox's root id), others dropped.
//  * Device nodes are never created: a layer holds no device but the 0:0 whiteout. Character
//    and block devices (and sockets) are skipped and reported in UnpackStats::skipped, as
//    rootless podman does.
//  * A directory the layer does not describe (the parent of an entry, with no entry of its
//    own) takes the attributes of that directory in the layers below, as an overlay copy-up
//    would; then the result depends on `lower`, and UnpackStats::depends_on_lower says so
//    (the importer keys such a layer by its lower stack too). Without one below it is 0755
//    and owned by the sandbox's root.
//
// Every write is made relative to a directory fd of `dest`, resolved by the kernel with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) (common/beneath.h): nothing can be written
// outside `dest`, whatever the order of the entries. Hostile layers are refused with Error
// 422: absolute paths, ".." components, hard links outside the layer or to directories, and
// any entry whose path goes through a symlink, whether planted by an earlier entry of this
// layer or by a layer below (`lower`, checked in the merged view).
//
// Decompression bombs: `max_bytes` caps the apparent size of the files (a sparse file counts
// its full length), `max_entries` the number of entries, and `min_free_bytes` stops the unpack
// when the filesystem fills. Each failure is an Error (413, 413, 507) and the caller removes
// `dest`.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "store/layer_view.h"

namespace coppice::oci {

struct UnpackOptions {
  uid_t uid_shift = 100000;
  uid_t uid_range = 65536;
  const store::LayerView* lower = nullptr;  // the image's layers below this one, if any
  uint64_t max_bytes = 0;       // refuse layers whose files' apparent size exceeds this (0: none)
  uint64_t max_entries = 0;     // refuse layers with more entries than this (0: no cap)
  uint64_t min_free_bytes = 0;  // stop when the filesystem gets this full
};

struct UnpackStats {
  uint64_t entries = 0;
  uint64_t bytes = 0;                // apparent size of the regular files
  uint64_t skipped_count = 0;        // entries not stored (devices, sockets)
  std::vector<std::string> skipped;  // the first few of them, "path (why)"
  bool depends_on_lower = false;     // a directory took its attributes from `lower`
};

// Reads a layer tar from `fd` until its end-of-archive marker and writes it into `dest` (an
// existing empty directory). The caller owns `fd` (and should drain it afterwards if it needs
// the whole stream, e.g. to finish a digest).
UnpackStats unpack_layer(int fd, const std::filesystem::path& dest, const UnpackOptions& opt);

// Validates and normalizes a tar member name: strips "./" prefixes and trailing slashes.
// Returns "" for the root itself. Throws 422 for absolute paths, ".." components, NUL or
// overlong names.
std::string normalize_member_name(std::string_view name);

}  // namespace coppice::oci
