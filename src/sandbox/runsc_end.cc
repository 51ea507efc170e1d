#include "sandbox/runsc_end.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>

namespace coppice::sandbox {

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
