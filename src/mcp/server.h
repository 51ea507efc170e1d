// The MCP protocol core, independent of transport: lifecycle (initialize, version
// negotiation, ping), tools, resources and prompts, progress notifications and cancellation.
// Transports (stdio.cc, http.cc) feed it one JSON-RPC message at a time and send back what it
// returns; several requests may be in flight at once (each tool call gets its own API client,
// so one slow run does not hold up the others).
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mcp/file_root.h"
#include "mcp/local_state.h"
#include "mcp/tool.h"

namespace coppice::mcp {

using nlohmann::json;

// Protocol revisions this server speaks, newest first (the first is "current").
const std::vector<std::string>& supported_protocol_versions();

struct ServerOptions {
  std::string url;                  // the Coppice/ConTree API base URL
  std::string token;                // its bearer token
  std::filesystem::path state_dir;  // local state (rsync cache, credentials)
  std::string version;              // reported in serverInfo
  // The local directory upload/rsync may read and download may write (file_root.h).
  std::filesystem::path file_root = ".";
};

// Receives server-to-client messages (notifications) produced while a request runs.
using Emit = std::function<void(const json& message)>;

class McpServer {
 public:
  explicit McpServer(ServerOptions options);

  // Handles one incoming message: a request (returns its response), a notification or a
  // client's response (returns nullopt), or a batch array (returns the array of responses, or
  // nullopt when it held none). `session` scopes request ids for cancellation. Also returns
  // nullopt for a request the client cancelled (the spec says not to answer those).
  std::optional<json> handle(const json& message, const std::string& session, const Emit& emit);

  // Cancels what the session still has in flight (HTTP DELETE, or stdin closed).
  void end_session(const std::string& session);

  const std::vector<Tool>& tools() const { return tools_; }

 private:
  std::optional<json> handle_one(const json& msg, const std::string& session, const Emit& emit);
  json dispatch(const std::string& method, const json& params, const std::string& session,
                const Emit& emit, const std::shared_ptr<std::atomic<bool>>& cancelled);
  json call_tool(const json& params, const Emit& emit,
                 const std::shared_ptr<std::atomic<bool>>& cancelled);
  std::unique_ptr<cli::ApiClient> make_client(const std::shared_ptr<std::atomic<bool>>& cancelled);

  ServerOptions opts_;
  LocalState state_;
  FileRoot files_;
  std::vector<Tool> tools_;
  std::mutex mu_;
  // "session\nid" → cancellation flag of a request in flight.
  std::map<std::string, std::shared_ptr<std::atomic<bool>>> inflight_;
};

}  // namespace coppice::mcp
