#include "oci/exporter.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <exception>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/clock.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/sha256.h"
#include "oci/manifest.h"
#include "store/layer_view.h"

namespace coppice::oci {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

std::string host_architecture() {
  struct utsname u;
  if (::uname(&u) != 0) return "amd64";
  std::string m = u.machine;
  if (m == "x86_64") return "amd64";
  if (m == "aarch64") return "arm64";
  return m;
}

json image_config_json(const store::ImageRecord& img, const std::vector<PackedLayer>& layers) {
  const json& c = img.config;
  json env = json::array();
  bool has_path = false;
  if (c.contains("env") && c["env"].is_object())
    for (const auto& [k, v] : c["env"].items()) {
      if (!v.is_string()) continue;
      env.push_back(k + "=" + v.get<std::string>());
      has_path = has_path || k == "PATH";
    }
  if (!has_path) env.insert(env.begin(), std::string("PATH=") + kDefaultPath);
  json cfg = {{"Env", env}};
  if (c.contains("workdir") && c["workdir"].is_string()) cfg["WorkingDir"] = c["workdir"];
  if (c.contains("user") && c["user"].is_string()) cfg["User"] = c["user"];
  if (c.contains("entrypoint") && c["entrypoint"].is_array() && !c["entrypoint"].empty())
    cfg["Entrypoint"] = c["entrypoint"];
  if (c.contains("cmd") && c["cmd"].is_array() && !c["cmd"].empty()) cfg["Cmd"] = c["cmd"];
  std::string arch = host_architecture(), variant;
  if (c.contains("oci") && c["oci"].contains("platform") && c["oci"]["platform"].is_string()) {
    try {
      Platform p = parse_platform(c["oci"]["platform"].get<std::string>());
      if (!p.architecture.empty()) arch = p.architecture;
      variant = p.variant;
    } catch (const Error&) {
    }
  }
  json diff_ids = json::array();
  for (const auto& l : layers) diff_ids.push_back(l.diff_id);
  json j = {{"created", format_rfc3339(img.created_us)},
            {"architecture", arch},
            {"os", "linux"},
            {"config", cfg},
            {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}},
            {"history", json::array()}};
  if (!variant.empty()) j["variant"] = variant;
  return j;
}

struct WriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};
struct SinkCtx {
  const std::function<void(std::string_view)>* sink;
  std::exception_ptr error;
};
la_ssize_t sink_cb(archive*, void* ud, const void* buf, size_t n) {
  auto* c = static_cast<SinkCtx*>(ud);
  try {
    (*c->sink)(std::string_view(static_cast<const char*>(buf), n));
    return static_cast<la_ssize_t>(n);
  } catch (...) {
    c->error = std::current_exception();
    return -1;
  }
}

}  // namespace

std::string ref_name_for_tag(const std::optional<std::string>& tag) {
  if (!tag || tag->empty()) return "latest";
  auto colon = tag->rfind(':');
  std::string r = colon == std::string::npos ? *tag : tag->substr(colon + 1);
  return r.empty() ? "latest" : r;
}

BuiltImage build_image(const store::ImageRecord& img, const store::LayerStore& layers,
                       const fs::path& work, uid_t uid_shift,
                       const std::function<void(size_t, size_t)>& on_layer,
                       const AbortCheck& abort) {
  BuiltImage out;
  std::vector<fs::path> dirs;  // bottom first
  if (img.layers.size() <= kMaxExportLayers) {
    for (auto it = img.layers.rbegin(); it != img.layers.rend(); ++it)
      dirs.push_back(layers.layer_path(*it));
  } else {
    // Squash: materialize the merged view (hard links, no data copied) as one layer.
    fs::path flat = work / "squashed";
    store::LayerView view(layers.layer_paths(img.layers), uid_shift);
    store::flatten(view, flat);
    dirs.push_back(flat);
  }
  for (size_t i = 0; i < dirs.size(); ++i) {
    if (abort && abort()) throw Error(499, "cancelled");
    out.layers.push_back(
        pack_layer(dirs[i], work / fmt::format("layer-{}.tar.gz", i), uid_shift, 65536, abort));
    if (on_layer) on_layer(i + 1, dirs.size());
  }
  out.config = image_config_json(img, out.layers).dump();
  out.config_digest = "sha256:" + sha256_hex(out.config);
  json layer_descs = json::array();
  for (const auto& l : out.layers)
    layer_descs.push_back(
        {{"mediaType", media::kOciLayerGzip}, {"digest", l.digest}, {"size", l.size}});
  json manifest = {{"schemaVersion", 2},
                   {"mediaType", media::kOciManifest},
                   {"config",
                    {{"mediaType", media::kOciConfig},
                     {"digest", out.config_digest},
                     {"size", out.config.size()}}},
                   {"layers", layer_descs}};
  out.manifest = manifest.dump();
  out.manifest_digest = "sha256:" + sha256_hex(out.manifest);
  return out;
}

void write_oci_archive(const BuiltImage& img, const std::string& ref_name,
                       const std::function<void(std::string_view)>& sink) {
  SinkCtx ctx{&sink, nullptr};
  std::unique_ptr<archive, WriteFree> a(archive_write_new());
  archive_write_set_format_pax_restricted(a.get());
  if (archive_write_open(a.get(), &ctx, nullptr, sink_cb, nullptr) != ARCHIVE_OK)
    throw internal(fmt::format("tar writer: {}", archive_error_string(a.get())));
  const int64_t mtime = now_us() / 1000000;
  auto check = [&](int rc, const std::string& what) {
    if (ctx.error) std::rethrow_exception(ctx.error);
    if (rc < ARCHIVE_WARN)
      throw internal(fmt::format("tar {}: {}", what, archive_error_string(a.get())));
  };
  auto header = [&](const std::string& name, mode_t type, int64_t size) {
    std::unique_ptr<archive_entry, EntryFree> e(archive_entry_new());
    archive_entry_set_pathname(e.get(), name.c_str());
    archive_entry_set_filetype(e.get(), type);
    archive_entry_set_perm(e.get(), type == AE_IFDIR ? 0755 : 0644);
    archive_entry_set_size(e.get(), size);
    archive_entry_set_mtime(e.get(), mtime, 0);
    check(archive_write_header(a.get(), e.get()), name);
  };
  auto data = [&](const void* p, size_t n, const std::string& name) {
    la_ssize_t w = archive_write_data(a.get(), p, n);
    if (ctx.error) std::rethrow_exception(ctx.error);
    if (w < 0) throw internal(fmt::format("tar {}: {}", name, archive_error_string(a.get())));
  };
  auto small = [&](const std::string& name, const std::string& bytes) {
    header(name, AE_IFREG, static_cast<int64_t>(bytes.size()));
    data(bytes.data(), bytes.size(), name);
  };
  small("oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  json index = {{"schemaVersion", 2},
                {"mediaType", media::kOciIndex},
                {"manifests",
                 {{{"mediaType", media::kOciManifest},
                   {"digest", img.manifest_digest},
                   {"size", img.manifest.size()},
                   {"annotations", {{"org.opencontainers.image.ref.name", ref_name}}}}}}};
  small("index.json", index.dump());
  header("blobs/", AE_IFDIR, 0);
  header("blobs/sha256/", AE_IFDIR, 0);
  small("blobs/sha256/" + img.manifest_digest.substr(7), img.manifest);
  small("blobs/sha256/" + img.config_digest.substr(7), img.config);
  std::vector<char> buf(1 << 20);
  for (const auto& l : img.layers) {
    std::string name = "blobs/sha256/" + l.digest.substr(7);
    header(name, AE_IFREG, l.size);
    UniqueFd fd(::open(l.file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw sys_error("open " + l.file.string());
    for (;;) {
      ssize_t n = ::read(fd.get(), buf.data(), buf.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        throw sys_error("read " + l.file.string());
      }
      if (n == 0) break;
      data(buf.data(), static_cast<size_t>(n), name);
    }
  }
  check(archive_write_close(a.get()), "close");
}

std::string push_image(const BuiltImage& img, RegistryClient& client,
                       const std::function<void(size_t, size_t)>& on_blob) {
  const size_t total = img.layers.size() + 1;
  size_t done = 0;
  for (const auto& l : img.layers) {
    if (!client.has_blob(l.digest)) client.put_blob(l.digest, l.file);
    if (on_blob) on_blob(++done, total);
  }
  if (!client.has_blob(img.config_digest)) client.put_blob(img.config_digest, img.config);
  if (on_blob) on_blob(++done, total);
  const Reference& ref = client.reference();
  return client.put_manifest(ref.tag.empty() ? "latest" : ref.tag, media::kOciManifest,
                             img.manifest);
}

}  // namespace coppice::oci
