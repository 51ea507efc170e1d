// OCI and Docker manifests, indexes and image configs: parsing, validation and platform
// selection. Everything here is pure (no I/O) so that it can be unit tested.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace coppice::oci {

namespace media {
inline constexpr const char* kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr const char* kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr const char* kOciConfig = "application/vnd.oci.image.config.v1+json";
inline constexpr const char* kOciLayerTar = "application/vnd.oci.image.layer.v1.tar";
inline constexpr const char* kOciLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr const char* kOciLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr const char* kDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr const char* kDockerList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr const char* kDockerConfig = "application/vnd.docker.container.image.v1+json";
inline constexpr const char* kDockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip";
// What a client accepts when it asks for a manifest.
inline constexpr const char* kAcceptManifests =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";
}  // namespace media

struct Platform {
  std::string os = "linux";
  std::string architecture = "amd64";
  std::string variant;  // "v8", "v7", or empty
  std::string str() const;
};
// "linux/amd64", "linux/arm64/v8", "arm64" (os defaults to linux). Throws 400.
Platform parse_platform(const std::string& s);

struct Descriptor {
  std::string media_type;
  std::string digest;  // "sha256:…" (validated)
  int64_t size = 0;
  std::optional<Platform> platform;  // index entries only
};

struct ImageManifest {
  std::string media_type;
  Descriptor config;
  std::vector<Descriptor> layers;  // bottom first
};

// The parts of an image config a run uses.
struct ImageConfig {
  std::vector<std::string> env;  // "K=V"
  std::string working_dir;
  std::string user;
  std::vector<std::string> entrypoint, cmd;
  std::vector<std::string> diff_ids;
  Platform platform;
  // The store's image config: {"env":{K:V}, "workdir", "user", "entrypoint", "cmd"}.
  nlohmann::json to_store_json() const;
};

enum class LayerCompression { kNone, kGzip, kZstd };

// True for an index or a manifest list. `media_type` is the Content-Type (may be empty: then
// the body's mediaType, or the presence of "manifests", decides).
bool is_index(const std::string& media_type, const nlohmann::json& body);
// The media type of a manifest document from its Content-Type or its own mediaType field.
std::string manifest_media_type(const std::string& content_type, const nlohmann::json& body);

// Picks the manifest for `want` from an index. Exact os/architecture/variant match first; an
// empty wanted variant matches any (preferring none or "v8" for arm64). Throws 404 listing the
// platforms the index has.
Descriptor select_platform(const nlohmann::json& index, const Platform& want);

// Parses and validates an image manifest (OCI or Docker schema 2). Throws 422 for schema 1,
// foreign/non-distributable layers, unknown layer media types, or bad descriptors.
ImageManifest parse_manifest(const std::string& media_type, const nlohmann::json& body);

// How a layer blob is compressed, from its media type.
LayerCompression layer_compression(const std::string& media_type);

// Parses an image config blob. Throws 422 when it is not a config.
ImageConfig parse_image_config(const nlohmann::json& body);

}  // namespace coppice::oci
