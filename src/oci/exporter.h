// Exporting a store image as an OCI image: its layers packed as gzip blobs (see layer_pack.h),
// an image config carrying ENV/WORKDIR/USER/ENTRYPOINT/CMD and the diff_ids, and an OCI
// manifest. From there: an OCI archive (oci-layout, index.json, blobs/) streamed to a client,
// or a push to a registry.
//
// Images whose stack is deeper than kMaxExportLayers are squashed into one layer first (runtimes
// and registries cap the layer count well below our chain depths).
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "oci/layer_pack.h"
#include "oci/registry_client.h"
#include "store/layer_store.h"
#include "store/records.h"

namespace coppice::oci {

inline constexpr size_t kMaxExportLayers = 100;

struct BuiltImage {
  std::vector<PackedLayer> layers;  // bottom first
  std::string config, config_digest;
  std::string manifest, manifest_digest;
};

// Packs `img` into `work` (an empty scratch directory the caller removes afterwards).
// `on_layer(done, total)` reports progress; `abort` is polled between layers (Error 499).
BuiltImage build_image(const store::ImageRecord& img, const store::LayerStore& layers,
                       const std::filesystem::path& work, uid_t uid_shift,
                       const std::function<void(size_t, size_t)>& on_layer = nullptr,
                       const AbortCheck& abort = nullptr);

// Streams an OCI archive (a tar holding an OCI image layout) of a built image. `ref_name` goes
// into index.json's org.opencontainers.image.ref.name annotation.
void write_oci_archive(const BuiltImage& img, const std::string& ref_name,
                       const std::function<void(std::string_view)>& sink);

// Uploads the blobs the registry lacks, then the manifest under the reference's tag.
// Returns the manifest digest.
std::string push_image(const BuiltImage& img, RegistryClient& client,
                       const std::function<void(size_t, size_t)>& on_blob = nullptr);

// The annotation value for an image tag: the part after the last ':' ("latest" when untagged).
std::string ref_name_for_tag(const std::optional<std::string>& tag);

}  // namespace coppice::oci
