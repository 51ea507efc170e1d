// ImageImportRequest (contract §2.3) and our image push request: parsing, validation and the
// metadata echo (passwords masked).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "oci/manifest.h"
#include "oci/reference.h"
#include "oci/registry_client.h"

namespace coppice::engine {

struct ImportRequest {
  // Exactly one source: a registry reference or an uploaded archive (a file uuid).
  std::optional<oci::Reference> ref;
  std::string url;  // as given
  std::optional<std::string> archive_file;
  oci::Credentials credentials;
  bool has_credentials = false;
  std::optional<std::string> tag;
  int64_t timeout_s = 300;
  oci::Platform platform;

  // The operation metadata: the request echoed with the password as "<MASKED>".
  nlohmann::json to_json() const;
};

// Throws Error 400 with the offending field. `max_timeout_s` caps `timeout`.
ImportRequest parse_import_request(const nlohmann::json& body, int64_t max_timeout_s);

struct PushRequest {
  oci::Reference ref;
  std::string url;
  oci::Credentials credentials;
  bool has_credentials = false;
  int64_t timeout_s = 600;
  nlohmann::json to_json() const;
};
PushRequest parse_push_request(const nlohmann::json& body, int64_t max_timeout_s);

// Image tags: 1..255 characters of [A-Za-z0-9._/:@-]. Throws 400.
void validate_tag(const std::string& tag);

}  // namespace coppice::engine
