// Server profiles (URL + token) in $COPPICE_HOME/auth.ini, mode 0600:
//
//   [DEFAULT]
//   profile = default          <- the current profile
//   [profile:default]
//   url = http://127.0.0.1:8080
//   token = ...
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cli/ini_file.h"

namespace coppice::cli {

struct Profile {
  std::string name;
  std::string url;    // base URL, may carry a path prefix (`/v1/...` is appended)
  std::string token;  // bearer token
};

// $COPPICE_HOME, else ~/.coppice.
std::filesystem::path coppice_home();

class ProfileStore {
 public:
  // Loads `file` when it exists (an absent file is an empty store).
  explicit ProfileStore(std::filesystem::path file);

  std::vector<Profile> list() const;
  std::optional<Profile> find(const std::string& name) const;
  // The profile named in [DEFAULT], or "" when none is.
  std::string current() const;

  void put(const Profile& p);  // adds or replaces
  void remove(const std::string& name);
  void set_current(const std::string& name);
  // Writes the file atomically with mode 0600 (its directory 0700 when created).
  void save() const;

  const std::filesystem::path& file() const { return file_; }

 private:
  std::filesystem::path file_;
  IniFile ini_;
};

}  // namespace coppice::cli
