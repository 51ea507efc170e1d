// The CLI's view of a Coppice/ConTree server: `<base>/v1<path>` requests with the bearer token,
// over cli::HttpTransport. Failures become one-line Errors that name what failed and
// what to do (bad token, unreachable server, the server's own message).
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cli/http_transport.h"
#include "cli/interrupt.h"

namespace coppice::cli {

using Query = std::vector<std::pair<std::string, std::string>>;

// Builds "?k=v&…" (values escaped, '/' kept literal as ConTree clients send it); "" when empty.
std::string query_string(const Query& q);
// Escapes one path segment (no safe characters).
std::string path_segment(std::string_view s);

class ApiClient {
 public:
  // `base_url` must be http(s)://host[:port][/prefix]; Error 400 otherwise.
  ApiClient(std::string base_url, std::string token);

  // Sends `method` to /v1`path` (which includes any query). HTTP error statuses are returned;
  // transport failures throw (see fail_transport). A 2xx body goes to `sink` when given.
  HttpResponse request(const std::string& method, const std::string& path,
                       const std::string& body = "", std::vector<std::string> headers = {},
                       const BodySink* sink = nullptr);

  // JSON round trips that throw a described Error on any non-2xx. `what` says what the request
  // was for ("list images"); it prefixes the error.
  nlohmann::json get_json(const std::string& path, const std::string& what);
  nlohmann::json send_json(const std::string& method, const std::string& path,
                           const nlohmann::json& body, const std::string& what);

  // The Error for a non-2xx response: "WHAT: server message (HTTP n)" plus a hint for 401/403.
  [[noreturn]] void fail(const HttpResponse& r, const std::string& what) const;

  // While set, Ctrl-C (see interrupt.h) aborts transfers with Error 499.
  void set_interruptible(bool on) { interruptible_ = on; }
  // Another abort condition, polled while waiting on the network (the MCP server's per-request
  // cancellation); true aborts the transfer with Error 499.
  void set_abort(std::function<bool()> abort) { abort_ = std::move(abort); }
  const std::function<bool()>& abort_check() const { return abort_; }
  bool aborted() const { return (interruptible_ && interrupted()) || (abort_ && abort_()); }

  // Transfers started after this abort with Error 504 once `deadline` passes (health probes).
  void set_deadline(std::optional<std::chrono::steady_clock::time_point> deadline) {
    deadline_ = deadline;
  }

  const std::string& base_url() const { return base_; }

 private:
  std::string base_;
  std::string token_;
  bool interruptible_ = false;
  std::function<bool()> abort_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  bool deadline_hit_ = false;
  HttpTransport http_;
};

}  // namespace coppice::cli
