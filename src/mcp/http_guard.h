// Who may talk to `coppice mcp --http`: checked on every request, before anything else.
//
// 1. Host must be exactly one of the names this server answers to: 127.0.0.1, localhost or
//    [::1] (and the listen address itself) with the port it listens on, or an operator's
//    `--allow-host HOST[:PORT]`. A DNS-rebinding page reaches us under its own name, so its
//    requests are refused here (403), even before the bearer check.
// 2. An Origin header, when present, must be exactly http://<one of those loopback names or
//    the listen address>:<port>, or an operator's `--allow-origin`; anything else, `null`
//    included, is 403. Requests without Origin (non-browser clients) pass on to step 3.
// 3. Authorization must be `Bearer <secret>`; the secret is compared in constant time
//    (over SHA-256 digests, so not even its length leaks). Missing or wrong: 401.
// Names are compared case-insensitively and exactly: no prefix or suffix matching.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace coppice::mcp {

struct HttpGuardConfig {
  std::string token;        // the bearer secret (non-empty)
  std::string listen_host;  // the address listened on ("127.0.0.1", "::1", "0.0.0.0", ...)
  unsigned short port = 0;  // the port listened on
  std::vector<std::string> extra_hosts;    // --allow-host values, Host header form
  std::vector<std::string> extra_origins;  // --allow-origin values, scheme://host[:port]
};

struct Refusal {
  int status;           // 400, 401 or 403
  std::string message;  // for the client; never contains the secret
};

class HttpGuard {
 public:
  explicit HttpGuard(HttpGuardConfig cfg);

  // nullopt when the request may proceed. `origin` is nullopt when the header is absent.
  std::optional<Refusal> check(std::string_view host, std::optional<std::string_view> origin,
                               std::string_view authorization) const;

  bool host_allowed(std::string_view host) const;
  bool origin_allowed(std::string_view origin) const;
  bool token_ok(std::string_view authorization) const;

 private:
  std::vector<std::string> hosts_;    // lower-cased
  std::vector<std::string> origins_;  // lower-cased, no trailing slash
  std::string token_digest_;          // SHA-256 of the secret
};

// The secret clients must send: the first line of `token_file` when given, else
// COPPICE_MCP_TOKEN when set, else a fresh random one of 128 bits (`generated` is then set).
// Throws Error 400 for a configured secret shorter than 16 characters.
std::string mcp_http_secret(const std::string& token_file, bool* generated);

}  // namespace coppice::mcp
