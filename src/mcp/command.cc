#include "mcp/command.h"

#include <CLI/CLI.hpp>

#include "cli/context.h"
#include "mcp/transport.h"

#ifndef COPPICE_VERSION
#define COPPICE_VERSION "0.0.0"
#endif

namespace coppice::mcp {

void add_mcp_command(CLI::App& app, cli::Context& ctx) {
  auto* cmd = app.add_subcommand(
      "mcp", "Serve the Model Context Protocol (stdio, or streamable HTTP with --http)");
  auto http = std::make_shared<bool>(false);
  auto listen = std::make_shared<std::string>("127.0.0.1:9452");
  cmd->add_flag("--http", *http, "serve streamable HTTP at /mcp instead of stdio");
  cmd->add_option("--listen", *listen, "ADDR:PORT for --http (default 127.0.0.1:9452)");
  cmd->callback([&ctx, http, listen] {
    auto profile = ctx.server();
    ServerOptions o{profile.url, profile.token, ctx.home() / "mcp", COPPICE_VERSION};
    McpServer server(o);
    if (*http)
      serve_http(server, *listen);
    else
      serve_stdio(server);
  });
}

}  // namespace coppice::mcp
