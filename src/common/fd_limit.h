// The process's descriptor limit (RLIMIT_NOFILE). Every HTTP connection and every live
// sandbox holds descriptors, so the server raises the limit at start as far as the host lets.
#pragma once

#include <cstdint>
#include <string>

namespace coppice {

struct FdLimit {
  uint64_t soft = 0;
  uint64_t hard = 0;
  uint64_t before_soft = 0;  // what the process had
  uint64_t before_hard = 0;
  std::string note;  // why it is not higher, when it could not be raised to fs.nr_open
};

// Raises the soft limit to the hard limit, and (with CAP_SYS_RESOURCE, e.g. root) both up to
// /proc/sys/fs/nr_open, the kernel's ceiling. Never lowers either. Returns what it got.
FdLimit raise_fd_limit();

}  // namespace coppice
