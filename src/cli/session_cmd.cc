// use and session: pick an image for the current session and manage sessions' histories.
//   coppice use IMAGE [-N]        record IMAGE on the session; prints `export COPPICE_SESSION=…`
//   coppice session list | use KEY | branch [NAME] [-U NAME] | checkout NAME | rollback [N]
//                   | show [KEY] | delete KEY…
#include <CLI/CLI.hpp>
#include <algorithm>
#include <map>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/history_graph.h"
#include "cli/operation_follower.h"
#include "common/error.h"
#include "common/ids.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

std::string export_line(const std::string& key) {
  // Keys are `<dir name>+<hex>` or user-chosen: quote them for the shell.
  std::string q = "'";
  for (char c : key) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return fmt::format("export COPPICE_SESSION={}'\n", q);
}

void say(const std::string& msg) {
  write_all(msg + "\n", 2);
}

}  // namespace

void add_session_commands(CLI::App& app, Context& ctx) {
  auto* use = app.add_subcommand("use", "Start (or move) the session on an image");
  use->alias("ci");
  auto image = std::make_shared<std::string>();
  auto fresh = std::make_shared<bool>(false);
  use->add_option("IMAGE", *image, "image UUID, tag:NAME or NAME")->required();
  use->add_flag("-N,--new", *fresh, "start a new session instead of moving the current one");
  use->callback([&ctx, image, fresh] {
    std::string uuid = ctx.resolve_image(*image);
    std::string key = ctx.session_key();
    if (*fresh) {
      std::error_code ec;
      std::string dir = std::filesystem::current_path(ec).filename().string();
      key = fmt::format("{}+{}", dir.empty() ? "root" : dir, random_hex(4));
    }
    auto e = ctx.sessions().record(key, uuid, "use", *image, "");
    auto info = ctx.sessions().get(key);
    say(fmt::format("session {}: branch {} at #{} {} ({})", key, info->branch, e.id, *image, uuid));
    write_all(export_line(key));
  });

  auto* s = app.add_subcommand("session", "List, switch, branch, roll back and show sessions");
  s->alias("s");
  s->require_subcommand(1);

  auto* list = s->add_subcommand("list", "List sessions");
  list->alias("ls");
  list->callback([&ctx] {
    std::string cur = ctx.session_key();
    std::vector<json> rows;
    for (const auto& i : ctx.sessions().list())
      rows.push_back({{"current", i.key == cur ? "*" : ""},
                      {"session", i.key},
                      {"branch", i.branch},
                      {"image", i.head ? json(i.head->image) : json()},
                      {"entry", i.head ? json(i.head->id) : json()},
                      {"cwd", i.cwd},
                      {"updated_at", i.updated_at}});
    write_all(render(rows,
                     {{"current", "CURRENT"},
                      {"session", "SESSION"},
                      {"branch", "BRANCH"},
                      {"image", "IMAGE"},
                      {"cwd", "CWD"},
                      {"updated_at", "UPDATED"}},
                     ctx.format()));
  });

  auto* su = s->add_subcommand("use", "Print the export line that selects a session");
  auto key = std::make_shared<std::string>();
  su->add_option("KEY", *key, "session key")->required();
  su->callback([&ctx, key] {
    if (!ctx.sessions().get(*key))
      throw not_found(fmt::format("no session '{}' (`coppice session list` lists them)", *key));
    write_all(export_line(*key));
  });

  auto* br = s->add_subcommand("branch", "List branches, or create one and switch to it");
  br->alias("br");
  auto bname = std::make_shared<std::string>();
  auto bdel = std::make_shared<std::string>();
  br->add_option("NAME", *bname, "new branch (made at the current entry, then checked out)");
  br->add_option("-U,--delete", *bdel, "delete this branch");
  br->callback([&ctx, bname, bdel] {
    auto info = ctx.session();
    if (!bdel->empty()) {
      ctx.sessions().delete_branch(info.key, *bdel);
      say(fmt::format("deleted branch {}", *bdel));
      return;
    }
    if (!bname->empty()) {
      ctx.sessions().create_branch(info.key, *bname);
      say(fmt::format("switched to a new branch {} at #{} ({})", *bname, info.head->id,
                      info.head->image));
      return;
    }
    auto hist = ctx.sessions().history(info.key);
    std::vector<json> rows;
    for (const auto& [name, id] : ctx.sessions().branches(info.key)) {
      std::string image;
      for (const auto& h : hist)
        if (h.id == id) image = h.image;
      rows.push_back({{"current", name == info.branch ? "*" : ""},
                      {"branch", name},
                      {"entry", id},
                      {"image", image}});
    }
    write_all(render(
        rows,
        {{"current", "CURRENT"}, {"branch", "BRANCH"}, {"entry", "ENTRY"}, {"image", "IMAGE"}},
        ctx.format()));
  });

  auto* co = s->add_subcommand("checkout", "Switch the session to another branch");
  co->alias("co");
  auto cname = std::make_shared<std::string>();
  co->add_option("BRANCH", *cname, "branch")->required();
  co->callback([&ctx, cname] {
    auto info = ctx.session();
    ctx.sessions().checkout(info.key, *cname);
    auto now = ctx.sessions().get(info.key);
    say(fmt::format("switched to branch {} at #{} ({})", *cname, now->head->id, now->head->image));
  });

  auto* rb = s->add_subcommand("rollback", "Move the current branch N entries back (default 1)");
  rb->alias("rb");
  auto steps = std::make_shared<int>(1);
  rb->add_option("N", *steps, "entries to go back")->check(CLI::PositiveNumber);
  rb->callback([&ctx, steps] {
    auto info = ctx.session();
    auto e = ctx.sessions().rollback(info.key, *steps);
    say(fmt::format("branch {} is now at #{} {} ({})", info.branch, e.id, e.title, e.image));
  });

  auto* show = s->add_subcommand("show", "Draw the session's history (the DAG of its images)");
  auto skey = std::make_shared<std::string>();
  show->add_option("KEY", *skey, "session (default: the current one)");
  show->callback([&ctx, skey] {
    std::string k = skey->empty() ? ctx.session_key() : *skey;
    auto info = ctx.sessions().get(k);
    if (!info) throw not_found(fmt::format("no session '{}' (`coppice session list`)", k));
    auto hist = ctx.sessions().history(k);
    auto branches = ctx.sessions().branches(k);
    Format f = ctx.format();
    if (f == Format::standard) {
      write_all(fmt::format("session {} (branch {}{})\n", k, info->branch,
                            info->cwd.empty() ? "" : ", cwd " + info->cwd));
      write_all(draw_history(hist, branches, info->branch));
      return;
    }
    std::vector<json> rows;
    for (const auto& h : hist) {
      json bs = json::array();
      for (const auto& [n, id] : branches)
        if (id == h.id) bs.push_back(n);
      rows.push_back({{"id", h.id},
                      {"parent", h.parent ? json(*h.parent) : json()},
                      {"kind", h.kind},
                      {"title", h.title},
                      {"image", h.image},
                      {"operation", h.operation},
                      {"branches", bs},
                      {"created_at", h.created_at}});
    }
    write_all(render(rows,
                     {{"id", "ID"},
                      {"parent", "PARENT"},
                      {"kind", "KIND"},
                      {"title", "TITLE"},
                      {"image", "IMAGE"},
                      {"operation", "OPERATION"}},
                     f));
  });

  // log: the lineage of the current image (newest first), from the local session history.
  auto* log = app.add_subcommand("log", "Show the lineage of the session's current image");
  log->callback([&ctx] {
    auto info = ctx.session();
    std::map<int64_t, HistoryEntry> by_id;
    for (auto& h : ctx.sessions().history(info.key)) by_id[h.id] = std::move(h);
    std::vector<json> rows;
    for (std::optional<int64_t> id = info.head->id; id && by_id.count(*id);
         id = by_id[*id].parent) {
      const HistoryEntry& h = by_id[*id];
      rows.push_back({{"id", h.id},
                      {"kind", h.kind},
                      {"title", h.title},
                      {"image", h.image},
                      {"operation", h.operation},
                      {"created_at", h.created_at}});
    }
    if (ctx.format() == Format::standard) {
      std::string out;
      for (const auto& r : rows)
        out += fmt::format("#{} {} {}  {}\n    {}\n", r["id"].get<int64_t>(),
                           r["kind"].get<std::string>(), r["image"].get<std::string>(),
                           r["created_at"].get<std::string>(), r["title"].get<std::string>());
      return write_all(out);
    }
    write_all(render(rows,
                     {{"id", "ID"},
                      {"kind", "KIND"},
                      {"image", "IMAGE"},
                      {"title", "TITLE"},
                      {"created_at", "CREATED"}},
                     ctx.format()));
  });

  auto* wait = s->add_subcommand("wait", "Wait for the session's detached runs; record results");
  auto wait_ops = std::make_shared<std::vector<std::string>>();
  wait->add_option("OPS", *wait_ops, "operation uuids (default: every detached run)");
  wait->callback([&ctx, wait_ops] {
    auto info = ctx.session();
    std::vector<PendingRun> todo;
    for (auto& p : ctx.sessions().pending(info.key))
      if (wait_ops->empty() ||
          std::find(wait_ops->begin(), wait_ops->end(), p.operation) != wait_ops->end())
        todo.push_back(std::move(p));
    for (const auto& op : *wait_ops)
      if (std::none_of(todo.begin(), todo.end(),
                       [&](const PendingRun& p) { return p.operation == op; }))
        throw not_found(
            fmt::format("operation {} is not a detached run of session {}", op, info.key));
    bool all_ok = true;
    for (const auto& p : todo) {
      OperationFollower follower(ctx.api(), p.operation);
      OperationOutcome out = follower.follow([](const nlohmann::json&) {});
      if (out.status == "SUCCESS" && !p.disposable && out.result_image)
        ctx.sessions().record(info.key, *out.result_image, "run", p.title, p.operation, p.parent,
                              p.branch);
      ctx.sessions().remove_pending(p.operation);
      all_ok = all_ok && out.status == "SUCCESS" && out.exit_code == 0;
      say(fmt::format("{} {} exit {}{}", p.operation, out.status, out.exit_code,
                      out.result_image && !p.disposable ? " -> " + *out.result_image : ""));
    }
    if (!all_ok) ctx.exit_code = 1;
  });

  auto* del = s->add_subcommand("delete", "Delete sessions (their local history only)");
  del->alias("rm");
  auto keys = std::make_shared<std::vector<std::string>>();
  del->add_option("KEY", *keys, "sessions")->required();
  del->add_flag("-y,--yes", *std::make_shared<bool>(false),
                "accepted for compatibility (no prompt)");
  del->callback([&ctx, keys] {
    for (const auto& k : *keys) {
      if (!ctx.sessions().remove(k))
        throw not_found(fmt::format("no session '{}' (`coppice session list`)", k));
      say(fmt::format("deleted session {}", k));
    }
  });
}

}  // namespace coppice::cli
