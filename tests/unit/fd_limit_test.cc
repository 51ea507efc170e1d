#include "common/fd_limit.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <fstream>

namespace coppice {
namespace {

TEST(FdLimit, RaisesTheSoftLimitToTheHardOneAndNeverLowers) {
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = 256;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  FdLimit got = raise_fd_limit();
  rlimit now{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &now), 0);
  EXPECT_EQ(got.before_soft, 256u);
  EXPECT_EQ(got.before_hard, old.rlim_max);
  EXPECT_EQ(got.soft, now.rlim_cur);
  EXPECT_EQ(got.hard, now.rlim_max);
  EXPECT_EQ(now.rlim_cur, now.rlim_max);  // soft raised to the hard limit
  EXPECT_GE(now.rlim_max, old.rlim_max);  // the hard one kept, or raised (CAP_SYS_RESOURCE)
  // Below the kernel's ceiling: the note says why.
  uint64_t nr_open = 0;
  std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
  if (now.rlim_max < nr_open) {
    EXPECT_FALSE(got.note.empty());
  }
  // Leave the process as it was (a raised hard limit stays: it cannot be lowered back
  // without losing it, and a larger one harms no other test).
  rlimit back = now;
  back.rlim_cur = std::min<rlim_t>(old.rlim_cur, now.rlim_max);
  ::setrlimit(RLIMIT_NOFILE, &back);
}

}  // namespace
}  // namespace coppice
