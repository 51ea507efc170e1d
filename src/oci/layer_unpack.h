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
//    refused. Modes (setuid included), mtimes, hard links, symlinks, devices and fifos are
//    kept. Extended attributes: user.* (except user.overlay.*) and security.capability are
//    kept (file capabilities rewritten as v3 with the sandbox's root id), others dropped.
//
// Hostile layers are refused with Error 422, before anything is written outside `dest`:
// absolute paths, ".." components, hard links outside the layer, and any entry whose path
// goes through a symlink, whether planted by an earlier entry of this layer or by a layer
// below (`lower`). Extraction goes through libarchive's secure mode as a second line.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>

#include "store/layer_view.h"

namespace coppice::oci {

struct UnpackOptions {
  uid_t uid_shift = 100000;
  uid_t uid_range = 65536;
  const store::LayerView* lower = nullptr;  // the image's layers below this one, if any
  uint64_t max_bytes = 0;                   // refuse layers whose files exceed this (0 = no cap)
  uint64_t min_free_bytes = 0;              // stop when the filesystem gets this full
};

struct UnpackStats {
  uint64_t entries = 0;
  uint64_t bytes = 0;  // file data written
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
