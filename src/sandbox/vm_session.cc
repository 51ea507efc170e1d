#include "sandbox/vm_session.h"

#include <fmt/format.h>

#include <algorithm>

namespace coppice::sandbox {

namespace {

const char* frame_name(guest::FrameType t) {
  switch (t) {
    case guest::kSpec:
      return "spec";
    case guest::kStarted:
      return "started";
    case guest::kStdout:
      return "stdout";
    case guest::kStderr:
      return "stderr";
    case guest::kExit:
      return "exit";
    case guest::kError:
      return "error";
    case guest::kEntry:
      return "change entry";
    case guest::kData:
      return "change data";
    case guest::kEnd:
      return "end of changes";
    case guest::kDone:
      return "done";
  }
  return nullptr;
}

const char* phase_name(VmSession::Phase p) {
  switch (p) {
    case VmSession::Phase::kBooting:
      return "the VM was booting";
    case VmSession::Phase::kRunning:
      return "the command was running";
    case VmSession::Phase::kSendingChanges:
      return "the changes were being sent";
    case VmSession::Phase::kShuttingDown:
      return "the VM was shutting down";
  }
  return "";
}

}  // namespace

VmSession::VmSession(Clock::time_point start, std::chrono::milliseconds timeout, bool changes,
                     const VmAllowances& allow)
    : allow_(allow), timeout_(std::max(timeout, std::chrono::milliseconds(0))), changes_(changes) {
  deadline_ = start + allow_.boot;
  cap_ = start + allow_.boot + timeout_ + allow_.kill_grace +
         (changes_ ? allow_.changes : std::chrono::milliseconds(0)) + allow_.shutdown;
}

std::optional<std::string> VmSession::on_frame(guest::FrameType t, Clock::time_point now) {
  auto advance = [&](Phase next, std::chrono::milliseconds allowance) {
    phase_ = next;
    deadline_ = std::min(deadline_, now) + allowance;
    return std::nullopt;
  };
  switch (phase_) {
    case Phase::kBooting:
      if (t == guest::kStarted) return advance(Phase::kRunning, timeout_ + allow_.kill_grace);
      if (t == guest::kError) return advance(Phase::kShuttingDown, allow_.shutdown);
      break;
    case Phase::kRunning:
      if (t == guest::kStdout || t == guest::kStderr) return std::nullopt;
      if (t == guest::kExit)
        return changes_ ? advance(Phase::kSendingChanges, allow_.changes)
                        : advance(Phase::kShuttingDown, allow_.shutdown);
      if (t == guest::kError) return advance(Phase::kShuttingDown, allow_.shutdown);
      break;
    case Phase::kSendingChanges:
      if (t == guest::kEntry || t == guest::kData) return std::nullopt;
      if (t == guest::kEnd || t == guest::kError)
        return advance(Phase::kShuttingDown, allow_.shutdown);
      break;
    case Phase::kShuttingDown:
      break;
  }
  const char* name = frame_name(t);
  return name ? fmt::format("a {} frame while {}", name, phase_name(phase_))
              : fmt::format("an unknown frame type {} while {}", static_cast<int>(t),
                            phase_name(phase_));
}

}  // namespace coppice::sandbox
