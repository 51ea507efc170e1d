#include "common/fd_limit.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace coppice {

FdLimit raise_fd_limit() {
  FdLimit out;
  rlimit cur{};
  if (getrlimit(RLIMIT_NOFILE, &cur) != 0) {
    out.note = fmt::format("getrlimit: {}", std::strerror(errno));
    return out;
  }
  out.before_soft = out.soft = cur.rlim_cur;
  out.before_hard = out.hard = cur.rlim_max;
  uint64_t ceiling = 0;
  std::ifstream nr("/proc/sys/fs/nr_open");
  if (!(nr >> ceiling)) ceiling = 0;
  // First try the kernel's ceiling for both (needs CAP_SYS_RESOURCE when above the hard
  // limit), then just the soft limit up to the hard one.
  if (ceiling > cur.rlim_max) {
    rlimit want{ceiling, ceiling};
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
      out.soft = out.hard = ceiling;
      return out;
    }
    out.note = fmt::format("the hard limit stays {} ({}; fs.nr_open is {})", cur.rlim_max,
                           std::strerror(errno), ceiling);
  }
  if (cur.rlim_cur < cur.rlim_max) {
    rlimit want{cur.rlim_max, cur.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &want) == 0)
      out.soft = cur.rlim_max;
    else
      out.note = fmt::format("setrlimit: {}", std::strerror(errno));
  }
  return out;
}

}  // namespace coppice
