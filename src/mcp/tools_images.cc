// Image tools: list_images, get_image, set_tag, import_image, registry_auth.
#include <fmt/format.h>

#include "cli/http_transport.h"
#include "cli/image_ref.h"
#include "common/base64.h"
#include "common/error.h"
#include "mcp/api_helpers.h"
#include "mcp/tool.h"

namespace coppice::mcp {

using cli::path_segment;
using cli::query_string;

namespace {

json image_row(const json& i) {
  return {{"uuid", i.value("uuid", "")},
          {"tag", i.value("tag", json(nullptr))},
          {"created_at", i.value("created_at", "")},
          {"parent_uuid", i.value("parent_uuid", json(nullptr))}};
}

ToolResult list_images(const json& a, CallContext& ctx) {
  cli::Query q{{"limit", std::to_string(a.value("limit", 100))},
               {"offset", std::to_string(a.value("offset", 0))}};
  if (a.contains("tagged") && a["tagged"].is_boolean())
    q.emplace_back("tagged", a["tagged"].get<bool>() ? "1" : "0");
  if (a.contains("tag_prefix") && a["tag_prefix"].is_string())
    q.emplace_back("tag", a["tag_prefix"]);
  for (const char* k : {"since", "until"})
    if (a.contains(k) && a[k].is_string()) q.emplace_back(k, a[k]);
  json j = ctx.api.get_json("/images" + query_string(q), "list images");
  json rows = json::array();
  for (const auto& i : j.value("images", json::array())) rows.push_back(image_row(i));
  json out = {{"count", rows.size()}, {"images", rows}};
  if (rows.size() == static_cast<size_t>(a.value("limit", 100)))
    out["hint"] = "there may be more: call again with a larger offset";
  return {out, "", false};
}

ToolResult get_image(const json& a, CallContext& ctx) {
  std::string uuid = resolve_image(ctx.api, a["image"]);
  return {get_image_record(ctx.api, uuid), "", false};
}

ToolResult set_tag(const json& a, CallContext& ctx) {
  std::string uuid = resolve_image(ctx.api, a["image_uuid"]);
  if (a.contains("tag") && a["tag"].is_string() && !a["tag"].get<std::string>().empty()) {
    json img = ctx.api.send_json("PATCH", fmt::format("/images/{}/tag", path_segment(uuid)),
                                 {{"tag", a["tag"]}}, "tag image " + uuid);
    return {image_row(img), "", false};
  }
  auto r = ctx.api.request("DELETE", fmt::format("/images/{}/tag", path_segment(uuid)));
  if (r.status == 404) throw not_found("no image " + uuid + ": call list_images");
  if (r.status < 200 || r.status >= 300) ctx.api.fail(r, "remove the tag of " + uuid);
  return {image_row(get_image_record(ctx.api, uuid)), "", false};
}

// Checks credentials against the registry's /v2/ endpoint (and its token service for
// registries that use bearer tokens). Error 401 when refused.
void validate_registry(const std::string& host, const std::string& user, const std::string& token) {
  std::string api_host = host == "docker.io" ? "registry-1.docker.io" : host;
  // Plain http only to a registry on this machine (matched exactly, as Docker does by default).
  std::string base = (cli::is_loopback_registry(host) ? "http://" : "https://") + api_host;
  std::string basic = "Authorization: Basic " + base64_encode(user + ":" + token);
  cli::HttpTransport http;
  cli::HttpRequest req{"GET", base + "/v2/", {basic}, ""};
  auto r = http.perform(req);
  if (r.status == 200) return;
  std::string challenge = r.header("www-authenticate");
  if (r.status == 401 && challenge.rfind("Bearer ", 0) == 0) {
    auto param = [&](const std::string& key) -> std::string {
      auto p = challenge.find(key + "=\"");
      if (p == std::string::npos) return "";
      p += key.size() + 2;
      return challenge.substr(p, challenge.find('"', p) - p);
    };
    std::string realm = param("realm"), service = param("service");
    if (realm.empty()) throw Error(502, "the registry's bearer challenge names no token service");
    std::string url = realm + (service.empty() ? "" : query_string({{"service", service}}));
    auto t = http.perform(cli::HttpRequest{"GET", url, {basic}, ""});
    if (t.status == 200) return;
    throw Error(401, fmt::format("{} refused these credentials (token service answered HTTP {})",
                                 host, t.status));
  }
  if (r.status == 401 || r.status == 403)
    throw Error(401, fmt::format("{} refused these credentials (HTTP {})", host, r.status));
  throw Error(502,
              fmt::format("{} answered HTTP {} on /v2/: is it an OCI registry?", host, r.status));
}

ToolResult registry_auth(const json& a, CallContext& ctx) {
  std::string host = cli::registry_host(a["registry_url"]);
  validate_registry(host, a["username"], a["token"]);
  ctx.state.save_credentials(host, {a["username"], a["token"]});
  return {{{"registry", host},
           {"stored", true},
           {"hint", "import_image now uses these credentials for " + host}},
          "",
          false};
}

ToolResult import_image(const json& a, CallContext& ctx) {
  std::string ref = a["registry_url"];
  std::string host = cli::registry_host(ref);
  auto creds = ctx.state.credentials(host);
  if (!creds && !a.value("i_accept_that_anonymous_access_might_be_rate_limited", false))
    throw Error(
        401,
        fmt::format("no credentials stored for {}: call registry_auth first, or call again with "
                    "i_accept_that_anonymous_access_might_be_rate_limited=true to pull anonymously",
                    host));
  std::string tag = a.contains("tag") && a["tag"].is_string() ? a["tag"].get<std::string>()
                                                              : cli::default_tag(ref);
  int timeout = a.value("timeout", 300);
  json body = {{"registry", {{"url", ref}}}, {"tag", tag}, {"timeout", timeout}};
  if (creds)
    body["registry"]["credentials"] = {{"username", creds->username}, {"password", creds->token}};
  json created = ctx.api.send_json("POST", "/images/import", body, "import " + ref);
  std::string op = created.value("uuid", "");
  if (!a.value("wait", true))
    return {{{"operation_id", op},
             {"state", "PENDING"},
             {"tag", tag},
             {"hint", "call wait_operations with this operation_id"}},
            "",
            false};
  json final_op = wait_operation(ctx.api, op, timeout + 30.0, [&](double elapsed, size_t) {
    ctx.progress(elapsed, std::nullopt, fmt::format("importing {} for {:.0f} s", ref, elapsed));
  });
  json s = summarize_operation(final_op, 2000);
  if (s.value("state", "") == "SUCCESS")
    s["hint"] = fmt::format("run commands with image '{}' (or the result_image UUID)", tag);
  else if (s.value("state", "") == "FAILED")
    return {s, "import failed: " + s.value("error", std::string("unknown error")), true};
  return {s, "", false};
}

}  // namespace

void add_image_tools(std::vector<Tool>& out) {
  json ro = {{"readOnlyHint", true}, {"openWorldHint", false}};
  out.push_back(
      {"list_images", "List images",
       "Lists your images (newest first) with tag, creation time and parent. Every non-disposable "
       "run creates one. Cheap.",
       object_schema(
           {{"limit",
             {{"type", "integer"},
              {"minimum", 1},
              {"default", 100},
              {"description", "At most this many."}}},
            {"offset",
             {{"type", "integer"},
              {"minimum", 0},
              {"default", 0},
              {"description", "Skip this many."}}},
            {"tagged", prop("boolean", "true: only tagged images; false: only untagged ones.")},
            {"tag_prefix", prop("string", "Only tags starting with this.")},
            {"since", prop("string", "Created at or after (RFC 3339, or a duration like 1h).")},
            {"until", prop("string", "Created before (RFC 3339).")}},
           {}),
       ro, list_images});
  out.push_back(
      {"get_image", "Describe an image",
       "The record of one image (uuid, tag, parent, depth, size, created_at), by UUID or "
       "tag. Cheap.",
       object_schema({{"image", prop("string", "UUID or tag (e.g. busybox:latest).")}}, {"image"}),
       ro, get_image});
  out.push_back(
      {"set_tag",
       "Tag or untag an image",
       "Gives an image a memorable tag (moving the tag if another image has it), or "
       "removes its tag when `tag` is omitted. Tags are how you name states to return to.",
       object_schema(
           {{"image_uuid", prop("string", "The image (UUID or current tag).")},
            {"tag",
             prop("string", "The new tag, e.g. myproject/deps:v1. Omit to remove the tag.")}},
           {"image_uuid"}),
       {{"readOnlyHint", false}, {"idempotentHint", true}, {"openWorldHint", false}},
       set_tag});
  out.push_back(
      {"import_image",
       "Import an image from a registry",
       "Imports an OCI/Docker image (e.g. docker://docker.io/library/python:3.12-slim, or "
       "python:3.12-slim) so runs can start from it, and tags it (default: the reference without "
       "registry host). Takes seconds to minutes; reports progress. Re-importing an unchanged "
       "image is fast. Needs credentials from registry_auth, or explicit consent to anonymous "
       "(rate-limited) pulls. Check list_images first: the image may already be there.",
       object_schema(
           {{"registry_url", prop("string",
                                  "Image reference: docker://HOST/PATH:TAG, oci://…, or a bare "
                                  "name like alpine:3.20.")},
            {"tag",
             prop("string", "Tag for the imported image (default derived from the reference).")},
            {"wait", prop_default("boolean", "Wait for the import to finish.", true)},
            {"timeout",
             {{"type", "integer"},
              {"minimum", 1},
              {"default", 300},
              {"description", "Seconds the import may take."}}},
            {"i_accept_that_anonymous_access_might_be_rate_limited",
             prop_default("boolean", "Pull anonymously when no credentials are stored.", false)}},
           {"registry_url"}),
       {{"readOnlyHint", false}, {"idempotentHint", true}, {"openWorldHint", true}},
       import_image});
  out.push_back(
      {"registry_auth",
       "Store registry credentials",
       "Checks a username and token (personal access token) against a registry's /v2/ "
       "endpoint and stores them locally for import_image. Makes no sandbox call.",
       object_schema({{"registry_url",
                       prop("string", "The registry, e.g. ghcr.io or docker://ghcr.io/owner/img.")},
                      {"username", prop("string", "Registry user name.")},
                      {"token", prop("string", "Password or access token.")}},
                     {"registry_url", "username", "token"}),
       {{"readOnlyHint", false}, {"idempotentHint", true}, {"openWorldHint", true}},
       registry_auth});
}

}  // namespace coppice::mcp
