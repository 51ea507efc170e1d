#include "oci/importer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>

#include "common/clock.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "oci/layer_unpack.h"

namespace coppice::oci {

namespace fs = std::filesystem;

namespace {

// Shares progress between the download thread and the caller, rate-limited.
class ProgressReporter {
 public:
  ProgressReporter(ImportProgress& p, const std::function<void(const ImportProgress&)>& fn)
      : p_(p), fn_(fn) {}
  void add_bytes(uint64_t n) {
    std::lock_guard lk(mu_);
    p_.bytes_done += n;
    p_.bytes_fetched += n;
    auto now = std::chrono::steady_clock::now();
    if (now - last_ >= std::chrono::milliseconds(100)) {
      last_ = now;
      if (fn_) fn_(p_);
    }
  }
  template <typename F>
  void update(F&& f) {
    std::lock_guard lk(mu_);
    f(p_);
    last_ = std::chrono::steady_clock::now();
    if (fn_) fn_(p_);
  }

 private:
  std::mutex mu_;
  ImportProgress& p_;
  const std::function<void(const ImportProgress&)>& fn_;
  std::chrono::steady_clock::time_point last_{};
};

// Downloads one layer blob into a socket while the caller unpacks from the other end, so the
// blob streams from the network into the layer directory with no temporary copy. The digest
// and size are checked on everything that came through.
UnpackStats fetch_and_unpack(ImageSource& src, const Descriptor& d, const fs::path& dest,
                             const UnpackOptions& uopt, ProgressReporter& rep) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw sys_error("socketpair");
  UniqueFd rd(sv[0]), wr(sv[1]);
  std::exception_ptr fetch_error;
  std::atomic<bool> fetch_failed{false};
  std::string got_digest;
  int64_t got_size = 0;
  std::thread fetcher([&] {
    try {
      Sha256 h;
      src.fetch_blob(d, [&](std::string_view chunk) {
        h.update(chunk);
        const size_t n_bytes = chunk.size();
        got_size += static_cast<int64_t>(n_bytes);
        if (got_size > d.size)
          throw unprocessable(fmt::format("blob {} is larger than its descriptor says ({} bytes)",
                                          d.digest, d.size));
        while (!chunk.empty()) {
          ssize_t n = ::send(wr.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
          if (n < 0) {
            if (errno == EINTR) continue;
            throw sys_error("layer stream");
          }
          chunk.remove_prefix(static_cast<size_t>(n));
        }
        rep.add_bytes(n_bytes);
      });
      got_digest = "sha256:" + h.hex_digest();
    } catch (...) {
      fetch_error = std::current_exception();
      fetch_failed = true;
    }
    ::shutdown(wr.get(), SHUT_WR);
  });
  std::exception_ptr unpack_error;
  bool fetch_failed_first = false;
  UnpackStats stats;
  try {
    stats = unpack_layer(rd.get(), dest, uopt);
    // Read what follows the tar's end marker so the digest covers the whole blob.
    char buf[65536];
    while (::read(rd.get(), buf, sizeof buf) > 0) {
    }
  } catch (...) {
    unpack_error = std::current_exception();
    fetch_failed_first = fetch_failed;
    ::shutdown(rd.get(), SHUT_RDWR);  // unblocks the fetcher
  }
  fetcher.join();
  // A download that failed first explains a truncated tar better than the unpacker's error
  // does; an unpacker that failed first (a hostile or oversized layer) made the download stop.
  if (unpack_error && !fetch_failed_first) std::rethrow_exception(unpack_error);
  if (fetch_error) std::rethrow_exception(fetch_error);
  if (unpack_error) std::rethrow_exception(unpack_error);
  if (got_digest != d.digest)
    throw unprocessable(fmt::format("digest mismatch for layer {}: the content hashes to {}",
                                    d.digest, got_digest));
  if (got_size != d.size)
    throw unprocessable(
        fmt::format("layer {} is {} bytes, its descriptor says {}", d.digest, got_size, d.size));
  return stats;
}

// Fetches a blob only to check it hashes to its digest (proof that the source has it).
void verify_blob(ImageSource& src, const Descriptor& d, ProgressReporter& rep) {
  Sha256 h;
  int64_t size = 0;
  src.fetch_blob(d, [&](std::string_view chunk) {
    size += static_cast<int64_t>(chunk.size());
    if (size > d.size)
      throw unprocessable(fmt::format("blob {} is larger than its descriptor says", d.digest));
    h.update(chunk);
    rep.add_bytes(chunk.size());
  });
  if ("sha256:" + h.hex_digest() != d.digest || size != d.size)
    throw unprocessable(fmt::format("digest mismatch for layer {}", d.digest));
  rep.update([&](ImportProgress& p) { p.bytes_done -= static_cast<uint64_t>(size); });
}

}  // namespace

std::string layer_id_for(const std::string& digest) {
  return "sha256-" + digest.substr(digest.find(':') + 1);
}

std::string chained_layer_id(const std::string& id, const std::vector<std::string>& below) {
  std::string chain;
  for (const auto& b : below) chain += b + "\n";
  return id + "-on-" + sha256_hex(chain).substr(0, 32);
}

ImportResult import_image(ImageSource& src, store::MetaStore& meta, store::LayerStore& layers,
                          const ImportOptions& opt,
                          const std::function<void(const ImportProgress&)>& progress,
                          const AbortCheck& abort) {
  ImportResult res;
  ProgressReporter rep(res.progress, progress);
  const int64_t t0 = now_us();
  ResolvedImage img = src.resolve(opt.platform);
  res.manifest_digest = img.manifest_digest;
  if (img.manifest.layers.empty()) throw unprocessable("the image has no layers");
  rep.update([&](ImportProgress& p) {
    p.layers_total = img.manifest.layers.size();
    for (const auto& l : img.manifest.layers) p.bytes_total += static_cast<uint64_t>(l.size);
  });

  auto have = [&](const std::string& id) { return fs::exists(layers.layer_path(id)); };

  // An unchanged re-import: the same manifest in this project, all layers still stored.
  if (auto existing = meta.find_by_source(opt.project, img.manifest_digest)) {
    bool all = true;
    for (const auto& id : existing->layers) all = all && have(id);
    if (all) {
      if (opt.before_commit) opt.before_commit();
      if (opt.tag) {
        meta.set_tag(opt.project, existing->uuid, *opt.tag);
        existing->tag = *opt.tag;
      }
      rep.update([&](ImportProgress& p) {
        p.layers_done = p.layers_reused = p.layers_total;
        p.bytes_done = p.bytes_total;
      });
      res.image = *existing;
      res.existing = true;
      spdlog::info("imported {}: unchanged, image {} already holds it ({:.1f} ms)", src.describe(),
                   existing->uuid, (now_us() - t0) / 1e3);
      return res;
    }
  }

  // Layers unpacked by this import wait in tmp/ until the image is recorded, so that a failed
  // import (a bomb, a hostile layer, a cancel) leaves nothing in layers/.
  struct Pending {
    fs::path tmp;
    std::string id;
  };
  std::vector<Pending> pending;
  struct RemovePending {
    std::vector<Pending>& p;
    ~RemovePending() {
      for (const auto& x : p) try {
          remove_tree(x.tmp);
        } catch (const std::exception& e) {
          spdlog::warn("import: could not remove {}: {}", x.tmp.string(), e.what());
        }
    }
  } remove_pending{pending};
  auto pending_path = [&](const std::string& id) -> const fs::path* {
    for (const auto& x : pending)
      if (x.id == id) return &x.tmp;
    return nullptr;
  };
  auto path_of = [&](const std::string& id) {
    const fs::path* p = pending_path(id);
    return p ? *p : layers.layer_path(id);
  };

  std::vector<std::string> ids;  // bottom first, filled as the layers are unpacked or found
  uint64_t bytes_left = opt.max_bytes, entries_left = opt.max_entries;
  for (size_t i = 0; i < img.manifest.layers.size(); ++i) {
    if (abort && abort()) throw Error(499, "cancelled");
    const Descriptor& d = img.manifest.layers[i];
    // A layer is stored under its blob's id unless unpacking it had to copy attributes from the
    // layers below (see UnpackStats::depends_on_lower): then under an id that names them too.
    const std::string plain = layer_id_for(d.digest), chained = chained_layer_id(plain, ids);
    auto known = [&](const std::string& id) { return pending_path(id) || have(id); };
    const std::string* found = known(plain) ? &plain : known(chained) ? &chained : nullptr;
    if (found) {
      // Another project's layer is reused only after this source proved it has the same bytes
      // (a manifest can name any digest; naming one must not be enough to read its content).
      if (!pending_path(*found) && !meta.project_has_layer(opt.project, *found))
        verify_blob(src, d, rep);
      ids.push_back(*found);
      rep.update([&](ImportProgress& p) {
        ++p.layers_done;
        ++p.layers_reused;
        p.bytes_done += static_cast<uint64_t>(d.size);
      });
      continue;
    }
    fs::path tmp = layers.tmp_path("import-" + new_uuid());
    make_dirs(tmp, 0700);
    pending.push_back({tmp, ""});
    // The layer's root belongs to the sandbox's root, like every directory it creates.
    if (::chown(tmp.c_str(), opt.uid_shift, opt.uid_shift) != 0 || ::chmod(tmp.c_str(), 0755))
      throw sys_error("chown " + tmp.string());
    std::vector<fs::path> below;
    for (size_t j = ids.size(); j-- > 0;) below.push_back(path_of(ids[j]));
    std::optional<store::LayerView> lower;
    if (!below.empty()) lower.emplace(below, opt.uid_shift);
    UnpackOptions uopt;
    uopt.uid_shift = opt.uid_shift;
    uopt.uid_range = opt.uid_range;
    uopt.lower = lower ? &*lower : nullptr;
    uopt.min_free_bytes = opt.min_free_bytes;
    // The import's caps, less what the layers below used.
    uopt.max_bytes = opt.max_bytes ? std::max<uint64_t>(bytes_left, 1) : 0;
    uopt.max_entries = opt.max_entries ? std::max<uint64_t>(entries_left, 1) : 0;
    UnpackStats st = fetch_and_unpack(src, d, tmp, uopt, rep);
    if (opt.max_bytes) bytes_left -= std::min(bytes_left, st.bytes);
    if (opt.max_entries) entries_left -= std::min(entries_left, st.entries);
    if (opt.on_layer) opt.on_layer(d, st);
    pending.back().id = st.depends_on_lower ? chained : plain;
    ids.push_back(pending.back().id);
    rep.update([&](ImportProgress& p) { ++p.layers_done; });
  }

  store::ImageRecord rec;
  rec.uuid = new_uuid();
  rec.project = opt.project;
  rec.layers.assign(ids.rbegin(), ids.rend());
  rec.layer_id = rec.layers.front();
  rec.created_us = now_us();
  rec.operation_uuid = opt.operation_uuid;
  for (const auto& l : img.manifest.layers) rec.size_bytes += l.size;
  rec.config = img.config.to_store_json();
  rec.config["oci"] = {{"manifest_digest", img.manifest_digest},
                       {"config_digest", img.manifest.config.digest},
                       {"source", opt.source_name.empty() ? src.describe() : opt.source_name},
                       {"platform", img.config.platform.str()}};
  if (opt.before_commit) opt.before_commit();
  // The point of no return: the new layers go into layers/ (before the row that names them,
  // see the crash-safety protocol in docs/ARCHITECTURE.md).
  for (auto it = pending.begin(); it != pending.end(); it = pending.erase(it)) {
    try {
      layers.commit_layer(it->tmp, it->id);
    } catch (const std::exception&) {
      if (!have(it->id)) throw;
      remove_tree(it->tmp);  // another import stored the same layer meanwhile
    }
  }
  meta.insert_image(rec);
  if (opt.tag) {
    meta.set_tag(opt.project, rec.uuid, *opt.tag);
    rec.tag = *opt.tag;
  }
  res.image = rec;
  spdlog::info("imported {} as image {} ({} layers, {} reused, {} bytes fetched) in {:.1f} ms",
               src.describe(), rec.uuid, ids.size(), res.progress.layers_reused,
               res.progress.bytes_fetched, (now_us() - t0) / 1e3);
  return res;
}

}  // namespace coppice::oci
