#include "engine/redact.h"

namespace coppice::engine {

bool is_secret_env_name(std::string_view name) {
  std::string lower(name);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (std::string_view suffix :
       {"token", "secret", "password", "api_key", "credentials", "authorization"})
    if (lower.size() >= suffix.size() &&
        std::string_view(lower).substr(lower.size() - suffix.size()) == suffix)
      return true;
  return false;
}

nlohmann::json redacted_env(const std::map<std::string, std::optional<std::string>>& env,
                            bool skip_unset) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [k, v] : env) {
    if (!v) {
      if (!skip_unset) out[k] = nullptr;
      continue;
    }
    out[k] = is_secret_env_name(k) ? kMasked : *v;
  }
  return out;
}

}  // namespace coppice::engine
