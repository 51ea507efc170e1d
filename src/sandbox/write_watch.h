// The write watchdog: where the data filesystem has no project quotas (store/project_quota.h),
// the supervisor of a namespace or gVisor run measures the run's upper directory from time to
// time and kills the run once its changes take more than the write limit. A fallback: the run
// is stopped (SIGKILL), it does not see ENOSPC, and it may write past the limit for up to one
// interval before it is noticed.
//
// Cost: nothing for runs shorter than the first interval (kFirst); after that one walk of the
// upper per interval, and the interval grows with the walk's cost (at most about 5% of one
// core), up to kMaxInterval.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>

namespace coppice::sandbox {

class WriteWatch {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kFirst{50};
  static constexpr std::chrono::milliseconds kMaxInterval{5000};

  // Watches `upper` from `start` on; `limit` 0 = never checks.
  WriteWatch(std::filesystem::path upper, uint64_t limit, Clock::time_point start);
  // When the next check is due, or nullopt when none will be.
  std::optional<Clock::time_point> due() const;
  // Measures when a check is due at `now`; true when the upper holds more than the limit.
  bool check(Clock::time_point now);
  uint64_t last_bytes() const { return last_bytes_; }

 private:
  std::filesystem::path upper_;
  uint64_t limit_;
  Clock::time_point next_;
  uint64_t last_bytes_ = 0;
};

// Bytes allocated below `dir` (st_blocks of every entry, a hard-linked inode once), read
// while the sandbox may still change the tree: entries that vanish are skipped, nothing is
// followed. Past `max_depth` levels (one fd each) it measures again with tree_size(), whose
// fds are bounded. Never throws.
uint64_t live_tree_bytes(const std::filesystem::path& dir, size_t max_depth = 1024);

}  // namespace coppice::sandbox
