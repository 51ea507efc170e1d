#include "cli/profiles.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"

namespace coppice::cli {

namespace {

constexpr const char* kPrefix = "profile:";

std::string section_of(const std::string& name) {
  return kPrefix + name;
}

void write_private_file(const std::filesystem::path& p, const std::string& data) {
  std::filesystem::path tmp = p;
  tmp += ".tmp";
  {
    UniqueFd f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!f) throw sys_error("cannot write " + tmp.string());
    ::fchmod(f.get(), 0600);
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(f.get(), data.data() + off, data.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw sys_error("cannot write " + tmp.string());
      }
      off += static_cast<size_t>(n);
    }
  }
  if (::rename(tmp.c_str(), p.c_str()) != 0) throw sys_error("cannot replace " + p.string());
}

}  // namespace

std::filesystem::path coppice_home() {
  if (const char* h = std::getenv("COPPICE_HOME"); h && *h) return h;
  const char* home = std::getenv("HOME");
  if (!home || !*home)
    throw bad_request("neither COPPICE_HOME nor HOME is set: set COPPICE_HOME to a directory");
  return std::filesystem::path(home) / ".coppice";
}

ProfileStore::ProfileStore(std::filesystem::path file) : file_(std::move(file)) {
  std::error_code ec;
  if (std::filesystem::exists(file_, ec)) ini_ = IniFile::parse(read_file(file_), file_.string());
}

std::vector<Profile> ProfileStore::list() const {
  std::vector<Profile> out;
  for (const auto& s : ini_.sections())
    if (s.name.rfind(kPrefix, 0) == 0) out.push_back(*find(s.name.substr(std::strlen(kPrefix))));
  return out;
}

std::optional<Profile> ProfileStore::find(const std::string& name) const {
  std::string sec = section_of(name);
  if (!ini_.has_section(sec)) return std::nullopt;
  return Profile{name, ini_.get(sec, "url").value_or(""), ini_.get(sec, "token").value_or("")};
}

std::string ProfileStore::current() const {
  return ini_.get("DEFAULT", "profile").value_or("");
}

void ProfileStore::put(const Profile& p) {
  if (p.name.empty() || p.name.find_first_of("[]\n") != std::string::npos)
    throw bad_request(fmt::format("invalid profile name '{}'", p.name));
  std::string sec = section_of(p.name);
  ini_.set(sec, "url", p.url);
  ini_.set(sec, "token", p.token);
}

void ProfileStore::remove(const std::string& name) {
  if (!find(name))
    throw not_found(fmt::format("no profile named '{}' in {}", name, file_.string()));
  ini_.remove_section(section_of(name));
  if (current() == name) {
    auto rest = list();
    if (rest.empty())
      ini_.remove_key("DEFAULT", "profile");
    else
      ini_.set("DEFAULT", "profile", rest.front().name);
  }
}

void ProfileStore::set_current(const std::string& name) {
  if (!find(name))
    throw not_found(fmt::format("no profile named '{}' in {}", name, file_.string()));
  ini_.set("DEFAULT", "profile", name);
}

void ProfileStore::save() const {
  make_dirs(file_.parent_path(), 0700);
  // DEFAULT first, as Python's configparser writes it.
  IniFile out;
  if (auto cur = ini_.get("DEFAULT", "profile")) out.set("DEFAULT", "profile", *cur);
  for (const auto& s : ini_.sections())
    if (s.name != "DEFAULT")
      for (const auto& [k, v] : s.entries) out.set(s.name, k, v);
  write_private_file(file_, out.serialize());
}

}  // namespace coppice::cli
