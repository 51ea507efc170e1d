// GET /v1/images, PATCH|DELETE /v1/images/{uuid}/tag (contract §2.2, §2.4).
#include <fmt/format.h>

#include "api/api.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
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
    if (ex.method() != http::verb::get) throw Error(405, "method not allowed");
    auto img = engine_.find_image(ex.project, s[1]);
    if (!img) throw not_found(fmt::format("image not found: {}", s[1]));
    TempDir work(engine_.layer_store().tmp_path("export-" + new_uuid()));
    auto built =
        oci::build_image(*img, engine_.layer_store(), work.path(), engine_.config().uid_shift);
    ex.begin_stream(
        200, "application/x-tar",
        {{"Content-Disposition", fmt::format("attachment; filename=\"{}.oci.tar\"", img->uuid)},
         {"Docker-Content-Digest", built.manifest_digest}});
    oci::write_oci_archive(built, oci::ref_name_for_tag(img->tag),
                           [&](std::string_view chunk) { ex.write(chunk); });
    return ex.end_stream();
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

}  // namespace coppice::api
