#include "store/project_name.h"

#include <fmt/format.h>

#include "common/error.h"

namespace coppice::store {

namespace {
bool alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
}  // namespace

bool is_valid_project_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxProjectName || !alnum(name[0])) return false;
  for (char c : name)
    if (!alnum(c) && c != '.' && c != '_' && c != '-') return false;
  return true;
}

void validate_project_name(std::string_view name) {
  if (name.empty())
    throw bad_request("the project name is empty (the empty name is the public namespace)");
  if (!is_valid_project_name(name))
    throw bad_request(
        fmt::format("bad project name '{}': 1 to {} letters, digits, '.', '_' or "
                    "'-', starting with a letter or a digit",
                    name, kMaxProjectName));
}

}  // namespace coppice::store
