#include "mcp/http_guard.h"

#include <fmt/format.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "common/error.h"
#include "common/ids.h"
#include "common/sha256.h"

namespace coppice::mcp {

namespace {

std::string lower(std::string_view s) {
  std::string o(s);
  for (auto& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return std::string(s);
}

bool wildcard(const std::string& h) {
  return h.empty() || h == "0.0.0.0" || h == "::" || h == "[::]";
}

}  // namespace

HttpGuard::HttpGuard(HttpGuardConfig cfg) : token_digest_(sha256_hex(cfg.token)) {
  if (cfg.token.empty()) throw internal("the MCP HTTP transport needs a bearer secret");
  std::vector<std::string> names = {"127.0.0.1", "localhost", "[::1]"};
  std::string listen = lower(cfg.listen_host);
  if (listen.find(':') != std::string::npos && listen.front() != '[') listen = "[" + listen + "]";
  if (!wildcard(cfg.listen_host) && std::find(names.begin(), names.end(), listen) == names.end())
    names.push_back(listen);
  for (const auto& n : names) {
    hosts_.push_back(fmt::format("{}:{}", n, cfg.port));
    if (cfg.port == 80) hosts_.push_back(n);  // the default port may be left out
    origins_.push_back(fmt::format("http://{}:{}", n, cfg.port));
    if (cfg.port == 80) origins_.push_back("http://" + n);
  }
  for (const auto& h : cfg.extra_hosts) hosts_.push_back(lower(trim(h)));
  for (auto o : cfg.extra_origins) {
    o = lower(trim(o));
    while (!o.empty() && o.back() == '/') o.pop_back();
    origins_.push_back(o);
  }
}

bool HttpGuard::host_allowed(std::string_view host) const {
  std::string h = lower(trim(host));
  return std::find(hosts_.begin(), hosts_.end(), h) != hosts_.end();
}

bool HttpGuard::origin_allowed(std::string_view origin) const {
  std::string o = lower(trim(origin));
  return std::find(origins_.begin(), origins_.end(), o) != origins_.end();
}

bool HttpGuard::token_ok(std::string_view authorization) const {
  std::string_view a = authorization;
  while (!a.empty() && a.front() == ' ') a.remove_prefix(1);
  if (a.size() < 7 || lower(a.substr(0, 7)) != "bearer ") return false;
  std::string given = trim(a.substr(7));
  std::string d = sha256_hex(given);
  return CRYPTO_memcmp(d.data(), token_digest_.data(), d.size()) == 0;
}

std::optional<Refusal> HttpGuard::check(std::string_view host,
                                        std::optional<std::string_view> origin,
                                        std::string_view authorization) const {
  if (trim(host).empty()) return Refusal{400, "a Host header is required"};
  if (!host_allowed(host))
    return Refusal{403, fmt::format("Host {} is not one this server answers to (DNS rebinding?); "
                                    "an operator may add it with --allow-host",
                                    trim(host).substr(0, 200))};
  if (origin && !origin_allowed(*origin))
    return Refusal{403, fmt::format("Origin {} is not allowed; an operator may add it with "
                                    "--allow-origin",
                                    trim(*origin).substr(0, 200))};
  if (!token_ok(authorization))
    return Refusal{401, authorization.empty()
                            ? "authentication required: send Authorization: Bearer <secret> (the "
                              "secret coppice mcp printed at start, or COPPICE_MCP_TOKEN)"
                            : "the bearer secret is wrong"};
  return std::nullopt;
}

std::string mcp_http_secret(const std::string& token_file, bool* generated) {
  *generated = false;
  std::string secret, from;
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in) throw bad_request(fmt::format("--auth-token-file {}: cannot read it", token_file));
    std::getline(in, secret);
    secret = trim(secret);
    from = "--auth-token-file " + token_file;
  } else if (const char* env = std::getenv("COPPICE_MCP_TOKEN"); env && *env) {
    secret = trim(env);
    from = "COPPICE_MCP_TOKEN";
  } else {
    *generated = true;
    return random_hex(16);
  }
  if (secret.size() < 16)
    throw bad_request(fmt::format("{}: the bearer secret must have at least 16 characters", from));
  if (secret.find_first_of(" \t\r\n") != std::string::npos)
    throw bad_request(fmt::format("{}: the bearer secret must not contain spaces", from));
  return secret;
}

}  // namespace coppice::mcp
