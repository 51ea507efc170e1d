// A fixed set of threads that run blocking work for the HTTP server (SQLite queries, disk
// writes of uploads, file and archive streams), so that the IO threads never block.
// Tasks run in the order they were posted. The queue is not bounded here: the server posts
// at most one task per connection at a time, so it is bounded by --max-connections.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace coppice::api {

class WorkerPool {
 public:
  // Starts `threads` threads (at least one), named `name` for debuggers.
  WorkerPool(std::string name, size_t threads);
  // Runs what is queued, then joins.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `task`. A task must not throw (an escaping exception is logged and dropped).
  void post(std::function<void()> task);
  size_t threads() const { return threads_.size(); }
  // Tasks queued and not yet started (for logs and tests).
  size_t backlog() const;

 private:
  void loop();

  std::string name_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace coppice::api
