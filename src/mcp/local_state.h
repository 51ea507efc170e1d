// What the MCP server remembers between calls and restarts, in SQLite at
// $COPPICE_HOME/mcp/state.db (mode 0600): the content hashes of local files already uploaded
// (so `rsync` sends only what changed), the directory states `rsync` returns, and registry
// credentials stored by `registry_auth`. Entries are per server URL. Thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cli/sqlite_db.h"

namespace coppice::mcp {

struct CachedFile {
  std::string sha256;
  std::string uuid;
};

struct StateFile {
  std::string path;  // relative to the directory state's root, '/'-separated
  std::string uuid;  // server file uuid
  unsigned mode = 0644;
};

struct DirectoryState {
  int64_t id = 0;
  std::string source;       // local absolute directory
  std::string destination;  // absolute path in the sandbox
  std::vector<StateFile> files;
};

struct RegistryCredentials {
  std::string username;
  std::string token;
};

class LocalState {
 public:
  LocalState(const std::filesystem::path& dir, std::string server_url);

  // The upload recorded for this local file when its size and mtime are unchanged.
  std::optional<CachedFile> cached(const std::string& abs_path, int64_t size, int64_t mtime_ns);
  void remember(const std::string& abs_path, int64_t size, int64_t mtime_ns, const CachedFile& f);

  int64_t save_state(const DirectoryState& s);  // returns the new id
  std::optional<DirectoryState> state(int64_t id);

  void save_credentials(const std::string& registry_host, const RegistryCredentials& c);
  std::optional<RegistryCredentials> credentials(const std::string& registry_host);

 private:
  std::mutex mu_;
  std::string server_;
  cli::SqliteDb db_;
};

}  // namespace coppice::mcp
