// The `coppice` command line: global flags, every command group, and the error contract
// (one line on stderr, non-zero exit, never a stack trace).
#pragma once

#include <vector>

namespace CLI {
class App;
}

namespace coppice::cli {

class Context;
// Adds a command group that lives outside src/cli (e.g. `mcp`, in src/mcp).
using CommandRegistrar = void (*)(CLI::App& app, Context& ctx);

// Parses argv and runs the command; returns the process exit code (a `run`'s is the sandboxed
// command's; 1 on errors, 2 on usage errors, 130 after Ctrl-C).
int run_cli(int argc, char** argv, const std::vector<CommandRegistrar>& extra = {});

}  // namespace coppice::cli
