#include "cli/sqlite_db.h"

#include <fmt/format.h>
#include <sqlite3.h>

#include "common/error.h"

namespace coppice::cli {

void Statement::Finalize::operator()(sqlite3_stmt* s) const {
  sqlite3_finalize(s);
}

void SqliteDb::Close::operator()(sqlite3* d) const {
  sqlite3_close_v2(d);
}

SqliteDb::SqliteDb(const std::filesystem::path& file) : file_(file) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(file.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) fail("cannot open");
  sqlite3_busy_timeout(raw, 30000);
  exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;");
}

void SqliteDb::fail(const std::string& what) const {
  throw Error(500, fmt::format("session database {}: {}: {}", file_.string(), what,
                               db_ ? sqlite3_errmsg(db_.get()) : "out of memory"));
}

void SqliteDb::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_.get(), sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw Error(500, fmt::format("session database {}: {}", file_.string(), msg));
  }
}

int64_t SqliteDb::last_insert_id() const {
  return sqlite3_last_insert_rowid(db_.get());
}

int SqliteDb::changes() const {
  return sqlite3_changes(db_.get());
}

Statement::Statement(SqliteDb& db, const std::string& sql) : db_(db) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db.handle(), sql.c_str(), -1, &raw, nullptr) != SQLITE_OK)
    db.fail("cannot prepare a statement");
  stmt_.reset(raw);
}

Statement& Statement::bind(int idx, const std::string& v) {
  if (sqlite3_bind_text(stmt_.get(), idx, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT) !=
      SQLITE_OK)
    db_.fail("bind");
  return *this;
}

Statement& Statement::bind(int idx, int64_t v) {
  if (sqlite3_bind_int64(stmt_.get(), idx, v) != SQLITE_OK) db_.fail("bind");
  return *this;
}

Statement& Statement::bind(int idx, std::optional<int64_t> v) {
  if (!v) {
    if (sqlite3_bind_null(stmt_.get(), idx) != SQLITE_OK) db_.fail("bind");
    return *this;
  }
  return bind(idx, *v);
}

bool Statement::step() {
  int rc = sqlite3_step(stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  db_.fail("query failed");
}

void Statement::run() {
  while (step()) {
  }
}

std::string Statement::text(int col) const {
  auto* p = sqlite3_column_text(stmt_.get(), col);
  return p ? std::string(reinterpret_cast<const char*>(p),
                         static_cast<size_t>(sqlite3_column_bytes(stmt_.get(), col)))
           : std::string();
}

int64_t Statement::integer(int col) const {
  return sqlite3_column_int64(stmt_.get(), col);
}

bool Statement::is_null(int col) const {
  return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL;
}

Transaction::Transaction(SqliteDb& db) : db_(db) {
  db_.exec("BEGIN IMMEDIATE");
}

Transaction::~Transaction() {
  if (!done_) {
    try {
      db_.exec("ROLLBACK");
    } catch (...) {
    }
  }
}

void Transaction::commit() {
  db_.exec("COMMIT");
  done_ = true;
}

}  // namespace coppice::cli
