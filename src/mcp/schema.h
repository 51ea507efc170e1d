// A small JSON Schema checker for the tools' own input schemas (the subset they use: type,
// properties, required, enum, items, additionalProperties: false, minimum). It turns a model's
// malformed call into one sentence the model can act on, before any request is sent.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace coppice::mcp {

// The first problem with `value` against `schema`, as "field 'x': expected an integer", or
// nullopt when it conforms.
std::optional<std::string> schema_violation(const nlohmann::json& schema,
                                            const nlohmann::json& value);

}  // namespace coppice::mcp
