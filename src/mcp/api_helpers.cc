#include "mcp/api_helpers.h"

#include <fmt/format.h>

#include <chrono>

#include "cli/operation_follower.h"
#include "common/base64.h"
#include "common/error.h"
#include "common/ids.h"

namespace coppice::mcp {

using cli::path_segment;
using cli::query_string;

namespace {

// The image uuid a `GET /inspect/?tag=` answer names (302 with Location `<uuid>/`), or "".
std::string lookup_tag(cli::ApiClient& api, const std::string& tag) {
  auto r = api.request("GET", "/inspect/" + query_string({{"tag", tag}}));
  if (r.status == 404) return "";
  if (r.status == 302 || r.status == 301 || r.status == 307) {
    std::string loc = r.header("location");
    while (!loc.empty() && loc.back() == '/') loc.pop_back();
    return loc.substr(loc.rfind('/') + 1);
  }
  if (r.status >= 200 && r.status < 300) {
    auto j = json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("uuid")) return j["uuid"];
  }
  api.fail(r, "look up tag '" + tag + "'");
}

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

}  // namespace

std::string resolve_image(cli::ApiClient& api, const std::string& ref) {
  std::string r = ref;
  if (r.empty())
    throw bad_request("image is empty: pass an image UUID or a tag like busybox:latest");
  if (is_uuid(r)) return r;
  if (r.rfind("tag:", 0) == 0) r = r.substr(4);
  std::string uuid = lookup_tag(api, r);
  if (uuid.empty() && r.find(':') == std::string::npos) uuid = lookup_tag(api, r + ":latest");
  if (uuid.empty())
    throw not_found(fmt::format(
        "no image tagged '{}': call list_images to see the tags you have, or import_image to "
        "import it from a registry",
        r));
  return uuid;
}

json get_image_record(cli::ApiClient& api, const std::string& uuid) {
  auto r = api.request("GET", fmt::format("/inspect/{}/", path_segment(uuid)));
  if (r.status == 404)
    throw not_found(fmt::format("no image {}: call list_images to see the images you have", uuid));
  if (r.status < 200 || r.status >= 300) api.fail(r, "read image " + uuid);
  return json::parse(r.body);
}

std::string stream_bytes(const json& repr) {
  if (!repr.is_object()) return "";
  return cli::event_bytes(repr);
}

std::string text_or_base64(const std::string& bytes, bool* is_base64) {
  bool ok = valid_utf8(bytes) && bytes.find('\0') == std::string::npos;
  if (is_base64) *is_base64 = !ok;
  return ok ? bytes : "base64:" + base64_encode(bytes);
}

size_t truncate_utf8(std::string& s, size_t limit) {
  if (s.size() <= limit) return 0;
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) >> 6) == 2) --cut;
  size_t dropped = s.size() - cut;
  s.resize(cut);
  return dropped;
}

bool is_terminal(const std::string& s) {
  return s == "SUCCESS" || s == "FAILED" || s == "CANCELLED";
}

json summarize_operation(const json& op, size_t output_limit) {
  json out = {{"operation_id", op.value("uuid", "")},
              {"kind", op.value("kind", "")},
              {"state", op.value("status", "")}};
  if (op.contains("error") && !op["error"].is_null()) out["error"] = op["error"];
  const json meta = op.value("metadata", json::object());
  if (out["kind"] == "image_import") {
    if (meta.is_object() && meta.contains("registry"))
      out["registry_url"] = meta["registry"].value("url", "");
    const json res = op.value("result", json::object());
    out["result_image"] = op.value("result_image_uuid", json(nullptr));
    out["result_tag"] = res.is_object() ? res.value("tag", json(nullptr)) : json(nullptr);
    return out;
  }
  out["image"] = op.value("image_uuid", json(nullptr));
  out["result_image"] = op.value("result_image_uuid", json(nullptr));
  const json result = meta.is_object() ? meta.value("result", json(nullptr)) : json(nullptr);
  if (!result.is_object()) return out;
  const json state = result.value("state", json::object());
  out["exit_code"] = state.value("exit_code", json(nullptr));
  out["timed_out"] = state.value("timed_out", false);
  if (state.value("signal", -1) > 0) out["signal"] = state["signal"];
  std::vector<std::string> notes;
  for (const char* name : {"stdout", "stderr"}) {
    const json repr = result.value(name, json::object());
    std::string bytes = stream_bytes(repr);
    size_t dropped = truncate_utf8(bytes, output_limit);
    bool b64 = false;
    out[name] = text_or_base64(bytes, &b64);
    if (dropped)
      notes.push_back(fmt::format(
          "{} cut here: {} more bytes not shown (raise truncate_output_at, or redirect the "
          "output to a file in a non-disposable run and read it with read_file)",
          name, dropped));
    if (repr.is_object() && repr.value("truncated", false))
      notes.push_back(fmt::format(
          "{} was capped by the server at the run's truncate_output_at; run again with a larger "
          "value or write to a file",
          name));
  }
  if (!notes.empty()) out["notes"] = notes;
  const json res = result.value("resources", json::object());
  if (res.is_object() && !res.empty()) {
    json r;
    for (const char* k : {"elapsed_time", "user_cpu_time", "system_cpu_time", "max_rss"})
      if (res.contains(k)) r[k] = res[k];
    out["resources"] = r;
  }
  return out;
}

json wait_operation(cli::ApiClient& api, const std::string& op, double timeout_s,
                    const std::function<void(double, size_t)>& tick) {
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  auto deadline = t0 + std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
  auto next_tick = t0 + std::chrono::seconds(1);
  size_t bytes = 0;
  bool timed_out = false;
  auto outer = api.abort_check();
  api.set_abort([&] {
    auto now = clock::now();
    if (tick && now >= next_tick) {
      next_tick = now + std::chrono::seconds(1);
      tick(std::chrono::duration<double>(now - t0).count(), bytes);
    }
    if (now >= deadline) timed_out = true;
    return timed_out || (outer && outer());
  });
  try {
    cli::OperationFollower follower(api, op);
    follower.follow([&](const json& ev) {
      std::string type = ev.value("type", "");
      if (type == "stdout" || type == "stderr")
        bytes += cli::event_bytes(ev.value("data", json::object())).size();
    });
  } catch (const Error& e) {
    api.set_abort(outer);
    if (e.status() != 499 || !timed_out) throw;
  }
  api.set_abort(outer);
  return api.get_json(fmt::format("/operations/{}", path_segment(op)), "read operation " + op);
}

}  // namespace coppice::mcp
