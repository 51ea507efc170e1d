// Secrets in a run's environment (contract §3.3): the value of every variable whose name
// ends, case-insensitively, in token, secret, password, api_key, credentials or
// authorization is replaced by kMasked wherever the request is echoed or logged (operation
// metadata, which is stored and returned by GET /v1/operations/{id}, and the `spawn` event).
// The sandbox receives the real value; only the run's job holds it, in memory.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace coppice::engine {

inline constexpr const char* kMasked = "<MASKED>";  // as the import echo masks a password

// Whether the value of the environment variable `name` is a secret.
bool is_secret_env_name(std::string_view name);

// {name: value} with secret values replaced by kMasked; a null value (unset) stays null and
// variables with a null value are left out when `skip_unset`.
nlohmann::json redacted_env(const std::map<std::string, std::optional<std::string>>& env,
                            bool skip_unset = false);

}  // namespace coppice::engine
