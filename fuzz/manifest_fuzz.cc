// Fuzzes the parsing of what a registry (or an uploaded OCI archive) serves: manifests, image
// indexes and image configs (oci/manifest.h). The input is a JSON document; every input is
// tried as each of them, with each Content-Type a registry may send, and against a few wanted
// platforms. A leading line "#PLATFORM\n" is parsed as a platform string first.
//
// Oracles:
//  * a document is refused only with a 4xx coppice::Error (anything else fails the import
//    with a 500 and an unhelpful message);
//  * a parsed platform's str() parses to the same platform;
//  * an accepted config's store form serializes; an accepted manifest has valid descriptors.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "oci/manifest.h"
#include "oci/reference.h"
#include "oracle.h"

using coppice::fuzz::finding;
using coppice::fuzz::only_client_errors;
namespace oci = coppice::oci;
using json = nlohmann::json;

namespace {

void platform_round_trip(const std::string& s) {
  oci::Platform p;
  if (!only_client_errors("parse_platform", [&] { p = oci::parse_platform(s); })) return;
  oci::Platform again;
  if (!only_client_errors("parse_platform(str())", [&] { again = oci::parse_platform(p.str()); }))
    finding("the str() of a platform is refused: " + json(p.str()).dump());
  if (again.os != p.os || again.architecture != p.architecture || again.variant != p.variant)
    finding("a platform's str() parses differently: " + json(p.str()).dump());
}

void check_descriptor(const oci::Descriptor& d) {
  if (!oci::is_digest(d.digest)) finding("accepted a descriptor with digest " + d.digest);
  if (d.size < 0) finding("accepted a descriptor with a negative size");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (in.size() > 1 && in[0] == '#') {
    size_t nl = in.find('\n');
    platform_round_trip(std::string(in.substr(1, nl == std::string_view::npos ? nl : nl - 1)));
    if (nl == std::string_view::npos) return 0;
    in.remove_prefix(nl + 1);
  }
  json body = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return 0;

  for (const char* ct : {"", oci::media::kOciManifest, oci::media::kDockerManifest,
                         oci::media::kOciIndex, "application/json; charset=utf-8"}) {
    std::string content_type = ct;
    only_client_errors("manifest_media_type",
                       [&] { (void)oci::manifest_media_type(content_type, body); });
    bool index = false;
    only_client_errors("is_index", [&] { index = oci::is_index(content_type, body); });
    if (index) {
      for (const char* want : {"linux/amd64", "linux/arm64", "linux/arm/v7", "arm64"}) {
        oci::Descriptor d;
        if (only_client_errors("select_platform",
                               [&] { d = oci::select_platform(body, oci::parse_platform(want)); }))
          check_descriptor(d);
      }
    } else {
      oci::ImageManifest m;
      if (only_client_errors("parse_manifest",
                             [&] { m = oci::parse_manifest(content_type, body); })) {
        check_descriptor(m.config);
        for (const auto& l : m.layers) {
          check_descriptor(l);
          only_client_errors("layer_compression",
                             [&] { (void)oci::layer_compression(l.media_type); });
        }
      }
    }
  }
  oci::ImageConfig cfg;
  if (only_client_errors("parse_image_config", [&] { cfg = oci::parse_image_config(body); })) {
    json store;
    if (only_client_errors("to_store_json", [&] { store = cfg.to_store_json(); }))
      (void)store.dump();
    (void)cfg.platform.str();
  }
  return 0;
}
