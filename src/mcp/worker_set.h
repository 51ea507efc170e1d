// Threads for requests in flight: each is joined when it finishes (reaped on the next start)
// or when the set is destroyed, so none outlives the transport that started it.
#pragma once

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

namespace coppice::mcp {

class WorkerSet {
 public:
  WorkerSet() = default;
  WorkerSet(const WorkerSet&) = delete;
  WorkerSet& operator=(const WorkerSet&) = delete;
  ~WorkerSet() { join_all(); }

  void start(std::function<void()> work) {
    std::lock_guard lock(mu_);
    reap_locked();
    auto w = std::make_unique<Worker>();
    Worker* raw = w.get();
    raw->thread = std::thread([raw, work = std::move(work)] {
      work();
      raw->done.store(true);
    });
    workers_.push_back(std::move(w));
  }

  void join_all() {
    std::list<std::unique_ptr<Worker>> all;
    {
      std::lock_guard lock(mu_);
      all.swap(workers_);
    }
    for (auto& w : all)
      if (w->thread.joinable()) w->thread.join();
  }

 private:
  struct Worker {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  void reap_locked() {
    for (auto it = workers_.begin(); it != workers_.end();) {
      if ((*it)->done.load()) {
        (*it)->thread.join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::mutex mu_;
  std::list<std::unique_ptr<Worker>> workers_;
};

}  // namespace coppice::mcp
