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
  } catch (const engine::QueueFull& e) {
    // A queue cap: the body names the limit, Retry-After says when a slot is likely free.
    if (!ex.responded())
      ex.reply_json(429,
                    {{"error", e.what()},
                     {"status", 429},
                     {"limit", e.limit()},
                     {"limit_value", e.value()},
                     {"retry_after", e.retry_after_s()}},
                    {{"Retry-After", std::to_string(e.retry_after_s())}});
    else
      ex.abort();
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
  const int64_t now = now_us();
  auto expired = [&](const std::optional<int64_t>& expires_us) {
    return expires_us && now >= *expires_us;
  };
  {
    std::lock_guard lk(token_mu_);
    auto it = token_cache_.find(hash);
    if (it != token_cache_.end() && now - it->second.checked_us < cfg_.token_cache_ms * 1000 &&
        now >= it->second.checked_us && !expired(it->second.expires_us))
      return {it->second.uuid, it->second.project};
    if (it != token_cache_.end()) token_cache_.erase(it);
  }
  auto rec = engine_.meta().find_token(hash);
  if (!rec) throw Error(401, "invalid token");
  if (expired(rec->expires_us))
    throw Error(401, fmt::format("token expired at {}", format_rfc3339(*rec->expires_us)));
  // A token of the public namespace would make its images public (older servers accepted
  // `token create --project ""`).
  if (rec->project == store::kPublicProject)
    throw Error(401, "this token belongs to no project: revoke it and create one with --project");
  // Last use is kept to about a minute, so that a busy token costs one write a minute.
  if (!rec->last_used_us || now - *rec->last_used_us > 60'000'000) {
    try {
      engine_.meta().touch_token(rec->uuid, now);
    } catch (const std::exception& e) {
      spdlog::debug("token {}: recording its use: {}", rec->uuid, e.what());
    }
  }
  std::lock_guard lk(token_mu_);
  if (token_cache_.size() > 10000) token_cache_.clear();
  token_cache_[hash] = CachedToken{rec->uuid, rec->project, rec->expires_us, now};
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

json Api::token_expiration(const std::string& token_uuid) {
  auto t = engine_.meta().get_token(token_uuid);
  if (!t || !t->expires_us) return nullptr;
  return *t->expires_us / 1000000;  // Unix seconds (contract §2.1)
}

void Api::whoami(Exchange& ex) {
  if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
  json perms = {{"spawn", true},  {"spawn_disposable", true}, {"list", true},
                {"cancel", true}, {"import", true},           {"set_image_tag", true}};
  const auto& cfg = engine_.config();
  // The contract's keys first; the rest are Coppice extensions (docs/API.md). All integers.
  json limits = {{"instance_max_timeout", cfg.limits.max_timeout_s},
                 {"instance_max_concurrency", cfg.project_max_running},
                 {"images_import_max_timeout", cfg.max_import_timeout_s},
                 {"instance_max_memory_bytes", cfg.limits.max_memory_bytes},
                 {"instance_max_pids", cfg.limits.max_pids},
                 {"instance_max_cpus", cfg.limits.max_cpus},
                 {"instance_max_truncate_output_at", cfg.limits.max_truncate},
                 {"instance_max_stdin_bytes", cfg.limits.max_stdin},
                 {"project_max_running", cfg.project_max_running},
                 {"project_max_queued", cfg.project_max_queued},
                 {"server_max_queued", cfg.max_queue},
                 {"server_workers", cfg.workers},
                 {"export_max_bytes", cfg.max_export_bytes},
                 {"export_ttl", cfg.export_ttl_s},
                 {"list_max_limit", kMaxListLimit},
                 {"response_max_bytes", cfg_.max_response_bytes},
                 {"upload_max_bytes", cfg_.max_upload},
                 {"json_body_max_bytes", cfg_.max_json_body}};
  // The per-run write limit: its bytes among the integer limits, how it binds beside them.
  const json write_limit = engine_.write_limits().describe();
  limits["instance_max_write_bytes"] = write_limit.value("default", json(0)).is_number()
                                           ? write_limit["default"]
                                           : json(0);
  auto counts = engine_.project_counts(ex.project);
  ex.reply_json(
      200, {{"token_uuid", ex.token_uuid},
            {"token_expiration", token_expiration(ex.token_uuid)},
            {"permissions", perms},
            {"limits", limits},
            {"write_limit", write_limit},
            {"operations_stat", {{"queued", counts.queued}, {"running", counts.running}}},
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
    if (l->empty() || *end || v < 1 || v > kMaxListLimit)
      throw bad_request(fmt::format("limit must be between 1 and {}", kMaxListLimit));
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
