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
#include <string_view>
#include <vector>

namespace coppice::sandbox {

struct RunscEnd {
  int wait_status = 0;            // of `runsc run`, as waitpid reports it
  bool runsc_crashed = false;     // runsc left its container's state behind (it did not get to
                                  // tear the container down), or the panic log shows a crash
                                  // (read_panic_log)
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

// What gVisor's processes wrote to runsc's panic log (`--panic-log`). That file is their stderr,
// so it receives Go runtime crashes (`panic: …`, `fatal error: …`, a fatal signal as
// `SIGSEGV: …` / `[signal …`, goroutine dumps) and also some of runsc's own log lines, in glog
// form (`W1204 01:25:04.903546      10 file.go:36] message`), such as the warning that a process
// asked for a raw socket without CAP_NET_RAW: informational, the process just got EPERM.
struct PanicLog {
  bool crashed = false;
  std::string crash;               // the log from its first crash line on ("" without a crash)
  std::vector<std::string> notes;  // the messages of the informational lines, in order
};

// Invariants: an empty log is no crash; a glog line of severity I, W or E is a note unless its
// message starts like a crash (runsc's `FATAL ERROR: …`, `panic: …`); a glog F line and every
// line that is not such a glog line (Go's crash output, or anything unknown: an unknown
// message fails the run rather than hiding a crash) is a crash.
PanicLog read_panic_log(std::string_view text);

}  // namespace coppice::sandbox
