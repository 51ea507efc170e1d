// Sessions: named, branching histories of images, kept in $COPPICE_HOME/sessions.db (SQLite,
// WAL) so that several terminals can each hold their own session at once.
//
// A session's history is a DAG (a tree) of entries, each naming an image and how it came to be
// (`use`, `run`, …) and its parent entry. Branches are named pointers to entries; the session's
// active branch is where the next run starts and where its result is recorded. Rollback moves
// the active branch back along the parents; nothing is ever deleted from the history.
// The schema follows ConTree's CLI (session_history, session_branches, session_state,
// session_env).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/sqlite_db.h"

namespace coppice::cli {

// A detached run: where its result goes once it ends.
struct PendingRun {
  std::string operation;
  int64_t parent = 0;  // the history entry it started from
  std::string branch;
  std::string title;
  bool disposable = false;
};

struct HistoryEntry {
  int64_t id = 0;
  std::string image;              // image uuid
  std::optional<int64_t> parent;  // parent entry; none for the first
  std::string kind;               // use, run, …
  std::string title;              // the image reference or the command
  std::string operation;          // operation uuid, "" when none
  std::string created_at;         // RFC 3339
};

struct SessionInfo {
  std::string key;
  std::string branch;  // the active branch
  std::string cwd;     // working directory for runs and relative paths ("" = the image's)
  std::string updated_at;
  std::optional<HistoryEntry> head;  // the active branch's entry
};

class SessionStore {
 public:
  explicit SessionStore(const std::filesystem::path& db_file);

  std::optional<SessionInfo> get(const std::string& key);
  std::vector<SessionInfo> list();

  // Adds an entry (creating the session, branch "main", on first use) and moves `branch`
  // (the active branch when "") to it. `parent` defaults to that branch's current entry.
  HistoryEntry record(const std::string& key, const std::string& image, const std::string& kind,
                      const std::string& title, const std::string& operation,
                      std::optional<int64_t> parent = std::nullopt, std::string branch = "");

  std::vector<HistoryEntry> history(const std::string& key);
  std::map<std::string, int64_t> branches(const std::string& key);

  // Creates `name` at the active branch's entry and makes it active (Error 409 if it exists).
  void create_branch(const std::string& key, const std::string& name);
  void delete_branch(const std::string& key, const std::string& name);
  void checkout(const std::string& key, const std::string& name);
  // Moves the active branch `steps` parents back; returns the new head. Error 400 when the
  // history is shorter.
  HistoryEntry rollback(const std::string& key, int steps);

  void set_cwd(const std::string& key, const std::string& cwd);
  std::map<std::string, std::string> env(const std::string& key);
  void set_env(const std::string& key, const std::string& name, const std::string& value);
  void unset_env(const std::string& key, const std::string& name);
  // Files staged by `file cp`/`file edit` for the session's next run: sandbox path -> the
  // spawn's FileSpec JSON ({uuid, mode, uid, gid}). The next started run takes them all.
  std::map<std::string, nlohmann::json> staged_files(const std::string& key);
  void stage_file(const std::string& key, const std::string& path, const nlohmann::json& spec);
  void clear_staged_files(const std::string& key);
  // Runs started with --detach, for `session wait` to record when they end.
  void add_pending(const std::string& key, const PendingRun& p);
  std::vector<PendingRun> pending(const std::string& key);
  void remove_pending(const std::string& operation);

  // Deletes the session with its history, branches and environment; false if it did not exist.
  bool remove(const std::string& key);

 private:
  std::optional<HistoryEntry> entry(int64_t id);
  SessionInfo require(const std::string& key);
  void touch(const std::string& key);
  SqliteDb db_;
};

}  // namespace coppice::cli
