#include "mcp/local_state.h"

#include <sys/stat.h>

#include "common/error.h"
#include "common/fsutil.h"

namespace coppice::mcp {

namespace {

std::filesystem::path prepare(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(500, "cannot create " + dir.string() + ": " + ec.message());
  ::chmod(dir.c_str(), 0700);
  return dir / "state.db";
}

}  // namespace

LocalState::LocalState(const std::filesystem::path& dir, std::string server_url)
    : server_(std::move(server_url)), db_(prepare(dir)) {
  ::chmod((dir / "state.db").c_str(), 0600);
  db_.exec(R"(
    CREATE TABLE IF NOT EXISTS file_cache (
      server TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
      sha256 TEXT NOT NULL, uuid TEXT NOT NULL, PRIMARY KEY (server, path));
    CREATE TABLE IF NOT EXISTS dir_states (
      id INTEGER PRIMARY KEY AUTOINCREMENT, server TEXT NOT NULL, source TEXT NOT NULL,
      destination TEXT NOT NULL, created_at INTEGER NOT NULL DEFAULT (strftime('%s','now')));
    CREATE TABLE IF NOT EXISTS dir_state_files (
      state_id INTEGER NOT NULL REFERENCES dir_states(id) ON DELETE CASCADE,
      path TEXT NOT NULL, uuid TEXT NOT NULL, mode INTEGER NOT NULL, PRIMARY KEY (state_id, path));
    CREATE TABLE IF NOT EXISTS registry_credentials (
      server TEXT NOT NULL, registry TEXT NOT NULL, username TEXT NOT NULL, token TEXT NOT NULL,
      PRIMARY KEY (server, registry));
  )");
}

std::optional<CachedFile> LocalState::cached(const std::string& path, int64_t size,
                                             int64_t mtime_ns) {
  std::lock_guard lock(mu_);
  cli::Statement q(db_,
                   "SELECT sha256, uuid FROM file_cache WHERE server=? AND path=? AND size=? AND "
                   "mtime_ns=?");
  q.bind(1, server_).bind(2, path).bind(3, size).bind(4, mtime_ns);
  if (!q.step()) return std::nullopt;
  return CachedFile{q.text(0), q.text(1)};
}

void LocalState::remember(const std::string& path, int64_t size, int64_t mtime_ns,
                          const CachedFile& f) {
  std::lock_guard lock(mu_);
  cli::Statement q(db_, "INSERT OR REPLACE INTO file_cache VALUES (?, ?, ?, ?, ?, ?)");
  q.bind(1, server_)
      .bind(2, path)
      .bind(3, size)
      .bind(4, mtime_ns)
      .bind(5, f.sha256)
      .bind(6, f.uuid);
  q.run();
}

int64_t LocalState::save_state(const DirectoryState& s) {
  std::lock_guard lock(mu_);
  cli::Transaction tx(db_);
  cli::Statement ins(db_, "INSERT INTO dir_states (server, source, destination) VALUES (?, ?, ?)");
  ins.bind(1, server_).bind(2, s.source).bind(3, s.destination);
  ins.run();
  int64_t id = db_.last_insert_id();
  for (const auto& f : s.files) {
    cli::Statement q(db_, "INSERT INTO dir_state_files VALUES (?, ?, ?, ?)");
    q.bind(1, id).bind(2, f.path).bind(3, f.uuid).bind(4, static_cast<int64_t>(f.mode));
    q.run();
  }
  tx.commit();
  return id;
}

std::optional<DirectoryState> LocalState::state(int64_t id) {
  std::lock_guard lock(mu_);
  cli::Statement q(db_, "SELECT source, destination FROM dir_states WHERE id=? AND server=?");
  q.bind(1, id).bind(2, server_);
  if (!q.step()) return std::nullopt;
  DirectoryState s{id, q.text(0), q.text(1), {}};
  cli::Statement f(db_,
                   "SELECT path, uuid, mode FROM dir_state_files WHERE state_id=? ORDER BY path");
  f.bind(1, id);
  while (f.step()) s.files.push_back({f.text(0), f.text(1), static_cast<unsigned>(f.integer(2))});
  return s;
}

void LocalState::save_credentials(const std::string& registry, const RegistryCredentials& c) {
  std::lock_guard lock(mu_);
  cli::Statement q(db_, "INSERT OR REPLACE INTO registry_credentials VALUES (?, ?, ?, ?)");
  q.bind(1, server_).bind(2, registry).bind(3, c.username).bind(4, c.token);
  q.run();
}

std::optional<RegistryCredentials> LocalState::credentials(const std::string& registry) {
  std::lock_guard lock(mu_);
  cli::Statement q(
      db_, "SELECT username, token FROM registry_credentials WHERE server=? AND registry=?");
  q.bind(1, server_).bind(2, registry);
  if (!q.step()) return std::nullopt;
  return RegistryCredentials{q.text(0), q.text(1)};
}

}  // namespace coppice::mcp
