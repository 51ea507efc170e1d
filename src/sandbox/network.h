// Networking of a sandbox: a network namespace of its own with only the loopback interface up.
//
// Creating a network namespace costs about 1 ms and serialises in the kernel (platform notes
// A4), so namespaces are made ahead of time by NetnsPool and a run enters one with setns()
// before clone(). Pool namespaces belong to the initial user namespace: sandboxed root holds no
// capability over them, so it cannot add interfaces, change routes or sysctls. To keep the
// usual in-container behaviour anyway, each pooled namespace allows unprivileged binding of
// every port (ip_unprivileged_port_start=0) and ICMP echo sockets for every group.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>

#include "common/fd.h"

namespace coppice::sandbox {

// Child: sets IFF_UP on "lo" of the current network namespace (SIOCSIFFLAGS) unless it is up
// already. Returns 0 or -1/errno. Async-signal-safe.
int bring_up_loopback() noexcept;

class NetnsPool {
 public:
  // Keeps `target` namespaces ready (0 disables the pool: take() always makes one).
  explicit NetnsPool(size_t target);
  ~NetnsPool();
  NetnsPool(const NetnsPool&) = delete;
  NetnsPool& operator=(const NetnsPool&) = delete;

  // An unused network namespace (an nsfs fd), from the pool or made now. Throws Error.
  UniqueFd take();

 private:
  UniqueFd make();
  void refill_loop();

  size_t target_;
  UniqueFd host_ns_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<UniqueFd> ready_;
  bool stopping_ = false;
  std::thread refiller_;
};

// While alive, the calling thread is in network namespace `ns` (children it clones inherit it);
// the destructor returns the thread to the namespace it was in. Throws Error when entering fails.
class ScopedNetns {
 public:
  explicit ScopedNetns(int ns);
  ~ScopedNetns();
  ScopedNetns(const ScopedNetns&) = delete;
  ScopedNetns& operator=(const ScopedNetns&) = delete;

 private:
  UniqueFd prev_;
};

}  // namespace coppice::sandbox
