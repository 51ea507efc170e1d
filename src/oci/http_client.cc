#include "oci/http_client.h"

#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>

#include "common/error.h"

namespace coppice::oci {

namespace {

std::once_flag g_curl_init;

struct SlistFree {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
struct FileClose {
  void operator()(FILE* f) const { std::fclose(f); }
};

struct Transfer {
  CURL* curl = nullptr;
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

HttpClient::HttpClient(AbortCheck abort)
    : h_(std::make_unique<Handle>()), abort_(std::move(abort)) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  h_->curl = curl_easy_init();
  if (!h_->curl) throw internal("curl_easy_init failed");
}

HttpClient::~HttpClient() = default;

HttpResponse HttpClient::perform(const HttpRequest& req, const BodySink* sink) {
  CURL* c = h_->curl;
  curl_easy_reset(c);
  HttpResponse resp;
  Transfer t;
  t.curl = c;
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
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, req.follow_redirects ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
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
  if (rc != CURLE_OK)
    throw Error(502, fmt::format("{} {}: {}", req.method, req.url, curl_easy_strerror(rc)));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  char* eff = nullptr;
  if (curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff)
    resp.effective_url = eff;
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
