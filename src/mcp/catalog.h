// The MCP resources (coppice:// URIs: image files and listings, lineage, operations, the
// guide) and prompts (task templates of contract §7) this server offers.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "cli/api_client.h"

namespace coppice::mcp {

using nlohmann::json;

json list_resources();           // resources/list result
json list_resource_templates();  // resources/templates/list result
// resources/read result for `uri`; RpcError kResourceNotFound (-32002) for unknown URIs and
// missing images/paths, kInvalidParams for malformed ones.
json read_resource(cli::ApiClient& api, const std::string& uri);

json list_prompts();                                              // prompts/list result
json get_prompt(const std::string& name, const json& arguments);  // prompts/get result

}  // namespace coppice::mcp
