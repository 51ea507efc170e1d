// Ctrl-C handling for long waits: the first SIGINT sets a flag that interruptible transfers
// poll (they then stop and the command cancels its remote operation); a second SIGINT kills
// the process as usual.
#pragma once

namespace coppice::cli {

// Installs the one-shot SIGINT handler. Idempotent.
void catch_interrupts();
// True once SIGINT arrived after catch_interrupts().
bool interrupted();

}  // namespace coppice::cli
