// The client side of the OCI distribution protocol for one repository: the /v2/ API with
// anonymous, HTTP basic and bearer-token authentication (the WWW-Authenticate challenge Docker
// Hub, GHCR and others use), redirects to blob storage, retries with backoff on 429/5xx and
// transport errors, a pull mirror and plain-http ("insecure") registries.
//
// Every connection (the registry, its redirects, the bearer realm, upload locations) passes the
// operator's policy (net_policy.h): public addresses only unless the host was allowed; plain
// http only to --insecure-registry hosts and to URLs a plain-http registry or hop sends us to
// (never an https → http downgrade). Credentials: basic credentials go to the registry and to its
// bearer realm (wherever that is, as Docker does) but only over https or to an --insecure-registry
// host, since a plain-http realm is refused otherwise; the registry's token is sent on redirects
// and upload locations only while they stay on the registry's origin. Error bodies reach messages
// only as a short printable excerpt with the credentials masked.
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
  // --insecure-registry: hosts (HOST or HOST:PORT, matched exactly) spoken to over plain http,
  // and allowed at any address (loopback, private, ...). Nothing is insecure by default, not
  // even loopback: a local registry must be named.
  std::vector<std::string> insecure;
  // --allow-registry: hosts allowed at any address, still over https.
  std::vector<std::string> allowed;
  // Pull mirrors: registry ("docker.io") -> base URL ("http://mirror:5000"). Pulls try the
  // mirror first and fall back to the registry itself.
  std::map<std::string, std::string> mirrors;
  int max_attempts = 5;                    // per request, for 429/5xx and transport errors
  std::chrono::milliseconds backoff{200};  // doubled after each failed attempt, capped at 10 s
  // Throws Error 400 naming the flag for an entry that is not HOST[:PORT] or a bad mirror.
  void validate() const;
  // A reference's registry ("127.0.0.1:5000", "ghcr.io") is reached over plain http.
  bool is_insecure(const std::string& registry) const;
  // A hop to host:port may use plain http / may connect to non-public addresses: it is an
  // --insecure-registry (either), an --allow-registry (addresses), or a mirror's URL (its
  // scheme; addresses).
  bool plain_http_ok(const std::string& host, int port) const;
  bool private_ok(const std::string& host, int port) const;
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
  // `with_auth`: add the Authorization in use and answer a 401 challenge (false for a URL
  // off the registry's origin).
  HttpResponse send(HttpRequest req, const BodySink* sink = nullptr, bool with_auth = true);
  HopPermit permit(const UrlParts& url, const UrlParts* from) const;
  // A short printable excerpt of an error body, credentials masked.
  std::string excerpt(const HttpResponse& r) const;
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
