// Fair scheduling of operations (runs, imports, pushes, exports) on a fixed pool of worker
// threads, with per-project queues.
//
// Every task belongs to a project. Each project has its own FIFO queue; a free worker takes the
// head of the queue of the *eligible* project (queued work, fewer than `project_max_running`
// of its tasks running) that has the fewest tasks running, ties going to the project served
// least recently, then to the one whose head task was submitted first (so equal projects
// take turns, round-robin). So a project that queues 10,000 tasks never delays another project's
// single task by more than the time until one worker frees up (one task's length at most), and when
// the first project is at its running cap the other project's task starts at once.
//
// Caps at submit time: `max_queued` queued tasks on the whole server and `project_max_queued`
// per project; past either, submit() throws QueueFull (HTTP 429, with a Retry-After estimate).
//
// Thread-safety: every method may be called from any thread. Task::run runs on a worker
// thread without the scheduler's lock held; it must not throw (what it throws is logged).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/error.h"

namespace coppice::engine {

struct SchedulerLimits {
  size_t workers = 16;               // tasks running at once on the whole server
  size_t max_queued = 10000;         // queued (not yet running) tasks on the whole server
  size_t project_max_queued = 1000;  // queued tasks of one project
  size_t project_max_running = 8;    // running tasks of one project (the rest wait queued)
};

// A queue cap was reached: HTTP 429. `limit` names the cap (`max_queued` or
// `project_max_queued`), `value` is its setting, `retry_after_s` a hint for the client.
class QueueFull : public Error {
 public:
  QueueFull(std::string message, std::string limit, int64_t value, int retry_after_s)
      : Error(429, std::move(message)),
        limit_(std::move(limit)),
        value_(value),
        retry_after_s_(retry_after_s) {}
  const std::string& limit() const { return limit_; }
  int64_t value() const { return value_; }
  int retry_after_s() const { return retry_after_s_; }

 private:
  std::string limit_;
  int64_t value_;
  int retry_after_s_;
};

class Scheduler {
 public:
  struct Task {
    std::string id;       // unique among queued tasks (the operation's uuid)
    std::string project;  // the fairness domain
    std::function<void()> run;
  };
  struct Counts {
    size_t queued = 0;
    size_t running = 0;
  };

  explicit Scheduler(SchedulerLimits limits);
  ~Scheduler();  // stop() and join()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Starts the worker threads (again after a stop() and join()).
  void start();
  // Queues a task. Throws Error 503 once stopping, QueueFull past a queue cap. `admit` runs
  // under the scheduler's lock after the caps are checked and before any worker can see the
  // task (to record it durably, say); when it throws, nothing is queued and the exception
  // propagates. It must not call back into the scheduler.
  void submit(Task task, const std::function<void()>& admit = nullptr);
  // Takes a queued task out of its queue (a cancel): the task, or nullopt when it is not queued
  // (unknown, already running or finished).
  std::optional<Task> remove(const std::string& id);
  // Refuses new tasks and returns the queued ones, taken out of their queues (never run).
  // Running tasks go on; workers exit once theirs is done.
  std::vector<Task> stop();
  // Waits for the worker threads to exit (call stop() first).
  void join();

  size_t running() const;
  size_t queued() const;
  Counts counts(const std::string& project) const;
  const SchedulerLimits& limits() const { return limits_; }

 private:
  struct Queued {
    Task task;
    uint64_t seq;  // submit order
  };
  struct Project {
    std::deque<Queued> queue;
    size_t running = 0;
    uint64_t last_served = 0;  // dispatch sequence number of its last task; 0 = never
  };
  void worker_loop();
  // The project whose head task runs next, or nullptr. Caller holds mu_.
  Project* pick();
  // A Retry-After hint for a project (or the server, when `p` is null) past its queue cap:
  // the expected time until one of its tasks starts. Caller holds mu_.
  int retry_after(const Project* p) const;

  const SchedulerLimits limits_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<std::string, Project> projects_;  // only those with queued or running tasks
  std::unordered_map<std::string, std::string> queued_ids_;  // task id -> project
  size_t queued_ = 0;
  size_t running_ = 0;
  uint64_t seq_ = 0;         // dispatches so far
  uint64_t submitted_ = 0;   // submits so far
  double avg_task_s_ = 1.0;  // moving average of task durations, for retry_after()
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace coppice::engine
