#include "engine/scheduler.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace coppice::engine {

Scheduler::Scheduler(SchedulerLimits limits) : limits_(limits) {}

Scheduler::~Scheduler() {
  stop();
  join();
}

void Scheduler::start() {
  std::lock_guard lk(mu_);
  stopping_ = false;
  for (size_t i = 0; i < limits_.workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

int Scheduler::retry_after(const Project* p) const {
  // One queued task starts each time one of the running ones (its project's, or any) ends.
  size_t running = p ? p->running : running_;
  double s = avg_task_s_ / static_cast<double>(std::max<size_t>(running, 1));
  return static_cast<int>(std::clamp(std::ceil(s), 1.0, 60.0));
}

void Scheduler::submit(Task task, const std::function<void()>& admit) {
  {
    std::lock_guard lk(mu_);
    if (stopping_) throw Error(503, "the server is shutting down");
    if (queued_ >= limits_.max_queued)
      throw QueueFull(fmt::format("the server has {} queued operations, its limit "
                                  "(max_queued = {}); retry later",
                                  queued_, limits_.max_queued),
                      "max_queued", static_cast<int64_t>(limits_.max_queued), retry_after(nullptr));
    auto it = projects_.find(task.project);
    size_t mine = it == projects_.end() ? 0 : it->second.queue.size();
    if (mine >= limits_.project_max_queued)
      throw QueueFull(fmt::format("project {} has {} queued operations, its limit "
                                  "(project_max_queued = {}); retry later",
                                  task.project, mine, limits_.project_max_queued),
                      "project_max_queued", static_cast<int64_t>(limits_.project_max_queued),
                      retry_after(it == projects_.end() ? nullptr : &it->second));
    if (queued_ids_.count(task.id)) throw internal("task " + task.id + " is queued already");
    if (admit) admit();
    queued_ids_.emplace(task.id, task.project);
    Project& p = projects_[task.project];
    p.queue.push_back({std::move(task), ++submitted_});
    ++queued_;
  }
  cv_.notify_one();
}

std::optional<Scheduler::Task> Scheduler::remove(const std::string& id) {
  std::lock_guard lk(mu_);
  auto w = queued_ids_.find(id);
  if (w == queued_ids_.end()) return std::nullopt;
  auto pit = projects_.find(w->second);
  queued_ids_.erase(w);
  if (pit == projects_.end()) return std::nullopt;
  auto& q = pit->second.queue;
  for (auto it = q.begin(); it != q.end(); ++it) {
    if (it->task.id != id) continue;
    Task t = std::move(it->task);
    q.erase(it);
    --queued_;
    if (q.empty() && pit->second.running == 0) projects_.erase(pit);
    return t;
  }
  return std::nullopt;
}

std::vector<Scheduler::Task> Scheduler::stop() {
  std::vector<Task> dropped;
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    for (auto it = projects_.begin(); it != projects_.end();) {
      for (auto& q : it->second.queue) dropped.push_back(std::move(q.task));
      it->second.queue.clear();
      if (it->second.running == 0)
        it = projects_.erase(it);
      else
        ++it;
    }
    queued_ids_.clear();
    queued_ = 0;
  }
  cv_.notify_all();
  return dropped;
}

void Scheduler::join() {
  std::vector<std::thread> ws;
  {
    std::lock_guard lk(mu_);
    ws.swap(workers_);
  }
  for (auto& t : ws) t.join();
}

size_t Scheduler::running() const {
  std::lock_guard lk(mu_);
  return running_;
}

size_t Scheduler::queued() const {
  std::lock_guard lk(mu_);
  return queued_;
}

Scheduler::Counts Scheduler::counts(const std::string& project) const {
  std::lock_guard lk(mu_);
  auto it = projects_.find(project);
  if (it == projects_.end()) return {};
  return {it->second.queue.size(), it->second.running};
}

Scheduler::Project* Scheduler::pick() {
  Project* best = nullptr;
  for (auto& [name, p] : projects_) {
    if (p.queue.empty() || p.running >= limits_.project_max_running) continue;
    if (!best || p.running < best->running ||
        (p.running == best->running &&
         (p.last_served < best->last_served ||
          (p.last_served == best->last_served && p.queue.front().seq < best->queue.front().seq))))
      best = &p;
  }
  return best;
}

void Scheduler::worker_loop() {
  std::unique_lock lk(mu_);
  for (;;) {
    Project* p = nullptr;
    cv_.wait(lk, [&] { return stopping_ || (p = pick()) != nullptr; });
    if (stopping_) return;
    Task task = std::move(p->queue.front().task);
    p->queue.pop_front();
    queued_ids_.erase(task.id);
    --queued_;
    ++p->running;
    ++running_;
    p->last_served = ++seq_;
    const std::string project = task.project;
    lk.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    try {
      task.run();
    } catch (const std::exception& e) {
      spdlog::error("task {} threw: {}", task.id, e.what());
    } catch (...) {
      spdlog::error("task {} threw a non-standard exception", task.id);
    }
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    task = Task{};  // release what the task holds before taking the lock
    lk.lock();
    avg_task_s_ = 0.9 * avg_task_s_ + 0.1 * took;
    --running_;
    auto it = projects_.find(project);
    if (it != projects_.end()) {
      --it->second.running;
      // The freed slot may make another of its tasks eligible for an idle worker; this
      // worker loops and takes one itself, so no wake-up is needed.
      if (it->second.queue.empty() && it->second.running == 0) projects_.erase(it);
    }
  }
}

}  // namespace coppice::engine
