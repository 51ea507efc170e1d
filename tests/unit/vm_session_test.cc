// The host's deadlines and frame order for a microVM run (sandbox/vm_session.h): nothing the
// guest sends extends the run.
#include "sandbox/vm_session.h"

#include <gtest/gtest.h>

#include <memory>

namespace coppice::sandbox {
namespace {

namespace g = coppice::guest;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = VmSession::Clock;

VmAllowances allowances() {
  VmAllowances a;
  a.boot = seconds(60);
  a.kill_grace = seconds(10);
  a.changes = seconds(120);
  a.shutdown = seconds(30);
  return a;
}

TEST(VmSessionTest, TheDeadlineFollowsThePhasesAndNeverPassesTheCap) {
  Clock::time_point t0{};
  VmSession s(t0, seconds(5), true, allowances());
  EXPECT_EQ(s.cap(), t0 + seconds(60 + 5 + 10 + 120 + 30));
  EXPECT_EQ(s.deadline(), t0 + seconds(60));
  EXPECT_FALSE(s.on_frame(g::kStarted, t0 + seconds(3)));
  EXPECT_EQ(s.phase(), VmSession::Phase::kRunning);
  EXPECT_EQ(s.deadline(), t0 + seconds(3 + 5 + 10));
  EXPECT_FALSE(s.on_frame(g::kStdout, t0 + seconds(4)));
  EXPECT_FALSE(s.on_frame(g::kStderr, t0 + seconds(4)));
  EXPECT_EQ(s.deadline(), t0 + seconds(18));  // output moves nothing
  EXPECT_FALSE(s.on_frame(g::kExit, t0 + seconds(6)));
  EXPECT_EQ(s.phase(), VmSession::Phase::kSendingChanges);
  EXPECT_EQ(s.deadline(), t0 + seconds(6 + 120));
  EXPECT_FALSE(s.on_frame(g::kEntry, t0 + seconds(7)));
  EXPECT_FALSE(s.on_frame(g::kData, t0 + seconds(7)));
  EXPECT_FALSE(s.on_frame(g::kEnd, t0 + seconds(8)));
  EXPECT_EQ(s.phase(), VmSession::Phase::kShuttingDown);
  EXPECT_EQ(s.deadline(), t0 + seconds(8 + 30));
  EXPECT_LE(s.deadline(), s.cap());
}

TEST(VmSessionTest, ALateFrameStartsItsPhaseFromTheMissedDeadline) {
  // frames that arrive after their phase's deadline (the host had not looked yet) do not
  // earn the next phase's full allowance from their arrival
  Clock::time_point t0{};
  VmSession s(t0, seconds(5), false, allowances());
  EXPECT_FALSE(s.on_frame(g::kStarted, t0 + seconds(100)));
  EXPECT_EQ(s.deadline(), t0 + seconds(60 + 5 + 10));
  EXPECT_FALSE(s.on_frame(g::kExit, t0 + seconds(500)));
  EXPECT_EQ(s.phase(), VmSession::Phase::kShuttingDown);  // no changes asked for
  EXPECT_EQ(s.deadline(), t0 + seconds(75 + 30));
  EXPECT_EQ(s.deadline(), s.cap());
}

TEST(VmSessionTest, RepeatedOrOutOfOrderFramesBreakTheProtocol) {
  Clock::time_point t0{};
  auto started = [&] {
    auto s = std::make_unique<VmSession>(t0, seconds(5), true, allowances());
    EXPECT_FALSE(s->on_frame(g::kStarted, t0 + seconds(1)));
    return s;
  };
  // the old bug: every kStarted (and kExit) restarted the host's clock
  auto s = started();
  auto before = s->deadline();
  auto bad = s->on_frame(g::kStarted, t0 + seconds(4));
  ASSERT_TRUE(bad);
  EXPECT_EQ(*bad, "a started frame while the command was running");
  EXPECT_EQ(s->deadline(), before);
  s = started();
  EXPECT_FALSE(s->on_frame(g::kExit, t0 + seconds(2)));
  EXPECT_TRUE(s->on_frame(g::kExit, t0 + seconds(3)));
  EXPECT_TRUE(s->on_frame(g::kStdout, t0 + seconds(3)));  // output after the exit
  EXPECT_TRUE(s->on_frame(g::kStarted, t0 + seconds(3)));
  // changes before the exit, or when none were asked for
  s = started();
  EXPECT_TRUE(s->on_frame(g::kEntry, t0 + seconds(2)));
  VmSession disposable(t0, seconds(5), false, allowances());
  EXPECT_FALSE(disposable.on_frame(g::kStarted, t0));
  EXPECT_FALSE(disposable.on_frame(g::kExit, t0));
  EXPECT_TRUE(disposable.on_frame(g::kEntry, t0));
  // output before the start, host-to-guest frames, unknown types, anything after the end
  VmSession booting(t0, seconds(5), true, allowances());
  EXPECT_TRUE(booting.on_frame(g::kStdout, t0));
  EXPECT_TRUE(booting.on_frame(g::kSpec, t0));
  EXPECT_TRUE(booting.on_frame(g::kDone, t0));
  bad = booting.on_frame(static_cast<g::FrameType>('?'), t0);
  ASSERT_TRUE(bad);
  EXPECT_NE(bad->find("unknown frame type 63"), std::string::npos) << *bad;
  s = started();
  EXPECT_FALSE(s->on_frame(g::kExit, t0));
  EXPECT_FALSE(s->on_frame(g::kEnd, t0));
  EXPECT_TRUE(s->on_frame(g::kEnd, t0));
  EXPECT_TRUE(s->on_frame(g::kError, t0));
}

TEST(VmSessionTest, AGuestErrorEndsEveryPhaseButTheLast) {
  Clock::time_point t0{};
  for (int frames = 0; frames < 3; ++frames) {
    VmSession s(t0, seconds(5), true, allowances());
    const g::FrameType before[] = {g::kStarted, g::kExit};
    for (int i = 0; i < frames && i < 2; ++i) EXPECT_FALSE(s.on_frame(before[i], t0));
    EXPECT_FALSE(s.on_frame(g::kError, t0 + seconds(1))) << frames;
    EXPECT_EQ(s.phase(), VmSession::Phase::kShuttingDown);
    EXPECT_LE(s.deadline(), t0 + seconds(31));
  }
}

}  // namespace
}  // namespace coppice::sandbox
