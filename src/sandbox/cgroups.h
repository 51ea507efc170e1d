// Per-run control groups for limits and accounting.
//
// Works on hybrid hosts (cgroup v1 controllers + cgroup2 at /sys/fs/cgroup/unified) and on
// pure cgroup2 hosts. Run groups are always created BELOW the server's own cgroup in each
// hierarchy (read from /proc/self/cgroup): <own>/<name>/<run-id>, so the server's own limits
// and accounting are never escaped.
//
//   hybrid:  v1 memory  memory.limit_in_bytes (+memsw), max_usage_in_bytes, oom_control
//            v1 pids    pids.max
//            v1 cpu     cfs_quota_us (only when a CPU limit is asked for)
//            cgroup2    cpu.stat (exact user/system time), cgroup.kill
//   pure v2: one group with memory.max, memory.swap.max, memory.peak, memory.events,
//            pids.max, cpu.max, cpu.stat, cgroup.kill
//
// Missing hierarchies are skipped (one warning at construction), never fatal.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace coppice::sandbox {

struct CgroupLimits {
  uint64_t memory_bytes = 0;  // 0 = none
  uint64_t pids = 0;          // 0 = none
  double cpus = 0;            // 0 = none
};

struct CgroupStats {
  std::optional<int64_t> user_us, system_us;  // from cpu.stat when available
  int64_t memory_peak_bytes = 0;              // 0 when unknown
  bool oom_killed = false;
};

// Whether the run reached its limits at some point (read only by runtimes that need it: two
// more files per run).
struct LimitsHit {
  bool memory = false;  // usage reached the memory limit at least once
  bool pids = false;    // a fork or clone failed at the pids limit
};

class RunCgroups;

class CgroupManager {
 public:
  // Detects the hierarchies, creates <own>/<name> in each and kills/removes every run group
  // left below it by a previous server process (startup recovery). Only one server (or
  // runtime) may use a given `name` at a time on a host.
  explicit CgroupManager(std::string name);
  // Removes the <own>/<name> groups when they are empty.
  ~CgroupManager();
  CgroupManager(const CgroupManager&) = delete;
  CgroupManager& operator=(const CgroupManager&) = delete;

  // Creates the groups of one run and applies the limits. Throws coppice::Error.
  std::unique_ptr<RunCgroups> create(const CgroupLimits& limits);

  // Directories that hold the run groups (one per hierarchy used), for tests and diagnostics.
  std::vector<std::string> base_dirs() const;

 private:
  friend class RunCgroups;
  std::string name_;
  std::string memory_v1_, pids_v1_, cpu_v1_;  // base dirs; empty when not available
  std::string v2_;                            // base dir in cgroup2; empty when not available
  bool pure_v2_ = false;
  bool memsw_ = false;
};

// The groups of one run; removed (after killing anything left) on destruction.
class RunCgroups {
 public:
  ~RunCgroups();
  RunCgroups(const RunCgroups&) = delete;
  RunCgroups& operator=(const RunCgroups&) = delete;

  // A directory fd of the cgroup2 group for clone3(CLONE_INTO_CGROUP), or -1. Creating the
  // process inside the group avoids the cgroup.procs write, whose global lock costs an RCU
  // grace period (~10 ms on this host) per run.
  int v2_fd() const { return v2_fd_; }
  // Moving another process in through cgroup.procs takes the same global lock, so the v1
  // groups are joined by the sandbox's init itself: it writes "0" to these `tasks` files
  // (opened here, before clone) as its first action. Throws coppice::Error. The fds stay
  // ours: close_v1_task_files() (or the destructor) closes them, never the caller.
  std::vector<int> open_v1_task_files();
  // Closes the fds of open_v1_task_files() (once the child has its copies).
  void close_v1_task_files();
  // Moves `pid` (host pid) into the cgroup2 group through cgroup.procs (the fallback when
  // clone3(CLONE_INTO_CGROUP) is unavailable). Throws coppice::Error.
  void attach_v2(pid_t pid);
  // Kills every process in the groups (cgroup.kill when available, else SIGKILL to the pids
  // listed in cgroup.procs). Returns whether cgroup.kill was used.
  bool kill_all();
  CgroupStats stats() const;
  LimitsHit limits_hit() const;
  // Removes the groups, waiting briefly while they are still populated.
  void remove();

 private:
  friend class CgroupManager;
  RunCgroups() = default;
  std::vector<std::string> dirs_;  // every group of the run
  std::string memory_;             // the group with memory files (v1 memory or v2)
  bool memory_is_v2_ = false;
  std::string pids_;  // the group with pids files (v1 pids or v2); empty when none
  std::string v2_;    // cgroup2 group (cpu.stat, cgroup.kill)
  int v2_fd_ = -1;
  std::vector<int> task_fds_;
  bool removed_ = false;
};

}  // namespace coppice::sandbox
