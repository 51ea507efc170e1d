// Running a host helper program (cp, tar, mmdebstrap) from the admin paths, never from the
// per-run hot path.
#pragma once

#include <string>
#include <vector>

namespace coppice {

// Runs argv (argv[0] searched in PATH) with stdin from /dev/null, waits for it, and throws an
// Error naming the command and the tail of its stderr when it fails. Returns its stdout.
std::string run_program(const std::vector<std::string>& argv);

}  // namespace coppice
