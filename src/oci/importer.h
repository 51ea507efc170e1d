// Importing an image from a source (registry or archive) into the store. Layers are stored
// once, by the digest of the blob they came from ("sha256-<hex>" in layers/), so images that
// share a base layer share its storage, and a layer is streamed from the network straight into
// its layer directory (no temporary copy of the blob). Every blob is verified against its
// digest; a mismatch fails the import and stores nothing (the half-written layer is removed).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "oci/image_source.h"
#include "oci/layer_unpack.h"
#include "store/layer_store.h"
#include "store/meta_store.h"

namespace coppice::oci {

struct ImportOptions {
  std::string project;             // owner of the new image (kPublicProject = public)
  std::optional<std::string> tag;  // moved to the image when set
  Platform platform;               // chosen from an index
  std::string source_name;         // recorded in the image config ("docker.io/library/x:1")
  std::optional<std::string> operation_uuid;  // the import operation, recorded in the image
  uid_t uid_shift = 100000;
  uid_t uid_range = 65536;
  uint64_t min_free_bytes = 0;
  // Decompression-bomb caps for the whole import (0: none): the apparent size of all files and
  // the number of entries of all layers unpacked.
  uint64_t max_bytes = 0;
  uint64_t max_entries = 0;
  // Called after each layer is unpacked (not for reused layers), e.g. to report what it skipped.
  std::function<void(const Descriptor&, const UnpackStats&)> on_layer;
  // Called once, just before the image is recorded (or, for an unchanged re-import, before
  // its tag moves): the point after which the import cannot be undone. May throw to stop.
  std::function<void()> before_commit;
};

struct ImportProgress {
  size_t layers_done = 0, layers_total = 0, layers_reused = 0;
  uint64_t bytes_done = 0, bytes_total = 0;  // compressed blob bytes (reused layers count done)
  uint64_t bytes_fetched = 0;                // of which actually downloaded or read
};

struct ImportResult {
  store::ImageRecord image;
  bool existing = false;  // an unchanged re-import: the image was already there
  ImportProgress progress;
  std::string manifest_digest;
};

// `progress` is called from the importing thread (and the download thread) with the running
// totals, at most every ~100 ms plus once per layer. `abort` is polled; returning true stops
// the import with Error 499.
ImportResult import_image(ImageSource& src, store::MetaStore& meta, store::LayerStore& layers,
                          const ImportOptions& opt,
                          const std::function<void(const ImportProgress&)>& progress,
                          const AbortCheck& abort);

// The store's layer id for a blob digest: "sha256-<hex>".
std::string layer_id_for(const std::string& digest);

// The id of layer `id` unpacked on top of the layers `below` (bottom first) when its content
// depends on them: "<id>-on-<hash of their ids>". A stored layer's content depends only on its
// own blob, or its id names what else it depends on, so layers are shared safely.
std::string chained_layer_id(const std::string& id, const std::vector<std::string>& below);

}  // namespace coppice::oci
