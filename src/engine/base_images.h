// Creating base images without a registry: from a root filesystem directory or tarball, from
// Debian's busybox-static, or from a Debian minbase built by mmdebstrap.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "store/layer_store.h"
#include "store/meta_store.h"

namespace coppice::engine {

struct BaseImageOptions {
  std::string tag;                              // moved to the new image when set
  std::string project = store::kPublicProject;  // "" = public base image
  uid_t uid_shift = 100000;
};

// Imports a root filesystem (a directory, copied; or a tar/tar.gz/tar.zst file, extracted)
// as a new base image. Ownership is shifted into the sandbox uid range.
store::ImageRecord import_rootfs(store::MetaStore& meta, store::LayerStore& layers,
                                 const std::filesystem::path& source, const BaseImageOptions& opt);

// Builds a tiny image from /bin/busybox (Debian's busybox-static): applet links, /etc/passwd,
// /etc/group, and the usual empty directories.
store::ImageRecord bootstrap_busybox(store::MetaStore& meta, store::LayerStore& layers,
                                     const BaseImageOptions& opt);

// Builds a Debian bookworm minbase image with mmdebstrap through the configured mirror.
store::ImageRecord bootstrap_debian(store::MetaStore& meta, store::LayerStore& layers,
                                    const BaseImageOptions& opt);

}  // namespace coppice::engine
