// Diagnostics of the CLI: a process-wide log level and leveled messages on stderr.
// `--log-level debug` shows every HTTP exchange (method, URL, status, size, time).
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace coppice::cli {

enum class LogLevel { debug = 0, info = 1, warning = 2, error = 3, critical = 4 };

// Parses debug|info|warning|error|critical (also `warn`); throws Error 400 otherwise.
LogLevel parse_log_level(std::string_view name);
void set_log_level(LogLevel level);
bool log_enabled(LogLevel level);
void log_line(LogLevel level, std::string_view message);

template <typename... Args>
void log_debug(fmt::format_string<Args...> f, Args&&... args) {
  if (log_enabled(LogLevel::debug))
    log_line(LogLevel::debug, fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
void log_warning(fmt::format_string<Args...> f, Args&&... args) {
  if (log_enabled(LogLevel::warning))
    log_line(LogLevel::warning, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace coppice::cli
