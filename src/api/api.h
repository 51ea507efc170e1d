// The HTTP API (contract §2): routes a parsed Exchange to the endpoint handlers. One Api
// object serves every connection; handlers are thread-safe.
#pragma once

#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "api/exchange.h"
#include "engine/engine.h"

namespace coppice::api {

// The largest `limit` of a paged listing (images, operations, files).
inline constexpr int64_t kMaxListLimit = 1000;

struct ApiConfig {
  uint64_t max_json_body = 16 << 20;  // bytes
  uint64_t max_upload = 1ull << 30;   // bytes per POST /v1/files
  // Bytes of JSON (or text) a grep answer or a directory listing may hold; past it the answer
  // is cut and says so (`truncated`).
  uint64_t max_response_bytes = 8 << 20;
  int sse_keepalive_s = 15;
  // How long a token checked against the database is trusted without checking again: a
  // token revoked or deleted by `coppiced token revoke` (another process) stops working
  // within this bound. Expiry is checked on every request.
  int64_t token_cache_ms = 2000;
  std::vector<std::string> runtimes{"namespace"};
  // Facts per runtime for whoami's `runtime_details` (e.g. the microVM's accelerator).
  std::function<nlohmann::json()> runtime_details;
};

class Api {
 public:
  Api(ApiConfig cfg, engine::Engine& engine);

  // Authenticates, routes and answers. Never throws: errors become {"error","status"}.
  void handle(Exchange& ex);
  // True when a request (method + path) is an upload whose body should go to a file.
  static bool is_upload(http::verb method, std::string_view target);
  // True for the few requests served without a token: `GET|HEAD /health`. Every other request
  // is authenticated from its header before any of its body is read; a public one may carry a
  // body of at most kPublicBodyLimit bytes.
  static bool is_public(http::verb method, std::string_view target);
  static constexpr uint64_t kPublicBodyLimit = 1024;
  // True for requests whose handler may take long or stream a large answer (uploads, export,
  // inspect list/download/archive/grep): the server runs them apart from the short ones.
  static bool is_bulk(http::verb method, std::string_view target);
  // (token uuid, project) of a request's bearer token; throws a 401 Error. Used before a
  // request body is read, so that nothing is accepted from unauthenticated clients.
  std::pair<std::string, std::string> authenticate(const http::request_header<>& header);
  const ApiConfig& config() const { return cfg_; }

 private:
  void authenticate(Exchange& ex);
  void route(Exchange& ex);

  // Endpoint groups, one file each.
  void whoami(Exchange& ex);
  void health(Exchange& ex);
  // whoami's `token_expiration`: Unix seconds, or null when the token never expires.
  nlohmann::json token_expiration(const std::string& token_uuid);
  void images(Exchange& ex);  // api/images_routes.cc
  void export_now(Exchange& ex, const std::string& image_uuid);
  void files(Exchange& ex);       // api/files_routes.cc
  void instances(Exchange& ex);   // api/operations_routes.cc
  void operations(Exchange& ex);  // api/operations_routes.cc
  void events(Exchange& ex, const std::string& op_uuid);
  void inspect(Exchange& ex);  // api/inspect_routes.cc

  ApiConfig cfg_;
  engine::Engine& engine_;
  // Tokens recently found in the database, by secret hash. An entry is used for
  // cfg_.token_cache_ms after its check, never past its token's expiry.
  struct CachedToken {
    std::string uuid, project;
    std::optional<int64_t> expires_us;
    int64_t checked_us = 0;
  };
  std::mutex token_mu_;
  std::unordered_map<std::string, CachedToken> token_cache_;
};

// Shared helpers for the route files.
store::Page parse_page(const Query& q);
nlohmann::json image_json(const store::ImageRecord& img);
nlohmann::json operation_summary_json(const store::OperationRecord& op);
nlohmann::json operation_json(const store::OperationRecord& op);
nlohmann::json file_json(const store::FileRecord& f);

}  // namespace coppice::api
