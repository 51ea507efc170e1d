// JSON-RPC 2.0 framing as MCP uses it: requests (with an id), notifications (without), results
// and errors. Protocol failures (malformed message, unknown method, bad params of a protocol
// method) are RpcErrors; a tool's own failure is a normal result with `isError: true`.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace coppice::mcp {

using nlohmann::json;

constexpr int kParseError = -32700;
constexpr int kInvalidRequest = -32600;
constexpr int kMethodNotFound = -32601;
constexpr int kInvalidParams = -32602;
constexpr int kInternalError = -32603;
constexpr int kResourceNotFound = -32002;  // MCP: resources/read of an unknown URI

class RpcError : public std::runtime_error {
 public:
  RpcError(int code, const std::string& message, json data = nullptr)
      : std::runtime_error(message), code_(code), data_(std::move(data)) {}
  int code() const { return code_; }
  const json& data() const { return data_; }

 private:
  int code_;
  json data_;
};

inline json rpc_result(const json& id, json result) {
  return {{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
}

inline json rpc_error(const json& id, int code, const std::string& message,
                      const json& data = nullptr) {
  json err = {{"code", code}, {"message", message}};
  if (!data.is_null()) err["data"] = data;
  return {{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(err)}};
}

inline json rpc_notification(const std::string& method, json params) {
  return {{"jsonrpc", "2.0"}, {"method", method}, {"params", std::move(params)}};
}

}  // namespace coppice::mcp
