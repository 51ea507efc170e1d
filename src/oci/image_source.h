// Where an image comes from: a registry, an OCI image layout (a directory or an oci-archive
// tar), or a `docker save` tar. A source resolves to one image manifest (choosing a platform
// from an index) and streams its blobs; the importer verifies every digest.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "oci/http_client.h"
#include "oci/manifest.h"
#include "oci/registry_client.h"

namespace coppice::oci {

struct ResolvedImage {
  std::string manifest_digest;  // of the image manifest (not the index)
  ImageManifest manifest;
  std::string config_bytes;  // the config blob, digest-verified
  ImageConfig config;
};

class ImageSource {
 public:
  virtual ~ImageSource() = default;
  virtual ResolvedImage resolve(const Platform& platform) = 0;
  // Streams a layer blob's bytes (not verified here).
  virtual void fetch_blob(const Descriptor& d, const BodySink& sink) = 0;
  // For messages and metadata: "docker.io/library/busybox:latest", "oci-archive /x.tar".
  virtual std::string describe() const = 0;
};

std::unique_ptr<ImageSource> registry_source(const Reference& ref, const Credentials& cred,
                                             const RegistryConfig& cfg, AbortCheck abort);

// An OCI image layout directory, an oci-archive tar or a docker-save tar (detected from the
// contents). Tars are unpacked into `scratch` (a fresh directory the caller removes) first.
// `name`: which image of a layout holding several (matched against the
// org.opencontainers.image.ref.name annotation or a RepoTags entry); empty = the only one.
// Caps on unpacking an archive (decompression bombs; 0 = none): the apparent size of its
// files, its number of entries, and the free space the data filesystem keeps. Past one the
// source fails with Error 413 (507 for space).
struct ArchiveLimits {
  uint64_t max_bytes = 0;
  uint64_t max_entries = 0;
  uint64_t min_free_bytes = 0;
};
std::unique_ptr<ImageSource> archive_source(const std::filesystem::path& path,
                                            const std::filesystem::path& scratch,
                                            const std::string& name = "",
                                            const ArchiveLimits& limits = {});

}  // namespace coppice::oci
