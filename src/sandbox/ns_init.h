// The namespace runtime's sandbox starter and init: a small static program of its own
// (`coppice-sandbox-init`, src/sandbox_init/main.cc), so that no sandbox costs a copy of the
// server's memory (a forked server shares every page copy-on-write with each running
// sandbox and has its page tables copied twice per run: init, then command).
//
// How a run starts (namespace_runtime.cc, then src/sandbox_init/main.cc):
//  1. The server posix_spawn()s the program (a vfork) with the fds below, as host root, in
//     the run's network namespace (from the pool).
//  2. It reads the plan (JSON, below) and the seccomp programs, then clone()s the init into
//     new user, mount, pid, ipc and uts namespaces (and the run's cgroup2 group), writes the
//     init's uid/gid maps, releases it and waits for it, ending as it ends.
//  3. The init joins the v1 cgroups (writes "0" to their `tasks` files, still host root),
//     becomes root of the user namespace, mounts the root, injects the files, forks the
//     command, reports over the status pipe (child_msg.h) and reaps every process until the
//     command has exited.
#pragma once

namespace coppice::sandbox::ns_init {

// File descriptors at execve. 0, 1 and 2 are the command's stdin, stdout and stderr; the
// init keeps them only to hand them to the command.
inline constexpr int kPlanFd = 3;       // memfd: the plan, JSON
inline constexpr int kSeccompFd = 4;    // memfd: SeccompPolicy::serialized(), shared by all runs
inline constexpr int kSyncFd = 5;       // read end; hangup = the server is gone
inline constexpr int kStatusFd = 6;     // write end of the status pipe (StatusRecords)
inline constexpr int kFirstBlobFd = 7;  // one read-only fd per injected file, in plan order,
                                        // then the v1 `tasks` files, then the cgroup2 dir

// The plan's fields:
//   lowers [path], upper, work, merged     the overlay (lowers top-most first)
//   hostname, cwd, uid, gid                 the command's environment
//   argv [str], env ["K=V"], argv0          what to execute; candidates [path] is the PATH
//   candidates [path]                       search, in order (empty when argv0 has a '/')
//   files [{path, mode, uid, gid}]          injected files; blob i is fd kFirstBlobFd + i
//   caps {last_cap, keep}                   CapPolicy
//   uid_base, uid_range                     the user namespace's id maps
//   v1_tasks_files (count), cgroup2 (bool)  the cgroup fds after the blobs
// The init exits 0 after it reported kExited, or 1 after a kSetupError; the launcher ends
// as the init ended (1 after a kSetupError of its own).

}  // namespace coppice::sandbox::ns_init
