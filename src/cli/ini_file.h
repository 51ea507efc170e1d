// A minimal INI document (the format of auth.ini): `[section]` headers, `key = value` lines,
// `#`/`;` comments. Sections and keys keep their order; writing drops comments.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace coppice::cli {

class IniFile {
 public:
  struct Section {
    std::string name;
    std::vector<std::pair<std::string, std::string>> entries;
  };

  // Parses `text`; `origin` names the file in error messages (Error 400 on a malformed line).
  static IniFile parse(const std::string& text, const std::string& origin);
  std::string serialize() const;

  std::optional<std::string> get(const std::string& section, const std::string& key) const;
  void set(const std::string& section, const std::string& key, const std::string& value);
  void remove_key(const std::string& section, const std::string& key);
  void remove_section(const std::string& section);
  bool has_section(const std::string& section) const;
  const std::vector<Section>& sections() const { return sections_; }

 private:
  Section* find(const std::string& section);
  const Section* find(const std::string& section) const;
  std::vector<Section> sections_;
};

}  // namespace coppice::cli
