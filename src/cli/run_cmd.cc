// run: one command in a sandbox on the session's current image.
//   coppice run [-s] [-I] [-e K=V]… [-C DIR] [-t SECS] [-D] [-d] [-F host[:path][:uUID][:gGID]
//               [:mMODE]]… [-T BYTES] [-H HOST] [--preserve-env] [--use IMAGE] [--] CMD…
// Output streams live (SSE, resumed after drops, polling where the server has no stream); the
// exit code is the command's; a non-disposable run advances the session's branch to the result
// image; Ctrl-C cancels the operation.
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/file_upload.h"
#include "cli/interrupt.h"
#include "cli/log.h"
#include "cli/operation_follower.h"
#include "common/base64.h"
#include "common/error.h"
#include "common/fsutil.h"

namespace coppice::cli {

using nlohmann::json;

namespace {

struct RunOptions {
  bool shell = false;
  bool interpreter = false;
  std::vector<std::string> env;
  std::string cwd;
  int timeout = 120;
  bool disposable = false;
  bool detach = false;
  std::vector<std::string> files;
  int64_t truncate = 1 << 20;
  std::string hostname;
  bool preserve_env = false;
  std::string use;
  std::vector<std::string> command;
};

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789_-./=:,+@%") == std::string::npos)
    return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string shell_join(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + shell_quote(a);
  return out;
}

// Piped or redirected stdin (a FIFO or a file; never a terminal or /dev/null).
std::optional<std::string> read_piped_stdin() {
  struct stat st {};
  if (::isatty(0) || ::fstat(0, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISREG(st.st_mode)))
    return std::nullopt;
  std::string data;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw sys_error("cannot read stdin");
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

int run(Context& ctx, RunOptions& o) {
  if (o.command.empty()) throw bad_request("run needs a command: coppice run [-s] -- CMD [ARG…]");
  std::optional<SessionInfo> session;
  std::string image;
  if (!o.use.empty()) {
    image = ctx.resolve_image(o.use);
  } else {
    session = ctx.session();
    image = session->head->image;
  }
  std::string cwd = !o.cwd.empty() ? normalize_path(session ? session->cwd : "", o.cwd)
                                   : (session ? session->cwd : "");

  json body{{"image", image},
            {"disposable", o.disposable},
            {"timeout", o.timeout},
            {"truncate_output_at", o.truncate}};
  std::string title;
  std::optional<std::string> stdin_data;
  if (o.interpreter) {
    // The script runs in the sandbox's /bin/sh; its arguments follow; its body is stdin.
    const std::string& script = o.command[0];
    stdin_data = read_file(script);
    body["command"] = "/bin/sh";
    json args = json::array({"-s", "--"});
    for (size_t i = 1; i < o.command.size(); ++i) args.push_back(o.command[i]);
    body["args"] = args;
    body["shell"] = false;
    title = shell_join(o.command);
  } else if (o.shell) {
    body["command"] = o.command.size() == 1 ? o.command[0] : shell_join(o.command);
    body["shell"] = true;
    title = body["command"];
  } else {
    body["command"] = o.command[0];
    body["args"] = json(std::vector<std::string>(o.command.begin() + 1, o.command.end()));
    body["shell"] = false;
    title = shell_join(o.command);
  }
  if (!o.interpreter) stdin_data = read_piped_stdin();
  if (stdin_data)
    body["stdin"] = {
        {"value", base64_encode(*stdin_data)}, {"encoding", "base64"}, {"close", true}};

  json env = json::object();
  if (session)
    for (const auto& [k, v] : ctx.sessions().env(session->key)) env[k] = v;
  for (const auto& kv : o.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      throw bad_request(fmt::format("-e '{}': want NAME=VALUE", kv));
    env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!env.empty()) body["env"] = env;
  if (!cwd.empty()) body["cwd"] = cwd;
  if (!o.hostname.empty()) body["hostname"] = o.hostname;
  if (o.preserve_env) body["preserve_env"] = true;
  json files = json::object();
  if (session)  // staged by `file cp` / `file edit`; -F wins for the same path
    for (const auto& [path, fs] : ctx.sessions().staged_files(session->key)) files[path] = fs;
  for (const auto& spec : o.files) {
    auto [path, fs] = prepare_file(ctx.api(), parse_file_spec(spec), cwd);
    files[path] = fs;
  }
  if (!files.empty()) body["files"] = files;

  catch_interrupts();
  ApiClient& api = ctx.api();
  api.set_interruptible(true);
  json started;
  try {
    started = api.send_json("POST", "/instances", body, "start the run");
  } catch (const Error& e) {
    if (e.status() == 499) return 130;  // nothing was created that we know of
    throw;
  }
  std::string op = started.value("uuid", "");
  if (op.empty()) throw Error(502, "start the run: the server's answer has no operation uuid");
  if (session) ctx.sessions().clear_staged_files(session->key);  // the run has them now
  if (o.detach) {
    api.set_interruptible(false);
    if (session)  // `coppice session wait` records it when it ends
      ctx.sessions().add_pending(session->key,
                                 {op, session->head->id, session->branch, title, o.disposable});
    write_all(op + "\n");
    return 0;
  }

  OperationFollower follower(api, op);
  OperationOutcome out;
  try {
    out = follower.follow([&](const json& ev) {
      std::string type = ev.value("type", "");
      if (ev.value("spid", -1) != 1) return;
      const json& data = ev.contains("data") ? ev["data"] : json::object();
      if (type == "stdout" || type == "stderr")
        write_all(event_bytes(data), type == "stdout" ? 1 : 2);
      else if (type == "truncated")
        log_warning("{} was cut after {} bytes ({} dropped): -T raises the cap",
                    data.value("stream", "output"), data.value("bytes_emitted", 0LL),
                    data.value("bytes_dropped", 0LL));
    });
  } catch (const Error& e) {
    if (e.status() != 499) throw;
    api.set_interruptible(false);
    auto r = api.request("DELETE", "/operations/" + path_segment(op));
    if (r.status >= 200 && r.status < 300)
      write_all(fmt::format("coppice: interrupted: cancelled operation {}\n", op), 2);
    else
      write_all(fmt::format("coppice: interrupted; operation {} could not be cancelled (HTTP {})\n",
                            op, r.status),
                2);
    return 130;
  }
  api.set_interruptible(false);

  if (out.status == "FAILED")
    throw Error(500, fmt::format("run {} failed: {}", op,
                                 out.error.empty() ? "no reason given" : out.error));
  if (out.status == "CANCELLED")
    throw Error(409, fmt::format("run {} was cancelled before it finished", op));
  if (session && !o.disposable && out.result_image)
    ctx.sessions().record(session->key, *out.result_image, "run", title, op, session->head->id,
                          session->branch);
  if (out.timed_out)
    write_all(fmt::format("coppice: the command timed out after {} s and was killed (-t sets the "
                          "limit)\n",
                          o.timeout),
              2);
  if (!out.has_exit) return 1;
  if (out.exit_code >= 0) return out.exit_code;
  return out.signal > 0 ? 128 + out.signal : 1;
}

}  // namespace

void add_run_command(CLI::App& app, Context& ctx) {
  auto o = std::make_shared<RunOptions>();
  auto* r = app.add_subcommand("run", "Run a command in a sandbox on the session's image");
  r->alias("r");
  r->add_flag("-s,--shell", o->shell, "run CMD through /bin/sh -c");
  r->add_flag("-I,--interpreter", o->interpreter,
              "CMD is a local shell script, run by the sandbox's /bin/sh (for shebangs: "
              "#!/usr/bin/env -S coppice run -I)");
  r->add_option("-e,--env", o->env, "environment NAME=VALUE (repeatable)");
  r->add_option("-C,--cwd", o->cwd, "working directory (default: the session's, see `cd`)");
  r->add_option("-t,--timeout", o->timeout, "seconds before the command is killed")
      ->default_val(120)
      ->check(CLI::PositiveNumber);
  r->add_flag("-D,--disposable", o->disposable, "discard the filesystem changes");
  r->add_flag("-d,--detach,--no-wait", o->detach, "print the operation id and return at once");
  r->add_option("-F,--file", o->files,
                "inject a local file: host[:path][:uUID][:gGID][:mMODE] (repeatable)");
  r->add_option("-T,--truncate", o->truncate, "cap on each of stdout/stderr, bytes")
      ->default_val(1 << 20);
  r->add_option("-H,--hostname", o->hostname, "sandbox hostname");
  r->add_flag("--preserve-env", o->preserve_env, "keep this run's environment in the result image");
  r->add_option("--use", o->use, "run on this image instead of the session's (no session change)");
  // Everything from the first positional argument on (or after `--`) is the command.
  r->prefix_command();
  r->allow_extras();
  r->fallthrough(false);  // the command's words must not reach the global parser
  add_global_options(*r, ctx.opts);
  r->footer("CMD [ARG…] follows the options, after `--` when it has options of its own.");
  r->callback([&ctx, o, r] {
    for (const auto& extra : r->remaining()) o->command.push_back(extra);
    for (const auto& arg : ctx.after_dashdash) o->command.push_back(arg);
    ctx.exit_code = run(ctx, *o);
  });
}

}  // namespace coppice::cli
