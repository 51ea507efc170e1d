// Operations: ps, kill, show and `operation ls|show|cancel|wait`.
//   coppice ps [-q] [-a] [--status S[,S…]] [-k KIND] [--since T] [--until T] [-M N]
//   coppice kill REF… | kill -a
//   coppice show REF… [--raw]
//   coppice operation wait REF… [-a] [-t SECS]
// REF is an operation uuid, or `@`/`HEAD` (the operation that made the session's current
// entry), or `@N`/`:N`/`N` (that of session entry #N).
#include <CLI/CLI.hpp>
#include <set>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/interrupt.h"
#include "cli/operation_follower.h"
#include "common/error.h"
#include "common/ids.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

const std::vector<std::string> kActive{"PENDING", "ASSIGNED", "EXECUTING"};

struct PsOptions {
  bool quiet = false, all = false;
  std::string status, kind, since, until;
  int max = 1000;
};

std::string status_name(const std::string& s) {
  static const std::map<std::string, std::string> letters{{"P", "PENDING"},   {"A", "ASSIGNED"},
                                                          {"E", "EXECUTING"}, {"S", "SUCCESS"},
                                                          {"F", "FAILED"},    {"C", "CANCELLED"}};
  std::string up;
  for (char c : s) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (auto it = letters.find(up); it != letters.end()) return it->second;
  for (const auto& [l, name] : letters)
    if (name == up) return name;
  throw bad_request(fmt::format("unknown status '{}': use P, A, E, S, F, C or the full names", s));
}

// Operations with one of `statuses` (all when empty). Active statuses are asked for together
// and filtered here on the status each operation reports: a server may file a running
// operation under the status it was stored with (PENDING) while reporting it EXECUTING.
std::vector<json> list_operations(Context& ctx, const std::vector<std::string>& statuses,
                                  const PsOptions& o) {
  std::vector<json> out;
  std::set<std::string> wanted(statuses.begin(), statuses.end());
  std::set<std::string> ask = wanted;
  for (const auto& a : kActive)
    if (wanted.count(a)) ask.insert(kActive.begin(), kActive.end());
  std::vector<std::string> sts(ask.begin(), ask.end());
  if (sts.empty()) sts.push_back("");
  std::set<std::string> seen;
  for (const auto& st : sts) {
    int offset = 0;
    while (static_cast<int>(out.size()) < o.max) {
      int page = std::min(1000, o.max - static_cast<int>(out.size()));
      Query q{{"limit", std::to_string(page)}, {"offset", std::to_string(offset)}};
      if (!st.empty()) q.emplace_back("status", st);
      if (!o.kind.empty()) q.emplace_back("kind", o.kind);
      if (!o.since.empty()) q.emplace_back("since", o.since);
      if (!o.until.empty()) q.emplace_back("until", o.until);
      auto j = ctx.api().get_json("/operations" + query_string(q), "list operations");
      if (j.is_object() && j.contains("operations")) j = j["operations"];
      if (!j.is_array()) throw Error(502, "list operations: the server did not send a list");
      for (auto& op : j)
        if ((wanted.empty() || wanted.count(op.value("status", ""))) &&
            seen.insert(op.value("uuid", "")).second)
          out.push_back(op);
      if (static_cast<int>(j.size()) < page) break;
      offset += page;
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const json& a, const json& b) {
    return a.value("created_at", "") > b.value("created_at", "");
  });
  return out;
}

std::string resolve_op(Context& ctx, const std::string& ref) {
  if (is_uuid(ref)) return ref;
  auto info = ctx.session();
  std::optional<int64_t> id;
  if (ref == "@" || ref == "HEAD") {
    id = info.head->id;
  } else {
    std::string n = ref;
    if (!n.empty() && (n[0] == '@' || n[0] == ':')) n = n.substr(1);
    if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos)
      throw bad_request(fmt::format("'{}' is not an operation: give a uuid, @, HEAD or @N", ref));
    id = std::stoll(n);
  }
  for (const auto& h : ctx.sessions().history(info.key))
    if (h.id == *id) {
      if (h.operation.empty())
        throw not_found(
            fmt::format("session entry #{} ({} {}) has no operation", h.id, h.kind, h.title));
      return h.operation;
    }
  throw not_found(
      fmt::format("no entry #{} in session {} (`coppice session show`)", *id, info.key));
}

json get_op(Context& ctx, const std::string& op) {
  return ctx.api().get_json("/operations/" + path_segment(op), "read operation " + op);
}

const std::vector<Column> kOpColumns{{"uuid", "UUID"},
                                     {"kind", "KIND"},
                                     {"status", "STATUS"},
                                     {"created_at", "CREATED"},
                                     {"duration", "DURATION"},
                                     {"image_uuid", "IMAGE"},
                                     {"result_image_uuid", "RESULT"}};

void setup_ps(CLI::App* c, Context& ctx) {
  auto o = std::make_shared<PsOptions>();
  c->add_flag("-q,--quiet", o->quiet, "print only the uuids");
  c->add_flag("-a,--all", o->all, "every status (default: EXECUTING only)");
  c->add_option("--status", o->status, "P|A|E|S|F|C or full names, comma-separated");
  c->add_option("-k,--kind", o->kind, "instance or image_import");
  c->add_option("--since", o->since, "created since (ISO time or 15m, 2h, 3d, 1w)");
  c->add_option("--until", o->until, "created until");
  c->add_option("-M,--show-max", o->max, "at most this many")->check(CLI::PositiveNumber);
  c->callback([&ctx, o] {
    std::vector<std::string> statuses;
    if (!o->status.empty()) {
      size_t i = 0;
      while (i <= o->status.size()) {
        size_t j = o->status.find(',', i);
        if (j == std::string::npos) j = o->status.size();
        if (j > i) statuses.push_back(status_name(o->status.substr(i, j - i)));
        i = j + 1;
      }
    } else if (!o->all) {
      statuses = {"EXECUTING"};
    }
    auto ops = list_operations(ctx, statuses, *o);
    if (o->quiet) {
      std::string out;
      for (const auto& op : ops) out += op.value("uuid", "") + "\n";
      write_all(out);
      return;
    }
    write_all(render(ops, kOpColumns, ctx.format()));
  });
}

void setup_kill(CLI::App* c, Context& ctx) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto all = std::make_shared<bool>(false);
  c->add_option("REF", *refs, "operations");
  c->add_flag("-a,--all", *all, "every active operation");
  c->callback([&ctx, refs, all] {
    std::vector<std::string> ops;
    if (*all) {
      PsOptions o;
      for (const auto& op : list_operations(ctx, kActive, o)) ops.push_back(op.value("uuid", ""));
    } else {
      if (refs->empty()) throw bad_request("kill needs operations (REF…) or -a");
      for (const auto& r : *refs) ops.push_back(resolve_op(ctx, r));
    }
    std::string failures;
    for (const auto& op : ops) {
      auto r = ctx.api().request("DELETE", "/operations/" + path_segment(op));
      if (r.status >= 200 && r.status < 300) {
        write_all(op + "\n");
      } else if (r.status == 409) {
        write_all(fmt::format("coppice: operation {} has already finished\n", op), 2);
        ctx.exit_code = 1;
      } else {
        try {
          ctx.api().fail(r, "cancel " + op);
        } catch (const Error& e) {
          write_all(fmt::format("coppice: {}\n", e.what()), 2);
          ctx.exit_code = 1;
        }
      }
    }
  });
}

std::string output_of(const json& op, const char* stream) {
  const json m = op.value("metadata", json::object());
  if (!m.is_object() || !m.contains("result") || !m["result"].is_object()) return "";
  const json& r = m["result"];
  if (!r.contains(stream) || !r[stream].is_object()) return "";
  return event_bytes(r[stream]);
}

json flat_summary(const json& op) {
  json row = op;
  const json m = op.value("metadata", json::object());
  if (m.is_object()) {
    if (m.contains("command") && m["command"].is_string()) {
      std::string cmd = m["command"];
      if (m.contains("args") && m["args"].is_array())
        for (const auto& a : m["args"])
          if (a.is_string()) cmd += " " + a.get<std::string>();
      row["command"] = cmd;
    }
    if (m.contains("result") && m["result"].is_object() && m["result"].contains("state")) {
      const json& st = m["result"]["state"];
      row["exit_code"] = st.value("exit_code", -1);
      row["timed_out"] = st.value("timed_out", false);
    }
  }
  return row;
}

void setup_show(CLI::App* c, Context& ctx) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto raw = std::make_shared<bool>(false);
  c->add_option("REF", *refs, "operations (default: @, the session's last)");
  c->add_flag("--raw", *raw, "the operations' JSON, one per line");
  c->callback([&ctx, refs, raw] {
    if (refs->empty()) refs->push_back("@");
    std::vector<json> ops;
    for (const auto& r : *refs) ops.push_back(get_op(ctx, resolve_op(ctx, r)));
    Format f = *raw ? Format::json : ctx.format();
    if (f == Format::json || f == Format::json_pretty) {
      write_all(render(ops, {}, f));
      return;
    }
    if (f != Format::standard) {
      std::vector<json> rows;
      for (const auto& op : ops) rows.push_back(flat_summary(op));
      auto cols = kOpColumns;
      cols.push_back({"exit_code", "EXIT"});
      cols.push_back({"error", "ERROR"});
      write_all(render(rows, cols, f));
      return;
    }
    std::string out;
    for (const auto& op : ops) {
      json row = flat_summary(op);
      if (!out.empty()) out += "\n";
      for (const auto& [key, label] :
           std::vector<std::pair<std::string, std::string>>{{"uuid", "operation"},
                                                            {"kind", "kind"},
                                                            {"status", "status"},
                                                            {"command", "command"},
                                                            {"exit_code", "exit code"},
                                                            {"timed_out", "timed out"},
                                                            {"error", "error"},
                                                            {"created_at", "created"},
                                                            {"duration", "duration"},
                                                            {"image_uuid", "image"},
                                                            {"result_image_uuid", "result"}})
        if (row.contains(key) && !row[key].is_null())
          out += fmt::format("{:<10} {}\n", label, cell_text(row[key]));
      for (const char* s : {"stdout", "stderr"}) {
        std::string text = output_of(op, s);
        if (text.empty()) continue;
        if (text.back() != '\n') text += '\n';
        out += fmt::format("--- {}\n{}", s, text);
      }
    }
    write_all(out);
  });
}

void setup_wait(CLI::App* c, Context& ctx) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto all = std::make_shared<bool>(false);
  auto timeout = std::make_shared<int>(60);
  c->add_option("REF", *refs, "operations");
  c->add_flag("-a,--all", *all, "every active operation");
  c->add_option("-t,--timeout", *timeout, "give up after this many seconds")->default_val(60);
  c->callback([&ctx, refs, all, timeout] {
    std::vector<std::string> ops;
    if (*all) {
      PsOptions o;
      for (const auto& op : list_operations(ctx, kActive, o)) ops.push_back(op.value("uuid", ""));
    } else {
      if (refs->empty()) throw bad_request("operation wait needs operations (REF…) or -a");
      for (const auto& r : *refs) ops.push_back(resolve_op(ctx, r));
    }
    catch_interrupts();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(*timeout);
    std::vector<json> done;
    for (const auto& op : ops) {
      int delay = 50;
      for (;;) {
        json j = get_op(ctx, op);
        std::string st = j.value("status", "");
        if (st == "SUCCESS" || st == "FAILED" || st == "CANCELLED") {
          done.push_back(flat_summary(j));
          if (st != "SUCCESS") ctx.exit_code = 1;
          break;
        }
        if (std::chrono::steady_clock::now() > deadline)
          throw Error(504, fmt::format("operation {} is still {} after {} s (-t waits longer)", op,
                                       st, *timeout));
        interruptible_sleep(delay);
        delay = std::min(1000, delay * 2);
      }
    }
    write_all(render(done,
                     {{"uuid", "UUID"},
                      {"status", "STATUS"},
                      {"exit_code", "EXIT"},
                      {"result_image_uuid", "RESULT"},
                      {"error", "ERROR"}},
                     ctx.format()));
  });
}

}  // namespace

void add_operation_commands(CLI::App& app, Context& ctx) {
  setup_ps(app.add_subcommand("ps", "List operations (running ones by default)"), ctx);
  auto* kill = app.add_subcommand("kill", "Cancel operations");
  kill->alias("k");
  setup_kill(kill, ctx);
  setup_show(app.add_subcommand("show", "Show operations: status, exit code, output"), ctx);

  auto* op = app.add_subcommand("operation", "Operations: ls, show, cancel, wait");
  op->alias("op");
  op->require_subcommand(1);
  auto* ls = op->add_subcommand("ls", "List operations (as ps)");
  ls->alias("list");
  setup_ps(ls, ctx);
  setup_show(op->add_subcommand("show", "Show operations (as show)"), ctx);
  setup_kill(op->add_subcommand("cancel", "Cancel operations (as kill)"), ctx);
  auto* wait = op->add_subcommand("wait", "Wait for operations to finish");
  wait->alias("w");
  setup_wait(wait, ctx);
}

}  // namespace coppice::cli
