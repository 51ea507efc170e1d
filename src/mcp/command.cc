#include "mcp/command.h"

#include <CLI/CLI.hpp>

#include "cli/context.h"
#include "mcp/http_guard.h"
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
  auto root = std::make_shared<std::string>(".");
  auto token_file = std::make_shared<std::string>();
  cmd->add_option("--file-root", *root,
                  "the only local directory upload/rsync read and download writes, symlinks "
                  "not followed (env COPPICE_MCP_FILE_ROOT; default: the working directory)")
      ->envname("COPPICE_MCP_FILE_ROOT");
  cmd->add_option("--auth-token-file", *token_file,
                  "--http: read the bearer secret clients must send from this file (else env "
                  "COPPICE_MCP_TOKEN, else a random one printed at start)");
  cmd->add_option("--allow-host", opt->allow_hosts,
                  "--http: also answer requests with this Host header, HOST[:PORT] exactly "
                  "(repeatable; e.g. behind a reverse proxy)");
  cmd->add_option("--allow-origin", opt->allow_origins,
                  "--http: also accept browser requests from this Origin, scheme://host[:port] "
                  "exactly (repeatable)");
  cmd->callback([&ctx, http, opt, idle_s, root, token_file] {
    auto profile = ctx.server();
    ServerOptions o{profile.url, profile.token, ctx.home() / "mcp", COPPICE_VERSION, *root};
    if (*http) opt->token = mcp_http_secret(*token_file, &opt->token_generated);
    McpServer server(o);
    opt->session_idle = std::chrono::seconds(*idle_s);
    if (*http)
      serve_http(server, *opt);
    else
      serve_stdio(server);
  });
}

}  // namespace coppice::mcp
