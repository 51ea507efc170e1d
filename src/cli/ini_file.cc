#include "cli/ini_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <sstream>

#include "common/error.h"

namespace coppice::cli {

namespace {
std::string trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(" \t\r");
  return std::string(s.substr(b, e - b + 1));
}
}  // namespace

IniFile IniFile::parse(const std::string& text, const std::string& origin) {
  IniFile ini;
  std::istringstream in(text);
  std::string raw;
  int lineno = 0;
  std::string section = "DEFAULT";
  while (std::getline(in, raw)) {
    ++lineno;
    std::string line = trim(raw);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[') {
      if (line.back() != ']' || line.size() < 3)
        throw bad_request(
            fmt::format("{}:{}: malformed section header '{}'", origin, lineno, line));
      section = trim(std::string_view(line).substr(1, line.size() - 2));
      if (!ini.find(section)) ini.sections_.push_back({section, {}});
      continue;
    }
    auto eq = line.find_first_of("=:");
    if (eq == std::string::npos || eq == 0)
      throw bad_request(
          fmt::format("{}:{}: expected 'key = value', got '{}'", origin, lineno, line));
    ini.set(section, trim(std::string_view(line).substr(0, eq)),
            trim(std::string_view(line).substr(eq + 1)));
  }
  return ini;
}

std::string IniFile::serialize() const {
  std::string out;
  for (const auto& s : sections_) {
    if (!out.empty()) out += '\n';
    out += fmt::format("[{}]\n", s.name);
    for (const auto& [k, v] : s.entries) out += fmt::format("{} = {}\n", k, v);
  }
  return out;
}

IniFile::Section* IniFile::find(const std::string& section) {
  auto it = std::find_if(sections_.begin(), sections_.end(),
                         [&](const Section& s) { return s.name == section; });
  return it == sections_.end() ? nullptr : &*it;
}

const IniFile::Section* IniFile::find(const std::string& section) const {
  return const_cast<IniFile*>(this)->find(section);
}

std::optional<std::string> IniFile::get(const std::string& section, const std::string& key) const {
  if (const Section* s = find(section))
    for (const auto& [k, v] : s->entries)
      if (k == key) return v;
  return std::nullopt;
}

void IniFile::set(const std::string& section, const std::string& key, const std::string& value) {
  Section* s = find(section);
  if (!s) {
    sections_.push_back({section, {}});
    s = &sections_.back();
  }
  for (auto& [k, v] : s->entries)
    if (k == key) {
      v = value;
      return;
    }
  s->entries.emplace_back(key, value);
}

void IniFile::remove_key(const std::string& section, const std::string& key) {
  if (Section* s = find(section))
    std::erase_if(s->entries, [&](const auto& kv) { return kv.first == key; });
}

void IniFile::remove_section(const std::string& section) {
  std::erase_if(sections_, [&](const Section& s) { return s.name == section; });
}

bool IniFile::has_section(const std::string& section) const {
  return find(section) != nullptr;
}

}  // namespace coppice::cli
