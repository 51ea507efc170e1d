#include "api/api.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/sha256.h"

namespace coppice::api {

using json = nlohmann::json;

Api::Api(ApiConfig cfg, engine::Engine& engine) : cfg_(std::move(cfg)), engine_(engine) {}

bool Api::is_upload(http::verb method, std::string_view target) {
  if (method != http::verb::post) return false;
  std::string_view path = target.substr(0, target.find('?'));
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  return path.size() >= 9 && path.substr(path.size() - 9) == "/v1/files";
}

bool Api::is_public(http::verb method, std::string_view target) {
  if (method != http::verb::get && method != http::verb::head) return false;
  return target.substr(0, target.find('?')) == "/health";
}

bool Api::is_bulk(http::verb method, std::string_view target) {
  if (is_upload(method, target)) return true;
  std::string_view path = target.substr(0, target.find('?'));
  auto v1 = path.find("/v1/");
  if (v1 == std::string_view::npos) return false;
  path.remove_prefix(v1 + 4);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  auto ends_with = [&](std::string_view s) {
    return path.size() >= s.size() && path.substr(path.size() - s.size()) == s;
  };
  if (path.substr(0, 7) == "images/") return ends_with("/export");
  if (path.substr(0, 8) == "inspect/")
    return ends_with("/list") || ends_with("/download") || ends_with("/archive") ||
           ends_with("/grep");
  return false;
}

void Api::handle(Exchange& ex) {
  try {
    const auto target = ex.header().target();
    if (is_public(ex.method(), std::string_view(target.data(), target.size()))) return health(ex);
    authenticate(ex);
    route(ex);
    if (ex.detached()) return;  // the response goes on asynchronously (an event stream)
    if (!ex.responded()) throw not_found("no such endpoint");
  } catch (const Error& e) {
    if (!ex.responded())
      ex.reply_error(e.status(), e.what());
    else
      ex.abort();
  } catch (const std::exception& e) {
    spdlog::error("{} {}: {}", std::string(http::to_string(ex.method())),
                  std::string(ex.header().target()), e.what());
    if (!ex.responded())
      ex.reply_error(500, e.what());
    else
      ex.abort();
  }
}

void Api::authenticate(Exchange& ex) {
  auto [token_uuid, project] = authenticate(ex.header());
  ex.token_uuid = std::move(token_uuid);
  ex.project = std::move(project);
}

std::pair<std::string, std::string> Api::authenticate(const http::request_header<>& header) {
  auto it_auth = header.find(http::field::authorization);
  std::string auth = it_auth == header.end() ? "" : std::string(it_auth->value());
  if (auth.empty()) throw Error(401, "missing Authorization: Bearer <token>");
  if (auth.size() < 8 || strncasecmp(auth.c_str(), "bearer ", 7) != 0)
    throw Error(401, "Authorization must be a Bearer token");
  std::string token = auth.substr(7);
  while (!token.empty() && token.front() == ' ') token.erase(0, 1);
  std::string hash = sha256_hex(token);
  {
    std::lock_guard lk(token_mu_);
    auto it = token_cache_.find(hash);
    if (it != token_cache_.end()) return it->second;
  }
  auto rec = engine_.meta().find_token(hash);
  if (!rec) throw Error(401, "invalid token");
  std::lock_guard lk(token_mu_);
  if (token_cache_.size() > 10000) token_cache_.clear();
  token_cache_[hash] = {rec->uuid, rec->project};
  return {rec->uuid, rec->project};
}

void Api::route(Exchange& ex) {
  const auto& s = ex.segments();
  if (s.empty()) throw not_found("no such endpoint");
  const std::string& top = s[0];
  if (top == "whoami") return whoami(ex);
  if (top == "images") return images(ex);
  if (top == "files") return files(ex);
  if (top == "instances") return instances(ex);
  if (top == "operations") return operations(ex);
  if (top == "inspect") return inspect(ex);
  throw not_found("no such endpoint");
}

void Api::whoami(Exchange& ex) {
  if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
  json perms = {{"spawn", true},  {"spawn_disposable", true}, {"list", true},
                {"cancel", true}, {"import", true},           {"set_image_tag", true}};
  const auto& cfg = engine_.config();
  ex.reply_json(
      200, {{"token_uuid", ex.token_uuid},
            {"token_expiration", nullptr},
            {"permissions", perms},
            {"limits",
             {{"instance_max_timeout", cfg.limits.max_timeout_s},
              {"instance_max_concurrency", cfg.workers},
              {"images_import_max_timeout", 3600}}},
            {"operations_stat", json::object()},
            {"project", ex.project},
            {"runtimes", cfg_.runtimes},
            {"runtime_details", cfg_.runtime_details ? cfg_.runtime_details() : json::object()}});
}

void Api::health(Exchange& ex) {
  // Says only that the server accepts and answers requests: nothing about its state.
  if (ex.body().size() > kPublicBodyLimit) throw Error(413, "request body too large");
  ex.reply_json(200, {{"status", "ok"}});
}

store::Page parse_page(const Query& q) {
  store::Page p;
  if (auto l = q.get("limit")) {
    char* end = nullptr;
    long long v = std::strtoll(l->c_str(), &end, 10);
    if (l->empty() || *end || v < 1 || v > 1000)
      throw bad_request("limit must be between 1 and 1000");
    p.limit = v;
  }
  if (auto o = q.get("offset")) {
    char* end = nullptr;
    long long v = std::strtoll(o->c_str(), &end, 10);
    if (o->empty() || *end || v < 0) throw bad_request("offset must be a non-negative integer");
    p.offset = v;
  }
  int64_t now = now_us();
  if (auto v = q.get("since"); v && !v->empty()) p.since_us = parse_time_filter(*v, now);
  if (auto v = q.get("until"); v && !v->empty()) p.until_us = parse_time_filter(*v, now);
  return p;
}

namespace {
json opt(const std::optional<std::string>& s) {
  return s ? json(*s) : json(nullptr);
}
}  // namespace

json image_json(const store::ImageRecord& img) {
  return {{"uuid", img.uuid},
          {"tag", opt(img.tag)},
          {"created_at", format_rfc3339(img.created_us)},
          {"operation_uuid", opt(img.operation_uuid)},
          // Coppice extensions (docs/API.md).
          {"parent_uuid", opt(img.parent_uuid)},
          {"depth", img.depth},
          {"layer_size", img.size_bytes},
          {"public", img.project == store::kPublicProject}};
}

json operation_summary_json(const store::OperationRecord& op) {
  return {{"uuid", op.uuid},
          {"kind", op.kind},
          {"status", op.status},
          {"error", opt(op.error)},
          {"created_at", format_rfc3339(op.created_us)},
          {"duration", op.finished_us ? op.duration_s : (now_us() - op.created_us) / 1e6},
          {"image_size", op.image_size},
          {"consumed_cpu", op.consumed_cpu},
          {"consumed_memory", op.consumed_memory},
          {"image_uuid", opt(op.image_uuid)},
          {"result_image_uuid", opt(op.result_image_uuid)},
          {"session_key", nullptr}};
}

json operation_json(const store::OperationRecord& op) {
  json j = operation_summary_json(op);
  j["metadata"] = op.metadata;
  j["result"] = {{"image", opt(op.result_image_uuid)}, {"tag", opt(op.result_tag)}};
  return j;
}

json file_json(const store::FileRecord& f) {
  return {{"uuid", f.uuid},
          {"sha256", f.sha256},
          {"size", f.size},
          {"created_at", format_rfc3339(f.created_us)},
          {"updated_at", format_rfc3339(f.updated_us)}};
}

}  // namespace coppice::api
