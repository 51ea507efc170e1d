// Parser bugs the fuzz targets (fuzz/) found, as unit tests: each input here made a parser of
// registry or client input throw something other than a 4xx coppice::Error (a 500), or hit
// undefined behaviour, before its fix. The crash inputs themselves are in fuzz/regressions/.
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "engine/import_request.h"
#include "error_status.h"
#include "oci/manifest.h"

namespace coppice {
namespace {

using json = nlohmann::json;

// The status of the coppice::Error `f` throws; 0 when it returns, -1 for any other exception.
using coppice::testing::status_of;

json manifest() {
  return {{"schemaVersion", 2},
          {"mediaType", oci::media::kOciManifest},
          {"config", {{"digest", "sha256:" + std::string(64, '1')}, {"size", 5}}},
          {"layers",
           {{{"mediaType", oci::media::kOciLayerGzip},
             {"digest", "sha256:" + std::string(64, '2')},
             {"size", 7}}}}};
}

// json::value() throws type_error for a key of another type, and converts any number to int.
TEST(FuzzFindings, ManifestFieldsOfTheWrongTypeAre422) {
  json m = manifest();
  m["layers"][0]["mediaType"] = 1;
  EXPECT_EQ(status_of([&] { oci::parse_manifest("", m); }), 422);
  m = manifest();
  m["config"]["mediaType"] = json::array();
  EXPECT_EQ(status_of([&] { oci::parse_manifest("", m); }), 422);
  m = manifest();
  m["schemaVersion"] = "2";
  EXPECT_EQ(status_of([&] { oci::parse_manifest("", m); }), 0);
  m["schemaVersion"] = 1e300;  // was converted to int: undefined behaviour
  EXPECT_EQ(status_of([&] { oci::parse_manifest("", m); }), 0);
  m["schemaVersion"] = 1;
  EXPECT_EQ(status_of([&] { oci::parse_manifest("", m); }), 422);

  json index = {{"manifests",
                 {{{"digest", "sha256:" + std::string(64, '1')},
                   {"size", 1},
                   {"platform", {{"os", "linux"}, {"architecture", 64}}}}}}};
  EXPECT_EQ(status_of([&] { oci::select_platform(index, oci::Platform{}); }), 422);

  EXPECT_EQ(status_of([] { oci::parse_image_config(json{{"architecture", 1}}); }), 422);
  EXPECT_EQ(status_of([] { oci::parse_image_config(json{{"os", nullptr}}); }), 0);
  EXPECT_EQ(oci::parse_image_config(json{{"os", nullptr}}).platform.os, "linux");
}

// The error message quoted the offending byte as JSON; one byte of a UTF-8 sequence is not
// valid JSON text, so dump() threw instead (also through PATCH /v1/images/{uuid}/tag).
TEST(FuzzFindings, TagWithNonAsciiBytesIs400) {
  EXPECT_EQ(status_of([] { engine::validate_tag("caf\xc3\xa9"); }), 400);
  EXPECT_EQ(status_of([] { engine::validate_tag("a b"); }), 400);
  json body = {{"archive", {{"file", "6f1c1f8e-0c1e-4c43-8a2e-0123456789ab"}}},
               {"tag", "e-\xc8\x9e"}};
  EXPECT_EQ(status_of([&] { engine::parse_import_request(body, 3600); }), 400);
  try {
    engine::validate_tag("x\xc8");
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "invalid byte 0xc8 in tag");
  }
}

}  // namespace
}  // namespace coppice
