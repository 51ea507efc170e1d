// `coppice mcp`: the MCP server command (registered by src/cli_main/main.cc).
#pragma once

namespace CLI {
class App;
}

namespace coppice::cli {
class Context;
}

namespace coppice::mcp {

//   coppice mcp                         MCP over stdio
//   coppice mcp --http [--listen A:P]   MCP over streamable HTTP (default 127.0.0.1:9452),
//                                       every request with the bearer secret (http_guard.h)
// Both take --file-root DIR (default: the working directory), the only local directory the
// tools may read or write (file_root.h). The server URL and token come from the CLI's flags,
// COPPICE_* variables or profile.
void add_mcp_command(CLI::App& app, cli::Context& ctx);

}  // namespace coppice::mcp
