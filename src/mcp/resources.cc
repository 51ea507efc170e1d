// Resources under coppice://: guide sections (static), and templates that read images and
// operations through the API.
#include <fmt/format.h>

#include <cctype>
#include <cstring>

#include "common/base64.h"
#include "common/error.h"
#include "mcp/api_helpers.h"
#include "mcp/catalog.h"
#include "mcp/guide.h"
#include "mcp/jsonrpc.h"

namespace coppice::mcp {

using cli::path_segment;
using cli::query_string;

namespace {

constexpr const char* kScheme = "coppice://";

std::string percent_decode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

json text_contents(const std::string& uri, const std::string& mime, const std::string& text) {
  return {{"contents", json::array({{{"uri", uri}, {"mimeType", mime}, {"text", text}}})}};
}

[[noreturn]] void not_found_uri(const std::string& uri, const std::string& why) {
  throw RpcError(kResourceNotFound, fmt::format("{}: {}", uri, why), {{"uri", uri}});
}

std::string image_or_throw(cli::ApiClient& api, const std::string& uri, const std::string& ref) {
  try {
    return resolve_image(api, ref);
  } catch (const Error& e) {
    if (e.status() == 404) not_found_uri(uri, e.what());
    throw;
  }
}

json read_image_resource(cli::ApiClient& api, const std::string& uri, const std::string& rest) {
  // rest = {image}/read/{path} | {image}/ls/{path} | {image}/lineage
  auto slash = rest.find('/');
  if (slash == std::string::npos) not_found_uri(uri, "expected image/{image}/read|ls|lineage");
  std::string ref = percent_decode(rest.substr(0, slash));
  std::string tail = rest.substr(slash + 1);
  std::string uuid = image_or_throw(api, uri, ref);
  auto path_after = [&](const std::string& prefix) {
    std::string p = percent_decode(tail.substr(prefix.size()));
    if (p.empty() || p == ".") return std::string("/");
    return p[0] == '/' ? p : "/" + p;
  };
  if (tail == "lineage") {
    json chain = json::array();
    std::string cur = uuid;
    for (int i = 0; i < 200 && !cur.empty(); ++i) {
      json img = get_image_record(api, cur);
      chain.push_back({{"uuid", cur},
                       {"tag", img.value("tag", json(nullptr))},
                       {"created_at", img.value("created_at", "")}});
      const json parent = img.value("parent_uuid", json(nullptr));
      cur = parent.is_string() ? parent.get<std::string>() : "";
    }
    return text_contents(uri, "application/json",
                         json{{"image", uuid}, {"ancestors", chain}}.dump(2));
  }
  if (tail.rfind("read/", 0) == 0 || tail == "read") {
    std::string path = path_after(tail == "read" ? "read" : "read/");
    auto r = api.request("GET", fmt::format("/inspect/{}/download{}", path_segment(uuid),
                                            query_string({{"path", path}})));
    if (r.status == 404) not_found_uri(uri, path + " does not exist in the image");
    if (r.status == 422 || r.status == 400) not_found_uri(uri, path + " is not a regular file");
    if (r.status < 200 || r.status >= 300) api.fail(r, "read " + path);
    bool b64 = false;
    std::string t = text_or_base64(r.body, &b64);
    if (!b64) return text_contents(uri, "text/plain", t);
    return {{"contents", json::array({{{"uri", uri},
                                       {"mimeType", "application/octet-stream"},
                                       {"blob", base64_encode(r.body)}}})}};
  }
  if (tail.rfind("ls/", 0) == 0 || tail == "ls") {
    std::string path = path_after(tail == "ls" ? "ls" : "ls/");
    auto r = api.request("GET", fmt::format("/inspect/{}/list{}", path_segment(uuid),
                                            query_string({{"path", path}, {"text", "1"}})));
    if (r.status == 404) not_found_uri(uri, path + " does not exist in the image");
    if (r.status == 422 || r.status == 400) not_found_uri(uri, path + " is not a directory");
    if (r.status < 200 || r.status >= 300) api.fail(r, "list " + path);
    return text_contents(uri, "text/plain", r.body);
  }
  not_found_uri(uri, "expected image/{image}/read/{path}, ls/{path} or lineage");
}

json read_operation_resource(cli::ApiClient& api, const std::string& uri, const std::string& rest) {
  auto slash = rest.find('/');
  std::string kind = rest.substr(0, slash);
  std::string id = slash == std::string::npos ? "" : percent_decode(rest.substr(slash + 1));
  if ((kind != "instance" && kind != "import") || id.empty())
    not_found_uri(uri, "expected operations/instance/{id} or operations/import/{id}");
  auto r = api.request("GET", fmt::format("/operations/{}", path_segment(id)));
  if (r.status == 404) not_found_uri(uri, "no such operation");
  if (r.status < 200 || r.status >= 300) api.fail(r, "read operation " + id);
  json op = json::parse(r.body);
  if (kind == "instance")
    return text_contents(uri, "application/json", summarize_operation(op, 65536).dump(2));
  json s = summarize_operation(op, 0);
  auto str = [](const json& v) { return v.is_string() ? v.get<std::string>() : std::string(); };
  return text_contents(
      uri, "text/plain",
      fmt::format("STATE: {}\nRESULT_IMAGE: {}\nRESULT_TAG: {}\nREGISTRY_URL: {}\nERROR: {}\n",
                  str(s.value("state", json())), str(s.value("result_image", json())),
                  str(s.value("result_tag", json())), str(s.value("registry_url", json())),
                  str(s.value("error", json()))));
}

}  // namespace

json list_resources() {
  json out = json::array();
  for (const auto& [name, _] : guide_sections())
    out.push_back({{"uri", std::string(kScheme) + "guide/" + name},
                   {"name", "guide-" + name},
                   {"title", "Coppice guide: " + name},
                   {"mimeType", "text/markdown"}});
  return {{"resources", out}};
}

json list_resource_templates() {
  auto t = [](const char* uri, const char* name, const char* desc, const char* mime) {
    return json{{"uriTemplate", uri}, {"name", name}, {"description", desc}, {"mimeType", mime}};
  };
  return {{"resourceTemplates",
           json::array(
               {t("coppice://image/{image}/read/{path}", "image-file",
                  "A file of an image (UUID or tag), without starting a sandbox.", "text/plain"),
                t("coppice://image/{image}/ls/{path}", "image-directory",
                  "An ls -l style listing of a directory of an image; path '.' is the root.",
                  "text/plain"),
                t("coppice://image/{image}/lineage", "image-lineage",
                  "The chain of images this image was made from (JSON).", "application/json"),
                t("coppice://operations/instance/{operation_id}", "run-operation",
                  "A run's state, exit code, output and result image (JSON).", "application/json"),
                t("coppice://operations/import/{operation_id}", "import-operation",
                  "An image import's state and result.", "text/plain"),
                t("coppice://guide/{section}", "guide", "A section of the usage guide.",
                  "text/markdown")})}};
}

json read_resource(cli::ApiClient& api, const std::string& uri) {
  if (uri.rfind(kScheme, 0) != 0) not_found_uri(uri, "only coppice:// resources exist here");
  std::string rest = uri.substr(std::strlen(kScheme));
  if (rest.rfind("guide/", 0) == 0) {
    const std::string* text = guide_section(rest.substr(6));
    if (!text) not_found_uri(uri, "no such guide section");
    return text_contents(uri, "text/markdown", *text);
  }
  if (rest.rfind("image/", 0) == 0) return read_image_resource(api, uri, rest.substr(6));
  if (rest.rfind("operations/", 0) == 0) return read_operation_resource(api, uri, rest.substr(11));
  not_found_uri(uri, "unknown resource (see resources/templates/list)");
}

}  // namespace coppice::mcp
