// How the gVisor runtime reads the end of `runsc run` (sandbox/runsc_end.h).
#include "sandbox/runsc_end.h"

#include <gtest/gtest.h>
#include <signal.h>

namespace coppice::sandbox {
namespace {

int exited(int code) {
  return code << 8;
}  // a waitpid status for exit(code)
int killed(int sig) {
  return sig;
}  // a waitpid status for a kill by sig

TEST(RunscEndTest, CleanRunscReportsTheCommandsStatus) {
  RunscOutcome o = read_runsc_end({exited(3), false, false, false});
  EXPECT_EQ(o.exit_code, 3);
  EXPECT_EQ(o.signal, -1);
  EXPECT_FALSE(o.oom_killed);
  EXPECT_FALSE(o.failure);
  // runsc exits 128+n when the command died of signal n
  o = read_runsc_end({exited(128 + SIGTERM), false, false, false});
  EXPECT_EQ(o.exit_code, 128 + SIGTERM);
  EXPECT_EQ(o.signal, SIGTERM);
  // a command that exits 2 at its memory limit (page cache reclaim) keeps its status
  o = read_runsc_end({exited(2), false, false, true});
  EXPECT_EQ(o.exit_code, 2);
  EXPECT_FALSE(o.oom_killed);
}

TEST(RunscEndTest, AnOomKillEndsTheSandboxWhateverRunscPrinted) {
  for (int ws : {exited(2), exited(1), killed(SIGKILL), exited(128 + SIGKILL)}) {
    RunscOutcome o = read_runsc_end({ws, false, true, true});
    EXPECT_EQ(o.exit_code, 137) << ws;
    EXPECT_EQ(o.signal, SIGKILL);
    EXPECT_TRUE(o.oom_killed);
    EXPECT_FALSE(o.failure);
  }
}

TEST(RunscEndTest, ACrashedRunscAtTheMemoryLimitReadsAsAnOomKill) {
  // the CI failure this guards: runsc's Go runtime died (exit 2) when the cgroup was full
  RunscOutcome o = read_runsc_end({exited(2), true, false, true});
  EXPECT_EQ(o.exit_code, 137);
  EXPECT_EQ(o.signal, SIGKILL);
  EXPECT_TRUE(o.oom_killed);
  EXPECT_FALSE(o.failure);
}

TEST(RunscEndTest, ACrashedRunscAtThePidsLimitReadsAsAKill) {
  // a fork bomb under the ptrace platform: the Sentry cannot create a stub and panics
  RunscOutcome o = read_runsc_end({exited(2), true, false, false, true});
  EXPECT_EQ(o.exit_code, 137);
  EXPECT_EQ(o.signal, SIGKILL);
  EXPECT_FALSE(o.oom_killed);
  EXPECT_FALSE(o.failure);
  // without a crash, the command's own status stands (its forks failed inside the sandbox)
  o = read_runsc_end({exited(0), false, false, false, true});
  EXPECT_EQ(o.exit_code, 0);
}

TEST(RunscEndTest, ACrashedRunscWithoutMemoryPressureIsAFailure) {
  RunscOutcome o = read_runsc_end({exited(2), true, false, false});
  ASSERT_TRUE(o.failure);
  EXPECT_NE(o.failure->find("exit status 2"), std::string::npos) << *o.failure;
  o = read_runsc_end({killed(SIGSEGV), true, false, false});
  ASSERT_TRUE(o.failure);
  EXPECT_NE(o.failure->find("signal 11"), std::string::npos) << *o.failure;
}

}  // namespace
}  // namespace coppice::sandbox
