// How MCP messages reach McpServer: newline-delimited JSON on stdin/stdout (stdio.cc), or
// streamable HTTP at /mcp (http.cc).
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "mcp/server.h"

namespace coppice::mcp {

// Reads messages from stdin until it closes; each request runs on its own thread and its
// response (and notifications) are written to stdout, one JSON object per line. Returns when
// stdin is closed and every request has finished.
void serve_stdio(McpServer& server);

struct HttpOptions {
  std::string listen = "127.0.0.1:9452";    // ADDR:PORT
  std::chrono::seconds session_idle{3600};  // a session unused this long ends
  size_t max_sessions = 1000;               // past it, the least recently used session ends
  std::string token;                        // the bearer secret every request must carry
  bool token_generated = false;             // print it at start (it was made up here)
  std::vector<std::string> allow_hosts;     // more Host values to answer (http_guard.h)
  std::vector<std::string> allow_origins;   // more Origins to accept (http_guard.h)
};

// Serves MCP's streamable HTTP transport on `opt.listen` (ADDR:PORT): POST /mcp (JSON, or an SSE
// stream when the client accepts it and asked for progress), DELETE /mcp (end the session),
// GET /mcp (405: no server-initiated stream), GET / (a page describing the tools). Every
// request passes HttpGuard first (http_guard.h: exact Host and Origin, then the bearer
// secret). Runs until the process is stopped. "serving MCP on URL" is printed to stderr once
// listening, then the generated secret when there is one.
void serve_http(McpServer& server, const HttpOptions& opt);

}  // namespace coppice::mcp
