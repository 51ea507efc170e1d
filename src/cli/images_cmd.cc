// images and tag.
//   coppice images [list|ls] [--prefix P] [-i UUID] [-a] [--since T] [--until T] [--limit N]
//   coppice images import REF… [--tag T] [--username U --password P] [-t SECS] [-d]
//   coppice tag [IMAGE] TAG [-U]
#include <unistd.h>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/image_ref.h"
#include "cli/interrupt.h"
#include "cli/operation_follower.h"
#include "common/error.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

struct ListOptions {
  std::string prefix, uuid, since, until;
  bool all = false;
  int limit = 3000;
};

struct ImportOptions {
  std::vector<std::string> refs;
  std::string tag, username, password;
  int timeout = 300;
  bool detach = false;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.1f} {}", b, units[u]);
}

void list_images(Context& ctx, const ListOptions& o) {
  std::vector<json> rows;
  int offset = 0;
  while (static_cast<int>(rows.size()) < o.limit) {
    int page = std::min(1000, o.limit - static_cast<int>(rows.size()));
    Query q{{"limit", std::to_string(page)}, {"offset", std::to_string(offset)}};
    if (!o.all && o.uuid.empty()) q.emplace_back("tagged", "1");
    if (!o.prefix.empty()) q.emplace_back("tag", o.prefix);
    if (!o.uuid.empty()) q.emplace_back("uuid", o.uuid);
    if (!o.since.empty()) q.emplace_back("since", o.since);
    if (!o.until.empty()) q.emplace_back("until", o.until);
    auto j = ctx.api().get_json("/images" + query_string(q), "list images");
    auto imgs = j.value("images", json::array());
    for (auto& i : imgs) rows.push_back(i);
    if (static_cast<int>(imgs.size()) < page) break;
    offset += page;
  }
  write_all(
      render(rows, {{"uuid", "UUID"}, {"tag", "TAG"}, {"created_at", "CREATED"}}, ctx.format()));
}

void import_images(Context& ctx, const ImportOptions& o) {
  if (o.refs.size() > 1 && !o.tag.empty())
    throw bad_request(
        "--tag names one image: import several references one by one, or use "
        "REF?tag=NAME");
  catch_interrupts();
  ApiClient& api = ctx.api();
  bool tty = ::isatty(2);
  std::vector<json> results;
  for (const auto& given : o.refs) {
    std::string ref = given, tag = o.tag;
    if (auto q = ref.find("?tag="); q != std::string::npos) {
      tag = ref.substr(q + 5);
      ref = ref.substr(0, q);
    }
    if (tag.empty()) tag = default_tag(ref);
    std::string url = ref.find("://") == std::string::npos ? "docker://" + ref : ref;
    json body{{"registry", {{"url", url}}}, {"tag", tag}, {"timeout", o.timeout}};
    if (!o.username.empty() || !o.password.empty())
      body["registry"]["credentials"] = {{"username", o.username}, {"password", o.password}};
    api.set_interruptible(true);
    std::string op;
    try {
      op = api.send_json("POST", "/images/import", body, "import " + given).value("uuid", "");
    } catch (const Error& e) {
      if (e.status() == 499) throw Error(499, "interrupted");
      throw;
    }
    if (o.detach) {
      results.push_back({{"ref", given}, {"operation", op}, {"tag", tag}});
      continue;
    }
    OperationFollower follower(api, op);
    OperationOutcome out;
    std::string last_line;
    try {
      out = follower.follow([&](const json& ev) {
        if (ev.value("type", "") != "progress") return;
        const json d = ev.value("data", json::object());
        std::string line = fmt::format(
            "{}: layers {}/{}{} {} / {}", given, d.value("layers_done", 0),
            d.value("layers_total", 0),
            d.value("layers_reused", 0) ? fmt::format(" ({} reused)", d.value("layers_reused", 0))
                                        : "",
            human_bytes(d.value("bytes_done", 0.0)), human_bytes(d.value("bytes_total", 0.0)));
        if (line == last_line) return;
        last_line = line;
        write_all(tty ? "\r\033[K" + line : line + "\n", 2);
      });
    } catch (const Error& e) {
      if (e.status() != 499) throw;
      api.set_interruptible(false);
      api.request("DELETE", "/operations/" + path_segment(op));
      if (tty && !last_line.empty()) write_all("\n", 2);
      throw Error(499, fmt::format("interrupted: cancelled the import of {} ({})", given, op));
    }
    api.set_interruptible(false);
    if (tty && !last_line.empty()) write_all("\n", 2);
    if (out.status != "SUCCESS")
      throw Error(500, fmt::format("import of {} {}: {}", given,
                                   out.status == "CANCELLED" ? "was cancelled" : "failed",
                                   out.error.empty() ? "no reason given" : out.error));
    results.push_back({{"ref", given},
                       {"operation", op},
                       {"uuid", out.result_image ? json(*out.result_image) : json()},
                       {"tag", tag}});
  }
  std::vector<Column> cols{{"ref", "REF"}, {"uuid", "UUID"}, {"tag", "TAG"}};
  if (o.detach) cols = {{"ref", "REF"}, {"operation", "OPERATION"}, {"tag", "TAG"}};
  write_all(render(results, cols, ctx.format()));
}

}  // namespace

void add_image_commands(CLI::App& app, Context& ctx) {
  auto lo = std::make_shared<ListOptions>();
  auto* images = app.add_subcommand("images", "List images, or import one from a registry");
  images->alias("i");
  images->alias("img");
  images->add_option("--prefix", lo->prefix, "only tags starting with this");
  images->add_option("-i,--uuid", lo->uuid, "only this image");
  images->add_flag("-a,--all", lo->all, "untagged images too");
  images->add_option("--since", lo->since, "created since (ISO time or 15m, 2h, 3d, 1w)");
  images->add_option("--until", lo->until, "created until");
  images->add_option("--limit", lo->limit, "at most this many")->check(CLI::PositiveNumber);
  images->require_subcommand(0, 1);
  auto* list = images->add_subcommand("list", "List images (the default)");
  list->alias("ls");

  auto io = std::make_shared<ImportOptions>();
  auto* imp = images->add_subcommand("import", "Import images from a registry (docker://…)");
  imp->add_option("REF", io->refs, "references (e.g. python:3.12-slim; REF?tag=NAME)")->required();
  imp->add_option("--tag", io->tag, "tag of the imported image (default: derived from REF)");
  imp->add_option("--username", io->username, "registry user");
  imp->add_option("--password", io->password, "registry password or token");
  imp->add_option("-t,--timeout", io->timeout, "seconds the import may take")->default_val(300);
  imp->add_flag("-d,--detach", io->detach, "print the operations and return at once");
  imp->callback([&ctx, io] { import_images(ctx, *io); });
  images->callback([&ctx, lo, imp] {
    if (!imp->parsed()) list_images(ctx, *lo);
  });

  auto* tag = app.add_subcommand("tag", "Set (or with -U remove) an image's tag");
  tag->alias("t");
  auto args = std::make_shared<std::vector<std::string>>();
  auto untag = std::make_shared<bool>(false);
  tag->add_option("ARGS", *args, "[IMAGE] TAG (IMAGE defaults to the session's)")
      ->expected(1, 2)
      ->required();
  tag->add_flag("-U,--delete,--rm", *untag, "remove the tag instead");
  tag->callback([&ctx, args, untag] {
    std::string name = args->back();
    std::string image;
    if (args->size() == 2)
      image = ctx.resolve_image((*args)[0]);
    else if (*untag)
      image = ctx.resolve_image(name);
    else
      image = ctx.current_image();
    json img;
    if (*untag) {
      auto r = ctx.api().request("DELETE", fmt::format("/images/{}/tag{}", path_segment(image),
                                                       query_string({{"tag", name}})));
      if (r.status < 200 || r.status >= 300) ctx.api().fail(r, "remove tag " + name);
      img = ctx.api().get_json(fmt::format("/inspect/{}/", path_segment(image)),
                               "read image " + image);
    } else {
      img = ctx.api().send_json("PATCH", fmt::format("/images/{}/tag", path_segment(image)),
                                json{{"tag", name}}, "tag " + image);
    }
    write_all(
        render({img}, {{"uuid", "UUID"}, {"tag", "TAG"}, {"created_at", "CREATED"}}, ctx.format()));
  });
}

}  // namespace coppice::cli
