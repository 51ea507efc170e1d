// The fair scheduler (engine/scheduler.h): order between projects, per-project caps, removal
// of queued tasks and shutdown.
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

namespace coppice::engine {
namespace {

using namespace std::chrono_literals;

// A latch a test opens; tasks wait on it.
class Gate {
 public:
  void open() {
    {
      std::lock_guard lk(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Records the order tasks ran in.
class Log {
 public:
  void add(const std::string& s) {
    std::lock_guard lk(mu_);
    v_.push_back(s);
  }
  std::vector<std::string> get() {
    std::lock_guard lk(mu_);
    return v_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> v_;
};

// Polls `cond` for up to 5 s.
template <typename F>
bool eventually(F cond) {
  auto until = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return cond();
}

SchedulerLimits limits(size_t workers, size_t project_running, size_t project_queued = 1000,
                       size_t queued = 10000) {
  return {workers, queued, project_queued, project_running};
}

TEST(SchedulerTest, ProjectsTakeTurns) {
  Scheduler s(limits(1, 1));
  s.start();
  Gate gate;
  Log log;
  s.submit({"gate", "g", [&] { gate.wait(); }});
  ASSERT_TRUE(eventually([&] { return s.running() == 1; }));
  for (int i = 1; i <= 4; ++i)
    s.submit({"a" + std::to_string(i), "alpha", [&log, i] { log.add("a" + std::to_string(i)); }});
  for (int i = 1; i <= 2; ++i)
    s.submit({"b" + std::to_string(i), "beta", [&log, i] { log.add("b" + std::to_string(i)); }});
  gate.open();
  ASSERT_TRUE(eventually([&] { return log.get().size() == 6; }));
  EXPECT_EQ(log.get(), (std::vector<std::string>{"a1", "b1", "a2", "b2", "a3", "a4"}));
  s.stop();
  s.join();
}

TEST(SchedulerTest, ALateSingleTaskOvertakesALongQueue) {
  // One worker busy with alpha's work and 100 more of alpha's queued: beta's one task is the
  // next to run, not the 101st.
  Scheduler s(limits(1, 1));
  s.start();
  Gate gate;
  Log log;
  s.submit({"a0", "alpha", [&] {
              gate.wait();
              log.add("a0");
            }});
  ASSERT_TRUE(eventually([&] { return s.running() == 1; }));
  for (int i = 1; i <= 100; ++i)
    s.submit({"a" + std::to_string(i), "alpha", [&log, i] { log.add("a" + std::to_string(i)); }});
  s.submit({"b", "beta", [&] { log.add("b"); }});
  EXPECT_EQ(s.queued(), 101u);
  EXPECT_EQ(s.counts("alpha").queued, 100u);
  EXPECT_EQ(s.counts("alpha").running, 1u);
  EXPECT_EQ(s.counts("beta").queued, 1u);
  gate.open();
  ASSERT_TRUE(eventually([&] { return log.get().size() == 102; }));
  auto order = log.get();
  EXPECT_EQ(order[0], "a0");
  EXPECT_EQ(order[1], "b");
  s.stop();
  s.join();
}

TEST(SchedulerTest, ProjectRunningCapLeavesWorkersForOthers) {
  Scheduler s(limits(4, 2));
  s.start();
  Gate gate;
  std::atomic<int> alpha_running{0}, alpha_peak{0};
  for (int i = 0; i < 6; ++i)
    s.submit({"a" + std::to_string(i), "alpha", [&] {
                int n = ++alpha_running;
                for (int p = alpha_peak.load(); n > p && !alpha_peak.compare_exchange_weak(p, n);) {
                }
                gate.wait();
                --alpha_running;
              }});
  ASSERT_TRUE(eventually([&] { return s.counts("alpha").running == 2; }));
  std::this_thread::sleep_for(50ms);  // idle workers must not take a third
  EXPECT_EQ(s.counts("alpha").running, 2u);
  EXPECT_EQ(s.counts("alpha").queued, 4u);
  // beta starts at once on a free worker although alpha queued first
  std::atomic<bool> beta_ran{false};
  s.submit({"b", "beta", [&] { beta_ran = true; }});
  EXPECT_TRUE(eventually([&] { return beta_ran.load(); }));
  gate.open();
  ASSERT_TRUE(eventually([&] { return s.running() == 0 && s.queued() == 0; }));
  EXPECT_EQ(alpha_peak.load(), 2);
  EXPECT_EQ(s.counts("alpha").running, 0u);
  s.stop();
  s.join();
}

TEST(SchedulerTest, QueueCapsAnswer429AndNameTheLimit) {
  Scheduler s(limits(1, 1, /*project_queued=*/3, /*queued=*/5));
  s.start();
  Gate gate;
  s.submit({"run", "alpha", [&] { gate.wait(); }});
  ASSERT_TRUE(eventually([&] { return s.running() == 1; }));
  for (int i = 0; i < 3; ++i) s.submit({"a" + std::to_string(i), "alpha", [] {}});
  try {
    s.submit({"a3", "alpha", [] {}});
    FAIL() << "the 4th queued task of alpha was accepted";
  } catch (const QueueFull& e) {
    EXPECT_EQ(e.status(), 429);
    EXPECT_EQ(e.limit(), "project_max_queued");
    EXPECT_EQ(e.value(), 3);
    EXPECT_GE(e.retry_after_s(), 1);
    EXPECT_LE(e.retry_after_s(), 60);
    EXPECT_NE(std::string(e.what()).find("project_max_queued = 3"), std::string::npos);
  }
  // other projects have their own queue, up to the server's cap
  s.submit({"b0", "beta", [] {}});
  s.submit({"b1", "beta", [] {}});
  try {
    s.submit({"c0", "gamma", [] {}});
    FAIL() << "the server-wide cap was not applied";
  } catch (const QueueFull& e) {
    EXPECT_EQ(e.limit(), "max_queued");
    EXPECT_EQ(e.value(), 5);
  }
  EXPECT_EQ(s.queued(), 5u);
  // a failing admit queues nothing
  EXPECT_TRUE(s.remove("b1"));
  EXPECT_THROW(s.submit({"b2", "beta", [] {}}, [] { throw Error(500, "db down"); }), Error);
  EXPECT_EQ(s.queued(), 4u);
  EXPECT_EQ(s.counts("beta").queued, 1u);
  bool admitted = false;
  s.submit({"b3", "beta", [] {}}, [&] { admitted = true; });
  EXPECT_TRUE(admitted);
  gate.open();
  ASSERT_TRUE(eventually([&] { return s.queued() == 0 && s.running() == 0; }));
  s.stop();
  s.join();
}

TEST(SchedulerTest, RemoveTakesOnlyQueuedTasks) {
  Scheduler s(limits(1, 1));
  s.start();
  Gate gate;
  std::atomic<bool> removed_ran{false}, other_ran{false};
  s.submit({"running", "alpha", [&] { gate.wait(); }});
  ASSERT_TRUE(eventually([&] { return s.running() == 1; }));
  s.submit({"x", "alpha", [&] { removed_ran = true; }});
  s.submit({"y", "alpha", [&] { other_ran = true; }});
  auto t = s.remove("x");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->id, "x");
  EXPECT_EQ(t->project, "alpha");
  EXPECT_FALSE(s.remove("x"));        // gone already
  EXPECT_FALSE(s.remove("running"));  // running, not queued
  EXPECT_FALSE(s.remove("nope"));
  EXPECT_EQ(s.counts("alpha").queued, 1u);
  gate.open();
  ASSERT_TRUE(eventually([&] { return other_ran.load(); }));
  ASSERT_TRUE(eventually([&] { return s.running() == 0; }));
  EXPECT_FALSE(removed_ran.load());
  s.stop();
  s.join();
}

TEST(SchedulerTest, StopReturnsQueuedTasksAndLetsRunningOnesFinish) {
  Scheduler s(limits(2, 2));
  s.start();
  Gate gate;
  std::atomic<int> finished{0}, late{0};
  for (int i = 0; i < 2; ++i)
    s.submit({"r" + std::to_string(i), "alpha", [&] {
                gate.wait();
                ++finished;
              }});
  ASSERT_TRUE(eventually([&] { return s.running() == 2; }));
  for (int i = 0; i < 3; ++i) s.submit({"q" + std::to_string(i), "beta", [&] { ++late; }});
  auto dropped = s.stop();
  ASSERT_EQ(dropped.size(), 3u);
  EXPECT_EQ(dropped[0].id, "q0");
  EXPECT_EQ(s.queued(), 0u);
  try {
    s.submit({"z", "alpha", [] {}});
    FAIL() << "a stopping scheduler took a task";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), 503);
  }
  EXPECT_EQ(s.running(), 2u);
  gate.open();
  s.join();
  EXPECT_EQ(finished.load(), 2);
  EXPECT_EQ(late.load(), 0);
  EXPECT_EQ(s.running(), 0u);
}

TEST(SchedulerTest, ATaskThatThrowsDoesNotStopItsWorker) {
  Scheduler s(limits(1, 1));
  s.start();
  std::atomic<bool> next{false};
  s.submit({"bad", "alpha", [] { throw std::runtime_error("boom"); }});
  s.submit({"good", "alpha", [&] { next = true; }});
  EXPECT_TRUE(eventually([&] { return next.load(); }));
  s.stop();
  s.join();
}

}  // namespace
}  // namespace coppice::engine
