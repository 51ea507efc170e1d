#include "oci/manifest.h"

#include <fmt/format.h>

#include "common/error.h"
#include "oci/reference.h"

namespace coppice::oci {

using json = nlohmann::json;

namespace {

// The string `key` of object `j`; `def` when absent or null. A value of another type is a
// 422 (json::value() would throw a type_error, which surfaces as a 500).
std::string string_at(const json& j, const char* key, const char* what, std::string def = {}) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_string()) throw unprocessable(fmt::format("{}: `{}` is not a string", what, key));
  return it->get<std::string>();
}

Descriptor parse_descriptor(const json& j, const char* what) {
  if (!j.is_object()) throw unprocessable(fmt::format("{}: descriptor is not an object", what));
  Descriptor d;
  d.media_type = string_at(j, "mediaType", what);
  if (!j.contains("digest") || !j["digest"].is_string() ||
      !is_digest(j["digest"].get<std::string>()))
    throw unprocessable(
        fmt::format("{}: missing or unsupported digest (only sha256 is supported)", what));
  d.digest = j["digest"].get<std::string>();
  if (!j.contains("size") || !j["size"].is_number_integer() || j["size"].get<int64_t>() < 0)
    throw unprocessable(fmt::format("{}: missing or negative size", what));
  d.size = j["size"].get<int64_t>();
  if (j.contains("platform") && j["platform"].is_object()) {
    const auto& p = j["platform"];
    Platform pl;
    pl.os = string_at(p, "os", what);
    pl.architecture = string_at(p, "architecture", what);
    pl.variant = string_at(p, "variant", what);
    d.platform = pl;
  }
  return d;
}

std::vector<std::string> string_list(const json& j) {
  std::vector<std::string> out;
  if (j.is_array())
    for (const auto& v : j)
      if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

}  // namespace

std::string Platform::str() const {
  return os + "/" + architecture + (variant.empty() ? "" : "/" + variant);
}

Platform parse_platform(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('/', start);
    if (end == std::string::npos) end = s.size();
    parts.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  for (const auto& p : parts)
    if (p.empty() || p.size() > 32)
      throw bad_request(fmt::format("invalid platform \"{}\" (want os/arch[/variant])", s));
  Platform pl;
  if (parts.size() == 1) {
    pl.architecture = parts[0];
  } else if (parts.size() <= 3) {
    pl.os = parts[0];
    pl.architecture = parts[1];
    if (parts.size() == 3) pl.variant = parts[2];
  } else {
    throw bad_request(fmt::format("invalid platform \"{}\" (want os/arch[/variant])", s));
  }
  return pl;
}

std::string manifest_media_type(const std::string& content_type, const json& body) {
  std::string ct = content_type.substr(0, content_type.find(';'));
  while (!ct.empty() && ct.back() == ' ') ct.pop_back();
  if (ct.find("vnd.oci") != std::string::npos || ct.find("vnd.docker") != std::string::npos)
    return ct;
  if (body.is_object() && body.contains("mediaType") && body["mediaType"].is_string())
    return body["mediaType"].get<std::string>();
  if (body.is_object() && body.contains("manifests")) return media::kOciIndex;
  return media::kOciManifest;
}

bool is_index(const std::string& media_type, const json& body) {
  std::string mt = manifest_media_type(media_type, body);
  return mt == media::kOciIndex || mt == media::kDockerList;
}

Descriptor select_platform(const json& index, const Platform& want) {
  if (!index.is_object() || !index.contains("manifests") || !index["manifests"].is_array())
    throw unprocessable("index has no manifests list");
  std::vector<Descriptor> all;
  for (const auto& m : index["manifests"]) all.push_back(parse_descriptor(m, "index entry"));
  const Descriptor* best = nullptr;
  int best_score = -1;
  for (const auto& d : all) {
    if (!d.platform) continue;
    const auto& p = *d.platform;
    if (p.os != want.os || p.architecture != want.architecture) continue;
    int score;
    if (!want.variant.empty()) {
      if (p.variant != want.variant) continue;
      score = 3;
    } else if (p.variant.empty()) {
      score = 2;
    } else {
      score = p.variant == "v8" ? 1 : 0;
    }
    if (score > best_score) {
      best = &d;
      best_score = score;
    }
  }
  if (!best) {
    std::string have;
    for (const auto& d : all)
      if (d.platform) have += (have.empty() ? "" : ", ") + d.platform->str();
    throw not_found(fmt::format("the image index has no manifest for platform {} (it has: {})",
                                want.str(), have.empty() ? "none" : have));
  }
  return *best;
}

LayerCompression layer_compression(const std::string& mt) {
  if (mt == media::kOciLayerGzip || mt == media::kDockerLayerGzip) return LayerCompression::kGzip;
  if (mt == media::kOciLayerZstd) return LayerCompression::kZstd;
  if (mt == media::kOciLayerTar || mt == "application/vnd.docker.image.rootfs.diff.tar")
    return LayerCompression::kNone;
  if (mt.find("foreign") != std::string::npos || mt.find("nondistributable") != std::string::npos)
    throw unprocessable(fmt::format("non-distributable layer type {} is not supported", mt));
  throw unprocessable(fmt::format("unsupported layer media type {}", mt));
}

ImageManifest parse_manifest(const std::string& media_type, const json& body) {
  if (!body.is_object()) throw unprocessable("manifest is not a JSON object");
  // Compared as JSON: value("schemaVersion", 0) converts any number to int (undefined for
  // 1e300) and throws for a string.
  if (auto v = body.find("schemaVersion"); v != body.end() && v->is_number() && *v == 1)
    throw unprocessable("Docker schema 1 manifests are not supported (re-push the image)");
  ImageManifest m;
  m.media_type = manifest_media_type(media_type, body);
  if (m.media_type != media::kOciManifest && m.media_type != media::kDockerManifest)
    throw unprocessable(fmt::format("unsupported manifest media type {}", m.media_type));
  if (!body.contains("config")) throw unprocessable("manifest has no config");
  m.config = parse_descriptor(body["config"], "config");
  if (!body.contains("layers") || !body["layers"].is_array())
    throw unprocessable("manifest has no layers list");
  for (const auto& l : body["layers"]) {
    Descriptor d = parse_descriptor(l, "layer");
    layer_compression(d.media_type);  // validates
    m.layers.push_back(std::move(d));
  }
  if (m.layers.size() > 1000) throw unprocessable("manifest has more than 1000 layers");
  return m;
}

ImageConfig parse_image_config(const json& body) {
  if (!body.is_object()) throw unprocessable("image config is not a JSON object");
  ImageConfig c;
  c.platform.os = string_at(body, "os", "image config", "linux");
  c.platform.architecture = string_at(body, "architecture", "image config");
  c.platform.variant = string_at(body, "variant", "image config");
  if (body.contains("config") && body["config"].is_object()) {
    const auto& cfg = body["config"];
    c.env = string_list(cfg.value("Env", json()));
    if (cfg.contains("WorkingDir") && cfg["WorkingDir"].is_string())
      c.working_dir = cfg["WorkingDir"].get<std::string>();
    if (cfg.contains("User") && cfg["User"].is_string()) c.user = cfg["User"].get<std::string>();
    c.entrypoint = string_list(cfg.value("Entrypoint", json()));
    c.cmd = string_list(cfg.value("Cmd", json()));
  }
  if (body.contains("rootfs") && body["rootfs"].is_object())
    c.diff_ids = string_list(body["rootfs"].value("diff_ids", json()));
  return c;
}

json ImageConfig::to_store_json() const {
  json env_map = json::object();
  for (const auto& kv : env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    env_map[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  json j = {{"env", env_map}, {"entrypoint", entrypoint}, {"cmd", cmd}};
  // A relative or empty WORKDIR means the root (what runtimes do).
  if (!working_dir.empty() && working_dir[0] == '/') j["workdir"] = working_dir;
  if (!user.empty()) j["user"] = user;
  return j;
}

}  // namespace coppice::oci
