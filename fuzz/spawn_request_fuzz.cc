// Fuzzes the parsing of spawn requests (POST /v1/instances, engine/spawn_request.h): the input
// is the request body, and also a path for the two path normalizers.
//
// Oracles:
//  * a body is refused only with a 4xx coppice::Error (anything else is a 500);
//  * an accepted request carries no NUL byte into what reaches the kernel as a C string
//    (argv, environment, cwd, hostname, file paths; image, runtime and file uuids are only
//    looked up, never passed on);
//  * its echo (the operation's metadata) serializes, and parsing the echo again gives the
//    same echo (the metadata describes a request the server accepts, with the same meaning);
//  * the raw input, as a path, normalizes canonically and idempotently (sandbox paths and tar
//    member names).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "engine/spawn_request.h"
#include "oci/layer_unpack.h"
#include "oracle.h"

using coppice::engine::SpawnLimits;
using coppice::engine::SpawnRequest;
using coppice::fuzz::finding;
using json = nlohmann::json;

namespace {

void no_nul(const std::string& s, const char* what) {
  if (s.find('\0') != std::string::npos)
    finding(std::string("accepted spawn request has a NUL byte in ") + what + ": " +
            json(s).dump());
}

void check_accepted(const SpawnRequest& r) {
  for (const auto& a : r.argv()) no_nul(a, "argv");
  for (const auto& [k, v] : r.env) {
    no_nul(k, "an env name");
    if (v) no_nul(*v, "an env value");
  }
  no_nul(r.cwd, "cwd");
  no_nul(r.hostname, "hostname");
  for (const auto& [p, f] : r.files) no_nul(p, "a file path");
}

// The raw input as a path: the sandbox path normalizer (cwd, file injection targets) and the
// tar member name normalizer (oci/layer_unpack.h). Both results are canonical (no empty, "."
// or ".." component, no leading or trailing slash but the sandbox path's leading one) and
// normalizing them again changes nothing.
void check_path_normalizers(const std::string& p) {
  std::string s;
  if (coppice::fuzz::only_client_errors("normalize_sandbox_path", [&] {
        s = coppice::engine::normalize_sandbox_path(p, "path");
      })) {
    if (s.empty() || s[0] != '/' || (s.size() > 1 && s.back() == '/') ||
        s.find("//") != std::string::npos || s.find("/./") != std::string::npos ||
        s.find("/../") != std::string::npos || s.ends_with("/.") || s.ends_with("/.."))
      finding("normalize_sandbox_path(" + json(p).dump() + ") = " + json(s).dump());
    if (coppice::engine::normalize_sandbox_path(s, "path") != s)
      finding("normalize_sandbox_path is not idempotent on " + json(s).dump());
  }
  std::string m;
  if (coppice::fuzz::only_client_errors("normalize_member_name",
                                        [&] { m = coppice::oci::normalize_member_name(p); })) {
    std::string framed = "/" + m + "/";
    if (!m.empty() &&
        (m[0] == '/' || m.back() == '/' || framed.find("//") != std::string::npos ||
         framed.find("/./") != std::string::npos || framed.find("/../") != std::string::npos))
      finding("normalize_member_name(" + json(p).dump() + ") = " + json(m).dump());
    if (coppice::oci::normalize_member_name(m) != m)
      finding("normalize_member_name is not idempotent on " + json(m).dump());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size <= 8192) check_path_normalizers(std::string(reinterpret_cast<const char*>(data), size));
  json body = json::parse(std::string_view(reinterpret_cast<const char*>(data), size), nullptr,
                          /*allow_exceptions=*/false);
  if (body.is_discarded()) return 0;
  SpawnLimits limits;
  SpawnRequest req;
  if (!coppice::fuzz::only_client_errors("parse_spawn_request",
                                         [&] { req = parse_spawn_request(body, limits); }))
    return 0;
  check_accepted(req);
  json echo = req.to_json();
  std::string dumped = echo.dump();
  SpawnRequest again;
  if (!coppice::fuzz::only_client_errors("parse_spawn_request(echo)",
                                         [&] { again = parse_spawn_request(echo, limits); }))
    finding("the echo of an accepted spawn request is refused: " + dumped);
  if (again.to_json() != echo)
    finding("the echo of a spawn request changes when parsed again: " + dumped + " became " +
            again.to_json().dump());
  return 0;
}
