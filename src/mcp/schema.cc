#include "mcp/schema.h"

#include <fmt/format.h>

namespace coppice::mcp {

using nlohmann::json;

namespace {

bool has_type(const json& v, const std::string& t) {
  if (t == "string") return v.is_string();
  if (t == "integer")
    return v.is_number_integer() ||
           (v.is_number_float() &&
            v.get<double>() == static_cast<double>(static_cast<long long>(v.get<double>())));
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_boolean();
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "null") return v.is_null();
  return true;
}

std::string article(const std::string& t) {
  return (t == "integer" || t == "object" || t == "array") ? "an " + t : "a " + t;
}

std::optional<std::string> check(const json& schema, const json& v, const std::string& where) {
  if (schema.contains("type")) {
    const json& t = schema["type"];
    bool ok = false;
    std::string names;
    for (const auto& one : t.is_array() ? t : json::array({t})) {
      ok = ok || has_type(v, one.get<std::string>());
      names += (names.empty() ? "" : " or ") + article(one.get<std::string>());
    }
    if (!ok) return fmt::format("{}: expected {}, got {}", where, names, v.dump().substr(0, 60));
  }
  if (schema.contains("enum")) {
    bool found = false;
    for (const auto& e : schema["enum"]) found = found || e == v;
    if (!found) return fmt::format("{}: must be one of {}", where, schema["enum"].dump());
  }
  if (schema.contains("minimum") && v.is_number() &&
      v.get<double>() < schema["minimum"].get<double>())
    return fmt::format("{}: must be at least {}", where, schema["minimum"].dump());
  if (v.is_object()) {
    const json props = schema.value("properties", json::object());
    for (const auto& r : schema.value("required", json::array()))
      if (!v.contains(r.get<std::string>()) || v[r.get<std::string>()].is_null())
        return fmt::format("missing required field '{}'", r.get<std::string>());
    for (const auto& [k, sub] : v.items()) {
      if (props.contains(k)) {
        if (sub.is_null()) continue;  // clients send null for "not given"
        if (auto e = check(props[k], sub, fmt::format("field '{}'", k))) return e;
      } else if (schema.contains("additionalProperties")) {
        const json& ap = schema["additionalProperties"];
        if (ap.is_boolean() && !ap.get<bool>())
          return fmt::format("unknown field '{}' (known: {})", k, [&] {
            std::string s;
            for (const auto& [n, _] : props.items()) s += (s.empty() ? "" : ", ") + n;
            return s;
          }());
        if (ap.is_object())
          if (auto e = check(ap, sub, fmt::format("{} key '{}'", where, k))) return e;
      }
    }
  }
  if (v.is_array() && schema.contains("items"))
    for (size_t i = 0; i < v.size(); ++i)
      if (auto e = check(schema["items"], v[i], fmt::format("{}[{}]", where, i))) return e;
  return std::nullopt;
}

}  // namespace

std::optional<std::string> schema_violation(const json& schema, const json& value) {
  return check(schema, value, "arguments");
}

}  // namespace coppice::mcp
