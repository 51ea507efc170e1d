// Imports and pushes: the transfer operations (contract §2.3; kinds "image_import" and
// "image_push"), queued on the worker pool like runs, each with a deadline and cancellable.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <optional>

#include "common/error.h"
#include "common/fsutil.h"
#include "engine/engine.h"
#include "engine/operation_util.h"
#include "oci/exporter.h"
#include "oci/importer.h"

namespace coppice::engine {

using json = nlohmann::json;
using store::ImageRecord;
using store::OperationRecord;

OperationRecord Engine::import_image(const std::string& project, const json& body) {
  ImportRequest req = parse_import_request(body, cfg_.max_import_timeout_s);
  if (req.archive_file && !meta_.get_file_by_uuid(project, *req.archive_file))
    throw not_found(fmt::format("file {} not found", *req.archive_file));
  OperationRecord rec = new_operation(project, "image_import");
  rec.metadata = req.to_json();
  rec.metadata["result"] = {{"image", nullptr}, {"tag", nullptr}};
  enqueue(rec, Job{nullptr, {}, [this, req](const std::shared_ptr<LiveOperation>& op) {
                     run_import(op, req);
                   }});
  spdlog::info("op={} queued import of {}", rec.uuid,
               req.ref ? req.ref->str() : "file " + *req.archive_file);
  return rec;
}

void Engine::finish_failed_transfer(const std::shared_ptr<LiveOperation>& op, const Error& e,
                                    bool timed_out, int64_t timeout_s) {
  std::string status = "FAILED", error = e.what();
  if (e.status() == 499) {
    if (timed_out)
      error = fmt::format("timed out after {} s", timeout_s);
    else
      status = "CANCELLED";
  }
  spdlog::warn("op={} {}: {}", op->record().uuid, status, error);
  finish(
      op,
      [&](OperationRecord& r) {
        r.status = status;
        if (status == "FAILED") r.error = error;
      },
      std::nullopt);
}

void Engine::run_import(const std::shared_ptr<LiveOperation>& op, const ImportRequest& req) {
  const OperationRecord rec0 = op->record();
  op->set_status("EXECUTING");
  TransferAbort stop(*op, req.timeout_s);
  oci::AbortCheck abort = [&] { return stop(); };
  oci::ImportOptions opt;
  opt.project = rec0.project;
  opt.operation_uuid = rec0.uuid;
  opt.tag = req.tag;
  opt.platform = req.platform;
  opt.uid_shift = cfg_.uid_shift;
  opt.uid_range = cfg_.uid_range;
  opt.min_free_bytes = cfg_.min_free_bytes;
  opt.max_bytes = cfg_.max_import_bytes;
  opt.max_entries = cfg_.max_import_entries;
  opt.on_layer = [&](const oci::Descriptor& d, const oci::UnpackStats& st) {
    if (st.skipped_count)
      op->append(0, "skipped_entries",
                 {{"layer", d.digest},
                  {"count", st.skipped_count},
                  {"entries", st.skipped},
                  {"reason", "device nodes and sockets are not stored in layers"}});
  };
  auto progress = [&](const oci::ImportProgress& p) {
    op->append(0, "progress",
               {{"layers_done", p.layers_done},
                {"layers_total", p.layers_total},
                {"layers_reused", p.layers_reused},
                {"bytes_done", p.bytes_done},
                {"bytes_total", p.bytes_total},
                {"bytes_fetched", p.bytes_fetched}});
  };
  std::optional<TempDir> scratch;
  try {
    std::unique_ptr<oci::ImageSource> src;
    if (req.ref) {
      src = oci::registry_source(*req.ref, req.credentials, cfg_.registry, abort);
      opt.source_name = req.ref->str();
    } else {
      auto f = meta_.get_file_by_uuid(rec0.project, *req.archive_file);
      if (!f) throw not_found(fmt::format("file {} not found", *req.archive_file));
      scratch.emplace(layers_.tmp_path("archive-" + rec0.uuid));
      oci::ArchiveLimits lim{cfg_.max_import_bytes, cfg_.max_import_entries, cfg_.min_free_bytes};
      src = oci::archive_source(layers_.file_path(f->sha256), scratch->path(), "", lim);
      opt.source_name = "file " + f->uuid;
    }
    // The point of no return is the image's record: a cancel accepted before it ends the
    // import CANCELLED (nothing recorded); after it, cancels are refused.
    opt.before_commit = [&] {
      op->begin_finishing();
      if (op->cancel_token().cancelled()) throw Error(499, "cancelled");
    };
    auto res = oci::import_image(*src, meta_, layers_, opt, progress, abort);
    scratch.reset();
    finish(
        op,
        [&](OperationRecord& r) {
          r.status = "SUCCESS";
          r.result_image_uuid = res.image.uuid;
          r.result_tag = res.image.tag;
          r.image_size = res.image.size_bytes;
          r.metadata["result"] = {{"image", res.image.uuid},
                                  {"tag", res.image.tag ? json(*res.image.tag) : json(nullptr)}};
          r.metadata["manifest_digest"] = res.manifest_digest;
          r.metadata["layers"] = res.progress.layers_total;
          r.metadata["layers_reused"] = res.progress.layers_reused;
          r.metadata["bytes_fetched"] = res.progress.bytes_fetched;
          r.metadata["existing_image"] = res.existing;
        },
        std::nullopt);
  } catch (const Error& e) {
    scratch.reset();
    finish_failed_transfer(op, e, stop.timed_out(), req.timeout_s);
  } catch (const std::exception& e) {
    scratch.reset();
    finish_failed_transfer(op, Error(500, e.what()), false, req.timeout_s);
  }
}

OperationRecord Engine::push_image(const std::string& project, const std::string& image_uuid,
                                   const json& body) {
  auto img = find_image(project, image_uuid);
  if (!img) throw not_found(fmt::format("image not found: {}", image_uuid));
  PushRequest req = parse_push_request(body, cfg_.max_import_timeout_s);
  OperationRecord rec = new_operation(project, "image_push");
  rec.image_uuid = img->uuid;
  rec.metadata = req.to_json();
  enqueue(rec, Job{nullptr, {}, [this, img = *img, req](const std::shared_ptr<LiveOperation>& op) {
                     run_push(op, img, req);
                   }});
  spdlog::info("op={} queued push of image {} to {}", rec.uuid, img->uuid, req.ref.str());
  return rec;
}

void Engine::run_push(const std::shared_ptr<LiveOperation>& op, const ImageRecord& img,
                      const PushRequest& req) {
  op->set_status("EXECUTING");
  TransferAbort stop(*op, req.timeout_s);
  oci::AbortCheck abort = [&] { return stop(); };
  try {
    TempDir work(layers_.tmp_path("push-" + op->record().uuid));
    auto built = oci::build_image(
        img, layers_, work.path(), cfg_.uid_shift,
        [&](size_t done, size_t total) {
          op->append(0, "progress",
                     {{"phase", "pack"}, {"layers_done", done}, {"layers_total", total}});
        },
        abort);
    oci::RegistryClient client(req.ref, req.credentials, cfg_.registry, abort, true);
    std::string digest = oci::push_image(built, client, [&](size_t done, size_t total) {
      op->append(0, "progress",
                 {{"phase", "upload"}, {"blobs_done", done}, {"blobs_total", total}});
    });
    int64_t bytes = 0;
    for (const auto& l : built.layers) bytes += l.size;
    finish(
        op,
        [&](OperationRecord& r) {
          r.status = "SUCCESS";
          r.image_size = bytes;
          r.metadata["manifest_digest"] = digest;
          r.metadata["pushed"] = req.ref.str();
          r.metadata["layers"] = built.layers.size();
        },
        std::nullopt);
  } catch (const Error& e) {
    finish_failed_transfer(op, e, stop.timed_out(), req.timeout_s);
  } catch (const std::exception& e) {
    finish_failed_transfer(op, Error(500, e.what()), false, req.timeout_s);
  }
}

}  // namespace coppice::engine
