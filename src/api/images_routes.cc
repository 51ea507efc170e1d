// GET /v1/images, PATCH|DELETE /v1/images/{uuid}/tag (contract §2.2, §2.4); import, export
// and push (docs/API.md).
#include <fmt/format.h>

#include <chrono>

#include "api/api.h"
#include "common/error.h"
#include "engine/import_request.h"
#include "oci/exporter.h"

namespace coppice::api {

using json = nlohmann::json;

void Api::images(Exchange& ex) {
  const auto& s = ex.segments();
  auto& meta = engine_.meta();
  if (s.size() == 1) {
    if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
    store::ImageFilter f;
    f.page = parse_page(ex.query());
    f.tagged_only = ex.query().get("tagged").value_or("0") != "0" && ex.query().has("tagged") &&
                    ex.query().get("tagged") != "false";
    if (auto t = ex.query().get("tag"); t && !t->empty()) f.tag_prefix = *t;
    if (auto u = ex.query().get("uuid"); u && !u->empty()) f.uuid = *u;
    json arr = json::array();
    for (const auto& img : meta.list_images(ex.project, f)) arr.push_back(image_json(img));
    return ex.reply_json(200, {{"images", arr}});
  }
  if (s.size() == 2 && s[1] == "import") {
    if (ex.method() != http::verb::post) throw Error(405, "method not allowed");
    auto op = engine_.import_image(ex.project, ex.json_body());
    return ex.reply_json(201, {{"uuid", op.uuid}, {"status", op.status}},
                         {{"Location", "/v1/operations/" + op.uuid}});
  }
  if (s.size() == 3 && s[2] == "export") {
    // POST: an image_export operation (fetch its archive from /v1/operations/{op}/archive).
    if (ex.method() == http::verb::post) {
      auto op = engine_.export_image(ex.project, s[1], ex.body().empty() ? json() : ex.json_body());
      return ex.reply_json(201, {{"uuid", op.uuid}, {"status", op.status}},
                           {{"Location", "/v1/operations/" + op.uuid}});
    }
    if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
    return export_now(ex, s[1]);
  }
  if (s.size() == 3 && s[2] == "push") {
    if (ex.method() != http::verb::post) throw Error(405, "method not allowed");
    auto op = engine_.push_image(ex.project, s[1], ex.json_body());
    return ex.reply_json(201, {{"uuid", op.uuid}, {"status", op.status}},
                         {{"Location", "/v1/operations/" + op.uuid}});
  }
  if (s.size() == 3 && s[2] == "tag") {
    const std::string& uuid = s[1];
    auto img = engine_.find_image(ex.project, uuid);
    if (!img) throw not_found(fmt::format("image not found: {}", uuid));
    if (img->project != ex.project)
      throw Error(403, "public base images cannot be tagged or untagged by a project");
    if (ex.method() == http::verb::patch || ex.method() == http::verb::put) {
      json body = ex.json_body();
      if (!body.is_object() || !body.contains("tag") || !body["tag"].is_string())
        throw bad_request("tag is required");
      std::string tag = body["tag"].get<std::string>();
      engine::validate_tag(tag);
      meta.set_tag(ex.project, uuid, tag);
      return ex.reply_json(200, image_json(*meta.get_image(uuid)));
    }
    if (ex.method() == http::verb::delete_) {
      auto want = ex.query().get("tag");
      if (want && !want->empty() && img->tag != *want)
        throw not_found(fmt::format("image {} does not have tag {}", uuid, *want));
      meta.clear_tag(uuid);
      return ex.reply_json(200, image_json(*meta.get_image(uuid)));
    }
    throw Error(405, "method not allowed");
  }
  throw not_found("no such endpoint");
}

// GET /v1/images/{uuid}/export, the first form of export: the same image_export operation
// (queued fairly, size-checked, with a deadline), waited for here, then streamed; its archive
// is dropped afterwards. A client that goes away while the image is packed is not noticed
// until the packing ends (the POST form can be cancelled).
void Api::export_now(Exchange& ex, const std::string& image_uuid) {
  auto rec = engine_.export_image(ex.project, image_uuid, nullptr);
  struct Drop {
    engine::Engine& e;
    const std::string& id;
    ~Drop() { e.drop_export(id); }
  } drop{engine_, rec.uuid};
  const int64_t timeout_s = rec.metadata.value("timeout", int64_t{600});
  if (auto live = engine_.live(rec.uuid)) {
    // The operation's own deadline starts when a worker takes it: allow for some queueing.
    if (!live->wait_finished(std::chrono::seconds(timeout_s + 60))) {
      try {
        engine_.cancel(ex.project, rec.uuid);
      } catch (const Error&) {  // it finished meanwhile: its archive is dropped below
      }
      throw Error(504, fmt::format("export {} did not finish in {} s", rec.uuid, timeout_s + 60));
    }
  }
  auto done = engine_.operation(ex.project, rec.uuid);
  if (done && done->status != "SUCCESS") {
    std::string why = done->error.value_or(done->status);
    throw Error(why.rfind("timed out", 0) == 0 ? 504
                : done->status == "CANCELLED"  ? 409
                                               : 500,
                fmt::format("export {} ended {}: {}", rec.uuid, done->status, why));
  }
  auto archive = engine_.export_archive(ex.project, rec.uuid);
  ex.begin_stream(200, "application/x-tar",
                  {{"Content-Disposition",
                    fmt::format("attachment; filename=\"{}.oci.tar\"", archive->image_uuid)},
                   {"Docker-Content-Digest", archive->built.manifest_digest},
                   {"X-Coppice-Operation", rec.uuid}});
  oci::write_oci_archive(archive->built, archive->ref_name,
                         [&](std::string_view chunk) { ex.write(chunk); });
  ex.end_stream();
}

}  // namespace coppice::api
