// The in-memory state of an operation that is queued or running: its record, its ordered
// event log and its cancel token. Event-stream followers wait on it (blocking, or through a
// subscription that costs no thread); once the operation is finished the same data is in the
// MetaStore and the live object is dropped.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/runtime.h"
#include "store/records.h"

namespace coppice::engine {

class LiveOperation {
 public:
  explicit LiveOperation(store::OperationRecord rec) : rec_(std::move(rec)) {}

  store::OperationRecord record() const;
  void set_status(const std::string& status);
  // Mutates the record under the lock.
  template <typename F>
  void update(F&& f) {
    std::lock_guard lk(mu_);
    f(rec_);
  }
  // Appends an event (ids are 0, 1, 2, ... in append order) and wakes followers.
  void append(int spid, std::string type, nlohmann::json data);
  std::vector<store::EventRecord> events() const;
  // Events with id > after (and spid == *spid when given). Waits up to `wait` for at least one
  // when none is there yet and the operation is not finished.
  std::vector<store::EventRecord> events_after(int64_t after, std::optional<int> spid,
                                               std::chrono::milliseconds wait) const;
  // Marks the operation as being finalised (cancel is refused from then on). Returns false
  // when it already was. After it, cancel_token().cancelled() no longer changes: a cancel
  // accepted before it must end the operation CANCELLED.
  bool begin_finishing();
  // Accepts a cancel (fires the token) unless the operation is finalising; atomic with
  // begin_finishing(), so a cancel is either accepted before the point of no return or refused.
  bool request_cancel();
  bool finishing() const;
  // Publishes the final state in one step: the record, the remaining events (the completion
  // last, ids continuing the log) and the finished flag; then wakes followers.
  void complete(const store::OperationRecord& rec, const std::vector<store::EventRecord>& tail);
  bool finished() const;
  // Waits up to `timeout` for complete(); returns finished().
  bool wait_finished(std::chrono::milliseconds timeout) const;

  // Calls `fn` after every append() and after complete(), on the thread that made the change
  // and outside the lock, until unsubscribe(id). `fn` must be quick (it posts work elsewhere)
  // and must not call back into this object's subscribe/unsubscribe. A call already under way
  // may still run after unsubscribe() returns: `fn` must stay safe (e.g. hold a weak_ptr).
  uint64_t subscribe(std::function<void()> fn);
  void unsubscribe(uint64_t id);

  sandbox::CancelToken& cancel_token() { return cancel_; }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  store::OperationRecord rec_;
  std::vector<store::EventRecord> events_;
  bool finished_ = false;
  bool finishing_ = false;
  sandbox::CancelToken cancel_;
  uint64_t next_subscriber_ = 0;
  std::map<uint64_t, std::function<void()>> subscribers_;

  // Runs the subscribers' callbacks (copied under the lock) after a change.
  void notify_subscribers();
};

}  // namespace coppice::engine
