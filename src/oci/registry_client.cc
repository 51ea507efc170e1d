#include "oci/registry_client.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "common/base64.h"
#include "common/error.h"
#include "common/sha256.h"
#include "oci/net_policy.h"

namespace coppice::oci {

using json = nlohmann::json;

namespace {

std::vector<HostPort> entries(const std::vector<std::string>& list) {
  std::vector<HostPort> out;
  for (const auto& e : list)
    if (auto hp = parse_host_port(e)) out.push_back(*hp);
  return out;
}

bool any_matches(const std::vector<std::string>& list, const std::string& host,
                 std::optional<int> port) {
  for (const auto& e : entries(list))
    if (host_matches(e, host, port)) return true;
  return false;
}

// The mirror URL whose host and port these are, if any.
const std::string* mirror_at(const std::map<std::string, std::string>& mirrors,
                             const std::string& host, int port) {
  for (const auto& [_, url] : mirrors) {
    try {
      UrlParts u = parse_url(url);
      if (u.host == host && u.port == port) return &url;
    } catch (const Error&) {
    }
  }
  return nullptr;
}

// Parses `Bearer realm="…",service="…",scope="…"` (or Basic …) into scheme + parameters.
std::pair<std::string, std::map<std::string, std::string>> parse_challenge(const std::string& h) {
  std::map<std::string, std::string> params;
  size_t sp = h.find(' ');
  std::string scheme = h.substr(0, sp);
  for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t i = sp == std::string::npos ? h.size() : sp + 1;
  while (i < h.size()) {
    while (i < h.size() && (h[i] == ' ' || h[i] == ',')) ++i;
    size_t eq = h.find('=', i);
    if (eq == std::string::npos) break;
    std::string key = h.substr(i, eq - i);
    for (auto& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value;
    i = eq + 1;
    if (i < h.size() && h[i] == '"') {
      ++i;
      while (i < h.size() && h[i] != '"') {
        if (h[i] == '\\' && i + 1 < h.size()) ++i;
        value += h[i++];
      }
      ++i;
    } else {
      size_t end = h.find(',', i);
      if (end == std::string::npos) end = h.size();
      value = h.substr(i, end - i);
      i = end;
    }
    params[key] = value;
  }
  return {scheme, params};
}

bool retryable(long status) {
  return status == 429 || status == 408 || status >= 500;
}

}  // namespace

void RegistryConfig::validate() const {
  for (const auto& [flag, list] :
       {std::pair{"--insecure-registry", &insecure}, std::pair{"--allow-registry", &allowed}})
    for (const auto& e : *list)
      if (!parse_host_port(e))
        throw Error(400, fmt::format("{} {}: want HOST or HOST:PORT (no scheme, no path), e.g. "
                                     "127.0.0.1:5000",
                                     flag, e));
  for (const auto& [registry, url] : mirrors) {
    try {
      parse_url(url);
    } catch (const Error&) {
      throw Error(400, fmt::format("--registry-mirror {}={}: the mirror must be an http(s) URL",
                                   registry, url));
    }
  }
}

bool RegistryConfig::is_insecure(const std::string& registry) const {
  auto hp = parse_host_port(registry);
  return hp && any_matches(insecure, hp->host, hp->port);
}

bool RegistryConfig::plain_http_ok(const std::string& host, int port) const {
  if (any_matches(insecure, host, port)) return true;
  const std::string* m = mirror_at(mirrors, host, port);
  return m && parse_url(*m).scheme == "http";
}

bool RegistryConfig::private_ok(const std::string& host, int port) const {
  return any_matches(insecure, host, port) || any_matches(allowed, host, port) ||
         mirror_at(mirrors, host, port) != nullptr;
}

std::string RegistryConfig::endpoint(const std::string& registry) const {
  std::string host = registry == "docker.io" ? "registry-1.docker.io" : registry;
  return (is_insecure(registry) ? "http://" : "https://") + host;
}

RegistryClient::RegistryClient(Reference ref, Credentials cred, const RegistryConfig& cfg,
                               AbortCheck abort, bool push)
    : ref_(std::move(ref)),
      cred_(std::move(cred)),
      cfg_(cfg),
      abort_(std::move(abort)),
      push_(push),
      http_(abort_, [this](const UrlParts& u, const UrlParts* from) { return permit(u, from); }) {
  http_.set_max_body(4u << 20);  // manifests and error documents; blobs stream to sinks
  if (!push_) {
    auto m = cfg_.mirrors.find(ref_.registry);
    if (m != cfg_.mirrors.end()) {
      std::string base = m->second;
      while (!base.empty() && base.back() == '/') base.pop_back();
      endpoints_.push_back(base);
    }
  }
  endpoints_.push_back(cfg_.endpoint(ref_.registry));
}

std::string RegistryClient::repo_url(const std::string& suffix) const {
  return fmt::format("{}/v2/{}/{}", endpoint(), ref_.repository, suffix);
}

void RegistryClient::sleep_abortable(std::chrono::milliseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) {
    if (abort_ && abort_()) throw Error(499, "cancelled");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

HopPermit RegistryClient::permit(const UrlParts& url, const UrlParts* from) const {
  // Plain http: to hosts the operator named, and to what a plain-http registry (or hop) sends
  // us to (its redirects, realm, upload locations are no less exposed than it is); never as a
  // downgrade from https.
  const bool plain_registry = endpoint().rfind("http://", 0) == 0;
  if (url.scheme == "http" && !cfg_.plain_http_ok(url.host, url.port) &&
      !(from ? from->scheme == "http" : plain_registry))
    throw Error(
        403,
        fmt::format("refusing plain http to {}{}: coppiced speaks plain http only to "
                    "registries the operator names with --insecure-registry",
                    url.host_port(),
                    from ? fmt::format(" (a redirect from https://{})", from->host_port()) : ""));
  return HopPermit{cfg_.private_ok(url.host, url.port)};
}

std::string RegistryClient::excerpt(const HttpResponse& r) const {
  std::string text;
  json j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("errors") && j["errors"].is_array()) {
    for (const auto& e : j["errors"]) {
      if (!e.is_object()) continue;
      std::string one = e.value("code", "");
      if (e.contains("message") && e["message"].is_string())
        one += (one.empty() ? "" : ": ") + e["message"].get<std::string>();
      if (!one.empty()) text += (text.empty() ? "" : "; ") + one;
    }
  } else if (r.body.find("<html") != std::string::npos ||
             r.body.find("<HTML") != std::string::npos) {
    text = "";  // an HTML error page says nothing useful in one line
  } else {
    text = r.body.substr(0, 4096);
  }
  std::vector<std::string> secrets;
  if (!cred_.password.empty()) {
    secrets.push_back(cred_.password);
    secrets.push_back(base64_encode(cred_.username + ":" + cred_.password));
  }
  if (auth_) {
    auto sp = auth_->find(' ');
    if (sp != std::string::npos) secrets.push_back(auth_->substr(sp + 1));
  }
  for (const auto& secret : secrets) {
    if (secret.size() < 3) continue;
    for (size_t p = text.find(secret); p != std::string::npos; p = text.find(secret, p + 8))
      text.replace(p, secret.size(), "<MASKED>");
  }
  std::string out;
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    char shown = (u < 0x20 || u >= 0x7f) ? ' ' : c;  // printable ASCII only
    if (shown == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += shown;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  constexpr size_t kMax = 200;
  if (out.size() > kMax) out = out.substr(0, kMax) + "...";
  return out;
}

void RegistryClient::authenticate(const std::string& challenge) {
  auto [scheme, params] = parse_challenge(challenge);
  if (scheme == "basic") {
    if (cred_.anonymous())
      throw Error(401, fmt::format("registry {} requires credentials", ref_.registry));
    auth_ = "Basic " + base64_encode(cred_.username + ":" + cred_.password);
    return;
  }
  if (scheme != "bearer" || params["realm"].empty())
    throw Error(502, fmt::format("registry {} sent an unsupported authentication challenge: {}",
                                 ref_.registry, challenge));
  std::string url = params["realm"];
  if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0)
    throw Error(502, fmt::format("token realm {} is not an http(s) URL", url));
  std::string scope =
      fmt::format("repository:{}:{}", ref_.repository, push_ ? "pull,push" : "pull");
  std::vector<std::string> q;
  if (!params["service"].empty()) q.push_back("service=" + url_escape(params["service"]));
  q.push_back("scope=" + url_escape(scope));
  url += (url.find('?') == std::string::npos ? "?" : "&");
  for (size_t i = 0; i < q.size(); ++i) url += (i ? "&" : "") + q[i];
  HttpRequest req;
  req.url = url;
  if (!cred_.anonymous())
    req.headers.push_back("Authorization: Basic " +
                          base64_encode(cred_.username + ":" + cred_.password));
  HttpResponse r;
  for (int attempt = 1;; ++attempt) {
    r = http_.perform(req);
    if (!retryable(r.status) || attempt >= cfg_.max_attempts) break;
    sleep_abortable(cfg_.backoff * (1 << std::min(attempt - 1, 6)));
  }
  if (r.status == 401 || r.status == 403)
    throw Error(401, fmt::format("the token service of {} refused the credentials{}", ref_.registry,
                                 cred_.anonymous() ? " (anonymous)" : ""));
  if (r.status != 200)
    throw Error(502, fmt::format("token service {} answered {}", params["realm"], r.status));
  json j = json::parse(r.body, nullptr, false);
  std::string token;
  if (j.is_object()) {
    if (j.contains("token") && j["token"].is_string()) token = j["token"].get<std::string>();
    if (token.empty() && j.contains("access_token") && j["access_token"].is_string())
      token = j["access_token"].get<std::string>();
  }
  if (token.empty()) throw Error(502, "the token service answered without a token");
  auth_ = "Bearer " + token;
}

HttpResponse RegistryClient::send(HttpRequest req, const BodySink* sink, bool with_auth) {
  bool authed_now = !with_auth;
  for (int attempt = 1;; ++attempt) {
    if (abort_ && abort_()) throw Error(499, "cancelled");
    HttpRequest r = req;
    if (auth_ && with_auth) r.headers.push_back("Authorization: " + *auth_);
    HttpResponse resp;
    try {
      resp = http_.perform(r, sink);
    } catch (const Error& e) {
      if (e.status() != 502 || attempt >= cfg_.max_attempts) throw;
      // A transport error after body bytes reached the sink cannot be replayed here.
      spdlog::warn("registry {}: {} (attempt {}/{})", ref_.registry, e.what(), attempt,
                   cfg_.max_attempts);
      sleep_abortable(cfg_.backoff * (1 << std::min(attempt - 1, 6)));
      continue;
    }
    if (resp.status == 401 && !authed_now) {
      std::string ch = resp.header("www-authenticate");
      if (ch.empty()) throw Error(401, fmt::format("registry {} refused access", ref_.registry));
      authenticate(ch);
      authed_now = true;
      --attempt;
      continue;
    }
    if (retryable(resp.status) && !resp.streamed && attempt < cfg_.max_attempts) {
      auto wait = cfg_.backoff * (1 << std::min(attempt - 1, 6));
      if (auto ra = resp.header("retry-after"); !ra.empty()) {
        try {
          wait = std::chrono::seconds(std::stoi(ra));
        } catch (...) {
        }
      }
      wait = std::min<std::chrono::milliseconds>(wait, std::chrono::seconds(10));
      spdlog::warn("registry {} answered {} to {} (attempt {}/{})", ref_.registry, resp.status,
                   req.url, attempt, cfg_.max_attempts);
      sleep_abortable(wait);
      continue;
    }
    return resp;
  }
}

void RegistryClient::fail(const std::string& what, const HttpResponse& r) const {
  std::string detail = excerpt(r);
  std::string msg = fmt::format("{}: registry {} answered {}{}{}", what, ref_.registry, r.status,
                                detail.empty() ? "" : ": ", detail);
  if (r.status == 404)
    throw not_found(fmt::format("{} not found: registry {} answered 404{}{}", what, ref_.registry,
                                detail.empty() ? "" : ": ", detail));
  if (r.status == 401 || r.status == 403) throw Error(static_cast<int>(r.status), msg);
  throw Error(502, msg);
}

void RegistryClient::ping() {
  if (pinged_) return;
  HttpRequest req;
  req.url = endpoint() + "/v2/";
  // send() answers a 401 challenge by authenticating for this repository's scope.
  HttpResponse r = send(req);
  if (r.status == 404)
    throw Error(502,
                fmt::format("{} does not serve the registry API (/v2/ answered 404)", endpoint()));
  if (r.status != 200) fail("registry API check (/v2/)", r);
  pinged_ = true;
}

RegistryClient::Document RegistryClient::get_manifest(const std::string& tag_or_digest) {
  for (;;) {
    try {
      ping();
      HttpRequest req;
      req.url = repo_url("manifests/" + tag_or_digest);
      req.headers.push_back(std::string("Accept: ") + media::kAcceptManifests);
      HttpResponse r = send(req);
      if (r.status != 200) fail(fmt::format("manifest {}", ref_.str()), r);
      Document d;
      d.body = std::move(r.body);
      d.digest = "sha256:" + sha256_hex(d.body);
      if (is_digest(tag_or_digest) && d.digest != tag_or_digest)
        throw unprocessable(
            fmt::format("manifest digest mismatch: asked for {}, got {}", tag_or_digest, d.digest));
      json body = json::parse(d.body, nullptr, false);
      if (body.is_discarded()) throw unprocessable("the manifest is not valid JSON");
      d.media_type = manifest_media_type(r.header("content-type"), body);
      return d;
    } catch (const Error& e) {
      // A mirror that cannot serve the manifest is skipped for the rest of this pull.
      if (current_ + 1 >= endpoints_.size() || e.status() == 499) throw;
      spdlog::warn("mirror {} failed for {}: {}; using the registry", endpoint(), ref_.str(),
                   e.what());
      ++current_;
      auth_.reset();
      pinged_ = false;
    }
  }
}

void RegistryClient::get_blob(const Descriptor& d, const BodySink& sink) {
  HttpRequest req;
  req.url = repo_url("blobs/" + d.digest);
  HttpResponse r = send(req, &sink);
  if (r.status != 200) fail(fmt::format("blob {}", d.digest), r);
}

std::string RegistryClient::get_blob_bytes(const Descriptor& d, size_t max) {
  if (d.size < 0 || static_cast<size_t>(d.size) > max)
    throw unprocessable(fmt::format("blob {} is larger than {} bytes", d.digest, max));
  std::string data;
  BodySink sink = [&](std::string_view chunk) {
    if (data.size() + chunk.size() > max)
      throw unprocessable(fmt::format("blob {} is larger than {} bytes", d.digest, max));
    data.append(chunk);
  };
  get_blob(d, sink);
  if ("sha256:" + sha256_hex(data) != d.digest)
    throw unprocessable(fmt::format("digest mismatch for blob {}", d.digest));
  return data;
}

bool RegistryClient::has_blob(const std::string& digest) {
  ping();
  HttpRequest req;
  req.method = "HEAD";
  req.url = repo_url("blobs/" + digest);
  HttpResponse r = send(req);
  if (r.status == 200) return true;
  if (r.status == 404) return false;
  fail(fmt::format("blob {}", digest), r);
}

void RegistryClient::upload_blob(const std::string& digest,
                                 const std::function<void(HttpRequest&)>& fill_body) {
  HttpRequest start;
  start.method = "POST";
  start.url = repo_url("blobs/uploads/");
  HttpResponse r = send(start);
  if (r.status == 201) return;  // the registry already has it
  if (r.status != 202) fail(fmt::format("starting the upload of {}", digest), r);
  std::string loc = r.header("location");
  if (loc.empty()) throw Error(502, "the registry did not say where to upload");
  loc = resolve_url(start.url, loc);
  // The upload location passes the same policy as any URL (HttpClient); the registry's token
  // goes there only while it stays on the registry's origin.
  const bool same_origin = parse_url(loc).same_origin(parse_url(endpoint()));
  loc += (loc.find('?') == std::string::npos ? "?" : "&");
  loc += "digest=" + url_escape(digest);
  HttpRequest upload;
  upload.method = "PUT";
  upload.url = loc;
  upload.headers.push_back("Content-Type: application/octet-stream");
  fill_body(upload);
  HttpResponse done = send(upload, nullptr, same_origin);
  if (done.status != 201 && done.status != 204) fail(fmt::format("uploading {}", digest), done);
}

void RegistryClient::put_blob(const std::string& digest, const std::filesystem::path& file) {
  upload_blob(digest, [&](HttpRequest& r) { r.body_file = file; });
}

void RegistryClient::put_blob(const std::string& digest, const std::string& data) {
  upload_blob(digest, [&](HttpRequest& r) { r.body = data; });
}

std::string RegistryClient::put_manifest(const std::string& tag, const std::string& media_type,
                                         const std::string& body) {
  HttpRequest req;
  req.method = "PUT";
  req.url = repo_url("manifests/" + tag);
  req.headers.push_back("Content-Type: " + media_type);
  req.body = body;
  HttpResponse r = send(req);
  if (r.status != 201 && r.status != 200) fail(fmt::format("manifest {}", ref_.str()), r);
  std::string d = r.header("docker-content-digest");
  return d.empty() ? "sha256:" + sha256_hex(body) : d;
}

}  // namespace coppice::oci
