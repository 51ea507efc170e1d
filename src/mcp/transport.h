// How MCP messages reach McpServer: newline-delimited JSON on stdin/stdout (stdio.cc), or
// streamable HTTP at /mcp (http.cc).
#pragma once

#include <string>

#include "mcp/server.h"

namespace coppice::mcp {

// Reads messages from stdin until it closes; each request runs on its own thread and its
// response (and notifications) are written to stdout, one JSON object per line. Returns when
// stdin is closed and every request has finished.
void serve_stdio(McpServer& server);

// Serves MCP's streamable HTTP transport on `listen` (ADDR:PORT): POST /mcp (JSON, or an SSE
// stream when the client accepts it and asked for progress), DELETE /mcp (end the session),
// GET /mcp (405: no server-initiated stream), GET / (a page describing the tools). Requests
// with an Origin header that is not a loopback origin are refused (DNS rebinding). Runs until
// the process is stopped. `ready` is printed to stderr once listening.
void serve_http(McpServer& server, const std::string& listen);

}  // namespace coppice::mcp
