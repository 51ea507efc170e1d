#include "cli/session_store.h"

#include <fmt/format.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/fsutil.h"

namespace coppice::cli {

namespace {

constexpr const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS session_history(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  session_key TEXT NOT NULL,
  image_uuid TEXT NOT NULL,
  parent_id INTEGER REFERENCES session_history(id) ON DELETE SET NULL,
  kind TEXT NOT NULL,
  title TEXT NOT NULL DEFAULT '',
  operation_uuid TEXT,
  created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS session_history_by_key ON session_history(session_key, id);
CREATE TABLE IF NOT EXISTS session_branches(
  session_key TEXT NOT NULL,
  branch_name TEXT NOT NULL,
  history_id INTEGER NOT NULL,
  PRIMARY KEY(session_key, branch_name));
CREATE TABLE IF NOT EXISTS session_state(
  session_key TEXT PRIMARY KEY,
  active_branch TEXT NOT NULL DEFAULT 'main',
  cwd TEXT NOT NULL DEFAULT '',
  updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS session_env(
  session_key TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY(session_key, key));
CREATE TABLE IF NOT EXISTS session_pending(
  operation_uuid TEXT PRIMARY KEY,
  session_key TEXT NOT NULL,
  parent_id INTEGER,
  branch TEXT NOT NULL,
  title TEXT NOT NULL DEFAULT '',
  disposable INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS session_files(
  session_key TEXT NOT NULL,
  instance_path TEXT NOT NULL,
  spec TEXT NOT NULL,
  PRIMARY KEY(session_key, instance_path));
)";

constexpr const char* kEntryColumns =
    "id, image_uuid, parent_id, kind, title, operation_uuid, created_at";

HistoryEntry read_entry(const Statement& s) {
  HistoryEntry e;
  e.id = s.integer(0);
  e.image = s.text(1);
  if (!s.is_null(2)) e.parent = s.integer(2);
  e.kind = s.text(3);
  e.title = s.text(4);
  e.operation = s.text(5);
  e.created_at = s.text(6);
  return e;
}

std::filesystem::path ensure_parent(const std::filesystem::path& file) {
  make_dirs(file.parent_path(), 0700);
  return file;
}

}  // namespace

SessionStore::SessionStore(const std::filesystem::path& db_file) : db_(ensure_parent(db_file)) {
  db_.exec(kSchema);
}

std::optional<HistoryEntry> SessionStore::entry(int64_t id) {
  Statement s(db_, fmt::format("SELECT {} FROM session_history WHERE id = ?", kEntryColumns));
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_entry(s);
}

std::optional<SessionInfo> SessionStore::get(const std::string& key) {
  Statement s(db_,
              "SELECT st.active_branch, st.cwd, st.updated_at, b.history_id FROM session_state st "
              "LEFT JOIN session_branches b ON b.session_key = st.session_key AND "
              "b.branch_name = st.active_branch WHERE st.session_key = ?");
  s.bind(1, key);
  if (!s.step()) return std::nullopt;
  SessionInfo info{key, s.text(0), s.text(1), s.text(2), std::nullopt};
  if (!s.is_null(3)) info.head = entry(s.integer(3));
  return info;
}

SessionInfo SessionStore::require(const std::string& key) {
  auto info = get(key);
  if (!info)
    throw not_found(fmt::format("no session '{}': start one with `coppice use IMAGE`", key));
  return *info;
}

std::vector<SessionInfo> SessionStore::list() {
  std::vector<std::string> keys;
  Statement s(db_, "SELECT session_key FROM session_state ORDER BY updated_at DESC, session_key");
  while (s.step()) keys.push_back(s.text(0));
  std::vector<SessionInfo> out;
  for (const auto& k : keys)
    if (auto i = get(k)) out.push_back(*i);
  return out;
}

void SessionStore::touch(const std::string& key) {
  Statement(db_, "UPDATE session_state SET updated_at = ? WHERE session_key = ?")
      .bind(1, format_rfc3339(now_us()))
      .bind(2, key)
      .run();
}

HistoryEntry SessionStore::record(const std::string& key, const std::string& image,
                                  const std::string& kind, const std::string& title,
                                  const std::string& operation, std::optional<int64_t> parent,
                                  std::string branch) {
  Transaction tx(db_);
  std::string now = format_rfc3339(now_us());
  Statement(db_, "INSERT OR IGNORE INTO session_state(session_key, updated_at) VALUES (?, ?)")
      .bind(1, key)
      .bind(2, now)
      .run();
  if (branch.empty()) branch = require(key).branch;
  if (!parent) {
    Statement b(
        db_, "SELECT history_id FROM session_branches WHERE session_key = ? AND branch_name = ?");
    b.bind(1, key).bind(2, branch);
    if (b.step()) parent = b.integer(0);
  }
  Statement ins(db_,
                "INSERT INTO session_history(session_key, image_uuid, parent_id, kind, title, "
                "operation_uuid, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)");
  ins.bind(1, key).bind(2, image).bind(3, parent).bind(4, kind).bind(5, title);
  ins.bind(6, operation).bind(7, now).run();
  int64_t id = db_.last_insert_id();
  Statement(db_, "INSERT OR REPLACE INTO session_branches VALUES (?, ?, ?)")
      .bind(1, key)
      .bind(2, branch)
      .bind(3, id)
      .run();
  touch(key);
  tx.commit();
  return *entry(id);
}

std::vector<HistoryEntry> SessionStore::history(const std::string& key) {
  std::vector<HistoryEntry> out;
  Statement s(db_, fmt::format("SELECT {} FROM session_history WHERE session_key = ? ORDER BY id",
                               kEntryColumns));
  s.bind(1, key);
  while (s.step()) out.push_back(read_entry(s));
  return out;
}

std::map<std::string, int64_t> SessionStore::branches(const std::string& key) {
  std::map<std::string, int64_t> out;
  Statement s(db_, "SELECT branch_name, history_id FROM session_branches WHERE session_key = ?");
  s.bind(1, key);
  while (s.step()) out[s.text(0)] = s.integer(1);
  return out;
}

void SessionStore::create_branch(const std::string& key, const std::string& name) {
  if (name.empty() || name.find_first_of(" \t\n/") != std::string::npos)
    throw bad_request(fmt::format("invalid branch name '{}': no spaces or slashes", name));
  Transaction tx(db_);
  auto info = require(key);
  if (!info.head)
    throw bad_request(fmt::format("session '{}' has no image yet: run `coppice use IMAGE`", key));
  if (branches(key).count(name))
    throw conflict(
        fmt::format("branch '{}' already exists: `coppice session checkout {}` "
                    "switches to it",
                    name, name));
  Statement(db_, "INSERT INTO session_branches VALUES (?, ?, ?)")
      .bind(1, key)
      .bind(2, name)
      .bind(3, info.head->id)
      .run();
  Statement(db_, "UPDATE session_state SET active_branch = ? WHERE session_key = ?")
      .bind(1, name)
      .bind(2, key)
      .run();
  touch(key);
  tx.commit();
}

void SessionStore::delete_branch(const std::string& key, const std::string& name) {
  Transaction tx(db_);
  auto info = require(key);
  if (info.branch == name)
    throw conflict(fmt::format("branch '{}' is checked out: check out another branch first", name));
  Statement s(db_, "DELETE FROM session_branches WHERE session_key = ? AND branch_name = ?");
  s.bind(1, key).bind(2, name).run();
  if (db_.changes() == 0) throw not_found(fmt::format("no branch '{}' in session '{}'", name, key));
  tx.commit();
}

void SessionStore::checkout(const std::string& key, const std::string& name) {
  Transaction tx(db_);
  require(key);
  if (!branches(key).count(name))
    throw not_found(
        fmt::format("no branch '{}' in session '{}' (`coppice session branch` lists "
                    "them)",
                    name, key));
  Statement(db_, "UPDATE session_state SET active_branch = ? WHERE session_key = ?")
      .bind(1, name)
      .bind(2, key)
      .run();
  touch(key);
  tx.commit();
}

HistoryEntry SessionStore::rollback(const std::string& key, int steps) {
  if (steps < 1) throw bad_request("rollback wants a positive number of steps");
  Transaction tx(db_);
  auto info = require(key);
  if (!info.head) throw bad_request(fmt::format("session '{}' has no history", key));
  HistoryEntry cur = *info.head;
  for (int i = 0; i < steps; ++i) {
    if (!cur.parent)
      throw bad_request(
          fmt::format("cannot roll back {} step(s): branch '{}' has only {} before "
                      "its current entry",
                      steps, info.branch, i));
    cur = *entry(*cur.parent);
  }
  Statement(db_,
            "UPDATE session_branches SET history_id = ? WHERE session_key = ? AND "
            "branch_name = ?")
      .bind(1, cur.id)
      .bind(2, key)
      .bind(3, info.branch)
      .run();
  touch(key);
  tx.commit();
  return cur;
}

void SessionStore::set_cwd(const std::string& key, const std::string& cwd) {
  require(key);
  Statement(db_, "UPDATE session_state SET cwd = ? WHERE session_key = ?")
      .bind(1, cwd)
      .bind(2, key)
      .run();
  touch(key);
}

std::map<std::string, std::string> SessionStore::env(const std::string& key) {
  std::map<std::string, std::string> out;
  Statement s(db_, "SELECT key, value FROM session_env WHERE session_key = ?");
  s.bind(1, key);
  while (s.step()) out[s.text(0)] = s.text(1);
  return out;
}

void SessionStore::set_env(const std::string& key, const std::string& name,
                           const std::string& value) {
  require(key);
  Statement(db_, "INSERT OR REPLACE INTO session_env VALUES (?, ?, ?)")
      .bind(1, key)
      .bind(2, name)
      .bind(3, value)
      .run();
}

void SessionStore::unset_env(const std::string& key, const std::string& name) {
  Statement(db_, "DELETE FROM session_env WHERE session_key = ? AND key = ?")
      .bind(1, key)
      .bind(2, name)
      .run();
}

std::map<std::string, nlohmann::json> SessionStore::staged_files(const std::string& key) {
  std::map<std::string, nlohmann::json> out;
  Statement s(db_, "SELECT instance_path, spec FROM session_files WHERE session_key = ?");
  s.bind(1, key);
  while (s.step()) out[s.text(0)] = nlohmann::json::parse(s.text(1), nullptr, false);
  return out;
}

void SessionStore::stage_file(const std::string& key, const std::string& path,
                              const nlohmann::json& spec) {
  require(key);
  Statement(db_, "INSERT OR REPLACE INTO session_files VALUES (?, ?, ?)")
      .bind(1, key)
      .bind(2, path)
      .bind(3, spec.dump())
      .run();
}

void SessionStore::add_pending(const std::string& key, const PendingRun& p) {
  require(key);
  Statement(db_, "INSERT OR REPLACE INTO session_pending VALUES (?, ?, ?, ?, ?, ?)")
      .bind(1, p.operation)
      .bind(2, key)
      .bind(3, p.parent)
      .bind(4, p.branch)
      .bind(5, p.title)
      .bind(6, static_cast<int64_t>(p.disposable))
      .run();
}

std::vector<PendingRun> SessionStore::pending(const std::string& key) {
  std::vector<PendingRun> out;
  Statement s(db_,
              "SELECT operation_uuid, parent_id, branch, title, disposable FROM session_pending "
              "WHERE session_key = ? ORDER BY rowid");
  s.bind(1, key);
  while (s.step())
    out.push_back({s.text(0), s.integer(1), s.text(2), s.text(3), s.integer(4) != 0});
  return out;
}

void SessionStore::remove_pending(const std::string& operation) {
  Statement(db_, "DELETE FROM session_pending WHERE operation_uuid = ?").bind(1, operation).run();
}

void SessionStore::clear_staged_files(const std::string& key) {
  Statement(db_, "DELETE FROM session_files WHERE session_key = ?").bind(1, key).run();
}

bool SessionStore::remove(const std::string& key) {
  Transaction tx(db_);
  Statement(db_, "DELETE FROM session_state WHERE session_key = ?").bind(1, key).run();
  bool existed = db_.changes() > 0;
  for (const char* t : {"session_branches", "session_env", "session_history"})
    Statement(db_, fmt::format("DELETE FROM {} WHERE session_key = ?", t)).bind(1, key).run();
  tx.commit();
  return existed;
}

}  // namespace coppice::cli
