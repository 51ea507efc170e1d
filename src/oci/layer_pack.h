// The reverse of layer_unpack: turning a store layer (overlay upper format) into an OCI layer
// blob, a gzip-compressed tar. Whiteouts (character devices 0:0) become `.wh.NAME` entries, an
// opaque directory gets a `.wh..wh..opq` entry, ownership is shifted back to sandbox ids, hard
// links inside the layer stay hard links, user.* xattrs (not user.overlay.*) are kept.
// Output is deterministic: entries in name order, gzip header without a timestamp, so packing
// the same layer twice gives the same digest.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace coppice::oci {

struct PackedLayer {
  std::filesystem::path file;  // the .tar.gz written
  std::string digest;          // sha256 of the compressed blob ("sha256:…")
  std::string diff_id;         // sha256 of the uncompressed tar
  int64_t size = 0;            // compressed bytes
};

// `abort` (when set) is polled per entry and per MiB of file data; when it returns true the
// packing stops with Error 499 (the caller removes `out`).
PackedLayer pack_layer(const std::filesystem::path& layer_dir, const std::filesystem::path& out,
                       uid_t uid_shift, uid_t uid_range = 65536,
                       const std::function<bool()>& abort = nullptr);

}  // namespace coppice::oci
