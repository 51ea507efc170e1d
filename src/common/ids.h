// Random identifiers (UUID v4) for images, operations, files and tokens.
#pragma once

#include <string>
#include <string_view>

namespace coppice {

// A fresh random RFC 4122 version-4 UUID in canonical lower-case form.
std::string new_uuid();
// True when `s` is a canonical UUID (8-4-4-4-12 hex digits).
bool is_uuid(std::string_view s);
// `n` random bytes as lower-case hex (for tokens).
std::string random_hex(size_t n);

}  // namespace coppice
