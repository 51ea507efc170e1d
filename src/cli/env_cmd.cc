// env: the session's environment, merged into every run's `env` (run's -e wins).
//   coppice env                 list
//   coppice env K=V…            set
//   coppice env -U K…           unset
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/context.h"
#include "common/error.h"

namespace coppice::cli {

void add_env_command(CLI::App& app, Context& ctx) {
  auto* env = app.add_subcommand("env", "Show or change the session's environment");
  auto args = std::make_shared<std::vector<std::string>>();
  auto unset = std::make_shared<bool>(false);
  env->add_option("VARS", *args, "NAME=VALUE to set, or NAME with -U");
  env->add_flag("-U,--delete", *unset, "unset the NAMEs");
  env->callback([&ctx, args, unset] {
    auto info = ctx.session();
    for (const auto& a : *args) {
      if (*unset) {
        ctx.sessions().unset_env(info.key, a);
        continue;
      }
      auto eq = a.find('=');
      if (eq == std::string::npos || eq == 0)
        throw bad_request(fmt::format("env '{}': want NAME=VALUE (or -U NAME to unset)", a));
      ctx.sessions().set_env(info.key, a.substr(0, eq), a.substr(eq + 1));
    }
    if (!args->empty()) return;
    std::vector<nlohmann::json> rows;
    for (const auto& [k, v] : ctx.sessions().env(info.key))
      rows.push_back({{"name", k}, {"value", v}});
    if (ctx.format() == Format::standard) {
      std::string out;
      for (const auto& r : rows)
        out += fmt::format("{}={}\n", r["name"].get<std::string>(), r["value"].get<std::string>());
      write_all(out);
      return;
    }
    write_all(render(rows, {{"name", "NAME"}, {"value", "VALUE"}}, ctx.format()));
  });
}

}  // namespace coppice::cli
