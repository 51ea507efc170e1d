#include "engine/import_request.h"

#include <fmt/format.h>

#include "common/error.h"
#include "common/ids.h"

namespace coppice::engine {

using json = nlohmann::json;

namespace {

const json* field(const json& body, const char* name) {
  if (!body.contains(name) || body[name].is_null()) return nullptr;
  return &body[name];
}

std::string string_field(const json& obj, const char* name, const char* where) {
  const json* v = field(obj, name);
  if (!v) return {};
  if (!v->is_string()) throw bad_request(fmt::format("`{}.{}` must be a string", where, name));
  return v->get<std::string>();
}

// registry: {url, credentials: {username, password}}; empty strings are anonymous.
void parse_registry(const json& reg, std::string& url, oci::Credentials& cred, bool& has_cred) {
  if (!reg.is_object()) throw bad_request("`registry` must be an object");
  const json* u = field(reg, "url");
  if (!u || !u->is_string() || u->get<std::string>().empty())
    throw bad_request("`registry.url` is required");
  url = u->get<std::string>();
  if (const json* c = field(reg, "credentials")) {
    if (!c->is_object()) throw bad_request("`registry.credentials` must be an object");
    cred.username = string_field(*c, "username", "registry.credentials");
    cred.password = string_field(*c, "password", "registry.credentials");
    has_cred = true;
  }
}

int64_t parse_timeout(const json& body, int64_t def, int64_t max) {
  const json* t = field(body, "timeout");
  if (!t) return def;
  if (!t->is_number()) throw bad_request("`timeout` must be a number of seconds");
  double v = t->get<double>();
  if (!(v > 0)) throw bad_request("`timeout` must be positive");
  if (v > static_cast<double>(max))
    throw bad_request(fmt::format("`timeout` must be at most {} seconds", max));
  return std::max<int64_t>(1, static_cast<int64_t>(v + 0.5));
}

json registry_json(const std::string& url, const oci::Credentials& c, bool has) {
  json r = {{"url", url}};
  if (has)
    r["credentials"] = {{"username", c.username},
                        {"password", c.password.empty() ? "" : "<MASKED>"}};
  return r;
}

}  // namespace

void validate_tag(const std::string& tag) {
  if (tag.empty()) throw bad_request("tag is required");
  if (tag.size() > 255) throw bad_request("tag is longer than 255 characters");
  for (char c : tag)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
          c == '/' || c == ':' || c == '@'))
      // Named by its code, not quoted as JSON: one byte of a UTF-8 sequence is not valid JSON
      // text, and dump() would throw (a 500 instead of this 400).
      throw bad_request(
          std::isprint(static_cast<unsigned char>(c))
              ? fmt::format("invalid character '{}' in tag", c)
              : fmt::format("invalid byte 0x{:02x} in tag", static_cast<unsigned char>(c)));
}

ImportRequest parse_import_request(const json& body, int64_t max_timeout_s) {
  if (!body.is_object()) throw bad_request("the request body must be a JSON object");
  ImportRequest r;
  const json* reg = field(body, "registry");
  const json* arc = field(body, "archive");
  if (reg && arc) throw bad_request("give either `registry` or `archive`, not both");
  if (reg) {
    parse_registry(*reg, r.url, r.credentials, r.has_credentials);
    r.ref = oci::parse_reference(r.url);
  } else if (arc) {
    if (!arc->is_object()) throw bad_request("`archive` must be an object");
    std::string f = string_field(*arc, "file", "archive");
    if (!is_uuid(f)) throw bad_request("`archive.file` must be the uuid of an uploaded file");
    r.archive_file = f;
  } else {
    throw bad_request("`registry` is required");
  }
  if (const json* t = field(body, "tag")) {
    if (!t->is_string()) throw bad_request("`tag` must be a string or null");
    if (!t->get<std::string>().empty()) {
      validate_tag(t->get<std::string>());
      r.tag = t->get<std::string>();
    }
  }
  r.timeout_s = parse_timeout(body, 300, max_timeout_s);
  if (const json* p = field(body, "platform")) {
    if (!p->is_string()) throw bad_request("`platform` must be a string like linux/amd64");
    r.platform = oci::parse_platform(p->get<std::string>());
  }
  return r;
}

json ImportRequest::to_json() const {
  json j = {{"tag", tag ? json(*tag) : json(nullptr)},
            {"timeout", timeout_s},
            {"platform", platform.str()}};
  if (archive_file)
    j["archive"] = {{"file", *archive_file}};
  else
    j["registry"] = registry_json(url, credentials, has_credentials);
  return j;
}

PushRequest parse_push_request(const json& body, int64_t max_timeout_s) {
  if (!body.is_object()) throw bad_request("the request body must be a JSON object");
  PushRequest r;
  const json* reg = field(body, "registry");
  if (!reg) throw bad_request("`registry` is required");
  parse_registry(*reg, r.url, r.credentials, r.has_credentials);
  r.ref = oci::parse_reference(r.url);
  if (!r.ref.digest.empty()) throw bad_request("push to a tag, not to a digest");
  r.timeout_s = parse_timeout(body, 600, max_timeout_s);
  return r;
}

json PushRequest::to_json() const {
  return {{"registry", registry_json(url, credentials, has_credentials)}, {"timeout", timeout_s}};
}

}  // namespace coppice::engine
