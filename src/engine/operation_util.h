// Pieces that every kind of operation of the engine shares (engine.cc: runs; transfers.cc:
// imports and pushes; export.cc: exports). Internal to src/engine, not part of its interface.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "common/clock.h"
#include "common/ids.h"
#include "engine/live_operation.h"
#include "store/records.h"

namespace coppice::engine {

// A PENDING operation record of `kind`, created now.
inline store::OperationRecord new_operation(const std::string& project, const std::string& kind) {
  store::OperationRecord rec;
  rec.uuid = new_uuid();
  rec.project = project;
  rec.kind = kind;
  rec.status = "PENDING";
  rec.created_us = now_us();
  return rec;
}

// The abort check of an import or push: true once cancelled or past the deadline (then
// `timed_out` says which).
class TransferAbort {
 public:
  TransferAbort(LiveOperation& op, int64_t timeout_s)
      : op_(op), deadline_(std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s)) {}
  bool operator()() {
    if (std::chrono::steady_clock::now() > deadline_) timed_out_ = true;
    return timed_out_.load() || op_.cancel_token().cancelled();
  }
  bool timed_out() const { return timed_out_.load(); }

 private:
  LiveOperation& op_;
  std::chrono::steady_clock::time_point deadline_;
  std::atomic<bool> timed_out_{false};
};

}  // namespace coppice::engine
