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

// runsc's panic log (its processes' stderr), as read after a run.
constexpr const char* kRawSocketNote =
    "I1204 01:25:04.903546      10 rate_limited.go:36] A process tried to create a raw socket "
    "without CAP_NET_RAW. Should the container config enable CAP_NET_RAW?\n";

TEST(RunscPanicLogTest, InformationalLinesAreNoCrash) {
  PanicLog l = read_panic_log(kRawSocketNote);
  EXPECT_FALSE(l.crashed);
  EXPECT_EQ(l.crash, "");
  ASSERT_EQ(l.notes.size(), 1u);
  EXPECT_EQ(l.notes[0].rfind("A process tried to create a raw socket", 0), 0u) << l.notes[0];
  // warnings and errors of gVisor's log, repeated, with blank lines and CRLF around them
  l = read_panic_log(
      std::string(kRawSocketNote) + "\n" + kRawSocketNote +
      "W1204 01:25:05.000001      12 syscalls.go:41] [  12:  12] Unsupported "
      "syscall ioprio_set(0x1,0x0,0x4000).\r\n"
      "E1204 01:25:06.1      3 gofer.go:77] failed to close fd: bad file descriptor");
  EXPECT_FALSE(l.crashed);
  EXPECT_EQ(l.notes.size(), 4u);
  EXPECT_EQ(l.notes[2], "[  12:  12] Unsupported syscall ioprio_set(0x1,0x0,0x4000).");
  EXPECT_FALSE(read_panic_log("").crashed);
  EXPECT_FALSE(read_panic_log("\n  \n").crashed);
}

TEST(RunscPanicLogTest, GoPanicsAndFatalSignalsAreCrashes) {
  const char* panic =
      "panic: runtime error: invalid memory address or nil pointer dereference\n"
      "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x8a3c1f]\n\n"
      "goroutine 213 [running]:\n"
      "gvisor.dev/gvisor/pkg/sentry/kernel.(*Task).run(0xc000d48000, 0x1)\n"
      "\tpkg/sentry/kernel/task_run.go:97 +0x1f\n";
  PanicLog l = read_panic_log(panic);
  EXPECT_TRUE(l.crashed);
  EXPECT_EQ(l.crash, panic);
  // Go's runtime out of memory (the Sentry at its memory cgroup's limit)
  l = read_panic_log(
      "runtime: out of memory: cannot allocate 4194304-byte block (1212153856 in use)\n"
      "fatal error: out of memory\n\nruntime stack:\nruntime.throw({0x11a3b9d?, 0x2030000?})\n");
  EXPECT_TRUE(l.crashed);
  EXPECT_EQ(l.crash.rfind("runtime: out of memory", 0), 0u);
  // a fatal signal outside Go code
  l = read_panic_log(
      "SIGSEGV: segmentation violation\nPC=0x46c1e1 m=0 sigcode=1\n\n"
      "goroutine 0 [idle]:\n");
  EXPECT_TRUE(l.crashed);
  EXPECT_TRUE(read_panic_log("fatal error: unexpected signal during runtime execution\n").crashed);
  EXPECT_TRUE(read_panic_log("SIGABRT: abort\n").crashed);
}

TEST(RunscPanicLogTest, ACrashAfterNotesIsReadFromItsFirstLine) {
  std::string text = std::string(kRawSocketNote) +
                     "panic: failed to create stub process: resource temporarily unavailable\n\n"
                     "goroutine 77 [running]:\n";
  PanicLog l = read_panic_log(text);
  EXPECT_TRUE(l.crashed);
  EXPECT_EQ(l.crash.rfind("panic: failed to create stub process", 0), 0u) << l.crash;
  EXPECT_EQ(l.notes.size(), 1u);
}

TEST(RunscPanicLogTest, FatalLogLinesAndUnknownTextAreCrashes) {
  // runsc's util.Fatalf logs a warning that starts FATAL ERROR, then exits
  EXPECT_TRUE(read_panic_log("W1204 01:25:04.903546       1 util.go:51] FATAL ERROR: "
                             "creating container: cannot create sandbox: EOF\n")
                  .crashed);
  EXPECT_TRUE(read_panic_log("F1204 01:25:04.903546       1 main.go:10] Sentry panic\n").crashed);
  // what is not recognised as informational counts as a crash: never hide one
  PanicLog l = read_panic_log("something unexpected happened\n");
  EXPECT_TRUE(l.crashed);
  EXPECT_EQ(l.crash, "something unexpected happened\n");
  EXPECT_TRUE(read_panic_log("I1204 not a log line\n").crashed);
  EXPECT_TRUE(read_panic_log("I12a4 01:25:04.903546 1 x.go:3] looks like one\n").crashed);
}

}  // namespace
}  // namespace coppice::sandbox
