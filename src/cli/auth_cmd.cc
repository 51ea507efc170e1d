// auth: store and check server profiles (auth.ini).
//   coppice auth [--url URL] [--token T] [--name NAME]   check with /v1/whoami, save, select
//   coppice auth list|ls|profiles [-O]                   every profile with a health probe
//   coppice auth switch NAME | remove|rm|del NAME
#include <CLI/CLI.hpp>
#include <cstdlib>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/log.h"
#include "common/error.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// "ok", "inactive" (token refused), "timeout", "error" or "no url", with the whoami body.
std::pair<std::string, json> probe(const Profile& p, int timeout_ms) {
  if (p.url.empty()) return {"no url", nullptr};
  try {
    ApiClient api(p.url, p.token);
    api.set_deadline(std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms));
    auto r = api.request("GET", "/whoami");
    if (r.status == 401 || r.status == 403) return {"inactive", nullptr};
    if (r.status < 200 || r.status >= 300) return {"error", nullptr};
    auto j = json::parse(r.body, nullptr, false);
    if (!j.is_object()) return {"error", nullptr};
    return {"ok", j};
  } catch (const Error& e) {
    log_debug("probe of profile {}: {}", p.name, e.what());
    return {e.status() == 504 ? "timeout" : "error", nullptr};
  }
}

}  // namespace

void add_auth_commands(CLI::App& app, Context& ctx) {
  auto* auth = app.add_subcommand("auth", "Check a server's URL and token, save them as a profile");
  auto name = std::make_shared<std::string>();
  auth->add_option("--name", *name, "profile name (default: -p/--profile, else 'default')");
  auth->require_subcommand(0, 1);
  auth->callback([&ctx, auth, name] {
    if (!auth->get_subcommands().empty()) return;
    Profile p;
    p.name = !name->empty() ? *name : !ctx.opts.profile.empty() ? ctx.opts.profile : "default";
    auto existing = ctx.profiles().find(p.name);
    p.url = !ctx.opts.url.empty() ? ctx.opts.url : env_or_empty("COPPICE_URL");
    p.token = !ctx.opts.token.empty() ? ctx.opts.token : env_or_empty("COPPICE_TOKEN");
    if (existing && p.url.empty()) p.url = existing->url;
    if (existing && p.token.empty()) p.token = existing->token;
    if (p.url.empty()) throw bad_request("auth needs the server: --url http://HOST:PORT");
    if (p.token.empty()) throw bad_request("auth needs a token: --token TOKEN (or COPPICE_TOKEN)");
    ApiClient api(p.url, p.token);
    api.set_deadline(std::chrono::steady_clock::now() + std::chrono::seconds(10));
    json who = api.get_json("/whoami", "check the token with " + api.base_url());
    if (!who.is_object()) throw Error(502, "whoami answered with something that is not an object");
    auto perms = who.value("permissions", json::object());
    if (!perms.is_object() || perms.value("list", false) != true)
      log_warning(
          "the token may not list images (permissions.list is not true): sandboxes are "
          "disabled for it");
    ctx.profiles().put(p);
    ctx.profiles().set_current(p.name);
    ctx.profiles().save();
    std::string project = who.contains("project") ? cell_text(who["project"]) : "";
    write_all(fmt::format("profile '{}' saved in {}: {}{}\n", p.name,
                          ctx.profiles().file().string(), api.base_url(),
                          project.empty() ? "" : " (project " + project + ")"));
  });

  auto* list = auth->add_subcommand("list", "List profiles and probe each server (/v1/whoami)");
  list->alias("ls");
  list->alias("profiles");
  auto offline = std::make_shared<bool>(false);
  list->add_flag("-O,--offline", *offline, "do not probe the servers");
  list->callback([&ctx, offline] {
    std::vector<json> rows;
    std::string current = ctx.profiles().current();
    for (const auto& p : ctx.profiles().list()) {
      json row{{"profile", p.name}, {"url", p.url}, {"current", p.name == current ? "*" : ""}};
      if (!*offline) {
        auto [status, who] = probe(p, 2000);
        row["status"] = status;
        row["project"] = who.is_object() && who.contains("project") ? who["project"] : json();
      }
      rows.push_back(std::move(row));
    }
    std::vector<Column> cols{{"current", "CURRENT"}, {"profile", "PROFILE"}, {"url", "URL"}};
    if (!*offline) {
      cols.push_back({"status", "STATUS"});
      cols.push_back({"project", "PROJECT"});
    }
    write_all(render(rows, cols, ctx.format()));
  });

  auto* sw = auth->add_subcommand("switch", "Make a profile the current one");
  auto target = std::make_shared<std::string>();
  sw->add_option("NAME", *target, "profile")->required();
  sw->callback([&ctx, target] {
    ctx.profiles().set_current(*target);
    ctx.profiles().save();
    write_all(fmt::format("current profile: {}\n", *target));
  });

  auto* rm = auth->add_subcommand("remove", "Delete a profile");
  rm->alias("rm");
  rm->alias("del");
  auto victim = std::make_shared<std::string>();
  rm->add_option("NAME", *victim, "profile")->required();
  rm->add_flag("-y,--yes", *std::make_shared<bool>(false),
               "accepted for compatibility (no prompt)");
  rm->callback([&ctx, victim] {
    ctx.profiles().remove(*victim);
    ctx.profiles().save();
    write_all(fmt::format("profile '{}' removed\n", *victim));
  });
}

}  // namespace coppice::cli
