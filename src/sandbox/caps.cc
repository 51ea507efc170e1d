#include "sandbox/caps.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>

namespace coppice::sandbox {

CapPolicy docker_default_caps() {
  CapPolicy p;
  std::ifstream f("/proc/sys/kernel/cap_last_cap");
  int last = 0;
  if (f >> last && last > 0 && last < 64) p.last_cap = last;
  for (int c : {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_MKNOD, CAP_NET_RAW,
                CAP_SETGID, CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP, CAP_NET_BIND_SERVICE,
                CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE})
    p.keep |= uint64_t{1} << c;
  return p;
}

int drop_bounding_set(const CapPolicy& p) noexcept {
  for (int c = 0; c <= p.last_cap; ++c) {
    if (p.keep & (uint64_t{1} << c)) continue;
    if (::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL) return -1;
  }
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
  return 0;
}

int restrict_capabilities(const CapPolicy& p, bool is_root) noexcept {
  __user_cap_header_struct hdr{};
  hdr.version = _LINUX_CAPABILITY_VERSION_3;
  hdr.pid = 0;
  __user_cap_data_struct data[2]{};
  uint64_t set = is_root ? p.keep : 0;
  data[0].effective = data[0].permitted = static_cast<uint32_t>(set);
  data[1].effective = data[1].permitted = static_cast<uint32_t>(set >> 32);
  return static_cast<int>(::syscall(SYS_capset, &hdr, data));
}

}  // namespace coppice::sandbox
