// The sandbox's filesystem: an overlay of the image layers with a writable upper, the usual
// pseudo filesystems on top, pivot_root into it, and files injected before the command runs.
//
// Everything marked "child" runs in a sandbox's init process (the namespace runtime's
// coppice-sandbox-init, the gVisor runtime's init): only syscalls and the C strings of a
// MountPlan, no allocation. The host side of a run directory is in run_dir.h.
#pragma once

#include <sys/mount.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "sandbox/child_msg.h"

namespace coppice::sandbox {

struct InjectedFile {
  const char* path;  // absolute, inside the sandbox
  int blob_fd;       // opened read-only by the server before clone()
  mode_t mode;
  uid_t uid;
  gid_t gid;
};

// C strings prepared by the parent; they point into storage owned by the caller.
struct MountPlan {
  std::vector<const char*> lowers;  // top-most first
  const char* upper = nullptr;
  const char* work = nullptr;
  const char* merged = nullptr;
  // MOUNT_ATTR_* of the overlay mount. Image content is never a device and never setuid for
  // the host: a mount made in the host's user namespace (gVisor's, the microVM image builder's)
  // keeps both. The namespace runtime mounts inside the sandbox's user namespace, where setuid
  // binaries of the image must work for the sandbox (and nodev is implied there anyway).
  static constexpr unsigned kImageMountAttrs = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID;
  unsigned attrs = kImageMountAttrs;
};

// Child: mounts overlay(lowers, upper, work) with `userxattr` on `merged` through the new
// mount API (fsopen/fsconfig "lowerdir+" per layer/fsmount/move_mount), which has no 4 KiB
// option-string limit. On failure fills `err` (including the kernel's fs_context log).
int mount_overlay(const MountPlan& plan, ChildMsg& err) noexcept;

// Child, with the cwd at the merged root: creates proc/ and dev/ when the image lacks them
// (reporting the created ones in *created, kCreated* bits), mounts proc, a tmpfs /dev with
// bind-mounted null zero full random urandom tty, /dev/pts (devpts, best effort), /dev/shm
// and the fd/stdin/stdout/stderr/ptmx symlinks. Refuses images whose /proc or /dev is not a
// directory (a symlink there would point outside the root before pivot_root).
int mount_pseudo_filesystems(int* created, int status_fd, ChildMsg& err) noexcept;

// Child: pivot_root into the cwd and detach the old root; cwd becomes "/".
int pivot_into_cwd(ChildMsg& err) noexcept;

// Child, after pivot_root: creates /tmp (01777) when missing, setting kCreatedTmp.
int ensure_tmp(int* created, ChildMsg& err) noexcept;

// Child, after pivot_root or chroot (so paths and symlinks resolve inside the image), in the
// sandbox's user namespace (so every write is made as sandbox root, never as host root):
// mkdir -p the parents (0755, 0:0), create or open the file without following a symlink at
// its name (O_NOFOLLOW; intermediate symlinks of the image resolve inside its root, magic
// links never), check with fstat that it is a regular file, truncate it, copy the blob, chown
// and chmod it. Returns 0, or -1 with *status = 400 (bad path, not a regular file) or 500 and
// `err` filled.
int inject_file(const InjectedFile& f, int* status, ChildMsg& err) noexcept;

}  // namespace coppice::sandbox
