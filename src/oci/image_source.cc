#include "oci/image_source.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/beneath.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"
#include "common/sha256.h"
#include "oci/layer_unpack.h"

namespace coppice::oci {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

json parse_json(const std::string& bytes, const std::string& what) {
  json j = json::parse(bytes, nullptr, false);
  if (j.is_discarded()) throw unprocessable(fmt::format("{} is not valid JSON", what));
  return j;
}

class RegistrySource final : public ImageSource {
 public:
  RegistrySource(const Reference& ref, const Credentials& cred, const RegistryConfig& cfg,
                 AbortCheck abort)
      : client_(ref, cred, cfg, std::move(abort)) {}

  ResolvedImage resolve(const Platform& platform) override {
    const Reference& ref = client_.reference();
    auto doc = client_.get_manifest(ref.manifest_ref());
    json body = parse_json(doc.body, "the manifest");
    if (is_index(doc.media_type, body)) {
      Descriptor d = select_platform(body, platform);
      doc = client_.get_manifest(d.digest);
      body = parse_json(doc.body, "the manifest");
      if (is_index(doc.media_type, body))
        throw unprocessable("nested image indexes are not supported");
    }
    ResolvedImage r;
    r.manifest_digest = doc.digest;
    r.manifest = parse_manifest(doc.media_type, body);
    r.config_bytes = client_.get_blob_bytes(r.manifest.config);
    r.config = parse_image_config(parse_json(r.config_bytes, "the image config"));
    return r;
  }

  void fetch_blob(const Descriptor& d, const BodySink& sink) override { client_.get_blob(d, sink); }
  std::string describe() const override { return client_.reference().str(); }

 private:
  RegistryClient client_;
};

std::string read_small(const fs::path& p, size_t max) {
  std::error_code ec;
  auto size = fs::file_size(p, ec);
  if (ec) throw unprocessable(fmt::format("{} is missing from the archive", p.filename().string()));
  if (size > max) throw unprocessable(fmt::format("{} is larger than {} bytes", p.string(), max));
  return read_file(p);
}

void stream_file(const fs::path& p, const BodySink& sink) {
  UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) throw unprocessable(fmt::format("blob {} is missing: {}", p.string(), strerror(errno)));
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("read " + p.string());
    }
    if (n == 0) return;
    sink(std::string_view(buf.data(), static_cast<size_t>(n)));
  }
}

// An OCI image layout: oci-layout, index.json, blobs/sha256/<hex>.
class LayoutSource final : public ImageSource {
 public:
  LayoutSource(fs::path dir, std::string name, std::string what)
      : dir_(std::move(dir)), name_(std::move(name)), what_(std::move(what)) {}

  ResolvedImage resolve(const Platform& platform) override {
    json index = parse_json(read_small(dir_ / "index.json", 4u << 20), "index.json");
    if (!index.is_object() || !index.contains("manifests") || !index["manifests"].is_array() ||
        index["manifests"].empty())
      throw unprocessable("index.json lists no manifests");
    const json* chosen = nullptr;
    json candidates = json::array();
    for (const auto& m : index["manifests"]) {
      std::string ref_name;
      if (m.contains("annotations") && m["annotations"].is_object())
        ref_name = m["annotations"].value("org.opencontainers.image.ref.name", std::string());
      if (!name_.empty()) {
        bool match = ref_name == name_ || (name_.find(':') != std::string::npos &&
                                           name_.substr(name_.rfind(':') + 1) == ref_name);
        if (match) chosen = &m;
      } else {
        candidates.push_back(m);
      }
    }
    Descriptor d;
    if (!name_.empty()) {
      if (!chosen) throw not_found(fmt::format("the layout has no image named {}", name_));
      d = descriptor(*chosen);
    } else if (candidates.size() == 1) {
      d = descriptor(candidates[0]);
    } else {
      d = select_platform(json{{"manifests", candidates}}, platform);
    }
    std::string bytes = blob_bytes(d, 4u << 20);
    json body = parse_json(bytes, "the manifest");
    if (is_index(d.media_type, body)) {
      d = select_platform(body, platform);
      bytes = blob_bytes(d, 4u << 20);
      body = parse_json(bytes, "the manifest");
    }
    ResolvedImage r;
    r.manifest_digest = d.digest;
    r.manifest = parse_manifest(d.media_type, body);
    r.config_bytes = blob_bytes(r.manifest.config, 16u << 20);
    r.config = parse_image_config(parse_json(r.config_bytes, "the image config"));
    return r;
  }

  void fetch_blob(const Descriptor& d, const BodySink& sink) override {
    stream_file(blob_path(d.digest), sink);
  }
  std::string describe() const override { return what_; }

 private:
  static Descriptor descriptor(const json& m) {
    // Reuse the index parser's validation through select_platform's descriptor reading.
    if (!m.is_object() || !m.contains("digest") || !m["digest"].is_string() ||
        !is_digest(m["digest"].get<std::string>()) || !m.contains("size") ||
        !m["size"].is_number_integer())
      throw unprocessable("index.json has an invalid descriptor");
    Descriptor d;
    d.digest = m["digest"].get<std::string>();
    d.size = m["size"].get<int64_t>();
    d.media_type = m.value("mediaType", std::string());
    return d;
  }
  fs::path blob_path(const std::string& digest) const {
    if (!is_digest(digest)) throw unprocessable(fmt::format("unsupported digest {}", digest));
    return dir_ / "blobs" / "sha256" / digest.substr(7);
  }
  std::string blob_bytes(const Descriptor& d, size_t max) {
    std::string bytes = read_small(blob_path(d.digest), max);
    if ("sha256:" + sha256_hex(bytes) != d.digest)
      throw unprocessable(fmt::format("digest mismatch for blob {}", d.digest));
    return bytes;
  }

  fs::path dir_;
  std::string name_;
  std::string what_;
};

// `docker save` output: manifest.json = [{"Config": "…json", "RepoTags": […], "Layers": […]}].
class DockerArchiveSource final : public ImageSource {
 public:
  DockerArchiveSource(fs::path dir, std::string name, std::string what)
      : dir_(std::move(dir)), name_(std::move(name)), what_(std::move(what)) {}

  ResolvedImage resolve(const Platform&) override {
    json list = parse_json(read_small(dir_ / "manifest.json", 4u << 20), "manifest.json");
    if (!list.is_array() || list.empty()) throw unprocessable("manifest.json lists no images");
    const json* chosen = list.size() == 1 && name_.empty() ? &list[0] : nullptr;
    for (const auto& m : list)
      if (!name_.empty() && m.contains("RepoTags") && m["RepoTags"].is_array())
        for (const auto& t : m["RepoTags"])
          if (t.is_string() && t.get<std::string>() == name_) chosen = &m;
    if (!chosen)
      throw not_found(name_.empty() ? "the archive holds several images; name one"
                                    : fmt::format("the archive has no image tagged {}", name_));
    if (!chosen->contains("Config") || !(*chosen)["Config"].is_string() ||
        !chosen->contains("Layers") || !(*chosen)["Layers"].is_array())
      throw unprocessable("manifest.json entry lacks Config or Layers");
    ResolvedImage r;
    r.config_bytes = read_small(member((*chosen)["Config"].get<std::string>()), 16u << 20);
    r.config = parse_image_config(parse_json(r.config_bytes, "the image config"));
    r.manifest.media_type = media::kOciManifest;
    r.manifest.config = {media::kOciConfig, "sha256:" + sha256_hex(r.config_bytes),
                         static_cast<int64_t>(r.config_bytes.size()), std::nullopt};
    json layers = json::array();
    for (const auto& l : (*chosen)["Layers"]) {
      if (!l.is_string()) throw unprocessable("manifest.json has a non-string layer");
      fs::path p = member(l.get<std::string>());
      Sha256 h;
      int64_t size = 0;
      stream_file(p, [&](std::string_view chunk) {
        h.update(chunk);
        size += static_cast<int64_t>(chunk.size());
      });
      Descriptor d{media::kOciLayerTar, "sha256:" + h.hex_digest(), size, std::nullopt};
      paths_[d.digest] = p;
      layers.push_back({{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}});
      r.manifest.layers.push_back(std::move(d));
    }
    json manifest = {{"schemaVersion", 2},
                     {"mediaType", media::kOciManifest},
                     {"config",
                      {{"mediaType", media::kOciConfig},
                       {"digest", r.manifest.config.digest},
                       {"size", r.manifest.config.size}}},
                     {"layers", layers}};
    r.manifest_digest = "sha256:" + sha256_hex(manifest.dump());
    return r;
  }

  void fetch_blob(const Descriptor& d, const BodySink& sink) override {
    auto it = paths_.find(d.digest);
    if (it == paths_.end()) throw internal("unknown layer " + d.digest);
    stream_file(it->second, sink);
  }
  std::string describe() const override { return what_; }

 private:
  fs::path member(const std::string& name) const {
    std::string rel = normalize_member_name(name);
    if (rel.empty()) throw unprocessable("manifest.json names the archive root");
    return dir_ / rel;
  }

  fs::path dir_;
  std::string name_;
  std::string what_;
  std::map<std::string, fs::path> paths_;
};

struct ReadFree {
  void operator()(archive* a) const { archive_read_free(a); }
};

// Unpacks an archive of an image (only directories and regular files; nothing outside `dest`).
// Unpacks the directories and regular files of an image archive into `dest` (nothing else is
// needed to read an OCI layout or a docker-save tar). Every write is beneath a directory fd of
// `dest` (common/beneath.h).
void extract_archive(const fs::path& tar, const fs::path& dest, const ArchiveLimits& lim) {
  std::unique_ptr<archive, ReadFree> a(archive_read_new());
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_format_tar(a.get());
  if (archive_read_open_filename(a.get(), tar.c_str(), 1 << 20) != ARCHIVE_OK)
    throw unprocessable(
        fmt::format("{} is not a tar archive: {}", tar.string(), archive_error_string(a.get())));
  UniqueFd root = open_dir_path(dest);
  archive_entry* e;
  std::string buf(1 << 20, '\0');
  uint64_t entries = 0, bytes = 0, written = 0, checked = 0;
  for (;;) {
    int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN)
      throw unprocessable(fmt::format("{}: {}", tar.string(), archive_error_string(a.get())));
    if (lim.max_entries && ++entries > lim.max_entries)
      throw Error(413, fmt::format("the archive has more than {} entries", lim.max_entries));
    std::string rel =
        normalize_member_name(archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
    if (rel.empty()) continue;
    if (archive_entry_filetype(e) == AE_IFDIR) {
      make_dirs_beneath(root.get(), rel);
      continue;
    }
    if (archive_entry_filetype(e) != AE_IFREG) continue;
    bytes += static_cast<uint64_t>(std::max<int64_t>(archive_entry_size(e), 0));
    if (lim.max_bytes && bytes > lim.max_bytes)
      throw Error(413, fmt::format("the archive holds more than {} bytes", lim.max_bytes));
    size_t slash = rel.rfind('/');
    UniqueFd dir =
        make_dirs_beneath(root.get(), slash == std::string::npos ? "" : rel.substr(0, slash));
    std::string base = slash == std::string::npos ? rel : rel.substr(slash + 1);
    UniqueFd fd = open_beneath(dir.get(), base, O_WRONLY | O_CREAT | O_EXCL, 0600);
    for (;;) {
      la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
      if (n < 0)
        throw unprocessable(fmt::format("{}: {}", tar.string(), archive_error_string(a.get())));
      if (n == 0) break;
      const char* d = buf.data();
      size_t left = static_cast<size_t>(n);
      while (left) {
        ssize_t w = ::write(fd.get(), d, left);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == ENOSPC) throw Error(507, "the data filesystem is full");
        if (w < 0) throw sys_error("write " + rel);
        d += w;
        left -= static_cast<size_t>(w);
        written += static_cast<uint64_t>(w);
      }
      if (lim.min_free_bytes && written - checked > (64u << 20)) {
        checked = written;
        struct statvfs vfs;
        if (::fstatvfs(root.get(), &vfs) == 0 &&
            static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize < lim.min_free_bytes)
          throw Error(507, "the data filesystem is nearly full");
      }
    }
  }
}

}  // namespace

std::unique_ptr<ImageSource> registry_source(const Reference& ref, const Credentials& cred,
                                             const RegistryConfig& cfg, AbortCheck abort) {
  return std::make_unique<RegistrySource>(ref, cred, cfg, std::move(abort));
}

std::unique_ptr<ImageSource> archive_source(const fs::path& path, const fs::path& scratch,
                                            const std::string& name, const ArchiveLimits& limits) {
  std::error_code ec;
  fs::path dir = path;
  std::string kind;
  if (fs::is_directory(path, ec)) {
    kind = "directory";
  } else if (fs::is_regular_file(path, ec)) {
    extract_archive(path, scratch, limits);
    dir = scratch;
    kind = "archive";
  } else {
    throw not_found(fmt::format("{}: no such file or directory", path.string()));
  }
  if (fs::exists(dir / "index.json"))
    return std::make_unique<LayoutSource>(
        dir, name,
        fmt::format("oci-{} {}", kind == "directory" ? "layout" : "archive", path.string()));
  if (fs::exists(dir / "manifest.json"))
    return std::make_unique<DockerArchiveSource>(dir, name, "docker-archive " + path.string());
  throw unprocessable(fmt::format(
      "{} is neither an OCI image layout (index.json) nor a docker-save archive (manifest.json)",
      path.string()));
}

}  // namespace coppice::oci
