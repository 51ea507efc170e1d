#include "cli/context.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "common/error.h"
#include "common/ids.h"
#include "common/sha256.h"

namespace coppice::cli {

namespace {
std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}
}  // namespace

ProfileStore& Context::profiles() {
  if (!profiles_) {
    std::filesystem::path file =
        opts.config.empty() ? home() / "auth.ini" : std::filesystem::path(opts.config);
    profiles_ = std::make_unique<ProfileStore>(file);
  }
  return *profiles_;
}

std::string Context::profile_name() {
  if (!opts.profile.empty()) return opts.profile;
  if (auto env = env_or_empty("COPPICE_PROFILE"); !env.empty()) return env;
  if (auto cur = profiles().current(); !cur.empty()) return cur;
  return "default";
}

Profile Context::server() {
  Profile p{profile_name(), "", ""};
  std::string url = !opts.url.empty() ? opts.url : env_or_empty("COPPICE_URL");
  std::string token = !opts.token.empty() ? opts.token : env_or_empty("COPPICE_TOKEN");
  if (url.empty() || token.empty()) {
    auto stored = profiles().find(p.name);
    if (!stored) {
      if (url.empty())
        throw bad_request(fmt::format(
            "no profile '{}' in {}: run `coppice auth --url URL --token TOKEN` first (or set "
            "COPPICE_URL and COPPICE_TOKEN)",
            p.name, profiles().file().string()));
    } else {
      if (url.empty()) url = stored->url;
      if (token.empty()) token = stored->token;
    }
  }
  if (url.empty())
    throw bad_request(
        fmt::format("profile '{}' has no url: run `coppice auth --url URL --token "
                    "TOKEN --name {}`",
                    p.name, p.name));
  p.url = url;
  p.token = token;
  return p;
}

ApiClient& Context::api() {
  if (!api_) {
    Profile p = server();
    api_ = std::make_unique<ApiClient>(p.url, p.token);
  }
  return *api_;
}

SessionStore& Context::sessions() {
  if (!sessions_) sessions_ = std::make_unique<SessionStore>(home() / "sessions.db");
  return *sessions_;
}

std::string Context::session_key() {
  if (!opts.session.empty()) return opts.session;
  if (auto env = env_or_empty("COPPICE_SESSION"); !env.empty()) return env;
  std::string tty = "notty";
  for (int fd : {0, 1, 2})
    if (const char* t = ::ttyname(fd)) {
      tty = t;
      break;
    }
  std::error_code ec;
  std::string cwd_name = std::filesystem::current_path(ec).filename().string();
  if (cwd_name.empty()) cwd_name = "root";
  std::string seed = fmt::format("{}_{}_{}", profile_name(), ::getppid(), tty);
  return fmt::format("{}+{}", cwd_name, sha256_hex(seed).substr(0, 8));
}

SessionInfo Context::session() {
  std::string key = session_key();
  auto info = sessions().get(key);
  if (!info || !info->head)
    throw not_found(
        fmt::format("no session '{}': start one with `eval $(coppice use IMAGE)`, or "
                    "pick one with -S KEY (`coppice session list`)",
                    key));
  return *info;
}

std::string Context::resolve_image(const std::string& ref) {
  if (is_uuid(ref)) return ref;
  std::string name = ref.rfind("tag:", 0) == 0 ? ref.substr(4) : ref;
  if (name.empty()) throw bad_request("empty image reference: give a UUID or a tag");
  std::vector<std::string> candidates{name};
  if (name.find(':') == std::string::npos) candidates.push_back(name + ":latest");
  for (const auto& c : candidates) {
    auto j = api().get_json("/images" + query_string({{"tag", c}, {"limit", "100"}}),
                            fmt::format("resolve image '{}'", ref));
    for (const auto& img : j.value("images", nlohmann::json::array()))
      if (img.value("tag", nlohmann::json()).is_string() && img["tag"] == c)
        return img["uuid"].get<std::string>();
  }
  throw not_found(
      fmt::format("no image tagged '{}' (`coppice images` lists them; `coppice images "
                  "import REF` imports one)",
                  name));
}

std::string normalize_path(const std::string& base, const std::string& p) {
  std::string full = (!p.empty() && p[0] == '/') ? p : (base.empty() ? "/" : base) + "/" + p;
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= full.size()) {
    size_t j = full.find('/', i);
    if (j == std::string::npos) j = full.size();
    std::string seg = full.substr(i, j - i);
    if (seg == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!seg.empty() && seg != ".") {
      parts.push_back(seg);
    }
    i = j + 1;
  }
  std::string out;
  for (const auto& s : parts) out += "/" + s;
  return out.empty() ? "/" : out;
}

std::string Context::remote_path(const std::string& path) {
  std::string cwd;
  if (path.empty() || path[0] != '/') {
    auto info = sessions().get(session_key());
    if (info) cwd = info->cwd;
  }
  return normalize_path(cwd, path.empty() ? "." : path);
}

}  // namespace coppice::cli
