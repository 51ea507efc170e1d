#include "engine/spawn_request.h"

#include <fmt/format.h>

#include <cmath>

#include "common/base64.h"
#include "common/error.h"
#include "engine/redact.h"

namespace coppice::engine {
namespace {

using json = nlohmann::json;

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string get_string(const json& body, const char* name, std::string def = "") {
  const json* v = field(body, name);
  if (!v) return def;
  if (!v->is_string()) throw bad_request(fmt::format("`{}` must be a string", name));
  return v->get<std::string>();
}

bool get_bool(const json& body, const char* name, bool def) {
  const json* v = field(body, name);
  if (!v) return def;
  if (!v->is_boolean()) throw bad_request(fmt::format("`{}` must be a boolean", name));
  return v->get<bool>();
}

// A whole number that int64 holds (checked before any cast: casting 1e300 to int64 is
// undefined behaviour; found by fuzz/spawn_request_fuzz.cc).
bool whole_int64(double d) {
  return d >= -0x1p63 && d < 0x1p63 && d == std::trunc(d);
}

int64_t get_int(const json& body, const char* name, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(body, name);
  if (!v) return def;
  int64_t n;
  if (v->is_number_integer()) {
    n = v->get<int64_t>();
  } else if (v->is_number_float() && whole_int64(v->get<double>())) {
    n = static_cast<int64_t>(v->get<double>());
  } else {
    throw bad_request(fmt::format("`{}` must be an integer", name));
  }
  if (n < lo || n > hi)
    throw bad_request(fmt::format("`{}` must be between {} and {}", name, lo, hi));
  return n;
}

// An integer field of resources_limits bounded below by `lo` and above by a server cap that
// the error names (with its whoami.limits key).
int64_t get_capped(const json& rl, const char* name, int64_t lo, int64_t cap,
                   const char* whoami_key) {
  const json* v = field(rl, name);
  if (!v) return 0;
  if (!v->is_number_integer())
    throw bad_request(fmt::format("`resources_limits.{}` must be an integer", name));
  int64_t n = v->get<int64_t>();
  if (n < lo) throw bad_request(fmt::format("`resources_limits.{}` must be at least {}", name, lo));
  if (n > cap)
    throw bad_request(
        fmt::format("`resources_limits.{}` asks for {}, over this server's cap of {} "
                    "(whoami limits.{})",
                    name, n, cap, whoami_key));
  return n;
}

bool valid_hostname(const std::string& h) {
  if (h.empty() || h.size() > 64) return false;
  for (char c : h)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_'))
      return false;
  return true;
}

}  // namespace

std::string normalize_sandbox_path(const std::string& p, const char* what) {
  if (p.empty() || p[0] != '/') throw bad_request(fmt::format("{} must be an absolute path", what));
  if (p.size() > 4096) throw bad_request(fmt::format("{} is too long", what));
  if (p.find('\0') != std::string::npos) throw bad_request(fmt::format("{} contains NUL", what));
  std::string out;
  size_t i = 0;
  while (i < p.size()) {
    while (i < p.size() && p[i] == '/') ++i;
    size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    std::string comp = p.substr(i, j - i);
    i = j;
    if (comp.empty()) continue;
    if (comp == "." || comp == "..")
      throw bad_request(fmt::format("{} must not contain '.' or '..' components: {}", what, p));
    out += '/';
    out += comp;
  }
  return out.empty() ? "/" : out;
}

uint32_t parse_mode(const json& v) {
  int64_t mode = -1;
  if (v.is_number_integer()) {
    mode = v.get<int64_t>();
  } else if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (s.rfind("0o", 0) == 0 || s.rfind("0O", 0) == 0) s = s.substr(2);
    if (s.empty() || s.size() > 6)
      throw bad_request(fmt::format("invalid file mode: {}", v.dump()));
    mode = 0;
    for (char c : s) {
      if (c < '0' || c > '7') throw bad_request(fmt::format("invalid file mode: {}", v.dump()));
      mode = mode * 8 + (c - '0');
    }
  } else {
    throw bad_request("file `mode` must be an octal string or an integer");
  }
  if (mode < 0 || mode > 07777) throw bad_request(fmt::format("invalid file mode: {}", v.dump()));
  return static_cast<uint32_t>(mode);
}

std::vector<std::string> SpawnRequest::argv() const {
  if (shell) return {"/bin/sh", "-c", command};
  std::vector<std::string> v{command};
  v.insert(v.end(), args.begin(), args.end());
  return v;
}

json SpawnRequest::limits_json() const {
  json j = json::object();
  if (max_layer_bytes) j["max_layer_bytes"] = *max_layer_bytes;
  if (memory_bytes) j["memory_bytes"] = memory_bytes;
  if (pids) j["pids"] = pids;
  if (cpus > 0) j["cpus"] = cpus;
  return j;
}

json SpawnRequest::to_json() const {
  json files_j = json::object();
  for (const auto& [p, f] : files)
    files_j[p] = {
        {"uuid", f.uuid}, {"uid", f.uid}, {"gid", f.gid}, {"mode", fmt::format("{:04o}", f.mode)}};
  return {
      {"command", command},
      {"image", image},
      {"args", args},
      {"shell", shell},
      {"env", redacted_env(env)},
      {"preserve_env", preserve_env},
      {"cwd", cwd},
      {"uid", uid},
      {"gid", gid},
      {"hostname", hostname},
      {"disposable", disposable},
      {"timeout", timeout_s},
      {"truncate_output_at", truncate_output_at},
      {"stdin", stdin_echo.is_null() ? json{{"value", ""}, {"encoding", "ascii"}, {"close", true}}
                                     : stdin_echo},
      {"files", files_j},
      {"resources_limits", limits_json()},
      {"networking", {{"enabled", false}}},
      {"runtime", runtime.empty() ? json(nullptr) : json(runtime)}};
}

SpawnRequest parse_spawn_request(const json& body, const SpawnLimits& limits) {
  if (!body.is_object()) throw bad_request("request body must be a JSON object");
  SpawnRequest r;
  r.command = get_string(body, "command");
  if (r.command.empty()) throw bad_request("`command` is required");
  if (r.command.find('\0') != std::string::npos) throw bad_request("`command` contains NUL");
  r.image = get_string(body, "image");
  if (r.image.empty()) throw bad_request("`image` is required");
  r.shell = get_bool(body, "shell", false);
  if (const json* a = field(body, "args")) {
    if (!a->is_array()) throw bad_request("`args` must be an array of strings");
    for (const auto& x : *a) {
      if (!x.is_string()) throw bad_request("`args` must be an array of strings");
      r.args.push_back(x.get<std::string>());
      // execve takes C strings: a NUL would silently cut the argument.
      if (r.args.back().find('\0') != std::string::npos)
        throw bad_request("`args` contains a NUL byte");
    }
    if (r.shell && !r.args.empty())
      throw bad_request("`args` must be empty when `shell` is true (put them in `command`)");
  }
  if (const json* e = field(body, "env")) {
    if (!e->is_object()) throw bad_request("`env` must be an object of strings");
    for (const auto& [k, v] : e->items()) {
      if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos)
        throw bad_request(fmt::format("invalid environment variable name: {}", json(k).dump()));
      if (v.is_null()) {
        r.env[k] = std::nullopt;
      } else if (v.is_string()) {
        if (v.get_ref<const std::string&>().find('\0') != std::string::npos)
          throw bad_request(fmt::format("`env.{}` contains a NUL byte", k));
        r.env[k] = v.get<std::string>();
      } else {
        throw bad_request(fmt::format("`env.{}` must be a string or null", k));
      }
    }
  }
  r.preserve_env = get_bool(body, "preserve_env", false);
  r.cwd = get_string(body, "cwd");
  if (!r.cwd.empty()) r.cwd = normalize_sandbox_path(r.cwd, "`cwd`");
  r.uid = static_cast<uint32_t>(get_int(body, "uid", 0, 0, 65535));
  r.gid = static_cast<uint32_t>(get_int(body, "gid", 0, 0, 65535));
  r.runtime = get_string(body, "runtime", "");
  r.hostname = get_string(body, "hostname", "coppice");
  if (r.hostname.empty()) r.hostname = "coppice";
  if (!valid_hostname(r.hostname)) throw bad_request("`hostname` is not a valid host name");
  r.disposable = get_bool(body, "disposable", false);
  if (const json* t = field(body, "timeout");
      t && t->is_number() && t->get<double>() > static_cast<double>(limits.max_timeout_s))
    throw bad_request(
        fmt::format("`timeout` asks for {} s, over this server's cap of {} s "
                    "(whoami limits.instance_max_timeout)",
                    t->dump(), limits.max_timeout_s));
  r.timeout_s = get_int(body, "timeout", limits.default_timeout_s, 1, limits.max_timeout_s);
  r.truncate_output_at =
      get_int(body, "truncate_output_at", limits.default_truncate, 0, limits.max_truncate);
  if (const json* s = field(body, "stdin")) {
    if (s->is_string()) {
      r.stdin_data = s->get<std::string>();
      r.stdin_echo = {{"value", r.stdin_data}, {"encoding", "ascii"}, {"close", true}};
    } else if (s->is_object()) {
      std::string value = get_string(*s, "value");
      std::string enc = get_string(*s, "encoding", "ascii");
      if (enc == "base64") {
        auto decoded = base64_decode(value);
        if (!decoded) throw bad_request("`stdin.value` is not valid base64");
        r.stdin_data = std::move(*decoded);
      } else if (enc == "ascii" || enc == "utf-8" || enc == "utf8") {
        r.stdin_data = value;
      } else {
        throw bad_request("`stdin.encoding` must be ascii or base64");
      }
      bool close = get_bool(*s, "close", true);
      r.stdin_echo = {{"value", value}, {"encoding", enc}, {"close", close}};
    } else {
      throw bad_request("`stdin` must be an object {value, encoding, close}");
    }
    if (static_cast<int64_t>(r.stdin_data.size()) > limits.max_stdin)
      throw bad_request(fmt::format("`stdin` is larger than {} bytes", limits.max_stdin));
  }
  if (const json* f = field(body, "files")) {
    if (!f->is_object()) throw bad_request("`files` must be an object of path -> file spec");
    for (const auto& [path, spec] : f->items()) {
      std::string p = normalize_sandbox_path(path, "file path");
      if (p == "/") throw bad_request("file path must name a file");
      for (const char* pseudo : {"/proc", "/sys", "/dev"})
        if (p == pseudo || p.rfind(std::string(pseudo) + "/", 0) == 0)
          throw bad_request(fmt::format("files cannot be injected under {}: {}", pseudo, p));
      if (!spec.is_object()) throw bad_request(fmt::format("`files[{}]` must be an object", path));
      FileSpec fs;
      fs.uuid = get_string(spec, "uuid");
      if (fs.uuid.empty()) throw bad_request(fmt::format("`files[{}].uuid` is required", path));
      fs.uid = static_cast<uint32_t>(get_int(spec, "uid", 0, 0, 65535));
      fs.gid = static_cast<uint32_t>(get_int(spec, "gid", 0, 0, 65535));
      if (const json* m = field(spec, "mode")) fs.mode = parse_mode(*m);
      r.files[p] = fs;
    }
  }
  if (const json* rl = field(body, "resources_limits")) {
    if (!rl->is_object()) throw bad_request("`resources_limits` must be an object");
    if (field(*rl, "max_layer_bytes"))
      r.max_layer_bytes = get_int(*rl, "max_layer_bytes", 0, 0, INT64_MAX);
    r.memory_bytes = get_capped(*rl, "memory_bytes", 4 << 20, limits.max_memory_bytes,
                                "instance_max_memory_bytes");
    r.pids = get_capped(*rl, "pids", 8, limits.max_pids, "instance_max_pids");
    if (const json* cpus = field(*rl, "cpus")) {
      if (!cpus->is_number() || cpus->get<double>() < 0.01)
        throw bad_request("`resources_limits.cpus` must be a number of at least 0.01");
      const double cap = limits.max_cpus > 0 ? static_cast<double>(limits.max_cpus) : 1024;
      if (cpus->get<double>() > cap)
        throw bad_request(
            fmt::format("`resources_limits.cpus` asks for {}, over this server's "
                        "cap of {} (whoami limits.instance_max_cpus)",
                        cpus->get<double>(), cap));
      r.cpus = cpus->get<double>();
    }
  }
  if (const json* n = field(body, "networking")) {
    if (!n->is_object()) throw bad_request("`networking` must be an object");
    if (get_bool(*n, "enabled", false))
      throw bad_request(
          "networking is not available on this server (sandboxes have loopback only)");
  }
  return r;
}

}  // namespace coppice::engine
