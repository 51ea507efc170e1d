// POST/GET/HEAD /v1/files and /v1/files/{sha256} (contract §2.5), with the legacy query forms.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include "api/api.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"
#include "common/sha256.h"

namespace coppice::api {

using json = nlohmann::json;

namespace {
std::string hash_file(const std::string& path, int64_t& size) {
  UniqueFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f) throw sys_error("open " + path);
  Sha256 h;
  std::string buf(1 << 20, '\0');
  size = 0;
  for (;;) {
    ssize_t n = ::read(f.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error("read " + path);
    }
    if (n == 0) break;
    h.update(std::string_view(buf.data(), static_cast<size_t>(n)));
    size += n;
  }
  return h.hex_digest();
}
}  // namespace

void Api::files(Exchange& ex) {
  const auto& s = ex.segments();
  auto& meta = engine_.meta();
  auto& layers = engine_.layer_store();
  bool head = ex.method() == http::verb::head;
  if (s.size() == 1 && ex.method() == http::verb::post) {
    if (ex.upload_path.empty()) throw internal("upload was not streamed to a file");
    int64_t size = 0;
    std::string sha = hash_file(ex.upload_path, size);
    layers.commit_file(ex.upload_path, sha);
    auto rec = meta.upsert_file(ex.project, sha, size);
    return ex.reply_json(201, {{"uuid", rec.uuid}, {"sha256", rec.sha256}, {"size", rec.size}});
  }
  if (ex.method() != http::verb::get && !head) throw Error(405, "method not allowed");
  if (s.size() == 1) {
    auto sha = ex.query().get("sha256");
    auto uuid = ex.query().get("uuid");
    if (sha || uuid) {  // legacy single-record forms
      std::optional<store::FileRecord> rec;
      if (sha)
        rec = meta.get_file_by_sha(ex.project, *sha);
      else
        rec = meta.get_file_by_uuid(ex.project, *uuid);
      if (!rec) throw not_found("file not found");
      return ex.reply_json(200, file_json(*rec));
    }
    json arr = json::array();
    for (const auto& f : meta.list_files(ex.project, parse_page(ex.query())))
      arr.push_back(file_json(f));
    return ex.reply_json(200, {{"files", arr}});
  }
  if (s.size() == 2) {
    std::string key = s[1];
    std::optional<store::FileRecord> rec;
    if (is_sha256_hex(key))
      rec = meta.get_file_by_sha(ex.project, key);
    else
      rec = meta.get_file_by_uuid(ex.project, key);
    if (!rec) throw not_found(fmt::format("file not found: {}", key));
    return ex.reply_json(200, file_json(*rec));
  }
  throw not_found("no such endpoint");
}

}  // namespace coppice::api
