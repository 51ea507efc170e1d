#include "engine/live_operation.h"

#include "common/clock.h"

namespace coppice::engine {

store::OperationRecord LiveOperation::record() const {
  std::lock_guard lk(mu_);
  return rec_;
}

void LiveOperation::set_status(const std::string& status) {
  std::lock_guard lk(mu_);
  rec_.status = status;
}

void LiveOperation::append(int spid, std::string type, nlohmann::json data) {
  {
    std::lock_guard lk(mu_);
    store::EventRecord e;
    e.id = static_cast<int64_t>(events_.size());
    e.ts_us = now_us();
    e.spid = spid;
    e.type = std::move(type);
    e.data = std::move(data);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
  notify_subscribers();
}

std::vector<store::EventRecord> LiveOperation::events() const {
  std::lock_guard lk(mu_);
  return events_;
}

std::vector<store::EventRecord> LiveOperation::events_after(int64_t after, std::optional<int> spid,
                                                            std::chrono::milliseconds wait) const {
  std::unique_lock lk(mu_);
  auto collect = [&] {
    std::vector<store::EventRecord> out;
    size_t start = after < 0 ? 0 : static_cast<size_t>(after + 1);
    for (size_t i = start; i < events_.size(); ++i)
      if (!spid || events_[i].spid == *spid) out.push_back(events_[i]);
    return out;
  };
  auto out = collect();
  if (!out.empty() || finished_ || wait.count() == 0) return out;
  size_t seen = events_.size();
  cv_.wait_for(lk, wait, [&] { return finished_ || events_.size() > seen; });
  return collect();
}

bool LiveOperation::begin_finishing() {
  std::lock_guard lk(mu_);
  if (finishing_) return false;
  finishing_ = true;
  return true;
}

bool LiveOperation::request_cancel() {
  std::lock_guard lk(mu_);
  if (finishing_ || finished_) return false;
  cancel_.cancel();
  return true;
}

bool LiveOperation::finishing() const {
  std::lock_guard lk(mu_);
  return finishing_;
}

void LiveOperation::complete(const store::OperationRecord& rec,
                             const std::vector<store::EventRecord>& tail) {
  {
    std::lock_guard lk(mu_);
    rec_ = rec;
    for (const auto& e : tail)
      if (e.id >= static_cast<int64_t>(events_.size())) events_.push_back(e);
    finished_ = true;
    finishing_ = true;
  }
  cv_.notify_all();
  notify_subscribers();
}

uint64_t LiveOperation::subscribe(std::function<void()> fn) {
  std::lock_guard lk(mu_);
  uint64_t id = ++next_subscriber_;
  subscribers_.emplace(id, std::move(fn));
  return id;
}

void LiveOperation::unsubscribe(uint64_t id) {
  std::lock_guard lk(mu_);
  subscribers_.erase(id);
}

void LiveOperation::notify_subscribers() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard lk(mu_);
    if (subscribers_.empty()) return;
    fns.reserve(subscribers_.size());
    for (const auto& [id, fn] : subscribers_) fns.push_back(fn);
  }
  for (const auto& fn : fns) fn();
}

bool LiveOperation::finished() const {
  std::lock_guard lk(mu_);
  return finished_;
}

bool LiveOperation::wait_finished(std::chrono::milliseconds timeout) const {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return finished_; });
  return finished_;
}

}  // namespace coppice::engine
