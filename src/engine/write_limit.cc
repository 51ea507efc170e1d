#include "engine/write_limit.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"

namespace coppice::engine {

namespace fs = std::filesystem;

const char* mode_name(WriteLimits::Mode m) {
  switch (m) {
    case WriteLimits::Mode::kProjectQuota:
      return "project_quota";
    case WriteLimits::Mode::kWatchdog:
      return "watchdog";
    case WriteLimits::Mode::kEndOfRun:
      break;
  }
  return "end_of_run";
}

WriteLimits::WriteLimits(const WriteLimitConfig& cfg, const fs::path& data_dir) : cfg_(cfg) {
  const std::string& m = cfg_.mode;
  if (m != "auto" && m != "project-quota" && m != "watchdog" && m != "end-of-run")
    throw bad_request(
        "--write-limit-mode must be auto, project-quota, watchdog or end-of-run, not " + m);
  if (m == "auto" || m == "project-quota") {
    std::string why;
    quota_ = store::ProjectQuota::open(data_dir, &why);
    if (quota_) {
      mode_ = Mode::kProjectQuota;
      detail_ = fmt::format("project quotas on the data directory's {}", quota_->fs_type());
    } else if (m == "project-quota") {
      throw bad_request("--write-limit-mode project-quota: " + why);
    } else {
      mode_ = Mode::kWatchdog;
      detail_ = why + "; runs past their limit are stopped by a watchdog instead";
    }
  } else if (m == "watchdog") {
    mode_ = Mode::kWatchdog;
    detail_ = "chosen with --write-limit-mode";
  } else {
    mode_ = Mode::kEndOfRun;
    detail_ = "chosen with --write-limit-mode: checked only when a run ends";
  }
  auto level = mode_ == Mode::kProjectQuota ? spdlog::level::info : spdlog::level::warn;
  spdlog::log(level, "per-run write limit {}: {} ({})",
              cfg_.default_bytes ? fmt::format("{} MiB", cfg_.default_bytes >> 20)
                                 : std::string("max_layer_bytes only"),
              mode_name(mode_), detail_);
}

nlohmann::json WriteLimits::describe() const {
  return {{"default", cfg_.default_bytes ? nlohmann::json(cfg_.default_bytes) : nullptr},
          {"enforced", mode_ != Mode::kEndOfRun},
          {"mode", mode_name(mode_)},
          {"headroom", kHeadroom},
          {"max_inodes", mode_ == Mode::kProjectQuota ? nlohmann::json(cfg_.max_inodes) : nullptr},
          {"detail", detail_}};
}

WriteLimits::Run::Run(Run&& o) noexcept
    : quota_(std::exchange(o.quota_, nullptr)),
      project_(o.project_),
      limit_(o.limit_),
      limited_(o.limited_),
      from_request_(o.from_request_) {}

WriteLimits::Run::~Run() {
  if (quota_) quota_->clear_limit(project_);
}

namespace {
// The directory `name` below `parent`, made when missing, opened without following links.
UniqueFd open_dir(int parent, const char* name, const fs::path& shown) {
  if (::mkdirat(parent, name, 0755) != 0 && errno != EEXIST)
    throw sys_error("mkdir " + shown.string());
  UniqueFd fd(::openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) throw sys_error("open " + shown.string());
  return fd;
}
}  // namespace

WriteLimits::Run WriteLimits::begin(sandbox::RunSpec& spec,
                                    std::optional<int64_t> max_layer_bytes) {
  Run r;
  if (max_layer_bytes &&
      (!cfg_.default_bytes || static_cast<uint64_t>(*max_layer_bytes) <= cfg_.default_bytes)) {
    r.limit_ = static_cast<uint64_t>(*max_layer_bytes);
    r.limited_ = r.from_request_ = true;
  } else if (cfg_.default_bytes) {
    r.limit_ = cfg_.default_bytes;
    r.limited_ = true;
  }
  if (!r.limited_) return r;
  const uint64_t hard = r.limit_ > UINT64_MAX - kHeadroom ? UINT64_MAX : r.limit_ + kHeadroom;
  spec.write_limit_bytes = hard;
  spec.watch_writes = mode_ == Mode::kWatchdog;
  if (mode_ != Mode::kProjectQuota) return r;
  // upper/ and work/ (and a spare's work/work) get the run's project before anything is
  // written below them; prepare_run_dir() later only sets their owner and mode.
  make_dirs(spec.run_dir, 0755);
  UniqueFd run(::open(spec.run_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!run) throw sys_error("open " + spec.run_dir.string());
  UniqueFd upper = open_dir(run.get(), "upper", spec.run_dir / "upper");
  UniqueFd work = open_dir(run.get(), "work", spec.run_dir / "work");
  const uint32_t id = quota_->new_id();
  quota_->set_limit(id, hard, cfg_.max_inodes);
  r.quota_ = quota_.get();  // from here the destructor clears the limit
  r.project_ = id;
  store::ProjectQuota::tag(upper.get(), id);
  store::ProjectQuota::tag(work.get(), id);
  UniqueFd inner(::openat(work.get(), "work", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (inner) store::ProjectQuota::tag(inner.get(), id);
  return r;
}

std::optional<uint64_t> WriteLimits::Run::exceeded(const sandbox::RunResult& res,
                                                   const fs::path& upper, bool walk) const {
  if (!limited_) return std::nullopt;
  std::optional<uint64_t> used;
  if (quota_) {
    try {
      used = quota_->usage(project_).bytes;
    } catch (const std::exception& e) {
      spdlog::warn("write limit: {}", e.what());
    }
  }
  // The runtime's own measure counts too (a disposable microvm run leaves the host's upper
  // empty, its changes were on the guest's disk).
  if (res.changes_bytes) used = std::max(used.value_or(0), *res.changes_bytes);
  if (!used && (walk || res.write_limit_hit)) used = tree_size(upper).bytes;
  if (res.write_limit_hit || (used && *used > limit_)) return used.value_or(0);
  return std::nullopt;
}

std::string WriteLimits::Run::error(uint64_t used, bool stopped) const {
  std::string what = from_request_
                         ? fmt::format("max_layer_bytes ({})", limit_)
                         : fmt::format("the server's per-run write limit ({} bytes)", limit_);
  return fmt::format("the run's filesystem changes ({} bytes) exceed {}{}", used, what,
                     stopped ? "; the run was stopped" : "");
}

}  // namespace coppice::engine
