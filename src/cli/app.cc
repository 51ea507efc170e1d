#include "cli/app.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/log.h"
#include "cli/output.h"
#include "common/error.h"

#ifndef COPPICE_VERSION
#define COPPICE_VERSION "0.0.0"
#endif

namespace coppice::cli {

void add_global_options(CLI::App& app, GlobalOptions& o) {
  app.add_option("-p,--profile", o.profile, "profile in auth.ini (env COPPICE_PROFILE)");
  app.add_option("-u,--url", o.url, "server URL for this call (env COPPICE_URL)");
  app.add_option("--token", o.token, "API token for this call (env COPPICE_TOKEN)");
  app.add_option("-c,--config", o.config, "auth.ini to use (default $COPPICE_HOME/auth.ini)");
  app.add_option("-L,--log-level", o.log_level, "debug|info|warning|error|critical");
  app.add_option("-f,--format", o.format, "output: default|table|plain|csv|tsv|json|json-pretty");
  app.add_option("-S,--session", o.session, "session key (env COPPICE_SESSION)");
}

int run_cli(int argc, char** argv, const std::vector<CommandRegistrar>& extra) {
  Context ctx;
  CLI::App app{"coppice: git-like sandboxes on a Coppice (ConTree-compatible) server", "coppice"};
  app.set_version_flag("-v,--version", "coppice " COPPICE_VERSION);
  app.fallthrough();  // global flags may follow the command too
  app.require_subcommand(1);
  add_global_options(app, ctx.opts);
  app.footer("Server profiles and sessions live in $COPPICE_HOME (default ~/.coppice).");
  app.parse_complete_callback([&ctx] {
    set_log_level(parse_log_level(ctx.opts.log_level));
    ctx.format();  // rejects an unknown format before any work
  });

  add_auth_commands(app, ctx);
  add_session_commands(app, ctx);
  add_run_command(app, ctx);
  add_image_commands(app, ctx);
  add_operation_commands(app, ctx);
  add_inspect_commands(app, ctx);
  add_env_command(app, ctx);
  add_file_commands(app, ctx);
  add_diff_command(app, ctx);
  add_build_command(app, ctx);
  add_shell_command(app, ctx);
  for (auto add : extra) add(app, ctx);
  add_completion_command(app, ctx);

  // `coppice … run [OPTIONS] -- CMD…`: everything after the first `--` is the command.
  std::vector<std::string> args(argv + 1, argv + argc);
  bool saw_run = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "run" || args[i] == "r") saw_run = true;
    if (args[i] == "--" && saw_run) {
      ctx.after_dashdash.assign(args.begin() + static_cast<long>(i) + 1, args.end());
      args.resize(i);
      break;
    }
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments back to front
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "coppice: " << e.what() << " (see `coppice --help`)\n";
    return 2;
  } catch (const Error& e) {
    if (e.status() == 499) {
      std::cerr << "coppice: " << e.what() << "\n";
      return 130;
    }
    std::cerr << "coppice: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "coppice: unexpected error: " << e.what() << "\n";
    return 1;
  }
  return ctx.exit_code;
}

}  // namespace coppice::cli
