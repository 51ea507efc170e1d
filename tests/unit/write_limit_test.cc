// The per-run write limit: project id counter, the watchdog's measure, the effective limit
// and the decision, and (where the kernel has XFS quotas) the project quota facility itself
// on a loop-mounted XFS image.
#include "engine/write_limit.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "sandbox/write_watch.h"
#include "store/project_quota.h"

namespace coppice {
namespace {

using engine::WriteLimitConfig;
using engine::WriteLimits;
using store::ProjectIdCounter;
using store::ProjectQuota;

struct Scratch {
  fs::path dir = fs::path("/var/tmp") / ("write-limit-" + new_uuid());
  Scratch() { make_dirs(dir / "tmp"); }
  ~Scratch() { remove_tree(dir); }
};

void write_bytes(const fs::path& p, size_t n) {
  UniqueFd f(::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(f.valid());
  std::string chunk(1 << 16, 'x');
  for (size_t done = 0; done < n; done += chunk.size())
    ASSERT_GT(::write(f.get(), chunk.data(), std::min(chunk.size(), n - done)), 0);
  ::fsync(f.get());
}

TEST(ProjectIdCounter, NeverHandsOutAnIdTwiceAcrossRestarts) {
  Scratch s;
  fs::path file = s.dir / "ids";
  std::vector<uint32_t> first;
  {
    ProjectIdCounter c(file, 5000);
    for (int i = 0; i < 3; ++i) first.push_back(c.next());
    // the block is reserved on disk before the first id of it is used
    EXPECT_EQ(std::stoull(read_file(file)), 5000 + ProjectIdCounter::kBlock);
  }
  EXPECT_EQ(first, (std::vector<uint32_t>{5000, 5001, 5002}));
  ProjectIdCounter again(file, 5000);  // a restart (or a crash) skips the rest of the block
  uint32_t id = again.next();
  EXPECT_EQ(id, 5000 + ProjectIdCounter::kBlock);
  for (uint64_t i = 1; i < ProjectIdCounter::kBlock; ++i) again.next();
  EXPECT_EQ(again.next(), 5000 + 2 * ProjectIdCounter::kBlock);
  EXPECT_EQ(std::stoull(read_file(file)), 5000 + 3 * ProjectIdCounter::kBlock);
}

TEST(WriteWatch, MeasuresAllocatedBytesOnceAndFiresPastTheLimit) {
  Scratch s;
  fs::path up = s.dir / "upper";
  make_dirs(up / "a" / "b");
  write_bytes(up / "a" / "b" / "f", 3 << 20);
  ASSERT_EQ(::link((up / "a" / "b" / "f").c_str(), (up / "g").c_str()), 0);
  uint64_t bytes = sandbox::live_tree_bytes(up);
  EXPECT_GE(bytes, 3u << 20);
  EXPECT_LT(bytes, 4u << 20);  // the hard link is counted once
  // deeper than the fd stack: measured by the bounded walker, not missed
  EXPECT_GE(sandbox::live_tree_bytes(up, 1), 3u << 20);
  EXPECT_EQ(sandbox::live_tree_bytes(s.dir / "missing"), 0u);

  auto t0 = sandbox::WriteWatch::Clock::now();
  sandbox::WriteWatch off(up, 0, t0);
  EXPECT_FALSE(off.due());
  sandbox::WriteWatch w(up, 4 << 20, t0);
  ASSERT_TRUE(w.due());
  EXPECT_EQ(*w.due(), t0 + sandbox::WriteWatch::kFirst);
  EXPECT_FALSE(w.check(t0));  // not due yet: no walk
  EXPECT_FALSE(w.check(*w.due()));
  write_bytes(up / "more", 2 << 20);
  EXPECT_TRUE(w.check(*w.due()));
  EXPECT_GT(w.last_bytes(), 4u << 20);
}

TEST(WriteLimits, TheLimitIsTheSmallerOfTheServerDefaultAndMaxLayerBytes) {
  Scratch s;
  WriteLimitConfig cfg;
  cfg.default_bytes = 64 << 20;
  cfg.mode = "watchdog";
  WriteLimits wl(cfg, s.dir);
  EXPECT_EQ(wl.mode(), WriteLimits::Mode::kWatchdog);
  auto d = wl.describe();
  EXPECT_EQ(d["default"], 64 << 20);
  EXPECT_EQ(d["enforced"], true);
  EXPECT_EQ(d["mode"], "watchdog");

  sandbox::RunSpec spec;
  spec.run_dir = s.dir / "run";
  auto r = wl.begin(spec, std::nullopt);
  EXPECT_TRUE(r.limited());
  EXPECT_EQ(r.limit(), 64u << 20);
  EXPECT_FALSE(r.from_max_layer_bytes());
  EXPECT_EQ(spec.write_limit_bytes, (64u << 20) + WriteLimits::kHeadroom);
  EXPECT_TRUE(spec.watch_writes);

  sandbox::RunSpec small;
  small.run_dir = s.dir / "run2";
  auto r2 = wl.begin(small, 1000);
  EXPECT_EQ(r2.limit(), 1000u);
  EXPECT_TRUE(r2.from_max_layer_bytes());
  sandbox::RunSpec big;
  big.run_dir = s.dir / "run3";
  EXPECT_EQ(wl.begin(big, int64_t{1} << 40).limit(), 64u << 20);

  // the decision: the runtime's word, then its measure, then (a kept run) the upper itself
  sandbox::RunResult res;
  EXPECT_FALSE(r.exceeded(res, s.dir / "none", false));
  res.changes_bytes = 65 << 20;
  EXPECT_EQ(r.exceeded(res, s.dir / "none", false), uint64_t{65} << 20);
  res.changes_bytes = 1 << 20;
  EXPECT_FALSE(r.exceeded(res, s.dir / "none", false));
  res.changes_bytes.reset();
  make_dirs(s.dir / "up");
  write_bytes(s.dir / "up" / "f", 2000);
  EXPECT_FALSE(r.exceeded(res, s.dir / "up", true));
  EXPECT_TRUE(r2.exceeded(res, s.dir / "up", true));
  EXPECT_FALSE(r2.exceeded(res, s.dir / "up", false));  // disposable: no walk
  res.write_limit_hit = true;
  EXPECT_TRUE(r.exceeded(res, s.dir / "up", false));
  EXPECT_NE(r2.error(5000, false).find("max_layer_bytes (1000)"), std::string::npos);
  EXPECT_NE(r.error(5000, true).find("per-run write limit"), std::string::npos);

  // no server default and no max_layer_bytes: no limit at all
  WriteLimitConfig none;
  none.default_bytes = 0;
  none.mode = "end-of-run";
  WriteLimits nl(none, s.dir);
  sandbox::RunSpec nolimit;
  nolimit.run_dir = s.dir / "run4";
  auto r4 = nl.begin(nolimit, std::nullopt);
  EXPECT_FALSE(r4.limited());
  EXPECT_EQ(nolimit.write_limit_bytes, 0u);
  EXPECT_FALSE(nolimit.watch_writes);
  EXPECT_FALSE(r4.exceeded(res, s.dir / "up", true));
  EXPECT_EQ(nl.describe()["enforced"], false);
}

TEST(WriteLimits, RefusesABadModeAndQuotaModeWithoutQuotas) {
  Scratch s;
  WriteLimitConfig cfg;
  cfg.mode = "sometimes";
  EXPECT_THROW(WriteLimits(cfg, s.dir), Error);
  std::string why;
  if (ProjectQuota::open(s.dir, &why)) GTEST_SKIP() << "this data filesystem has project quotas";
  EXPECT_FALSE(why.empty());
  cfg.mode = "project-quota";
  EXPECT_THROW(WriteLimits(cfg, s.dir), Error);
  cfg.mode = "auto";
  EXPECT_EQ(WriteLimits(cfg, s.dir).mode(), WriteLimits::Mode::kWatchdog);
}

// A loop-mounted XFS image with prjquota, when this kernel can mount one (it needs
// CONFIG_XFS_QUOTA; the dev machines' kernel lacks it, so this skips there).
class XfsImage {
 public:
  XfsImage() {
    if (::geteuid() != 0) {
      why_ = "needs root";
      return;
    }
    make_dirs(mnt_);
    std::string cmd = "truncate -s 512M " + img_.string() + " && mkfs.xfs -q " + img_.string() +
                      " 2>/dev/null && mount -o loop,prjquota " + img_.string() + " " +
                      mnt_.string() + " 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) {
      why_ = "this kernel cannot mount XFS with prjquota (no mkfs.xfs, or no CONFIG_XFS_QUOTA)";
      return;
    }
    mounted_ = true;
  }
  ~XfsImage() {
    if (mounted_) ::umount2(mnt_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(base_, ec);
    fs::remove(img_, ec);
  }
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  const fs::path& dir() const { return mnt_; }

 private:
  fs::path base_ = fs::path("/var/tmp") / ("xfs-quota-" + new_uuid());
  fs::path img_ = base_.string() + ".img";
  fs::path mnt_ = base_;
  bool mounted_ = false;
  std::string why_;
};

TEST(ProjectQuota, CapsWritesBelowATaggedDirectoryOnXfs) {
  XfsImage x;
  if (!x.ok()) GTEST_SKIP() << x.why();
  make_dirs(x.dir() / "tmp");
  make_dirs(x.dir() / "layers");
  std::string why;
  auto q = ProjectQuota::open(x.dir(), &why);
  ASSERT_TRUE(q) << why;
  EXPECT_EQ(q->fs_type(), "xfs");
  make_dirs(x.dir() / "run" / "upper" / "sub");
  UniqueFd up(::open((x.dir() / "run" / "upper").c_str(), O_RDONLY | O_DIRECTORY));
  uint32_t id = q->new_id();
  EXPECT_GE(id, ProjectQuota::kFirstId);
  q->set_limit(id, 8 << 20, 100);
  ProjectQuota::tag(up.get(), id);
  EXPECT_EQ(ProjectQuota::project_of(up.get()), id);
  // a new file inherits the project; writing past the limit fails (XFS says ENOSPC for a
  // project quota, ext4 EDQUOT)
  UniqueFd f(::open((x.dir() / "run" / "upper" / "big").c_str(), O_WRONLY | O_CREAT, 0644));
  ASSERT_TRUE(f.valid());
  EXPECT_EQ(ProjectQuota::project_of(f.get()), id);
  std::string mb(1 << 20, 'x');
  int err = 0;
  for (int i = 0; i < 32 && !err; ++i)
    if (::write(f.get(), mb.data(), mb.size()) < 0) err = errno;
  EXPECT_TRUE(err == ENOSPC || err == EDQUOT) << strerror(err);  // XFS: ENOSPC
  f.reset();
  EXPECT_GT(q->usage(id).bytes, 4u << 20);
  // through overlayfs, as a run writes: a copy-up (made in work/work, renamed into upper/)
  // needs work/ in the same project; then writes past the limit fail
  q->clear_limit(id);
  ::unlink((x.dir() / "run" / "upper" / "big").c_str());
  make_dirs(x.dir() / "lower" / "etc");
  write_bytes(x.dir() / "lower" / "etc" / "old", 1000);
  make_dirs(x.dir() / "run" / "work");
  make_dirs(x.dir() / "run" / "merged");
  UniqueFd work(::open((x.dir() / "run" / "work").c_str(), O_RDONLY | O_DIRECTORY));
  q->set_limit(id, 8 << 20, 100);
  ProjectQuota::tag(work.get(), id);
  std::string opts = "lowerdir=" + (x.dir() / "lower").string() +
                     ",upperdir=" + (x.dir() / "run" / "upper").string() +
                     ",workdir=" + (x.dir() / "run" / "work").string();
  fs::path merged = x.dir() / "run" / "merged";
  ASSERT_EQ(::mount("overlay", merged.c_str(), "overlay", 0, opts.c_str()), 0) << strerror(errno);
  {
    UniqueFd old(::open((merged / "etc" / "old").c_str(), O_WRONLY | O_APPEND));
    ASSERT_TRUE(old.valid()) << "copy-up: " << strerror(errno);
    EXPECT_EQ(::write(old.get(), "more", 4), 4);
    UniqueFd big(::open((merged / "etc" / "big").c_str(), O_WRONLY | O_CREAT, 0644));
    ASSERT_TRUE(big.valid());
    err = 0;
    for (int i = 0; i < 32 && !err; ++i)
      if (::write(big.get(), mb.data(), mb.size()) < 0) err = errno;
    EXPECT_TRUE(err == ENOSPC || err == EDQUOT) << strerror(err);  // XFS: ENOSPC
  }
  ASSERT_EQ(::umount(merged.c_str()), 0);
  {
    UniqueFd copied(::open((x.dir() / "run" / "upper" / "etc" / "old").c_str(), O_RDONLY));
    ASSERT_TRUE(copied.valid());
    EXPECT_EQ(ProjectQuota::project_of(copied.get()), id);
  }
  EXPECT_GT(q->usage(id).bytes, 4u << 20);
  EXPECT_LE(q->usage(id).bytes, 9u << 20);
  // the upper can still be renamed into a directory without PROJINHERIT (layers/)
  EXPECT_EQ(::rename((x.dir() / "run" / "upper").c_str(), (x.dir() / "layers" / "l1").c_str()), 0);
  // cleared: writes go on
  q->clear_limit(id);
  UniqueFd g(::open((x.dir() / "layers" / "l1" / "more").c_str(), O_WRONLY | O_CREAT, 0644));
  ASSERT_TRUE(g.valid());
  for (int i = 0; i < 16; ++i)
    ASSERT_EQ(::write(g.get(), mb.data(), mb.size()), static_cast<ssize_t>(mb.size()));
  // what a run's quota costs: an id, a limit, tagging upper/ work/ work/work, the usage, clearing
  make_dirs(x.dir() / "cost" / "work");
  UniqueFd cu(::open((x.dir() / "cost").c_str(), O_RDONLY | O_DIRECTORY));
  UniqueFd cw(::open((x.dir() / "cost" / "work").c_str(), O_RDONLY | O_DIRECTORY));
  const int n = 200;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    uint32_t pid = q->new_id();
    q->set_limit(pid, 1 << 30, 1000);
    ProjectQuota::tag(cu.get(), pid);
    ProjectQuota::tag(cw.get(), pid);
    ProjectQuota::tag(cw.get(), pid);
    (void)q->usage(pid);
    q->clear_limit(pid);
  }
  double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "quota cost per run: " << us / n << " us (over " << n << " runs)\n";
}

}  // namespace
}  // namespace coppice
