#include "cli/interrupt.h"

#include <signal.h>

#include <atomic>

namespace coppice::cli {

namespace {
std::atomic<bool> g_interrupted{false};

void on_sigint(int) {
  g_interrupted.store(true);
}
}  // namespace

void catch_interrupts() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C terminates the CLI
  sigaction(SIGINT, &sa, nullptr);
}

bool interrupted() {
  return g_interrupted.load();
}

}  // namespace coppice::cli
