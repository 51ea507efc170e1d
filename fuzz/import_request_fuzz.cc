// Fuzzes the parsing of image import and push requests (POST /v1/images/import and the push
// extension, engine/import_request.h) and of the image references they carry
// (oci/reference.h): the input is the request body.
//
// Oracles:
//  * a body is refused only with a 4xx coppice::Error (anything else is a 500);
//  * an accepted request's echo serializes and parses again to the same echo;
//  * a parsed reference's canonical form parses to the same reference;
//  * the password never appears in the echo.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <type_traits>

#include "engine/import_request.h"
#include "oci/reference.h"
#include "oracle.h"

using coppice::fuzz::finding;
using coppice::fuzz::only_client_errors;
using coppice::oci::Reference;
using json = nlohmann::json;

namespace {

constexpr int64_t kMaxTimeout = 3600;

void same_reference(const Reference& ref) {
  std::string canon = ref.str();
  Reference again;
  if (!only_client_errors("parse_reference(str())",
                          [&] { again = coppice::oci::parse_reference(canon); }))
    finding("the canonical form of a reference is refused: " + json(canon).dump());
  if (again.registry != ref.registry || again.repository != ref.repository ||
      again.tag != ref.tag || again.digest != ref.digest)
    finding("the canonical form of a reference parses differently: " + json(canon).dump() +
            " became " + json(again.str()).dump());
}

void no_password(const json& echo) {
  if (!echo.contains("registry") || !echo["registry"].contains("credentials")) return;
  const json& reg = echo["registry"];
  const json& pw = reg["credentials"].at("password");
  if (pw != "" && pw != "<MASKED>") finding("the echo shows the password: " + echo.dump());
}

template <typename Req, typename Parse>
void check(const json& body, const char* what, Parse parse) {
  Req req;
  if (!only_client_errors(what, [&] { req = parse(body); })) return;
  json echo = req.to_json();
  std::string dumped = echo.dump();
  no_password(echo);
  Req again;
  if (!only_client_errors(what, [&] { again = parse(echo); }))
    finding(std::string("the echo of an accepted ") + what + " is refused: " + dumped);
  if (again.to_json() != echo)
    finding(std::string("the echo of a ") + what + " changes when parsed again: " + dumped +
            " became " + again.to_json().dump());
  if constexpr (std::is_same_v<Req, coppice::engine::ImportRequest>) {
    if (req.ref) same_reference(*req.ref);
  } else {
    same_reference(req.ref);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // A bare reference too (what `coppice images import REF` and the MCP tools pass on).
  if (size <= 2048) {
    Reference ref;
    if (only_client_errors("parse_reference", [&] { ref = coppice::oci::parse_reference(in); }))
      same_reference(ref);
  }
  json body = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return 0;
  check<coppice::engine::ImportRequest>(body, "import request", [](const json& b) {
    return coppice::engine::parse_import_request(b, kMaxTimeout);
  });
  check<coppice::engine::PushRequest>(body, "push request", [](const json& b) {
    return coppice::engine::parse_push_request(b, kMaxTimeout);
  });
  return 0;
}
