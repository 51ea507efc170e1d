// Time stamps as the wire contract writes them, and the `since`/`until` filter forms.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace coppice {

using SysTime = std::chrono::system_clock::time_point;

// Microseconds since the Unix epoch (the unit every stored time uses).
int64_t now_us();
// RFC 3339 in UTC with microseconds: "2026-01-01T12:00:00.123456Z".
std::string format_rfc3339(int64_t unix_us);
// Parses an ISO 8601 / RFC 3339 date-time ("2026-01-01T00:00:00Z", offsets, 0-9 fraction
// digits). Returns microseconds since the epoch, or nullopt when `s` is not such a time.
std::optional<int64_t> parse_rfc3339(std::string_view s);
// Parses a duration: bare seconds or a number with a unit s, m, h, d or w ("15m", "3d").
// Returns seconds, or nullopt when `s` is not such a duration (or above 10^11 units).
std::optional<int64_t> parse_duration_s(std::string_view s);
// Parses a `since`/`until` value: an ISO date-time, a relative duration ("15m", "2h", "3d",
// "1w", "3600s") or bare seconds meaning "now minus that". Throws a 400 Error otherwise.
int64_t parse_time_filter(std::string_view s, int64_t now);

}  // namespace coppice
