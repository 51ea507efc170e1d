#include "oci/http_client.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <strings.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>

#include "common/error.h"
#include "oci/net_policy.h"

namespace coppice::oci {

namespace {

std::once_flag g_curl_init;

struct SlistFree {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
struct FileClose {
  void operator()(FILE* f) const { std::fclose(f); }
};

struct UrlFree {
  void operator()(CURLU* u) const { curl_url_cleanup(u); }
};
using UrlHandle = std::unique_ptr<CURLU, UrlFree>;

std::string url_part(CURLU* u, CURLUPart part, unsigned flags = 0) {
  char* out = nullptr;
  if (curl_url_get(u, part, &out, flags) != CURLUE_OK || !out) return "";
  std::string s(out);
  curl_free(out);
  return s;
}

constexpr int kMaxRedirects = 10;

struct Transfer {
  CURL* curl = nullptr;
  bool private_ok = false;  // the hop may connect to non-public addresses
  std::string refused;      // the last address the open-socket check refused
  const BodySink* sink = nullptr;
  HttpResponse* resp = nullptr;
  size_t max_body = 0;
  const AbortCheck* abort = nullptr;
  std::exception_ptr error;  // thrown by the sink
  bool too_big = false;
  const std::string* upload = nullptr;
  size_t upload_off = 0;
};

size_t on_header(char* data, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  std::string_view line(data, size * n);
  if (line.substr(0, 5) == "HTTP/") {
    t->resp->headers.clear();  // a new response (after a redirect or 100-continue)
    return size * n;
  }
  auto colon = line.find(':');
  if (colon == std::string_view::npos) return size * n;
  std::string name(line.substr(0, colon));
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' '))
    value.remove_suffix(1);
  t->resp->headers[name] = std::string(value);
  return size * n;
}

size_t on_body(char* data, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t len = size * n;
  long code = 0;
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
  if (t->sink && code >= 200 && code < 300) {
    try {
      (*t->sink)(std::string_view(data, len));
      t->resp->streamed = true;
    } catch (...) {
      t->error = std::current_exception();
      return 0;  // aborts the transfer
    }
    return len;
  }
  size_t cap = (code >= 200 && code < 300) ? t->max_body : size_t(1) << 20;
  if (t->resp->body.size() + len > cap) {
    t->too_big = true;
    return 0;
  }
  t->resp->body.append(data, len);
  return len;
}

size_t on_upload(char* buf, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t len = std::min(size * n, t->upload->size() - t->upload_off);
  std::memcpy(buf, t->upload->data() + t->upload_off, len);
  t->upload_off += len;
  return len;
}

// Every socket libcurl opens (for each address it tries) comes through here: the one place
// where the address about to be connected is checked (net_policy.h).
curl_socket_t on_open_socket(void* ud, curlsocktype, curl_sockaddr* a) {
  auto* t = static_cast<Transfer*>(ud);
  AddressKind k = classify_address(&a->addr);
  if (k != AddressKind::kPublic && !t->private_ok) {
    char buf[INET6_ADDRSTRLEN] = "?";
    if (a->family == AF_INET)
      ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a->addr)->sin_addr, buf,
                  sizeof buf);
    else if (a->family == AF_INET6)
      ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a->addr)->sin6_addr, buf,
                  sizeof buf);
    t->refused = fmt::format("{} (a {} address)", buf, describe(k));
    return CURL_SOCKET_BAD;
  }
  return ::socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

int on_progress(void* ud, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(ud);
  return (*t->abort && (*t->abort)()) ? 1 : 0;
}

}  // namespace

struct HttpClient::Handle {
  CURL* curl = nullptr;
  ~Handle() {
    if (curl) curl_easy_cleanup(curl);
  }
};

std::string HttpResponse::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

std::string UrlParts::host_port() const {
  return fmt::format("{}:{}", host, port);
}

UrlParts parse_url(const std::string& url) {
  UrlHandle u(curl_url());
  if (!u) throw internal("curl_url failed");
  if (curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK)
    throw Error(502, fmt::format("'{}' is not a URL", url.substr(0, 200)));
  UrlParts p;
  p.scheme = url_part(u.get(), CURLUPART_SCHEME);
  for (auto& c : p.scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (p.scheme != "http" && p.scheme != "https")
    throw Error(502, fmt::format("'{}' is not an http(s) URL", url.substr(0, 200)));
  p.host = url_part(u.get(), CURLUPART_HOST);
  for (auto& c : p.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (p.host.find(':') != std::string::npos && p.host.front() != '[') p.host = "[" + p.host + "]";
  std::string port = url_part(u.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT);
  if (p.host.empty() || port.empty())
    throw Error(502, fmt::format("'{}' names no host", url.substr(0, 200)));
  p.port = std::stoi(port);
  return p;
}

std::string resolve_url(const std::string& base, const std::string& ref) {
  UrlHandle u(curl_url());
  if (!u) throw internal("curl_url failed");
  if (curl_url_set(u.get(), CURLUPART_URL, base.c_str(), 0) != CURLUE_OK ||
      curl_url_set(u.get(), CURLUPART_URL, ref.c_str(), 0) != CURLUE_OK)
    throw Error(502, fmt::format("bad redirect location '{}'", ref.substr(0, 200)));
  return url_part(u.get(), CURLUPART_URL);
}

HttpClient::HttpClient(AbortCheck abort, ConnectPolicy policy)
    : h_(std::make_unique<Handle>()), abort_(std::move(abort)), policy_(std::move(policy)) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  h_->curl = curl_easy_init();
  if (!h_->curl) throw internal("curl_easy_init failed");
}

HttpClient::~HttpClient() = default;

HttpResponse HttpClient::perform(const HttpRequest& first, const BodySink* sink) {
  HttpRequest req = first;
  UrlParts url = parse_url(req.url);
  std::optional<UrlParts> from;
  for (int hop = 0;; ++hop) {
    HopPermit permit = policy_ ? policy_(url, from ? &*from : nullptr) : HopPermit{};
    HttpResponse resp = perform_once(req, sink, url, permit);
    const long s = resp.status;
    const bool redirect = s == 301 || s == 302 || s == 303 || s == 307 || s == 308;
    std::string location = resp.header("location");
    if (!first.follow_redirects || !redirect || location.empty()) {
      resp.effective_url = req.url;
      return resp;
    }
    if (hop >= kMaxRedirects)
      throw Error(502, fmt::format("{} {}: more than {} redirects", first.method, first.url,
                                   kMaxRedirects));
    std::string next = resolve_url(req.url, location);
    UrlParts next_url = parse_url(next);
    if (!next_url.same_origin(url))  // credentials are for the origin that asked for them
      std::erase_if(req.headers, [](const std::string& h) {
        return h.size() >= 14 && strncasecmp(h.c_str(), "authorization:", 14) == 0;
      });
    if ((s == 303 && req.method != "HEAD") || ((s == 301 || s == 302) && req.method == "POST")) {
      req.method = "GET";
      req.body.clear();
      req.body_file.clear();
    }
    req.url = next;
    from = url;
    url = next_url;
  }
}

HttpResponse HttpClient::perform_once(const HttpRequest& req, const BodySink* sink,
                                      const UrlParts& url, const HopPermit& permit) {
  CURL* c = h_->curl;
  curl_easy_reset(c);
  HttpResponse resp;
  Transfer t;
  t.curl = c;
  t.private_ok = permit.private_addresses;
  t.sink = sink;
  t.resp = &resp;
  t.max_body = max_body_;
  t.abort = &abort_;

  std::unique_ptr<curl_slist, SlistFree> headers;
  for (const auto& h : req.headers) {
    curl_slist* n = curl_slist_append(headers.get(), h.c_str());
    if (!n) throw internal("curl_slist_append failed");
    (void)headers.release();
    headers.reset(n);
  }
  std::unique_ptr<FILE, FileClose> upload_file;
  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);  // perform() follows, hop by hop
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &t);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "coppice/0.1");
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
  // A stalled transfer (under 1 byte/s for 60 s) fails instead of hanging.
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
  if (req.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (!req.body_file.empty()) {
    upload_file.reset(std::fopen(req.body_file.c_str(), "rb"));
    if (!upload_file) throw sys_error("open " + req.body_file.string());
    std::error_code ec;
    auto size = std::filesystem::file_size(req.body_file, ec);
    if (ec) throw internal("size of " + req.body_file.string() + ": " + ec.message());
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READDATA, upload_file.get());
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(size));
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  } else if (req.method == "PUT" || req.method == "PATCH") {
    t.upload = &req.body;
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_upload);
    curl_easy_setopt(c, CURLOPT_READDATA, &t);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  } else if (req.method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
  } else if (req.method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }

  CURLcode rc = curl_easy_perform(c);
  if (t.error) std::rethrow_exception(t.error);
  if (rc == CURLE_ABORTED_BY_CALLBACK) throw Error(499, "cancelled");
  if (t.too_big)
    throw Error(502, fmt::format("response from {} is larger than {} bytes", req.url, max_body_));
  if (rc != CURLE_OK && !t.refused.empty())
    throw Error(403, fmt::format("{} {}: refused to connect to {}, which {} resolves to: coppiced "
                                 "connects only to public addresses unless the operator allows the "
                                 "registry (coppiced serve --allow-registry {} for https, or "
                                 "--insecure-registry {} for plain http)",
                                 req.method, req.url.substr(0, 300), t.refused, url.host,
                                 url.host_port(), url.host_port()));
  if (rc != CURLE_OK)
    throw Error(502, fmt::format("{} {}: {}", req.method, req.url, curl_easy_strerror(rc)));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  return resp;
}

std::string url_escape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

}  // namespace coppice::oci
