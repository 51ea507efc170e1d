// Confinement for the fuzz targets that write files as root (layer unpack, layer views).
//
// Those targets feed hostile layers to code that runs as root on the host, and a bug in that
// code writes outside its layer (issue 12 item 2) or creates device nodes (item 1). So the code
// under test never runs in the host's view of the filesystem: it runs on one thread, the
// jail, which has its own mount namespace and root directory (unshare(CLONE_NEWNS|CLONE_FS) is
// per thread; libFuzzer's own thread keeps the host's view, so corpus files land where they
// should). The jail's root is a small tmpfs (nodev, nosuid, noexec) holding read-only binds
// of /usr, /etc, the fuzz binary's directory and symlinks for /lib, /bin…; read-write binds of
// the working directory and of -artifact_prefix's directory (a crash report is written by the
// crashing thread, so the jail must reach them); and /scratch, a separate tmpfs (nodev,
// nosuid, noexec, 256 MiB) for the inputs' files, remounted empty for every input.
// There is no /proc and no /dev in the jail, so no magic link leads back to the host.
//
// The jail is also an oracle: contained() says whether anything outside /scratch changed
// since the jail was built (an inode was created on the root tmpfs, or a directory there was
// modified), which is what an escaping write does.
#pragma once

#include <functional>
#include <string>

#include "oracle.h"

namespace coppice::fuzz {

// Builds the jail (from LLVMFuzzerInitialize: the arguments name the directories to bind).
// Aborts when it cannot (the targets never run unconfined).
void jail_init(int argc, char** argv);

// Runs `fn` on the jail thread and waits; an exception it throws is rethrown here, on the
// calling thread (so an oracle's abort happens on libFuzzer's thread).
void jail_run(const std::function<void()>& fn);

// On the jail thread: replaces /scratch with an empty tmpfs.
void jail_reset_scratch();

// On the jail thread: "" when nothing outside /scratch changed since jail_init, else what did.
std::string jail_escape();

}  // namespace coppice::fuzz
