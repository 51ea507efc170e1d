// build: a Dockerfile as a chain of snapshots.
//   coppice build [CONTEXT] [-f|--dockerfile FILE] [--tag T] [--build-arg K=V]… [--no-cache]
//                 [-t SECS]
// FROM resolves a tag (or imports the reference); each RUN is one non-disposable run (one
// snapshot); COPY/ADD upload local files once by content and snapshot them with a run of
// `true`; ENV, WORKDIR, ARG and USER change what later steps get. CMD, ENTRYPOINT, EXPOSE,
// LABEL and the like are accepted and ignored (a ConTree run always names its command).
// Steps whose inputs did not change (same parent image, instruction, environment, working
// directory, user and file contents) are reused from $COPPICE_HOME/build-cache instead of
// being run again. The result image's uuid is printed on stdout; progress goes to stderr.
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "cli/commands.h"
#include "cli/context.h"
#include "cli/file_upload.h"
#include "cli/operation_follower.h"
#include "cli/output.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/sha256.h"

namespace coppice::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Instruction {
  int line = 0;
  std::string op;    // upper case
  std::string args;  // the rest, continuation lines joined
};

std::vector<Instruction> parse_dockerfile(const std::string& text) {
  std::vector<Instruction> out;
  std::istringstream in(text);
  std::string raw, cur;
  int lineno = 0, start = 0;
  while (std::getline(in, raw)) {
    ++lineno;
    std::string t = raw;
    while (!t.empty() && (t.back() == '\r' || t.back() == ' ' || t.back() == '\t')) t.pop_back();
    size_t first = t.find_first_not_of(" \t");
    if (cur.empty() && (first == std::string::npos || t[first] == '#')) continue;
    if (cur.empty()) start = lineno;
    bool cont = !t.empty() && t.back() == '\\';
    if (cont) t.pop_back();
    cur += (cur.empty() ? t.substr(first == std::string::npos ? 0 : first) : t);
    if (cont) {
      cur += ' ';
      continue;
    }
    size_t sp = cur.find_first_of(" \t");
    Instruction ins;
    ins.line = start;
    ins.op = cur.substr(0, sp);
    for (auto& c : ins.op) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    ins.args = sp == std::string::npos ? "" : cur.substr(cur.find_first_not_of(" \t", sp));
    out.push_back(ins);
    cur.clear();
  }
  if (!cur.empty()) throw bad_request("Dockerfile ends inside a continued line");
  return out;
}

// $VAR and ${VAR} from `vars`; unknown ones expand to "".
std::string substitute(const std::string& s, const std::map<std::string, std::string>& vars) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '$' || i + 1 >= s.size()) {
      out += s[i];
      continue;
    }
    size_t j = i + 1;
    std::string name;
    if (s[j] == '{') {
      size_t close = s.find('}', j);
      if (close == std::string::npos) throw bad_request("unclosed ${ in " + s);
      name = s.substr(j + 1, close - j - 1);
      i = close;
    } else {
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_'))
        name += s[j++];
      if (name.empty()) {
        out += '$';
        continue;
      }
      i = j - 1;
    }
    auto it = vars.find(name);
    if (it != vars.end()) out += it->second;
  }
  return out;
}

// Exec form ["a", "b"] → a shell command line; shell form as is.
std::string command_line(const std::string& args) {
  if (args.empty() || args[0] != '[') return args;
  json j = json::parse(args, nullptr, false);
  if (!j.is_array()) return args;
  std::string out;
  for (const auto& a : j) {
    std::string w = a.is_string() ? a.get<std::string>() : a.dump(), q = "'";
    for (char c : w) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    out += (out.empty() ? "" : " ") + q + "'";
  }
  return out;
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  if (!s.empty() && s[0] == '[') {
    json j = json::parse(s, nullptr, false);
    if (j.is_array()) {
      for (const auto& a : j) out.push_back(a.get<std::string>());
      return out;
    }
  }
  std::istringstream in(s);
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

struct BuildState {
  std::string image;
  std::map<std::string, std::string> env, args;
  std::string cwd = "/";
  int uid = 0, gid = 0;
};

}  // namespace

void add_build_command(CLI::App& app, Context& ctx) {
  auto* b = app.add_subcommand("build", "Build an image from a Dockerfile, one snapshot per step");
  b->alias("bd");
  auto context = std::make_shared<std::string>(".");
  auto dockerfile = std::make_shared<std::string>();
  auto tag = std::make_shared<std::string>();
  auto build_args = std::make_shared<std::vector<std::string>>();
  auto no_cache = std::make_shared<bool>(false);
  auto timeout = std::make_shared<int>(600);
  b->add_option("CONTEXT", *context, "directory COPY/ADD read from (default .)");
  b->add_option("--dockerfile", *dockerfile, "Dockerfile (default CONTEXT/Dockerfile)");
  b->add_option("--tag", *tag, "tag for the result");
  b->add_option("--build-arg", *build_args, "ARG value NAME=VALUE (repeatable)");
  b->add_flag("--no-cache", *no_cache, "run every step again");
  b->add_option("-t,--timeout", *timeout, "seconds per step")->check(CLI::PositiveNumber);
  b->callback([&ctx, context, dockerfile, tag, build_args, no_cache, timeout] {
    fs::path ctxdir = *context;
    fs::path file = dockerfile->empty() ? ctxdir / "Dockerfile" : fs::path(*dockerfile);
    std::string text;
    try {
      text = read_file(file);
    } catch (const std::exception&) {
      throw not_found(
          fmt::format("no Dockerfile at {} (--dockerfile names another)", file.string()));
    }
    auto steps = parse_dockerfile(text);
    std::map<std::string, std::string> given;
    for (const auto& kv : *build_args) {
      auto eq = kv.find('=');
      if (eq == std::string::npos) throw bad_request("--build-arg wants NAME=VALUE");
      given[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    fs::path cache_dir = ctx.home() / "build-cache";
    fs::create_directories(cache_dir);
    ApiClient& api = ctx.api();
    BuildState st;
    auto vars = [&] {
      auto v = st.args;
      for (const auto& [k, val] : st.env) v[k] = val;
      return v;
    };
    // Runs one snapshot step (or takes it from the cache).
    auto snapshot = [&](const std::string& title, const std::string& command, const json& files,
                        const std::string& file_digest) {
      Sha256 h;
      h.update(st.image + "\n" + title + "\n" + st.cwd + "\n" + std::to_string(st.uid) + "\n" +
               file_digest + "\n" + json(st.env).dump() + "\n" + json(st.args).dump());
      fs::path cached = cache_dir / h.hex_digest();
      if (!*no_cache && fs::exists(cached)) {
        std::string img = read_file(cached);
        auto r = api.request("GET", "/images" + query_string({{"uuid", img}}));
        auto j = json::parse(r.body, nullptr, false);
        if (r.status == 200 && j.contains("images") && !j["images"].empty()) {
          write_all(" ---> using cache " + img + "\n", 2);
          st.image = img;
          return;
        }
      }
      json body = {
          {"image", st.image}, {"command", command}, {"shell", true}, {"disposable", false},
          {"cwd", st.cwd},     {"uid", st.uid},      {"gid", st.gid}, {"timeout", *timeout},
          {"env", vars()}};  // ARGs are set during steps too
      if (!files.empty()) body["files"] = files;
      json started = api.send_json("POST", "/instances", body, "start step");
      std::string op = started.value("uuid", "");
      OperationFollower follower(api, op);
      auto out = follower.follow([](const json& ev) {
        std::string type = ev.value("type", "");
        if (ev.value("spid", -1) == 1 && (type == "stdout" || type == "stderr"))
          write_all(event_bytes(ev.contains("data") ? ev["data"] : json::object()), 2);
      });
      if (out.status != "SUCCESS")
        throw Error(500, fmt::format("step '{}' {}: {}", title, out.status, out.error));
      if (out.exit_code != 0)
        throw Error(400, fmt::format("step '{}' exited with {}", title, out.exit_code));
      if (out.result_image) st.image = *out.result_image;  // unchanged filesystem keeps it
      write_file_atomic(cached, st.image, false);
    };

    for (size_t i = 0; i < steps.size(); ++i) {
      const auto& s = steps[i];
      write_all(fmt::format("Step {}/{} : {} {}\n", i + 1, steps.size(), s.op, s.args), 2);
      if (s.op != "FROM" && s.op != "ARG" && st.image.empty())
        throw bad_request(fmt::format("Dockerfile line {}: {} before FROM", s.line, s.op));
      if (s.op == "FROM") {
        auto w = words(substitute(s.args, st.args));
        if (w.empty())
          throw bad_request(fmt::format("Dockerfile line {}: FROM needs an image", s.line));
        if (!st.image.empty()) throw bad_request("multi-stage builds are not supported yet");
        try {
          st.image = ctx.resolve_image(w[0]);
        } catch (const Error& e) {
          if (e.status() != 404) throw;
          json started = api.send_json("POST", "/images/import",
                                       {{"registry", {{"url", w[0]}}}, {"timeout", *timeout}},
                                       "import " + w[0]);
          OperationFollower follower(api, started.value("uuid", ""));
          auto out = follower.follow([](const json&) {});
          if (out.status != "SUCCESS" || !out.result_image)
            throw Error(502, fmt::format("FROM {}: import {}: {}", w[0], out.status, out.error));
          st.image = *out.result_image;
        }
      } else if (s.op == "ARG") {
        std::string a = s.args;
        auto eq = a.find('=');
        std::string name = a.substr(0, eq);
        st.args[name] = given.count(name)         ? given[name]
                        : eq == std::string::npos ? ""
                                                  : a.substr(eq + 1);
      } else if (s.op == "ENV") {
        std::string a = substitute(s.args, vars());
        if (a.find('=') == std::string::npos) {
          auto sp = a.find(' ');
          st.env[a.substr(0, sp)] = sp == std::string::npos ? "" : a.substr(sp + 1);
        } else {
          for (const auto& w : words(a)) {
            auto eq = w.find('=');
            std::string v = eq == std::string::npos ? "" : w.substr(eq + 1);
            if (v.size() >= 2 && (v.front() == '"' || v.front() == '\''))
              v = v.substr(1, v.size() - 2);
            st.env[w.substr(0, eq)] = v;
          }
        }
      } else if (s.op == "WORKDIR") {
        std::string dir = normalize_path(st.cwd, substitute(s.args, vars()));
        const int uid = st.uid, gid = st.gid;  // made by root from "/", as Docker does
        st.uid = st.gid = 0;
        st.cwd = "/";
        snapshot("WORKDIR " + dir, "mkdir -p " + command_line(json::array({dir}).dump()),
                 json::object(), "");
        st.uid = uid;
        st.gid = gid;
        st.cwd = dir;
      } else if (s.op == "USER") {
        std::string u = substitute(s.args, vars());
        std::string user = u.substr(0, u.find(':'));
        std::string group = u.find(':') == std::string::npos ? user : u.substr(u.find(':') + 1);
        auto num = [&](const std::string& n) {
          if (n == "root") return 0;
          if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit))
            throw bad_request(
                fmt::format("Dockerfile line {}: USER wants numeric ids (or root)", s.line));
          return std::stoi(n);
        };
        st.uid = num(user);
        st.gid = num(group);
      } else if (s.op == "RUN") {
        snapshot("RUN " + s.args, command_line(s.args), json::object(), "");
      } else if (s.op == "COPY" || s.op == "ADD") {
        auto w = words(substitute(s.args, vars()));
        std::erase_if(w, [](const std::string& x) { return x.rfind("--", 0) == 0; });
        if (w.size() < 2)
          throw bad_request(fmt::format("Dockerfile line {}: {} SRC… DEST", s.line, s.op));
        std::string dest = normalize_path(st.cwd, w.back());
        bool into_dir = w.back().back() == '/' || w.size() > 2;
        json files = json::object();
        Sha256 digest;
        auto add_file = [&](const fs::path& host, const std::string& remote) {
          FileSpec spec;
          spec.host = host.string();
          spec.remote = remote;
          spec.uid = st.uid;
          spec.gid = st.gid;
          auto [p, fsj] = prepare_file(api, spec, st.cwd);
          files[p] = fsj;
          digest.update(p + ":" + fsj.dump() + "\n");
        };
        for (size_t k = 0; k + 1 < w.size(); ++k) {
          fs::path src = ctxdir / w[k];
          if (fs::is_directory(src)) {
            for (auto it = fs::recursive_directory_iterator(src);
                 it != fs::recursive_directory_iterator(); ++it)
              if (it->is_regular_file())
                add_file(it->path(), dest + "/" + fs::relative(it->path(), src).string());
          } else if (fs::is_regular_file(src)) {
            add_file(src, into_dir ? dest + "/" + src.filename().string() : dest);
          } else {
            throw not_found(
                fmt::format("Dockerfile line {}: {} not found in the context", s.line, w[k]));
          }
        }
        snapshot(s.op + " " + s.args, "true", files, digest.hex_digest());
      } else if (s.op == "CMD" || s.op == "ENTRYPOINT" || s.op == "EXPOSE" || s.op == "LABEL" ||
                 s.op == "MAINTAINER" || s.op == "STOPSIGNAL" || s.op == "HEALTHCHECK" ||
                 s.op == "VOLUME" || s.op == "SHELL" || s.op == "ONBUILD") {
        write_all(" ---> ignored (runs always name their command)\n", 2);
      } else {
        throw bad_request(fmt::format("Dockerfile line {}: unknown instruction {}", s.line, s.op));
      }
    }
    if (st.image.empty()) throw bad_request("the Dockerfile has no FROM");
    if (!tag->empty())
      api.send_json("PATCH", "/images/" + path_segment(st.image) + "/tag", {{"tag", *tag}},
                    "tag the result");
    write_all(st.image + "\n");
  });
}

}  // namespace coppice::cli
