// Reading the end of a gVisor run. `runsc run` is pid 1 of the run's pid namespace, and its
// exit status is the command's only when gVisor itself ended cleanly: the command's
// processes live inside the Sentry, while the host processes (runsc run, the Sentry, the
// gofer) are gVisor's. When the memory cgroup fills up, the kernel's OOM killer or a failed
// allocation takes one of those down instead of the command, and runsc then reports its own
// status (a Go runtime crash exits 2), or the Sentry's signal. The same happens at the pids
// limit: under the ptrace platform every sandbox process costs gVisor host threads and stubs.
#pragma once

#include <optional>
#include <string>

namespace coppice::sandbox {

struct RunscEnd {
  int wait_status = 0;            // of `runsc run`, as waitpid reports it
  bool runsc_crashed = false;     // runsc left its container's state behind (it did not get to
                                  // tear the container down), or a gVisor process logged a Go
                                  // runtime crash to the panic log
  bool oom_killed = false;        // the run's memory cgroup recorded an OOM kill
  bool memory_limit_hit = false;  // the run's memory cgroup reached its limit at least once
  bool pids_limit_hit = false;    // a fork or clone in the run's cgroup failed at its pids limit
};

struct RunscOutcome {
  int exit_code = -1;  // 128+signal when killed (shell convention)
  int signal = -1;
  bool oom_killed = false;
  // Set when the status is gVisor's, not the command's, and memory does not explain it: the
  // run failed (an infrastructure error, not a command result).
  std::optional<std::string> failure;
};

// Invariants: an OOM kill always reads as SIGKILL (137) with oom_killed, whatever runsc
// printed; a crashed runsc reads as an OOM kill when the memory limit was reached, as a kill
// (SIGKILL, 137, no oom_killed) when the pids limit was, else as a failure; otherwise runsc's
// status is the command's (runsc exits 128+n for a signal n).
RunscOutcome read_runsc_end(const RunscEnd& end);

}  // namespace coppice::sandbox
