// The namespace runtime's init: the sandbox's pid 1, a small static program of its own
// (`coppice-sandbox-init`, src/sandbox_init/main.cc), so that no sandbox keeps a copy of the
// server's memory alive (a forked server would share every page copy-on-write with each running
// sandbox, and copy its page tables twice per run).
//
// How a run starts (namespace_runtime.cc, then src/sandbox_init/main.cc):
//  1. The server clone()s into the new namespaces (and, on cgroup2, into the run's group).
//     The child still runs the server's code, async-signal-safe calls only: it moves its fds
//     to the numbers below, joins the v1 cgroups (writes "0" to their `tasks` files while it
//     is still host root), waits for the server to write its uid/gid maps, becomes root of
//     the user namespace (so that execve keeps its capabilities there) and execs the init
//     binary through an fd opened by the server at startup (no path lookup as the
//     unprivileged uid).
//  2. The init reads the plan (JSON, below) and the seccomp programs, mounts the root,
//     injects the files, forks the command, reports over the status pipe (child_msg.h) and
//     reaps every process until the command has exited.
#pragma once

namespace coppice::sandbox::ns_init {

// File descriptors of the init at execve. 0, 1 and 2 are the command's stdin, stdout and
// stderr; the init keeps them only to hand them to the command.
inline constexpr int kPlanFd = 3;       // memfd: the plan, JSON
inline constexpr int kSeccompFd = 4;    // memfd: SeccompPolicy::serialized(), shared by all runs
inline constexpr int kSyncFd = 5;       // read end; hangup = the server is gone
inline constexpr int kStatusFd = 6;     // write end of the status pipe (StatusRecords)
inline constexpr int kFirstBlobFd = 7;  // one read-only fd per injected file, in plan order

// The plan's fields:
//   lowers [path], upper, work, merged     the overlay (lowers top-most first)
//   hostname, cwd, uid, gid                 the command's environment
//   argv [str], env ["K=V"], argv0          what to execute; candidates [path] is the PATH
//   candidates [path]                       search, in order (empty when argv0 has a '/')
//   files [{path, mode, uid, gid}]          injected files; blob i is fd kFirstBlobFd + i
//   caps {last_cap, keep}                   CapPolicy
// The init exits 0 after it reported kExited, or 1 after a kSetupError.

}  // namespace coppice::sandbox::ns_init
