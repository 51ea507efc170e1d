#include "mcp/server.h"

#include <fmt/format.h>

#include "cli/log.h"
#include "common/error.h"
#include "mcp/catalog.h"
#include "mcp/jsonrpc.h"
#include "mcp/schema.h"

namespace coppice::mcp {

namespace {

constexpr const char* kInstructions =
    "Coppice gives you isolated Linux sandboxes whose filesystems are immutable images that "
    "form a tree. `run` executes a command from an image; with disposable=false the result is "
    "a new image you can continue from or branch (run twice from it). Read any image's files "
    "with list_files/read_file/grep without running anything. Start with get_guide "
    "section=quickstart if unsure.";

std::string key_of(const std::string& session, const json& id) {
  return session + "\n" + id.dump();
}

// A tool failure as a result the model can act on.
json tool_error(const std::string& message) {
  return {{"content", json::array({{{"type", "text"}, {"text", message}}})}, {"isError", true}};
}

std::string describe(const Error& e) {
  switch (e.status()) {
    case 400:
    case 422:
      return fmt::format("Invalid request: {}", e.what());
    case 401:
    case 403:
      return fmt::format("Not allowed: {}", e.what());
    case 404:
      return fmt::format("Not found: {}", e.what());
    case 409:
      return fmt::format("Conflict: {}", e.what());
    case 429:
      return fmt::format("Rate limited: {} (wait a little and call again)", e.what());
    case 499:
      return fmt::format("Cancelled: {}", e.what());
    case 502:
    case 503:
    case 504:
      return fmt::format("Server unavailable: {}", e.what());
    default:
      return fmt::format("Error: {}", e.what());
  }
}

}  // namespace

const std::vector<std::string>& supported_protocol_versions() {
  static const std::vector<std::string> v = {"2025-11-25", "2025-06-18", "2025-03-26",
                                             "2024-11-05"};
  return v;
}

McpServer::McpServer(ServerOptions o)
    : opts_(std::move(o)),
      state_(opts_.state_dir, opts_.url),
      files_(opts_.file_root),
      tools_(all_tools()) {}

std::unique_ptr<cli::ApiClient> McpServer::make_client(
    const std::shared_ptr<std::atomic<bool>>& cancelled) {
  auto api = std::make_unique<cli::ApiClient>(opts_.url, opts_.token);
  if (cancelled) api->set_abort([cancelled] { return cancelled->load(); });
  return api;
}

std::optional<json> McpServer::handle(const json& message, const std::string& session,
                                      const Emit& emit) {
  if (!message.is_array()) return handle_one(message, session, emit);
  if (message.empty()) return rpc_error(nullptr, kInvalidRequest, "empty batch");
  json out = json::array();
  for (const auto& m : message)
    if (auto r = handle_one(m, session, emit)) out.push_back(*r);
  if (out.empty()) return std::nullopt;
  return out;
}

void McpServer::end_session(const std::string& session) {
  std::lock_guard lock(mu_);
  for (auto& [k, flag] : inflight_)
    if (k.rfind(session + "\n", 0) == 0) flag->store(true);
}

std::optional<json> McpServer::handle_one(const json& msg, const std::string& session,
                                          const Emit& emit) {
  if (!msg.is_object() || msg.value("jsonrpc", "") != "2.0")
    return rpc_error(msg.is_object() ? msg.value("id", json(nullptr)) : json(nullptr),
                     kInvalidRequest, "not a JSON-RPC 2.0 message");
  bool has_id = msg.contains("id") && !msg["id"].is_null();
  if (!msg.contains("method")) return std::nullopt;  // a client's response to us: nothing to do
  if (!msg["method"].is_string())
    return has_id ? std::optional<json>(
                        rpc_error(msg["id"], kInvalidRequest, "method must be a string"))
                  : std::nullopt;
  std::string method = msg["method"];
  json params = msg.value("params", json::object());
  if (!has_id) {  // a notification
    if (method == "notifications/cancelled" && params.is_object() && params.contains("requestId")) {
      std::lock_guard lock(mu_);
      auto it = inflight_.find(key_of(session, params["requestId"]));
      if (it != inflight_.end()) it->second->store(true);
    }
    return std::nullopt;
  }
  const json id = msg["id"];
  if (!id.is_string() && !id.is_number_integer())
    return rpc_error(nullptr, kInvalidRequest, "id must be a string or an integer");
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  std::string key = key_of(session, id);
  {
    std::lock_guard lock(mu_);
    inflight_[key] = cancelled;
  }
  std::optional<json> response;
  try {
    response = rpc_result(id, dispatch(method, params, session, emit, cancelled));
  } catch (const RpcError& e) {
    response = rpc_error(id, e.code(), e.what(), e.data());
  } catch (const Error& e) {
    // Failures outside tools/call (resources/read of an unreachable server, …).
    response = rpc_error(id, kInternalError, e.what());
  } catch (const std::exception& e) {
    response = rpc_error(id, kInternalError, e.what());
  }
  {
    std::lock_guard lock(mu_);
    inflight_.erase(key);
  }
  if (cancelled->load()) return std::nullopt;
  return response;
}

json McpServer::dispatch(const std::string& method, const json& params, const std::string&,
                         const Emit& emit, const std::shared_ptr<std::atomic<bool>>& cancelled) {
  if (!params.is_object()) throw RpcError(kInvalidParams, "params must be an object");
  if (method == "initialize") {
    std::string asked = params.value("protocolVersion", "");
    const auto& v = supported_protocol_versions();
    std::string version = std::find(v.begin(), v.end(), asked) != v.end() ? asked : v.front();
    return {{"protocolVersion", version},
            {"capabilities",
             {{"tools", {{"listChanged", false}}},
              {"resources", {{"subscribe", false}, {"listChanged", false}}},
              {"prompts", {{"listChanged", false}}},
              {"logging", json::object()}}},
            {"serverInfo",
             {{"name", "coppice"}, {"title", "Coppice sandboxes"}, {"version", opts_.version}}},
            {"instructions", kInstructions}};
  }
  if (method == "ping" || method == "logging/setLevel") return json::object();
  if (method == "tools/list") {
    json list = json::array();
    for (const auto& t : tools_)
      list.push_back({{"name", t.name},
                      {"title", t.title},
                      {"description", t.description},
                      {"inputSchema", t.input_schema},
                      {"annotations", t.annotations}});
    return {{"tools", list}};
  }
  if (method == "tools/call") return call_tool(params, emit, cancelled);
  if (method == "resources/list") return list_resources();
  if (method == "resources/templates/list") return list_resource_templates();
  if (method == "resources/read") {
    if (!params.contains("uri") || !params["uri"].is_string())
      throw RpcError(kInvalidParams, "resources/read needs a string `uri`");
    auto api = make_client(cancelled);
    return read_resource(*api, params["uri"]);
  }
  if (method == "prompts/list") return list_prompts();
  if (method == "prompts/get") {
    if (!params.contains("name") || !params["name"].is_string())
      throw RpcError(kInvalidParams, "prompts/get needs a string `name`");
    return get_prompt(params["name"], params.value("arguments", json::object()));
  }
  throw RpcError(kMethodNotFound, "method not found: " + method);
}

json McpServer::call_tool(const json& params, const Emit& emit,
                          const std::shared_ptr<std::atomic<bool>>& cancelled) {
  if (!params.contains("name") || !params["name"].is_string())
    throw RpcError(kInvalidParams, "tools/call needs a string `name`");
  std::string name = params["name"];
  auto it =
      std::find_if(tools_.begin(), tools_.end(), [&](const Tool& t) { return t.name == name; });
  if (it == tools_.end()) throw RpcError(kInvalidParams, "unknown tool: " + name);
  json args = params.contains("arguments") && !params["arguments"].is_null() ? params["arguments"]
                                                                             : json::object();
  if (auto bad = schema_violation(it->input_schema, args))
    return tool_error(
        fmt::format("Invalid arguments for {}: {}. See the tool's input schema.", name, *bad));
  // Drop nulls: clients send them for "not given".
  for (auto a = args.begin(); a != args.end();) a = a->is_null() ? args.erase(a) : std::next(a);

  json token = nullptr;
  if (params.contains("_meta") && params["_meta"].is_object())
    token = params["_meta"].value("progressToken", json(nullptr));
  double last = -1;
  auto progress = [&](double value, std::optional<double> total, const std::string& message) {
    if (token.is_null() || !emit || value <= last) return;  // progress must increase
    last = value;
    json p = {{"progressToken", token}, {"progress", value}, {"message", message}};
    if (total) p["total"] = *total;
    emit(rpc_notification("notifications/progress", p));
  };
  auto api = make_client(cancelled);
  CallContext ctx{*api, state_, files_, progress, [cancelled] { return cancelled->load(); }};
  auto t0 = std::chrono::steady_clock::now();
  try {
    ToolResult r = it->run(args, ctx);
    cli::log_debug(
        "tool {} took {:.1f} ms", name,
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    json structured = r.structured.is_object() ? r.structured : json{{"result", r.structured}};
    std::string text = r.text.empty() ? structured.dump() : r.text;
    return {{"content", json::array({{{"type", "text"}, {"text", text}}})},
            {"structuredContent", structured},
            {"isError", r.is_error}};
  } catch (const Error& e) {
    return tool_error(describe(e));
  } catch (const json::exception& e) {
    return tool_error(fmt::format("Error: unexpected data ({}); check the arguments", e.what()));
  } catch (const std::exception& e) {
    return tool_error(fmt::format("Error: {}", e.what()));
  }
}

}  // namespace coppice::mcp
