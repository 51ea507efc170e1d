// Networking of a sandbox: a fresh network namespace with only the loopback interface up.
#pragma once

namespace coppice::sandbox {

// Child: sets IFF_UP on "lo" of the current network namespace (SIOCSIFFLAGS).
// Returns 0 or -1/errno. Async-signal-safe.
int bring_up_loopback() noexcept;

}  // namespace coppice::sandbox
