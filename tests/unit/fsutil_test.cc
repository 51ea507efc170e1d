#include "common/fsutil.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fd.h"
#include "common/ids.h"

namespace coppice {
namespace {

// Regression: the walkers used to hold fds per level and recurse on the stack, so a deep tree
// written by sandboxed code exhausted fds (hiding data from the size cap) or the stack.
TEST(FsUtil, DeepTreesAreWalkedWithBoundedFds) {
  fs::path root = fs::path("/var/tmp") / ("fsutil-deep-" + new_uuid());
  make_dirs(root);
  {
    UniqueFd cur(::open(root.c_str(), O_RDONLY | O_DIRECTORY));
    for (int i = 0; i < 3000; ++i) {
      ASSERT_EQ(::mkdirat(cur.get(), "d", 0755), 0);
      cur.reset(::openat(cur.get(), "d", O_RDONLY | O_DIRECTORY));
      ASSERT_TRUE(cur.valid());
    }
    UniqueFd f(::openat(cur.get(), "big", O_WRONLY | O_CREAT, 0644));
    ASSERT_TRUE(f.valid());
    std::string mb(1 << 20, 'x');
    ASSERT_EQ(::write(f.get(), mb.data(), mb.size()), static_cast<ssize_t>(mb.size()));
    ::fsync(f.get());
  }
  rlimit old;
  ::getrlimit(RLIMIT_NOFILE, &old);
  rlimit low = old;
  low.rlim_cur = 256;  // far fewer fds than levels
  ::setrlimit(RLIMIT_NOFILE, &low);
  TreeSize ts = tree_size(root);
  EXPECT_EQ(ts.entries, 3001u);
  EXPECT_GE(ts.bytes, 1u << 20);  // the file at the bottom is counted
  shift_ownership(root, 100000);
  struct stat st;
  ASSERT_EQ(::lstat(root.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 100000u);
  remove_tree(root);
  ::setrlimit(RLIMIT_NOFILE, &old);
  EXPECT_FALSE(fs::exists(root));
}

TEST(FsUtil, RemoveTreeNeverFollowsSymlinks) {
  fs::path root = fs::path("/var/tmp") / ("fsutil-link-" + new_uuid());
  fs::path outside = fs::path("/var/tmp") / ("fsutil-keep-" + new_uuid());
  make_dirs(root / "a");
  make_dirs(outside);
  write_file_atomic(outside / "keep", "x", false);
  ASSERT_EQ(::symlink(outside.c_str(), (root / "a" / "link").c_str()), 0);
  remove_tree(root);
  EXPECT_FALSE(fs::exists(root));
  EXPECT_TRUE(fs::exists(outside / "keep"));
  remove_tree(outside);
}

}  // namespace
}  // namespace coppice
