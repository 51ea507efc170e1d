// Standard base64 (RFC 4648 alphabet, with padding).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace coppice {

std::string base64_encode(std::string_view in);
// Decodes, ignoring padding and line breaks; nullopt when a character is outside the alphabet.
std::optional<std::string> base64_decode(std::string_view in);

}  // namespace coppice
