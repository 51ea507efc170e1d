// Capabilities of sandboxed commands: the bounding set and the effective/permitted sets are
// reduced to Docker's default set; inheritable and ambient sets are emptied (as Docker does
// since CVE-2022-24769). All of this runs in the child, so it only uses raw syscalls.
#pragma once

#include <cstdint>

namespace coppice::sandbox {

struct CapPolicy {
  int last_cap = 40;  // highest capability number the kernel knows
  uint64_t keep = 0;  // bit mask of the capabilities a sandbox root keeps
};

// Reads /proc/sys/kernel/cap_last_cap and builds Docker's default set:
// CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP
// NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE.
CapPolicy docker_default_caps();

// Drops every capability outside `keep` from the bounding set and clears the ambient set.
// Needs CAP_SETPCAP, so call it before switching to a non-root uid. Returns 0 or -1/errno.
int drop_bounding_set(const CapPolicy& p) noexcept;

// Sets effective = permitted = `keep` (none when the process is not uid 0 any more) and
// inheritable = empty. Call after setresuid(). Returns 0 or -1/errno.
int restrict_capabilities(const CapPolicy& p, bool is_root) noexcept;

}  // namespace coppice::sandbox
