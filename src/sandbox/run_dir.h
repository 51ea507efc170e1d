// The host side of a run directory (run_dir/{upper,work,merged}, see runtime.h): made before
// the run, cleaned of the mount points a runtime had to create after it.
#pragma once

#include <sys/types.h>

#include <filesystem>

namespace coppice::sandbox {

// Before the run: creates run_dir/{upper,work,merged}; upper and work belong to `root` (the
// host uid of sandbox root), upper is 0755 (it becomes the image root's mode).
void prepare_run_dir(const std::filesystem::path& run_dir, uid_t root);

// After the run: removes from `upper` the mount-point directories the sandbox created (bits
// of `created`, kCreated* in child_msg.h), as long as they are still empty directories.
void remove_created_mountpoints(const std::filesystem::path& upper, int created);

}  // namespace coppice::sandbox
