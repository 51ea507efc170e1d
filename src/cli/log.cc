#include "cli/log.h"

#include <unistd.h>

#include "common/error.h"

namespace coppice::cli {

namespace {
LogLevel g_level = LogLevel::warning;
}

LogLevel parse_log_level(std::string_view name) {
  if (name == "debug") return LogLevel::debug;
  if (name == "info") return LogLevel::info;
  if (name == "warning" || name == "warn") return LogLevel::warning;
  if (name == "error") return LogLevel::error;
  if (name == "critical") return LogLevel::critical;
  throw bad_request(
      fmt::format("unknown log level '{}': use debug, info, warning, error or critical", name));
}

void set_log_level(LogLevel level) {
  g_level = level;
}

bool log_enabled(LogLevel level) {
  return level >= g_level;
}

void log_line(LogLevel level, std::string_view message) {
  static constexpr const char* names[] = {"debug", "info", "warning", "error", "critical"};
  std::string line = fmt::format("coppice: {}: {}\n", names[static_cast<int>(level)], message);
  // One write per line, so lines from concurrent output do not interleave mid-line.
  [[maybe_unused]] auto n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace coppice::cli
