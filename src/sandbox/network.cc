#include "sandbox/network.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "common/error.h"

namespace coppice::sandbox {

namespace {
UniqueFd open_thread_netns() {
  UniqueFd fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!fd) throw sys_error("open /proc/thread-self/ns/net");
  return fd;
}

void write_sysctl(const char* path, const char* value) {
  UniqueFd f(::open(path, O_WRONLY | O_CLOEXEC));
  if (!f || ::write(f.get(), value, strlen(value)) < 0)
    spdlog::debug("netns pool: cannot set {}: {}", path, strerror(errno));
}
}  // namespace

ScopedNetns::ScopedNetns(int ns) : prev_(open_thread_netns()) {
  if (::setns(ns, CLONE_NEWNET) != 0) throw sys_error("setns into the sandbox network namespace");
}

ScopedNetns::~ScopedNetns() {
  if (::setns(prev_.get(), CLONE_NEWNET) != 0) {
    // A worker stuck in a sandbox's namespace would be a silent isolation bug: stop hard.
    spdlog::critical("setns back to the host network namespace failed: {}", strerror(errno));
    std::abort();
  }
}

NetnsPool::NetnsPool(size_t target) : target_(target), host_ns_(open_thread_netns()) {
  if (target_ > 0) refiller_ = std::thread([this] { refill_loop(); });
}

NetnsPool::~NetnsPool() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (refiller_.joinable()) refiller_.join();
}

UniqueFd NetnsPool::make() {
  // unshare(CLONE_NEWNET) affects only this thread; go back to the host namespace after.
  UniqueFd back = open_thread_netns();
  if (::unshare(CLONE_NEWNET) != 0) throw sys_error("unshare(CLONE_NEWNET)");
  UniqueFd ns;
  int err = 0;
  try {
    ns = open_thread_netns();
    if (bring_up_loopback() != 0) err = errno;
    write_sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
    write_sysctl("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
  } catch (...) {
    err = errno ? errno : EIO;
  }
  if (::setns(back.get(), CLONE_NEWNET) != 0) {
    spdlog::critical("setns back to the host network namespace failed: {}", strerror(errno));
    std::abort();
  }
  if (err) throw sys_error("prepare sandbox network namespace", err);
  return ns;
}

UniqueFd NetnsPool::take() {
  {
    std::lock_guard lk(mu_);
    if (!ready_.empty()) {
      UniqueFd fd = std::move(ready_.front());
      ready_.pop_front();
      cv_.notify_all();
      return fd;
    }
  }
  cv_.notify_all();
  return make();
}

void NetnsPool::refill_loop() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    if (ready_.size() >= target_) {
      cv_.wait(lk, [&] { return stopping_ || ready_.size() < target_; });
      continue;
    }
    lk.unlock();
    UniqueFd fd;
    try {
      fd = make();
    } catch (const std::exception& e) {
      spdlog::warn("netns pool: {}", e.what());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    lk.lock();
    if (fd) ready_.push_back(std::move(fd));
  }
}

}  // namespace coppice::sandbox
