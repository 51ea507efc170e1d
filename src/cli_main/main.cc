// coppice: the command-line client (see src/cli/app.h) and its MCP server (src/mcp).
#include "cli/app.h"
#include "mcp/command.h"

int main(int argc, char** argv) {
  return coppice::cli::run_cli(argc, argv, {&coppice::mcp::add_mcp_command});
}
