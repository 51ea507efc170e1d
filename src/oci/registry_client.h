// The client side of the OCI distribution protocol for one repository: the /v2/ API with
// anonymous, HTTP basic and bearer-token authentication (the WWW-Authenticate challenge Docker
// Hub, GHCR and others use), redirects to blob storage, retries with backoff on 429/5xx and
// transport errors, a pull mirror and plain-http ("insecure") registries.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "oci/http_client.h"
#include "oci/manifest.h"
#include "oci/reference.h"

namespace coppice::oci {

struct Credentials {
  std::string username, password;  // both empty = anonymous
  bool anonymous() const { return username.empty() && password.empty(); }
};

struct RegistryConfig {
  // Registries (host[:port]) spoken to over plain http. Loopback hosts (localhost, 127.0.0.0/8,
  // [::1]) always are, as in Docker's default configuration.
  std::vector<std::string> insecure;
  // Pull mirrors: registry ("docker.io") -> base URL ("http://mirror:5000"). Pulls try the
  // mirror first and fall back to the registry itself.
  std::map<std::string, std::string> mirrors;
  int max_attempts = 5;                    // per request, for 429/5xx and transport errors
  std::chrono::milliseconds backoff{200};  // doubled after each failed attempt, capped at 10 s
  bool is_insecure(const std::string& host) const;
  // "https://registry-1.docker.io", "http://127.0.0.1:5000", ...
  std::string endpoint(const std::string& registry) const;
};

class RegistryClient {
 public:
  // `push`: ask for push and pull scopes (for uploads) instead of pull only.
  RegistryClient(Reference ref, Credentials cred, const RegistryConfig& cfg, AbortCheck abort,
                 bool push = false);

  struct Document {
    std::string media_type;  // Content-Type, or the document's own mediaType
    std::string digest;      // sha256 of the bytes (verified against a pinned digest)
    std::string body;
  };
  // GET /v2/: checks the endpoint speaks the registry API and authenticates when it answers
  // with a challenge. Done once, before the first manifest or blob request.
  void ping();
  // GET /v2/<repo>/manifests/<tag or digest>. 404 -> Error 404; auth failures -> 401/403.
  Document get_manifest(const std::string& tag_or_digest);
  // Streams a blob's bytes to `sink` (following redirects to blob storage). The caller
  // verifies the digest of what it received.
  void get_blob(const Descriptor& d, const BodySink& sink);
  // A small blob (a config), verified against its digest; at most `max` bytes.
  std::string get_blob_bytes(const Descriptor& d, size_t max = 16u << 20);

  bool has_blob(const std::string& digest);
  // Monolithic upload (POST then PUT ?digest=) of a file.
  void put_blob(const std::string& digest, const std::filesystem::path& file);
  void put_blob(const std::string& digest, const std::string& data);
  // PUT /v2/<repo>/manifests/<tag>; returns the digest the registry reports.
  std::string put_manifest(const std::string& tag, const std::string& media_type,
                           const std::string& body);

  const Reference& reference() const { return ref_; }
  // The base URL currently in use (the mirror while it answers).
  const std::string& endpoint() const { return endpoints_[current_]; }

 private:
  HttpResponse send(HttpRequest req, const BodySink* sink = nullptr);
  void authenticate(const std::string& challenge);
  void upload_blob(const std::string& digest, const std::function<void(HttpRequest&)>& fill_body);
  std::string repo_url(const std::string& suffix) const;
  void sleep_abortable(std::chrono::milliseconds d);
  [[noreturn]] void fail(const std::string& what, const HttpResponse& r) const;

  Reference ref_;
  Credentials cred_;
  RegistryConfig cfg_;
  AbortCheck abort_;
  bool push_;
  HttpClient http_;
  std::vector<std::string> endpoints_;  // mirror first when configured
  size_t current_ = 0;
  std::optional<std::string> auth_;  // the Authorization header value in use
  bool pinged_ = false;              // ping() succeeded on the current endpoint
};

}  // namespace coppice::oci
