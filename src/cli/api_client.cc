#include "cli/api_client.h"

#include <fmt/format.h>

#include <cctype>

#include "cli/interrupt.h"
#include "cli/log.h"
#include "common/error.h"

namespace coppice::cli {

namespace {

std::string escape(std::string_view s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/'))
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

std::string shorten(std::string_view s, size_t max = 2000) {
  if (s.size() <= max) return std::string(s);
  return fmt::format("{}… ({} bytes)", s.substr(0, max), s.size());
}

// The server's message from a ConTree error body {"error": …}, else the raw body.
std::string server_message(const HttpResponse& r) {
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error")) {
    const auto& e = j["error"];
    return e.is_string() ? e.get<std::string>() : e.dump();
  }
  std::string body = r.body;
  while (!body.empty() && std::isspace(static_cast<unsigned char>(body.back()))) body.pop_back();
  if (body.empty()) return "no details from the server";
  return shorten(body, 300);
}

}  // namespace

std::string query_string(const Query& q) {
  std::string out;
  for (const auto& [k, v] : q) {
    out += out.empty() ? '?' : '&';
    out += escape(k, false) + "=" + escape(v, true);
  }
  return out;
}

std::string path_segment(std::string_view s) {
  return escape(s, false);
}

ApiClient::ApiClient(std::string base_url, std::string token)
    : base_(std::move(base_url)), token_(std::move(token)), http_([this] {
        if (aborted()) return true;
        if (deadline_ && std::chrono::steady_clock::now() > *deadline_) {
          deadline_hit_ = true;
          return true;
        }
        return false;
      }) {
  while (!base_.empty() && base_.back() == '/') base_.pop_back();
  bool scheme = base_.rfind("http://", 0) == 0 || base_.rfind("https://", 0) == 0;
  std::string_view rest = base_;
  rest.remove_prefix(scheme ? base_.find("://") + 3 : 0);
  if (!scheme || rest.empty() || rest.front() == '/' || rest.front() == ':')
    throw bad_request(fmt::format(
        "invalid server URL '{}': it must look like http://HOST[:PORT][/PREFIX]", base_));
}

HttpResponse ApiClient::request(const std::string& method, const std::string& path,
                                const std::string& body, std::vector<std::string> headers,
                                const BodySink* sink) {
  HttpRequest req;
  req.method = method;
  req.url = base_ + "/v1" + path;
  req.headers = std::move(headers);
  if (!token_.empty()) req.headers.push_back("Authorization: Bearer " + token_);
  req.headers.push_back("Expect:");  // no 100-continue round trip for large bodies
  req.body = body;
  auto t0 = std::chrono::steady_clock::now();
  bool json_body = !body.empty() && (body.front() == '{' || body.front() == '[');
  log_debug("> {} {}{}", method, req.url,
            body.empty() ? ""
            : json_body  ? " " + shorten(body)
                         : fmt::format(" ({} bytes)", body.size()));
  deadline_hit_ = false;
  HttpResponse r;
  try {
    r = http_.perform(req, sink);
  } catch (const Error& e) {
    if (e.status() == 499 && deadline_hit_)
      throw Error(504, fmt::format("{} {}: no answer in time", method, req.url));
    if (e.status() == 499) throw Error(499, "interrupted");
    if (e.status() == 502)
      throw Error(502, fmt::format("cannot reach the server at {}: {} (is it running? check the "
                                   "URL with `coppice auth list`)",
                                   base_, e.what()));
    throw;
  }
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0);
  log_debug("< {} {} {}: {} bytes{} in {:.1f} ms {}", r.status, method, req.url, r.body.size(),
            r.streamed ? " (streamed)" : "", ms.count(),
            r.header("content-type").rfind("application/json", 0) == 0 ? shorten(r.body) : "");
  return r;
}

void ApiClient::fail(const HttpResponse& r, const std::string& what) const {
  std::string hint;
  if (r.status == 401)
    hint = "; the token was refused: store a valid one with `coppice auth --url URL --token TOKEN`";
  else if (r.status == 403)
    hint = "; the token lacks this permission";
  else if (r.status == 429)
    hint = "; the server is busy, try again shortly";
  throw Error(static_cast<int>(r.status),
              fmt::format("{}: {} (HTTP {}){}", what, server_message(r), r.status, hint));
}

nlohmann::json ApiClient::get_json(const std::string& path, const std::string& what) {
  auto r = request("GET", path);
  if (r.status < 200 || r.status >= 300) fail(r, what);
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_discarded()) throw Error(502, what + ": the server answered with invalid JSON");
  return j;
}

nlohmann::json ApiClient::send_json(const std::string& method, const std::string& path,
                                    const nlohmann::json& body, const std::string& what) {
  auto r =
      request(method, path, body.is_null() ? "" : body.dump(), {"Content-Type: application/json"});
  if (r.status < 200 || r.status >= 300) fail(r, what);
  if (r.body.empty()) return nullptr;
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_discarded()) throw Error(502, what + ": the server answered with invalid JSON");
  return j;
}

}  // namespace coppice::cli
