#include "sandbox/runsc_end.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>

namespace coppice::sandbox {

namespace {

bool digits(std::string_view s, size_t at, size_t n) {
  if (at + n > s.size()) return false;
  for (size_t i = at; i < at + n; ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}

// A glog line: `Lmmdd hh:mm:ss.uuuuuu  threadid file:line] message`, L one of I W E F. Sets
// severity and message.
bool parse_glog(std::string_view line, char* severity, std::string_view* message) {
  if (line.empty() || std::string_view("IWEF").find(line[0]) == std::string_view::npos)
    return false;
  if (!digits(line, 1, 4) || line.size() < 14 || line[5] != ' ' || !digits(line, 6, 2) ||
      line[8] != ':' || !digits(line, 9, 2) || line[11] != ':' || !digits(line, 12, 2))
    return false;
  size_t end = line.find("] ");
  if (end == std::string_view::npos) {
    if (line.back() != ']') return false;  // a line with an empty message
    end = line.size() - 1;
  }
  // between the time and "] ": the thread id and file:line
  std::string_view mid = line.substr(14, end - 14);
  size_t colon = mid.rfind(':');
  if (colon == std::string_view::npos || !digits(mid, colon + 1, mid.size() - colon - 1) ||
      colon + 1 == mid.size())
    return false;
  *severity = line[0];
  *message = end + 2 <= line.size() ? line.substr(end + 2) : std::string_view();
  return true;
}

// The lines Go's runtime and runsc write when a process dies.
bool crash_marker(std::string_view line) {
  for (std::string_view p : {"panic:", "fatal error:", "FATAL ERROR", "[signal ", "goroutine ",
                             "runtime:", "unexpected fault address", "Sentry crashed"})
    if (starts_with(line, p)) return true;
  // a fatal signal: `SIGSEGV: segmentation violation`, `SIGABRT: abort`
  size_t colon = line.find(':');
  if (starts_with(line, "SIG") && colon != std::string_view::npos && colon > 3) {
    for (size_t i = 3; i < colon; ++i)
      if (line[i] < 'A' || line[i] > 'Z') return false;
    return true;
  }
  return false;
}

}  // namespace

PanicLog read_panic_log(std::string_view text) {
  PanicLog log;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t next = nl == std::string_view::npos ? text.size() : nl + 1;
    std::string_view line = text.substr(pos, next - pos);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r' || line.back() == ' ' ||
                             line.back() == '\t'))
      line.remove_suffix(1);
    char severity = 0;
    std::string_view message;
    if (!line.empty()) {
      bool info =
          parse_glog(line, &severity, &message) && severity != 'F' && !crash_marker(message);
      if (info) {
        log.notes.emplace_back(message);
      } else {
        log.crashed = true;
        log.crash = std::string(text.substr(pos));
        break;
      }
    }
    pos = next;
  }
  return log;
}

RunscOutcome read_runsc_end(const RunscEnd& end) {
  RunscOutcome o;
  const int ws = end.wait_status;
  const bool at_memory_limit = end.oom_killed || (end.runsc_crashed && end.memory_limit_hit);
  if (at_memory_limit || (end.runsc_crashed && end.pids_limit_hit)) {
    o.signal = SIGKILL;
    o.exit_code = 128 + SIGKILL;
    o.oom_killed = at_memory_limit;
    return o;
  }
  if (end.runsc_crashed) {
    std::string how = WIFSIGNALED(ws) ? fmt::format("killed by signal {}", WTERMSIG(ws))
                                      : fmt::format("exit status {}", WEXITSTATUS(ws));
    o.failure = "gVisor (runsc) failed before the command finished (" + how + ")";
    return o;
  }
  if (WIFEXITED(ws)) {
    o.exit_code = WEXITSTATUS(ws);
    if (o.exit_code > 128 && o.exit_code < 128 + 65) o.signal = o.exit_code - 128;
  } else if (WIFSIGNALED(ws)) {
    o.signal = WTERMSIG(ws);  // runsc itself was killed
    o.exit_code = 128 + o.signal;
  }
  return o;
}

}  // namespace coppice::sandbox
