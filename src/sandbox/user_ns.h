// User namespace plumbing: sandbox uid/gid 0..range-1 are host ids base..base+range-1.
#pragma once

#include <sys/types.h>

namespace coppice::sandbox {

// Parent side: writes /proc/<pid>/uid_map and gid_map ("0 base range"). setgroups is left
// "allow" (we are privileged in the parent namespace), so that the child can drop the
// server's supplementary groups with setgroups(); within the sandbox setgroups can only name
// mapped groups. Throws coppice::Error.
void write_id_maps(pid_t pid, uid_t base, uid_t range);

// Child side, after the maps are written: become uid/gid 0 of the namespace (without this a
// shifted map makes the overlay mount fail with EACCES) and drop supplementary groups.
// Returns 0 or -1/errno. Async-signal-safe.
int become_namespace_root() noexcept;

// Child side: switch to the command's identity (no supplementary groups). Async-signal-safe.
int switch_identity(uid_t uid, gid_t gid) noexcept;

}  // namespace coppice::sandbox
