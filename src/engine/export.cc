// Export of an image as an OCI archive: an operation of kind "image_export" (docs/API.md).
// Its size is checked when it is asked for (apparent size, so a sparse file counts in full);
// the packing (gzip, the expensive part) runs on the worker pool like every other operation,
// fair between projects, with a deadline and cancellable; the packed image then waits to be
// downloaded for export_ttl_s.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include <algorithm>

#include "common/clock.h"
#include "common/error.h"
#include "common/ids.h"
#include "engine/engine.h"
#include "engine/operation_util.h"

namespace coppice::engine {

using json = nlohmann::json;
using store::ImageRecord;
using store::OperationRecord;

namespace {

constexpr int64_t kDefaultExportTimeoutS = 600;
constexpr size_t kMaxArchivesPerProject = 4;  // finished archives kept per project, newest
constexpr uint64_t kTarEntryBytes = 1024;     // a tar header and padding, per entry

}  // namespace

uint64_t Engine::export_size(const ImageRecord& img) {
  uint64_t total = 0;
  for (const auto& id : img.layers) {
    {
      std::lock_guard lk(export_mu_);
      if (auto it = layer_export_bytes_.find(id); it != layer_export_bytes_.end()) {
        total += it->second;
        continue;
      }
    }
    TreeSize ts = tree_size(layers_.layer_path(id));
    uint64_t bytes = ts.apparent_bytes + ts.entries * kTarEntryBytes;
    std::lock_guard lk(export_mu_);
    layer_export_bytes_[id] = bytes;
    total += bytes;
  }
  return total;
}

OperationRecord Engine::export_image(const std::string& project, const std::string& image_uuid,
                                     const json& body) {
  auto img = find_image(project, image_uuid);
  if (!img) throw not_found(fmt::format("image not found: {}", image_uuid));
  int64_t timeout_s = std::min(kDefaultExportTimeoutS, cfg_.max_import_timeout_s);
  if (!body.is_null()) {
    if (!body.is_object()) throw bad_request("request body must be a JSON object");
    if (auto t = body.find("timeout"); t != body.end() && !t->is_null()) {
      if (!t->is_number_integer() || t->get<int64_t>() < 1 ||
          t->get<int64_t>() > cfg_.max_import_timeout_s)
        throw bad_request(fmt::format("`timeout` must be an integer between 1 and {}",
                                      cfg_.max_import_timeout_s));
      timeout_s = t->get<int64_t>();
    }
  }
  const uint64_t bytes = export_size(*img);
  if (bytes > cfg_.max_export_bytes)
    throw Error(413, fmt::format("image {} is too large to export: its files add up to {} bytes "
                                 "(apparent size: sparse files count in full), over this "
                                 "server's limit of {} bytes (whoami limits.export_max_bytes)",
                                 img->uuid, bytes, cfg_.max_export_bytes));
  // The packed layers can be as large as the files (incompressible data): keep the room the
  // runs and the database need.
  struct statvfs vfs;
  if (::statvfs(layers_.root().c_str(), &vfs) == 0) {
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (free_bytes < cfg_.min_free_bytes + bytes)
      throw Error(507,
                  fmt::format("not enough free space in the data directory to export image "
                              "{} ({} MiB free, {} MiB needed)",
                              img->uuid, free_bytes >> 20, (cfg_.min_free_bytes + bytes) >> 20));
  }
  OperationRecord rec = new_operation(project, "image_export");
  rec.image_uuid = img->uuid;
  rec.metadata = {{"image", img->uuid},
                  {"timeout", timeout_s},
                  {"export_bytes", bytes},
                  {"result", {{"archive", nullptr}}}};
  enqueue(rec, Job{nullptr, {}, [this, img = *img, timeout_s](const auto& op) {
                     run_export(op, img, timeout_s);
                   }});
  spdlog::info("op={} queued export of image {} ({} bytes)", rec.uuid, img->uuid, bytes);
  return rec;
}

void Engine::run_export(const std::shared_ptr<LiveOperation>& op, const ImageRecord& img,
                        int64_t timeout_s) {
  expire_exports();
  const OperationRecord rec0 = op->record();
  op->set_status("EXECUTING");
  TransferAbort stop(*op, timeout_s);
  oci::AbortCheck abort = [&] { return stop(); };
  try {
    auto archive = std::make_shared<ExportArchive>();
    archive->dir = std::make_shared<TempDir>(layers_.tmp_path("export-" + rec0.uuid));
    archive->image_uuid = img.uuid;
    archive->ref_name = oci::ref_name_for_tag(img.tag);
    archive->built = oci::build_image(
        img, layers_, archive->dir->path(), cfg_.uid_shift,
        [&](size_t done, size_t total) {
          op->append(0, "progress",
                     {{"phase", "pack"}, {"layers_done", done}, {"layers_total", total}});
        },
        abort);
    // The point of no return: a cancel accepted before it ends the export CANCELLED.
    op->begin_finishing();
    if (op->cancel_token().cancelled()) throw Error(499, "cancelled");
    int64_t packed = 0;
    for (const auto& l : archive->built.layers) packed += l.size;
    const int64_t expires_us = now_us() + cfg_.export_ttl_s * 1000000;
    std::vector<std::shared_ptr<const ExportArchive>> dropped;  // removed outside the lock
    {
      std::lock_guard lk(export_mu_);
      exports_[rec0.uuid] = {rec0.project, expires_us, archive};
      // Keep the newest few archives of a project: each may be as large as the image.
      std::vector<std::pair<int64_t, std::string>> mine;
      for (const auto& [id, e] : exports_)
        if (e.project == rec0.project) mine.emplace_back(e.expires_us, id);
      std::sort(mine.begin(), mine.end());
      for (size_t i = 0; i + kMaxArchivesPerProject < mine.size(); ++i) {
        auto it = exports_.find(mine[i].second);
        dropped.push_back(std::move(it->second.archive));
        exports_.erase(it);
      }
    }
    finish(
        op,
        [&](OperationRecord& r) {
          r.status = "SUCCESS";
          r.image_size = packed;
          r.metadata["result"] = {{"archive", "/v1/operations/" + rec0.uuid + "/archive"}};
          r.metadata["manifest_digest"] = archive->built.manifest_digest;
          r.metadata["layers"] = archive->built.layers.size();
          r.metadata["expires_at"] = format_rfc3339(expires_us);
        },
        std::nullopt);
  } catch (const Error& e) {
    finish_failed_transfer(op, e, stop.timed_out(), timeout_s);
  } catch (const std::exception& e) {
    finish_failed_transfer(op, Error(500, e.what()), false, timeout_s);
  }
}

std::shared_ptr<const Engine::ExportArchive> Engine::export_archive(const std::string& project,
                                                                    const std::string& op_uuid) {
  auto rec = operation(project, op_uuid);
  if (!rec || rec->kind != "image_export")
    throw not_found(fmt::format("export operation not found: {}", op_uuid));
  if (!rec->finished_us)
    throw Error(425, fmt::format("export {} is not finished yet ({})", op_uuid, rec->status));
  if (rec->status != "SUCCESS")
    throw conflict(fmt::format("export {} ended {}{}", op_uuid, rec->status,
                               rec->error ? ": " + *rec->error : ""));
  expire_exports();
  std::lock_guard lk(export_mu_);
  auto it = exports_.find(op_uuid);
  if (it == exports_.end())
    throw Error(410, fmt::format("the archive of export {} is gone (archives are kept {} s, and "
                                 "not across server restarts): export the image again",
                                 op_uuid, cfg_.export_ttl_s));
  return it->second.archive;
}

void Engine::drop_export(const std::string& op_uuid) {
  std::shared_ptr<const ExportArchive> last;  // removed outside the lock
  std::lock_guard lk(export_mu_);
  if (auto it = exports_.find(op_uuid); it != exports_.end()) {
    last = std::move(it->second.archive);
    exports_.erase(it);
  }
}

void Engine::expire_exports() {
  std::vector<std::shared_ptr<const ExportArchive>> expired;  // removed outside the lock
  const int64_t now = now_us();
  std::lock_guard lk(export_mu_);
  for (auto it = exports_.begin(); it != exports_.end();) {
    if (it->second.expires_us < now) {
      expired.push_back(std::move(it->second.archive));
      it = exports_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace coppice::engine
