// Project (tenant) names: 1 to 64 characters of [A-Za-z0-9._-], starting with a letter or a
// digit. The empty name is the public namespace of base images (records.h kPublicProject)
// and is never a tenant.
#pragma once

#include <string_view>

namespace coppice::store {

inline constexpr size_t kMaxProjectName = 64;

bool is_valid_project_name(std::string_view name);
// Throws a 400 Error that says what a project name may be.
void validate_project_name(std::string_view name);

}  // namespace coppice::store
