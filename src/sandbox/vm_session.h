// The host's view of one microVM run: which guest frames it accepts when, and when it stops
// waiting. The guest is hostile (its root can load modules, ptrace the agent and write any
// frame to the virtio-serial port), so nothing it sends may extend the run:
//  - every deadline is fixed by the host from the spec's timeout and the allowances below,
//    counted from the start of QEMU; a frame can only move the run to its next phase, once,
//    and a phase's deadline is min(the previous phase's deadline, now) + that phase's allowance,
//    so the last possible moment is start + boot + timeout + kill_grace + changes + shutdown;
//  - frames must come in the protocol's order (guest/protocol.h): kStarted once, output, kExit
//    once, the changes (only when asked for) and kEnd. Anything else (a second kStarted, output
//    after kExit, a host-to-guest frame) is a protocol violation: the run fails and the VM is
//    killed.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "guest/protocol.h"

namespace coppice::sandbox {

struct VmAllowances {
  // From QEMU's start to the guest's kStarted: firmware, kernel, agent, mounts, files.
  std::chrono::milliseconds boot{60000};
  // After the timeout, for the agent to kill the command and send kExit (the agent enforces
  // the timeout itself; this is the host's backstop).
  std::chrono::milliseconds kill_grace{10000};
  // From kExit to kEnd: the filesystem changes' transfer (at most the scratch disk's size).
  std::chrono::milliseconds changes{120000};
  // From the guest's last frame to QEMU's exit (the guest powers off after our kDone).
  std::chrono::milliseconds shutdown{30000};
};

class VmSession {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Phase { kBooting, kRunning, kSendingChanges, kShuttingDown };

  // `changes`: the guest sends the filesystem changes after kExit.
  VmSession(Clock::time_point start, std::chrono::milliseconds timeout, bool changes,
            const VmAllowances& allow = {});

  // A frame from the guest arrived at `now`. Returns an error message when it breaks the
  // protocol; else moves the phase on (kStarted, kExit, kEnd, kError) and sets the deadline.
  std::optional<std::string> on_frame(guest::FrameType t, Clock::time_point now);

  Phase phase() const { return phase_; }
  // When the host kills the VM (unless it exited before).
  Clock::time_point deadline() const { return deadline_; }
  // The latest deadline this session can ever have, fixed at construction.
  Clock::time_point cap() const { return cap_; }

 private:
  VmAllowances allow_;
  std::chrono::milliseconds timeout_;
  bool changes_;
  Phase phase_ = Phase::kBooting;
  Clock::time_point deadline_, cap_;
};

}  // namespace coppice::sandbox
