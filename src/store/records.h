// Plain records the metadata store keeps. Times are microseconds since the Unix epoch.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace coppice::store {

// Images with this project are public base images: every tenant can read and run them, no
// tenant can tag or untag them.
inline constexpr const char* kPublicProject = "";

struct ImageRecord {
  std::string uuid;
  std::string project;
  std::optional<std::string> parent_uuid;  // null for base images
  std::string layer_id;                    // this image's own layer (a dir in layers/)
  std::vector<std::string> layers;         // full lower stack, top first (own layer first)
  int64_t depth = 0;                       // logical chain depth (base = 0)
  std::optional<std::string> tag;
  std::optional<std::string> operation_uuid;  // the operation that produced it
  int64_t created_us = 0;
  int64_t size_bytes = 0;                            // size of its own layer
  std::optional<std::string> flat_layer_id;          // cached merged view of `layers`, if built
  nlohmann::json config = nlohmann::json::object();  // {"env":{...}} kept by preserve_env
};

struct OperationRecord {
  std::string uuid;
  std::string project;
  std::string kind;    // "instance" | "image_import"
  std::string status;  // PENDING ASSIGNED EXECUTING SUCCESS FAILED CANCELLED
  std::optional<std::string> error;
  int64_t created_us = 0;
  int64_t finished_us = 0;  // 0 while active
  double duration_s = 0;
  std::optional<std::string> image_uuid;
  std::optional<std::string> result_image_uuid;
  std::optional<std::string> result_tag;
  nlohmann::json metadata = nlohmann::json::object();
  int64_t image_size = 0;
  double consumed_cpu = 0;
  int64_t consumed_memory = 0;
};

struct FileRecord {
  std::string uuid;
  std::string project;
  std::string sha256;
  int64_t size = 0;
  int64_t created_us = 0;
  int64_t updated_us = 0;
};

struct EventRecord {
  int64_t id = 0;
  int64_t ts_us = 0;
  int spid = 0;
  std::string type;
  nlohmann::json data;
};

struct TokenRecord {
  std::string uuid;
  std::string project;
  int64_t created_us = 0;
  std::optional<int64_t> expires_us;    // refused from then on; nullopt = never expires
  std::optional<int64_t> last_used_us;  // last authentication, to about a minute
};

// Common list filters (contract §1.6). Ordering is newest first, uuid as tiebreak.
struct Page {
  int64_t limit = 100;
  int64_t offset = 0;
  std::optional<int64_t> since_us;
  std::optional<int64_t> until_us;
};

struct ImageFilter {
  Page page;
  bool tagged_only = false;
  std::optional<std::string> tag_prefix;  // exact match sorts first
  std::optional<std::string> uuid;
};

struct OperationFilter {
  Page page;
  std::optional<std::string> status;
  std::optional<std::string> kind;
};

}  // namespace coppice::store
