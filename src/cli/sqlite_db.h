// A small RAII wrapper over one SQLite connection for the CLI's local state: prepared
// statements with positional binds, and an immediate-mode transaction guard. Errors throw
// coppice::Error naming the database file and SQLite's message.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

struct sqlite3;
struct sqlite3_stmt;

namespace coppice::cli {

class SqliteDb;

class Statement {
 public:
  Statement(SqliteDb& db, const std::string& sql);
  Statement& bind(int idx, const std::string& v);  // 1-based, as in SQLite
  Statement& bind(int idx, int64_t v);
  Statement& bind(int idx, std::optional<int64_t> v);  // nullopt binds NULL
  // Advances; true while a row is available.
  bool step();
  // Runs to completion (for statements without rows).
  void run();
  std::string text(int col) const;  // 0-based; NULL reads as ""
  int64_t integer(int col) const;
  bool is_null(int col) const;

 private:
  struct Finalize {
    void operator()(sqlite3_stmt* s) const;
  };
  SqliteDb& db_;
  std::unique_ptr<sqlite3_stmt, Finalize> stmt_;
};

class SqliteDb {
 public:
  // Opens (creating) `file` in WAL mode with a 30 s busy timeout, so several CLI processes can
  // share it.
  explicit SqliteDb(const std::filesystem::path& file);
  void exec(const std::string& sql);
  int64_t last_insert_id() const;
  int changes() const;
  [[noreturn]] void fail(const std::string& what) const;
  sqlite3* handle() const { return db_.get(); }

 private:
  struct Close {
    void operator()(sqlite3* d) const;
  };
  std::filesystem::path file_;
  std::unique_ptr<sqlite3, Close> db_;
};

// BEGIN IMMEDIATE on construction; ROLLBACK on destruction unless commit() ran.
class Transaction {
 public:
  explicit Transaction(SqliteDb& db);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  SqliteDb& db_;
  bool done_ = false;
};

}  // namespace coppice::cli
