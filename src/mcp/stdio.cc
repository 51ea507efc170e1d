#include <unistd.h>

#include <iostream>
#include <mutex>
#include <string>

#include "cli/log.h"
#include "mcp/jsonrpc.h"
#include "mcp/transport.h"
#include "mcp/worker_set.h"

namespace coppice::mcp {

namespace {

class StdoutWriter {
 public:
  void write(const json& message) {
    std::string line = message.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    std::lock_guard lock(mu_);
    size_t off = 0;
    while (off < line.size()) {
      ssize_t n = ::write(STDOUT_FILENO, line.data() + off, line.size() - off);
      if (n <= 0) return;  // the client is gone; the read loop ends on EOF
      off += static_cast<size_t>(n);
    }
  }

 private:
  std::mutex mu_;
};

}  // namespace

void serve_stdio(McpServer& server) {
  StdoutWriter out;
  WorkerSet workers;
  Emit emit = [&out](const json& m) { out.write(m); };
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty() || line == "\r") continue;
    json msg = json::parse(line, nullptr, false);
    if (msg.is_discarded()) {
      out.write(rpc_error(nullptr, kParseError, "parse error: not valid JSON"));
      continue;
    }
    cli::log_debug("mcp < {}", line.substr(0, 300));
    bool request = msg.is_object() && msg.contains("method") && msg.contains("id");
    std::string method =
        request && msg["method"].is_string() ? msg["method"].get<std::string>() : "";
    bool slow = method == "tools/call" || method == "resources/read" || msg.is_array();
    if (!slow) {  // notifications (cancellation among them) and quick requests: in order, here
      if (auto r = server.handle(msg, "stdio", emit)) out.write(*r);
      continue;
    }
    workers.start([&server, &out, &emit, msg = std::move(msg)] {
      if (auto r = server.handle(msg, "stdio", emit)) out.write(*r);
    });
  }
  // stdin closed: answer what is still running (a piped script wants its results), then exit.
  workers.join_all();
}

}  // namespace coppice::mcp
