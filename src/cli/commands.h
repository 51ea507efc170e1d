// Registration of the command groups on the CLI11 app; one source file per group.
#pragma once

namespace CLI {
class App;
}

namespace coppice::cli {

class Context;
struct GlobalOptions;

// -p -u --token -c -L -f -S (app.cc); also added to `run`, whose arguments never fall through.
void add_global_options(CLI::App& app, GlobalOptions& o);

void add_auth_commands(CLI::App& app, Context& ctx);     // auth_cmd.cc: auth [list|switch|remove]
void add_session_commands(CLI::App& app, Context& ctx);  // session_cmd.cc: use, session …
void add_run_command(CLI::App& app, Context& ctx);       // run_cmd.cc: run
void add_image_commands(CLI::App& app, Context& ctx);    // images_cmd.cc: images [import], tag
void add_operation_commands(CLI::App& app,
                            Context& ctx);  // operations_cmd.cc: ps, kill, show, operation
void add_inspect_commands(CLI::App& app, Context& ctx);    // inspect_cmd.cc: ls, cat, cp, cd
void add_env_command(CLI::App& app, Context& ctx);         // env_cmd.cc: env
void add_file_commands(CLI::App& app, Context& ctx);       // file_cmd.cc: file cp|edit|ls
void add_diff_command(CLI::App& app, Context& ctx);        // diff_cmd.cc: diff A [B]
void add_build_command(CLI::App& app, Context& ctx);       // build_cmd.cc: build (Dockerfile)
void add_shell_command(CLI::App& app, Context& ctx);       // shell_cmd.cc: shell (REPL)
void add_completion_command(CLI::App& app, Context& ctx);  // completion_cmd.cc: completion

}  // namespace coppice::cli
