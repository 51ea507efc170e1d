// What every runtime does while its sandbox runs, whatever the sandbox is: feed stdin, collect
// stdout/stderr within the truncate_output_at budget, enforce the timeout and the cancel
// token by calling the runtime's kill(), notice the exit of the sandbox's top process, then
// drain the pipes. Also the small fd helpers the runtimes share, and the RunSpec checks that
// do not depend on the runtime.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "common/fd.h"
#include "sandbox/cgroups.h"
#include "sandbox/child_msg.h"
#include "sandbox/runtime.h"

namespace coppice::sandbox {

using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// An O_CLOEXEC pipe.
struct Pipe {
  UniqueFd rd, wr;
  Pipe();
};

void set_nonblock(int fd);

// Blocks SIGPIPE on this thread while we write the command's stdin, then swallows any
// pending one: a command that closes stdin early must not kill the server.
class SigpipeBlock {
 public:
  SigpipeBlock();
  ~SigpipeBlock();
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t set_, old_;
};

// The top process of a sandbox that lives outside our address space (runsc, QEMU): killed
// (through its cgroups and pidfd) and reaped on destruction if the run did not get that far,
// then its cgroups are removed.
struct SandboxProcess {
  std::unique_ptr<RunCgroups> cgroups;
  pid_t pid = -1;
  UniqueFd pidfd;
  bool reaped = false;
  int wait_status = 0;
  rusage usage{};
  SandboxProcess() = default;
  SandboxProcess(const SandboxProcess&) = delete;
  SandboxProcess& operator=(const SandboxProcess&) = delete;
  ~SandboxProcess();
  void kill();
  void reap();
};

// Resources from what the kernel accounted: cgroup CPU times when known, else rusage.
void fill_resources(Resources& res, const rusage& u, const CgroupStats& cs,
                    Clock::duration elapsed);

// Reads the records a sandbox's init writes to its status pipe (child_msg.h), which may arrive
// split across reads.
class StatusReader {
 public:
  explicit StatusReader(int fd) : fd_(fd) {}
  // Reads what the (non-blocking) pipe holds and hands each complete record to `on_record`.
  // Returns false once the pipe reached EOF.
  bool read(const std::function<void(const StatusRecord&)>& on_record);

 private:
  int fd_;
  std::string buf_;
};

// Throws a 400 Error naming the first problem of `spec` that every runtime refuses (empty or
// NUL-bearing argv, bad env entries, relative cwd, ids at or above `uid_range`, bad
// hostname, bad file paths, no or too many layers).
void validate_spec(const RunSpec& spec, uid_t uid_range);

struct SuperviseIo {
  UniqueFd stdout_rd, stderr_rd;  // the sandbox's output (our read ends)
  UniqueFd stdin_wr;              // our write end of its stdin; empty when there is none
  int exit_fd = -1;               // a pidfd: readable when the sandbox's top process exited
  // Optional extra input (a runtime's status pipe): on_extra is called when extra_fd is
  // readable and returns false once it reached EOF.
  int extra_fd = -1;
  std::function<bool()> on_extra;
};

struct Supervised {
  bool timed_out = false;
  bool cancelled = false;
  bool killed = false;           // kill() was called (timeout, cancel or write limit)
  bool write_limit_hit = false;  // killed by the write watchdog (spec.watch_writes)
  uint64_t stdout_bytes = 0, stderr_bytes = 0;  // produced, kept or not
  Clock::duration elapsed{};                    // t0 to the exit
};

// Runs the loop described above, with the write watchdog of write_watch.h when
// spec.watch_writes. `kill` must make the sandbox's processes die (it is called
// at most once); `reap` waits for the top process (called once it exited, before the drain).
Supervised supervise(SuperviseIo& io, const RunSpec& spec, RunObserver& observer,
                     CancelToken& cancel, Clock::time_point t0, const std::function<void()>& kill,
                     const std::function<void()>& reap);

}  // namespace coppice::sandbox
