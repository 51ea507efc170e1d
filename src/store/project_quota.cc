#include "store/project_quota.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/dqblk_xfs.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/quota.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"

namespace coppice::store {

namespace {

long quotactl_fd(int fd, unsigned cmd, uint32_t id, void* addr) {
  return ::syscall(SYS_quotactl_fd, fd, QCMD(cmd, PRJQUOTA), id, addr);
}

std::string fs_name(const struct statfs& sfs) {
  switch (static_cast<unsigned long>(sfs.f_type)) {
    case XFS_SUPER_MAGIC:
      return "xfs";
    case EXT4_SUPER_MAGIC:
      return "ext4";
    case BTRFS_SUPER_MAGIC:
      return "btrfs";
    case TMPFS_MAGIC:
      return "tmpfs";
    case OVERLAYFS_SUPER_MAGIC:
      return "overlay";
    default:
      return fmt::format("filesystem type {:#x}", static_cast<unsigned long>(sfs.f_type));
  }
}

}  // namespace

ProjectIdCounter::ProjectIdCounter(fs::path file, uint32_t first) : file_(std::move(file)) {
  uint64_t stored = 0;
  try {
    stored = std::stoull(read_file(file_));
  } catch (const std::exception&) {
    stored = 0;  // no file yet (an unreadable one is rewritten by next())
  }
  next_ = reserved_ = std::max<uint64_t>(stored, first);
}

uint32_t ProjectIdCounter::next() {
  std::lock_guard lk(mu_);
  if (next_ >= reserved_) {
    uint64_t end = next_ + kBlock;
    if (end > UINT32_MAX) throw internal("project quota ids ran out");
    write_file_atomic(file_, std::to_string(end) + "\n", true);
    reserved_ = end;
  }
  return static_cast<uint32_t>(next_++);
}

ProjectQuota::ProjectQuota(UniqueFd root, fs::path counter, std::string fs_type)
    : root_(std::move(root)), fs_type_(std::move(fs_type)), ids_(std::move(counter), kFirstId) {}

std::unique_ptr<ProjectQuota> ProjectQuota::open(const fs::path& data_dir, std::string* why) {
  UniqueFd root(::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  struct statfs sfs {};
  if (!root || ::fstatfs(root.get(), &sfs) != 0) {
    *why = fmt::format("cannot open the data directory: {}", std::strerror(errno));
    return nullptr;
  }
  std::string type = fs_name(sfs);
  if (type != "xfs" && type != "ext4") {
    *why = fmt::format(
        "the data directory is on {}, which has no project quotas (XFS or ext4 needed)", type);
    return nullptr;
  }
  const char* how = type == "xfs" ? "mount it with -o prjquota"
                                  : "mkfs.ext4 -O project,quota and mount it with -o prjquota";
  fs_quota_statv st{};
  st.qs_version = FS_QSTATV_VERSION1;
  if (quotactl_fd(root.get(), Q_XGETQSTATV, 0, &st) != 0) {
    *why = fmt::format("the data directory's {} has no quotas ({}: {})", type, std::strerror(errno),
                       errno == ENOSYS || errno == EINVAL || errno == ENOTTY
                           ? "the kernel or the filesystem lacks quota support"
                           : how);
    return nullptr;
  }
  if (!(st.qs_flags & FS_QUOTA_PDQ_ENFD)) {
    *why = fmt::format("the data directory's {} does not enforce project quotas ({})", type, how);
    return nullptr;
  }
  std::unique_ptr<ProjectQuota> q(
      new ProjectQuota(std::move(root), data_dir / "project-quota-next", type));
  // The whole path once, on a scratch directory: id, tag, limit, usage, clear.
  fs::path probe = data_dir / "tmp" / ("quota-probe-" + random_hex(6));
  try {
    make_dirs(probe, 0700);
    UniqueFd d(::open(probe.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!d) throw sys_error("open " + probe.string());
    uint32_t id = q->new_id();
    q->set_limit(id, 1 << 20, 16);
    tag(d.get(), id);
    if (project_of(d.get()) != id) throw internal("the project id did not stick");
    (void)q->usage(id);
    q->clear_limit(id);
    d.reset();
    remove_tree(probe);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(probe, ec);
    *why = fmt::format("project quotas on the data directory's {} do not work: {}", type, e.what());
    return nullptr;
  }
  return q;
}

void ProjectQuota::tag(int dirfd, uint32_t id) {
  struct fsxattr fa {};
  if (::ioctl(dirfd, FS_IOC_FSGETXATTR, &fa) != 0) throw sys_error("FS_IOC_FSGETXATTR");
  fa.fsx_projid = id;
  fa.fsx_xflags |= FS_XFLAG_PROJINHERIT;
  if (::ioctl(dirfd, FS_IOC_FSSETXATTR, &fa) != 0)
    throw sys_error(fmt::format("set project id {} (FS_IOC_FSSETXATTR)", id));
}

uint32_t ProjectQuota::project_of(int fd) {
  struct fsxattr fa {};
  if (::ioctl(fd, FS_IOC_FSGETXATTR, &fa) != 0) throw sys_error("FS_IOC_FSGETXATTR");
  return fa.fsx_projid;
}

void ProjectQuota::set_limit(uint32_t id, uint64_t bytes, uint64_t inodes) {
  struct if_dqblk q {};
  q.dqb_bhardlimit = (bytes + QIF_DQBLKSIZE - 1) / QIF_DQBLKSIZE;
  q.dqb_ihardlimit = inodes;
  q.dqb_valid = QIF_LIMITS;
  if (quotactl_fd(root_.get(), Q_SETQUOTA, id, &q) != 0)
    throw sys_error(fmt::format("set the quota of project {}", id));
}

void ProjectQuota::clear_limit(uint32_t id) noexcept {
  struct if_dqblk q {};
  q.dqb_valid = QIF_LIMITS;
  if (quotactl_fd(root_.get(), Q_SETQUOTA, id, &q) != 0)
    spdlog::warn("could not clear the quota of project {}: {}", id, std::strerror(errno));
}

ProjectQuota::Usage ProjectQuota::usage(uint32_t id) const {
  struct if_dqblk q {};
  if (quotactl_fd(root_.get(), Q_GETQUOTA, id, &q) != 0)
    throw sys_error(fmt::format("read the quota of project {}", id));
  return {q.dqb_curspace, q.dqb_curinodes};
}

}  // namespace coppice::store
