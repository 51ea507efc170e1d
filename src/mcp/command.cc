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
  auto opt = std::make_shared<HttpOptions>();
  auto idle_s = std::make_shared<int64_t>(opt->session_idle.count());
  cmd->add_flag("--http", *http, "serve streamable HTTP at /mcp instead of stdio");
  cmd->add_option("--listen", opt->listen, "ADDR:PORT for --http (default 127.0.0.1:9452)");
  cmd->add_option("--session-idle", *idle_s,
                  "--http: seconds after which an unused session ends (default 3600)")
      ->check(CLI::Range(int64_t{1}, int64_t{7} * 24 * 3600));
  cmd->add_option("--max-sessions", opt->max_sessions,
                  "--http: live sessions kept; past it the least recently used ends (default "
                  "1000)")
      ->check(CLI::Range(size_t{1}, size_t{1000000}));
  cmd->callback([&ctx, http, opt, idle_s] {
    auto profile = ctx.server();
    ServerOptions o{profile.url, profile.token, ctx.home() / "mcp", COPPICE_VERSION};
    McpServer server(o);
    opt->session_idle = std::chrono::seconds(*idle_s);
    if (*http)
      serve_http(server, *opt);
    else
      serve_stdio(server);
  });
}

}  // namespace coppice::mcp
