// The per-run write limit: how much a run's filesystem changes may take on the data
// filesystem, enforced while the run writes, and the one decision whether a run went past it
// (then the engine reports a `size_cap` event; docs/API.md).
//
// A run's limit is the smaller of the server's default (--max-run-write-mb, 10 GiB) and the
// run's `resources_limits.max_layer_bytes`. How it is enforced depends on the data filesystem,
// found once at start (mode()):
//  * project_quota: the run's upper/ and work/ get a fresh project id with a hard limit of
//    the limit plus kHeadroom (store/project_quota.h); a write past it fails in the sandbox
//    (ENOSPC on XFS, EDQUOT on ext4). The headroom lets the engine tell "reached the limit" (the
//    changes take more than the limit) from "came close" after the run, as the check before this
//    one did.
//  * watchdog: no project quotas here; the namespace and gVisor supervisors measure the upper
//    now and then and kill the run past the limit plus kHeadroom (sandbox/write_watch.h).
//  * end_of_run: nothing while the run writes (--write-limit-mode end-of-run); only the check
//    after the run.
// The microvm runtime always bounds the run by its scratch disk's size (ENOSPC in the guest)
// and the copy of its changes, whatever the mode.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "sandbox/runtime.h"
#include "store/project_quota.h"

namespace coppice::engine {

struct WriteLimitConfig {
  uint64_t default_bytes = 10ull << 30;  // a run's limit unless max_layer_bytes is smaller;
                                         // 0 = none (only max_layer_bytes)
  uint64_t max_inodes = 1000000;         // files and directories a run may create (quota mode)
  std::string mode = "auto";             // auto | project-quota | watchdog | end-of-run
};

class WriteLimits {
 public:
  // Bytes a run may write past its limit before the writes fail (or the watchdog fires).
  static constexpr uint64_t kHeadroom = 16ull << 20;
  enum class Mode { kProjectQuota, kWatchdog, kEndOfRun };

  // Probes the data filesystem (auto: project quotas when they work, else the watchdog) and
  // logs what it found. Throws a 400 Error for a bad mode, or for mode project-quota on a
  // filesystem without them.
  WriteLimits(const WriteLimitConfig& cfg, const std::filesystem::path& data_dir);

  Mode mode() const { return mode_; }
  // whoami.write_limit: {default, enforced, mode, headroom, max_inodes, detail}.
  nlohmann::json describe() const;

  // One run's limit. Destruction clears its project quota (if any), once the run's changes
  // were committed or dropped.
  class Run {
   public:
    Run(Run&& o) noexcept;
    Run& operator=(Run&&) = delete;
    Run(const Run&) = delete;
    ~Run();
    bool limited() const { return limited_; }
    uint64_t limit() const { return limit_; }  // when limited()
    bool from_max_layer_bytes() const { return from_request_; }
    // After the run: the bytes its changes take when they went past the limit, else nullopt.
    // The larger of the project's usage (quota mode) and what the runtime measured; with
    // neither, walks `upper` when `walk` (a run whose changes are kept) or the runtime saw the
    // limit passed.
    std::optional<uint64_t> exceeded(const sandbox::RunResult& res,
                                     const std::filesystem::path& upper, bool walk) const;
    // The operation's error for a run whose changes take `used` bytes (`stopped`: the
    // watchdog killed it).
    std::string error(uint64_t used, bool stopped) const;

   private:
    friend class WriteLimits;
    Run() = default;
    store::ProjectQuota* quota_ = nullptr;
    uint32_t project_ = 0;
    uint64_t limit_ = 0;
    bool limited_ = false;
    bool from_request_ = false;
  };

  // Before a run whose run_dir was acquired: computes its limit, sets it up (quota mode:
  // creates upper/ and work/ and tags them, including a reused work/work) and fills
  // spec.write_limit_bytes and spec.watch_writes. Throws Error (the run fails to start).
  Run begin(sandbox::RunSpec& spec, std::optional<int64_t> max_layer_bytes);

 private:
  WriteLimitConfig cfg_;
  Mode mode_ = Mode::kEndOfRun;
  std::string detail_;  // why this mode
  std::unique_ptr<store::ProjectQuota> quota_;
};

const char* mode_name(WriteLimits::Mode m);

}  // namespace coppice::engine
