// One MCP tool: its name, a description written for a model (what it does, what it costs, what
// to call next), a JSON schema for its arguments, and the handler. Handlers throw coppice::Error
// for failures the model can act on; the server turns them into `isError` results, never into
// protocol errors.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/api_client.h"
#include "mcp/file_root.h"
#include "mcp/local_state.h"

namespace coppice::mcp {

using nlohmann::json;

// What a handler may use while it runs.
struct CallContext {
  cli::ApiClient& api;    // this call's own client; cancellation aborts its transfers (Error 499)
  LocalState& state;      // the MCP server's local state ($COPPICE_HOME/mcp)
  const FileRoot& files;  // the only local directory tools may read or write (file_root.h)
  // Reports progress to the client (a no-op unless it asked with a progressToken).
  std::function<void(double progress, std::optional<double> total, const std::string& message)>
      progress;
  std::function<bool()> cancelled;  // the client cancelled this request
};

struct ToolResult {
  json structured;   // structuredContent (an object)
  std::string text;  // the text block; "" = the compact JSON of `structured`
  bool is_error = false;
};

struct Tool {
  std::string name;
  std::string title;
  std::string description;
  json input_schema;
  json annotations;  // readOnlyHint, destructiveHint, idempotentHint, openWorldHint
  std::function<ToolResult(const json& args, CallContext& ctx)> run;
};

// Every tool, in the order tools/list shows them (defined across tools_*.cc).
std::vector<Tool> all_tools();

void add_run_tools(std::vector<Tool>& out);        // tools_run.cc: run
void add_operation_tools(std::vector<Tool>& out);  // tools_operations.cc: get/list/wait/cancel
void add_image_tools(std::vector<Tool>& out);      // tools_images.cc: images, tags, import, auth
void add_inspect_tools(std::vector<Tool>& out);    // tools_inspect.cc: list/read/download/grep
void add_file_tools(std::vector<Tool>& out);       // tools_files.cc: upload, rsync
void add_info_tools(std::vector<Tool>& out);       // tools_info.cc: get_guide, whoami

// Schema helpers for the tool tables.
json object_schema(json properties, std::vector<std::string> required);
json prop(const std::string& type, const std::string& description);
json prop_default(const std::string& type, const std::string& description, json def);

}  // namespace coppice::mcp
