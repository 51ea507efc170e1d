// shell: a REPL on the session. Bare command lines run in the sandbox (`run -s`); `cd`, `ls`,
// `cat`, `cp`, `env`, `log`, `use` and every other coppice command work without the prefix
// (or with `coppice`); `vi`/`vim`/`nano FILE` edit a file of the image (`file edit`, staged for
// the next run); `exit` or Ctrl-D leaves. Line editing, history (per session, in
// $COPPICE_HOME/history/<session>) and tab completion of commands, remote paths, tags and
// operation ids come from libedit, loaded only when the shell starts so that other commands
// keep their fast start. Each line runs as a child `coppice` process on the same session.
#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/output.h"
#include "common/error.h"

extern char** environ;

namespace coppice::cli {

namespace {

using CompletionFn = char** (*)(const char*, int, int);
using GeneratorFn = char* (*)(const char*, int);

// The part of libedit's readline API the shell uses, resolved at run time.
struct Editline {
  void* handle = nullptr;
  char* (*readline)(const char*) = nullptr;
  int (*add_history)(const char*) = nullptr;
  int (*read_history)(const char*) = nullptr;
  int (*write_history)(const char*) = nullptr;
  char** (*completion_matches)(const char*, GeneratorFn) = nullptr;
  CompletionFn* attempted_completion = nullptr;
  char** line_buffer = nullptr;

  Editline() {
    for (const char* lib : {"libedit.so.2", "libedit.so"})
      if ((handle = ::dlopen(lib, RTLD_NOW | RTLD_LOCAL))) break;
    if (!handle)
      throw Error(
          500, "the shell needs libedit (apt-get install libedit2): " + std::string(::dlerror()));
    load(readline, "readline");
    load(add_history, "add_history");
    load(read_history, "read_history");
    load(write_history, "write_history");
    load(completion_matches, "rl_completion_matches");
    load(attempted_completion, "rl_attempted_completion_function");
    load(line_buffer, "rl_line_buffer");
  }
  ~Editline() {
    if (handle) ::dlclose(handle);
  }
  Editline(const Editline&) = delete;
  Editline& operator=(const Editline&) = delete;

  template <typename T>
  void load(T& fn, const char* name) {
    fn = reinterpret_cast<T>(::dlsym(handle, name));
    if (!fn) throw Error(500, fmt::format("libedit lacks {}", name));
  }
};

// Words of a line, split on blanks with '…' and "…" quoting (enough for coppice arguments).
std::vector<std::string> split_words(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool in_word = false;
  char quote = 0;
  for (char c : line) {
    if (quote) {
      if (c == quote)
        quote = 0;
      else
        cur += c;
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (c == ' ' || c == '\t') {
      if (in_word) out.push_back(cur);
      cur.clear();
      in_word = false;
    } else {
      cur += c;
      in_word = true;
    }
  }
  if (in_word) out.push_back(cur);
  return out;
}

const std::set<std::string>& coppice_commands() {
  static const std::set<std::string> cmds = {
      "auth",      "use", "session", "run", "images", "tag", "ps",   "kill",       "show",
      "operation", "ls",  "cat",     "cp",  "cd",     "env", "file", "completion", "log"};
  return cmds;
}

// State the completion callbacks (plain C function pointers) reach.
struct ShellState {
  Context* ctx = nullptr;
  Editline* el = nullptr;
  std::vector<std::string> candidates;
};
ShellState g_shell;

std::vector<std::string> remote_candidates(const std::string& word) {
  std::vector<std::string> out;
  Context& ctx = *g_shell.ctx;
  std::string abs = ctx.remote_path(word.empty() ? "." : word);
  std::string dir = word.empty() || word.back() == '/' ? abs : abs.substr(0, abs.rfind('/'));
  if (dir.empty()) dir = "/";
  std::string shown_dir =
      word.substr(0, word.rfind('/') == std::string::npos ? 0 : word.rfind('/') + 1);
  auto r =
      ctx.api().request("GET", fmt::format("/inspect/{}/list{}", path_segment(ctx.current_image()),
                                           query_string({{"path", dir}})));
  if (r.status != 200) return out;
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (!j.is_object() || !j.contains("files")) return out;
  for (const auto& f : j["files"]) {
    std::string name = f.value("path", "");
    name = name.substr(name.rfind('/') + 1);
    out.push_back(shown_dir + name + (f.value("is_dir", false) ? "/" : ""));
  }
  return out;
}

std::vector<std::string> word_candidates(const std::string& line_before, const std::string& word) {
  auto words = split_words(line_before);
  if (words.empty()) {  // the first word: coppice commands and the shell's own
    std::vector<std::string> out(coppice_commands().begin(), coppice_commands().end());
    for (const char* b : {"exit", "vi", "vim", "nano", "coppice"}) out.push_back(b);
    return out;
  }
  std::string cmd = words[0] == "coppice" && words.size() > 1 ? words[1] : words[0];
  try {
    if (cmd == "use" || cmd == "tag") {
      std::vector<std::string> out;
      auto j = g_shell.ctx->api().get_json("/images?tagged=1&limit=100", "list images");
      if (j.contains("images"))
        for (const auto& i : j["images"])
          if (i.contains("tag") && i["tag"].is_string()) out.push_back(i["tag"].get<std::string>());
      return out;
    }
    if (cmd == "show" || cmd == "kill" || cmd == "operation") {
      std::vector<std::string> out;
      auto j = g_shell.ctx->api().get_json("/operations?limit=100", "list operations");
      for (const auto& o : j) out.push_back(o.value("uuid", ""));
      return out;
    }
    return remote_candidates(word);
  } catch (const std::exception&) {
    return {};  // completion never breaks the line being typed
  }
}

char* generator(const char* text, int state) {
  static size_t next;
  if (state == 0) next = 0;
  std::string t = text;
  while (next < g_shell.candidates.size()) {
    const std::string& c = g_shell.candidates[next++];
    if (c.compare(0, t.size(), t) == 0) return ::strdup(c.c_str());
  }
  return nullptr;
}

char** complete(const char* text, int start, int) {
  std::string line = *g_shell.el->line_buffer ? *g_shell.el->line_buffer : "";
  g_shell.candidates = word_candidates(line.substr(0, static_cast<size_t>(start)), text);
  return g_shell.el->completion_matches(text, generator);
}

// Runs `coppice ARGS…` as a child on the same server and session; returns its exit status.
int run_child(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  std::vector<char*> argv;
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  pid_t pid;
  int rc = ::posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), envp.data());
  if (rc != 0) throw sys_error("spawn coppice", rc);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

void add_shell_command(CLI::App& app, Context& ctx) {
  auto* sh = app.add_subcommand("shell", "An interactive shell on the session's sandbox");
  sh->alias("sh");
  sh->callback([&ctx] {
    auto info = ctx.session();  // fails with a hint when there is no session yet
    Profile server = ctx.server();
    Editline el;
    g_shell.ctx = &ctx;
    g_shell.el = &el;
    *el.attempted_completion = complete;

    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
      if (std::strncmp(*e, "COPPICE_", 8) != 0) env.push_back(*e);
    env.push_back("COPPICE_URL=" + server.url);
    env.push_back("COPPICE_TOKEN=" + server.token);
    env.push_back("COPPICE_SESSION=" + info.key);
    if (const char* home = std::getenv("COPPICE_HOME"))
      env.push_back(std::string("COPPICE_HOME=") + home);

    std::filesystem::path hist_dir = ctx.home() / "history";
    std::filesystem::create_directories(hist_dir);
    std::string hist = (hist_dir / info.key).string();
    el.read_history(hist.c_str());
    write_all(fmt::format("coppice shell on session {} (exit or Ctrl-D to leave)\n", info.key), 2);
    int last = 0;
    for (;;) {
      auto cur = ctx.sessions().get(info.key);
      std::string prompt =
          fmt::format("coppice:{}$ ", cur && !cur->cwd.empty() ? cur->cwd : std::string("/"));
      char* raw = el.readline(prompt.c_str());
      if (!raw) break;
      std::string line = raw;
      std::free(raw);
      auto words = split_words(line);
      if (words.empty()) continue;
      el.add_history(line.c_str());
      el.write_history(hist.c_str());
      if (words[0] == "exit" || words[0] == "quit") break;
      std::vector<std::string> args;
      if (words[0] == "coppice") {
        args.assign(words.begin() + 1, words.end());
      } else if ((words[0] == "vi" || words[0] == "vim" || words[0] == "nano") &&
                 words.size() == 2) {
        args = {"file", "edit", words[1], "-E", words[0]};
      } else if (coppice_commands().count(words[0]) && words[0] != "run") {
        args = words;
      } else {
        args = {"run", "-s", "--", line};
      }
      last = run_child(args, env);
      ::fflush(stdout);
    }
    write_all("\n", 2);
    ctx.exit_code = last;
  });
}

}  // namespace coppice::cli
