// SQLite implementation of MetaStore.
#include <fcntl.h>
#include <fmt/format.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mutex>

#include "common/clock.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/ids.h"
#include "store/meta_store.h"

namespace coppice::store {
namespace {

using json = nlohmann::json;

// Schema migrations, applied in order; PRAGMA user_version holds how many ran.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE images (
  uuid TEXT PRIMARY KEY,
  project TEXT NOT NULL,
  parent_uuid TEXT,
  layer_id TEXT NOT NULL,
  layers TEXT NOT NULL,
  depth INTEGER NOT NULL,
  tag TEXT,
  operation_uuid TEXT,
  created_us INTEGER NOT NULL,
  size_bytes INTEGER NOT NULL,
  flat_layer_id TEXT,
  config TEXT NOT NULL
);
CREATE UNIQUE INDEX images_tag ON images(project, tag) WHERE tag IS NOT NULL;
CREATE INDEX images_list ON images(project, created_us DESC, uuid);
CREATE TABLE operations (
  uuid TEXT PRIMARY KEY,
  project TEXT NOT NULL,
  kind TEXT NOT NULL,
  status TEXT NOT NULL,
  error TEXT,
  created_us INTEGER NOT NULL,
  finished_us INTEGER NOT NULL,
  duration_s REAL NOT NULL,
  image_uuid TEXT,
  result_image_uuid TEXT,
  result_tag TEXT,
  metadata TEXT NOT NULL,
  image_size INTEGER NOT NULL,
  consumed_cpu REAL NOT NULL,
  consumed_memory INTEGER NOT NULL
);
CREATE INDEX operations_list ON operations(project, created_us DESC, uuid);
CREATE INDEX operations_active ON operations(status) WHERE status IN ('PENDING','ASSIGNED','EXECUTING');
CREATE TABLE events (
  op_uuid TEXT NOT NULL,
  id INTEGER NOT NULL,
  ts_us INTEGER NOT NULL,
  spid INTEGER NOT NULL,
  type TEXT NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (op_uuid, id)
) WITHOUT ROWID;
CREATE TABLE files (
  uuid TEXT PRIMARY KEY,
  project TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  created_us INTEGER NOT NULL,
  updated_us INTEGER NOT NULL,
  UNIQUE (project, sha256)
);
CREATE INDEX files_list ON files(project, created_us DESC, uuid);
CREATE TABLE tokens (
  uuid TEXT PRIMARY KEY,
  project TEXT NOT NULL,
  secret_hash TEXT NOT NULL UNIQUE,
  created_us INTEGER NOT NULL
);
)sql",
    // 2: token expiry and last use; store-wide settings.
    R"sql(
ALTER TABLE tokens ADD COLUMN expires_us INTEGER;
ALTER TABLE tokens ADD COLUMN last_used_us INTEGER;
CREATE TABLE settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
)sql",
};

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK)
      throw internal(fmt::format("sqlite prepare: {}: {}", sqlite3_errmsg(db), sql));
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, const char* v) { return bind(i, std::string(v)); }
  Stmt& bind(int i, const std::optional<std::string>& v) {
    if (v) return bind(i, *v);
    sqlite3_bind_null(s_, i);
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& bind(int i, int v) { return bind(i, static_cast<int64_t>(v)); }
  Stmt& bind(int i, double v) {
    sqlite3_bind_double(s_, i, v);
    return *this;
  }
  // Returns true while a row is available.
  bool step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    if (rc == SQLITE_CONSTRAINT) throw conflict(fmt::format("constraint: {}", sqlite3_errmsg(db_)));
    throw internal(fmt::format("sqlite step: {}", sqlite3_errmsg(db_)));
  }
  void run() {
    while (step()) {
    }
  }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  std::string text(int c) const {
    auto p = sqlite3_column_text(s_, c);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(s_, c)))
             : std::string();
  }
  std::optional<std::string> opt_text(int c) const {
    if (sqlite3_column_type(s_, c) == SQLITE_NULL) return std::nullopt;
    return text(c);
  }
  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  std::optional<int64_t> opt_i64(int c) const {
    if (sqlite3_column_type(s_, c) == SQLITE_NULL) return std::nullopt;
    return i64(c);
  }
  double f64(int c) const { return sqlite3_column_double(s_, c); }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

constexpr const char* kImageCols =
    "uuid, project, parent_uuid, layer_id, layers, depth, tag, operation_uuid, created_us, "
    "size_bytes, flat_layer_id, config";
// For listings: without the lower-layer list and the config, which a summary never shows and
// which can be large (an env kept with preserve_env), so that a page's size stays bounded.
constexpr const char* kImageListCols =
    "uuid, project, parent_uuid, layer_id, '[]', depth, tag, operation_uuid, created_us, "
    "size_bytes, flat_layer_id, '{}'";

ImageRecord read_image(const Stmt& s) {
  ImageRecord r;
  r.uuid = s.text(0);
  r.project = s.text(1);
  r.parent_uuid = s.opt_text(2);
  r.layer_id = s.text(3);
  r.layers = json::parse(s.text(4)).get<std::vector<std::string>>();
  r.depth = s.i64(5);
  r.tag = s.opt_text(6);
  r.operation_uuid = s.opt_text(7);
  r.created_us = s.i64(8);
  r.size_bytes = s.i64(9);
  r.flat_layer_id = s.opt_text(10);
  r.config = json::parse(s.text(11));
  return r;
}

constexpr const char* kOpCols =
    "uuid, project, kind, status, error, created_us, finished_us, duration_s, image_uuid, "
    "result_image_uuid, result_tag, metadata, image_size, consumed_cpu, consumed_memory";
// For listings: without the metadata (the request echo and the result, up to tens of MiB).
constexpr const char* kOpListCols =
    "uuid, project, kind, status, error, created_us, finished_us, duration_s, image_uuid, "
    "result_image_uuid, result_tag, '{}', image_size, consumed_cpu, consumed_memory";

OperationRecord read_op(const Stmt& s) {
  OperationRecord r;
  r.uuid = s.text(0);
  r.project = s.text(1);
  r.kind = s.text(2);
  r.status = s.text(3);
  r.error = s.opt_text(4);
  r.created_us = s.i64(5);
  r.finished_us = s.i64(6);
  r.duration_s = s.f64(7);
  r.image_uuid = s.opt_text(8);
  r.result_image_uuid = s.opt_text(9);
  r.result_tag = s.opt_text(10);
  r.metadata = json::parse(s.text(11));
  r.image_size = s.i64(12);
  r.consumed_cpu = s.f64(13);
  r.consumed_memory = s.i64(14);
  return r;
}

constexpr const char* kFileCols = "uuid, project, sha256, size, created_us, updated_us";

FileRecord read_file_rec(const Stmt& s) {
  return FileRecord{s.text(0), s.text(1), s.text(2), s.i64(3), s.i64(4), s.i64(5)};
}

constexpr const char* kTokenCols = "uuid, project, created_us, expires_us, last_used_us";

TokenRecord read_token(const Stmt& s) {
  return TokenRecord{s.text(0), s.text(1), s.i64(2), s.opt_i64(3), s.opt_i64(4)};
}

// The database and its WAL and shared-memory files hold secrets: owner only. SQLite creates
// -wal and -shm with the database file's mode, so creating that one 0600 covers new stores;
// the chmods fix stores made before.
void restrict_db_files(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) throw sys_error("open " + path.string());
  if (::fchmod(fd.get(), 0600) != 0) throw sys_error("chmod " + path.string());
  for (const char* suffix : {"-wal", "-shm", "-journal"}) {
    std::string p = path.string() + suffix;
    if (::chmod(p.c_str(), 0600) != 0 && errno != ENOENT) throw sys_error("chmod " + p);
  }
}

class SqliteStore final : public MetaStore {
 public:
  SqliteStore(const std::filesystem::path& path, bool durable) {
    restrict_db_files(path);
    if (sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw internal(fmt::format("open {}: {}", path.string(), msg));
    }
    sqlite3_busy_timeout(db_, 5000);
    exec("PRAGMA journal_mode=WAL");
    exec(durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    exec("PRAGMA foreign_keys=ON");
    migrate();
  }
  ~SqliteStore() override { sqlite3_close(db_); }

  void insert_image(const ImageRecord& img) override {
    std::lock_guard lk(mu_);
    insert_image_locked(img);
  }

  std::optional<ImageRecord> get_image(const std::string& uuid) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM images WHERE uuid=?", kImageCols).c_str());
    s.bind(1, uuid);
    if (!s.step()) return std::nullopt;
    return read_image(s);
  }

  std::vector<ImageRecord> list_images(const std::string& project, const ImageFilter& f) override {
    std::lock_guard lk(mu_);
    std::string sql =
        fmt::format("SELECT {} FROM images WHERE (project=?1 OR project='')", kImageListCols);
    if (f.tagged_only) sql += " AND tag IS NOT NULL";
    if (f.tag_prefix) sql += " AND substr(tag, 1, length(?2)) = ?2";
    if (f.uuid) sql += " AND uuid=?3";
    if (f.page.since_us) sql += " AND created_us >= ?4";
    if (f.page.until_us) sql += " AND created_us <= ?5";
    sql += " ORDER BY ";
    if (f.tag_prefix) sql += "(tag = ?2) DESC, ";
    sql += "created_us DESC, uuid LIMIT ?6 OFFSET ?7";
    Stmt s(db_, sql.c_str());
    s.bind(1, project);
    if (f.tag_prefix) s.bind(2, *f.tag_prefix);
    if (f.uuid) s.bind(3, *f.uuid);
    if (f.page.since_us) s.bind(4, *f.page.since_us);
    if (f.page.until_us) s.bind(5, *f.page.until_us);
    s.bind(6, f.page.limit).bind(7, f.page.offset);
    std::vector<ImageRecord> out;
    while (s.step()) out.push_back(read_image(s));
    return out;
  }

  std::optional<ImageRecord> find_by_tag(const std::string& project,
                                         const std::string& tag) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM images WHERE tag=?2 AND (project=?1 OR project='') "
                            "ORDER BY (project=?1) DESC LIMIT 1",
                            kImageCols)
                    .c_str());
    s.bind(1, project).bind(2, tag);
    if (!s.step()) return std::nullopt;
    return read_image(s);
  }

  bool project_has_layer(const std::string& project, const std::string& layer_id) override {
    std::lock_guard lk(mu_);
    Stmt s(db_,
           "SELECT 1 FROM images, json_each(images.layers) WHERE images.parent_uuid IS NULL AND "
           "(images.project=? OR images.project='') AND json_each.value=? LIMIT 1");
    s.bind(1, project).bind(2, layer_id);
    return s.step();
  }

  std::optional<ImageRecord> find_by_source(const std::string& project,
                                            const std::string& digest) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM images WHERE project=? AND parent_uuid IS NULL AND "
                            "json_extract(config, '$.oci.manifest_digest')=? "
                            "ORDER BY created_us DESC LIMIT 1",
                            kImageCols)
                    .c_str());
    s.bind(1, project).bind(2, digest);
    if (!s.step()) return std::nullopt;
    return read_image(s);
  }

  void set_tag(const std::string& project, const std::string& uuid,
               const std::string& tag) override {
    std::lock_guard lk(mu_);
    Tx tx(*this);
    Stmt clear(db_, "UPDATE images SET tag=NULL WHERE project=? AND tag=?");
    clear.bind(1, project).bind(2, tag).run();
    Stmt set(db_, "UPDATE images SET tag=? WHERE uuid=?");
    set.bind(1, tag).bind(2, uuid).run();
    tx.commit();
  }

  void clear_tag(const std::string& uuid) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, "UPDATE images SET tag=NULL WHERE uuid=?");
    s.bind(1, uuid).run();
  }

  void set_flat_layer(const std::string& uuid, const std::string& layer_id) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, "UPDATE images SET flat_layer_id=? WHERE uuid=? AND flat_layer_id IS NULL");
    s.bind(1, layer_id).bind(2, uuid).run();
  }

  std::vector<std::string> referenced_layers() override {
    std::lock_guard lk(mu_);
    Stmt s(db_,
           "SELECT layer_id FROM images UNION SELECT value FROM images, json_each(images.layers) "
           "UNION SELECT flat_layer_id FROM images WHERE flat_layer_id IS NOT NULL");
    std::vector<std::string> out;
    while (s.step()) out.push_back(s.text(0));
    return out;
  }

  void insert_operation(const OperationRecord& op) override {
    std::lock_guard lk(mu_);
    write_op_locked(op, "INSERT");
  }

  std::optional<OperationRecord> get_operation(const std::string& uuid) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM operations WHERE uuid=?", kOpCols).c_str());
    s.bind(1, uuid);
    if (!s.step()) return std::nullopt;
    return read_op(s);
  }

  std::vector<OperationRecord> list_operations(const std::string& project,
                                               const OperationFilter& f) override {
    std::lock_guard lk(mu_);
    std::string sql = fmt::format("SELECT {} FROM operations WHERE project=?1", kOpListCols);
    if (f.status) sql += " AND status=?2";
    if (f.kind) sql += " AND kind=?3";
    if (f.page.since_us) sql += " AND created_us >= ?4";
    if (f.page.until_us) sql += " AND created_us <= ?5";
    sql += " ORDER BY created_us DESC, uuid LIMIT ?6 OFFSET ?7";
    Stmt s(db_, sql.c_str());
    s.bind(1, project);
    if (f.status) s.bind(2, *f.status);
    if (f.kind) s.bind(3, *f.kind);
    if (f.page.since_us) s.bind(4, *f.page.since_us);
    if (f.page.until_us) s.bind(5, *f.page.until_us);
    s.bind(6, f.page.limit).bind(7, f.page.offset);
    std::vector<OperationRecord> out;
    while (s.step()) out.push_back(read_op(s));
    return out;
  }

  void finish_operation(const OperationRecord& op, const std::vector<EventRecord>& events,
                        const std::optional<ImageRecord>& new_image) override {
    std::lock_guard lk(mu_);
    Tx tx(*this);
    if (new_image) insert_image_locked(*new_image);
    write_op_locked(op, "INSERT OR REPLACE");
    Stmt del(db_, "DELETE FROM events WHERE op_uuid=?");
    del.bind(1, op.uuid).run();
    Stmt ins(db_, "INSERT INTO events (op_uuid, id, ts_us, spid, type, data) VALUES (?,?,?,?,?,?)");
    for (const auto& e : events) {
      ins.bind(1, op.uuid).bind(2, e.id).bind(3, e.ts_us).bind(4, e.spid).bind(5, e.type);
      ins.bind(6, e.data.dump());
      ins.run();
      ins.reset();
    }
    tx.commit();
  }

  std::vector<EventRecord> events(const std::string& op_uuid) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, "SELECT id, ts_us, spid, type, data FROM events WHERE op_uuid=? ORDER BY id");
    s.bind(1, op_uuid);
    std::vector<EventRecord> out;
    while (s.step())
      out.push_back(EventRecord{s.i64(0), s.i64(1), static_cast<int>(s.i64(2)), s.text(3),
                                json::parse(s.text(4))});
    return out;
  }

  std::vector<OperationRecord> active_operations() override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM operations WHERE status IN "
                            "('PENDING','ASSIGNED','EXECUTING')",
                            kOpCols)
                    .c_str());
    std::vector<OperationRecord> out;
    while (s.step()) out.push_back(read_op(s));
    return out;
  }

  FileRecord upsert_file(const std::string& project, const std::string& sha256,
                         int64_t size) override {
    std::lock_guard lk(mu_);
    int64_t now = now_us();
    Stmt up(db_,
            "INSERT INTO files (uuid, project, sha256, size, created_us, updated_us) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT(project, sha256) DO UPDATE SET "
            "updated_us=excluded.updated_us");
    up.bind(1, new_uuid()).bind(2, project).bind(3, sha256).bind(4, size).bind(5, now).bind(6, now);
    up.run();
    auto rec = find_file_locked("sha256", project, sha256);
    if (!rec) throw internal("file record vanished after insert");
    return *rec;
  }

  std::optional<FileRecord> get_file_by_sha(const std::string& project,
                                            const std::string& sha256) override {
    std::lock_guard lk(mu_);
    return find_file_locked("sha256", project, sha256);
  }

  std::optional<FileRecord> get_file_by_uuid(const std::string& project,
                                             const std::string& uuid) override {
    std::lock_guard lk(mu_);
    return find_file_locked("uuid", project, uuid);
  }

  std::vector<FileRecord> list_files(const std::string& project, const Page& p) override {
    std::lock_guard lk(mu_);
    std::string sql = fmt::format("SELECT {} FROM files WHERE project=?1", kFileCols);
    if (p.since_us) sql += " AND created_us >= ?2";
    if (p.until_us) sql += " AND created_us <= ?3";
    sql += " ORDER BY created_us DESC, uuid LIMIT ?4 OFFSET ?5";
    Stmt s(db_, sql.c_str());
    s.bind(1, project);
    if (p.since_us) s.bind(2, *p.since_us);
    if (p.until_us) s.bind(3, *p.until_us);
    s.bind(4, p.limit).bind(5, p.offset);
    std::vector<FileRecord> out;
    while (s.step()) out.push_back(read_file_rec(s));
    return out;
  }

  TokenRecord create_token(const std::string& project, const std::string& secret_hash,
                           std::optional<int64_t> expires_us) override {
    std::lock_guard lk(mu_);
    TokenRecord t{new_uuid(), project, now_us(), expires_us, std::nullopt};
    Stmt s(db_,
           "INSERT INTO tokens (uuid, project, secret_hash, created_us, expires_us) "
           "VALUES (?,?,?,?,?)");
    s.bind(1, t.uuid).bind(2, project).bind(3, secret_hash).bind(4, t.created_us);
    if (expires_us) s.bind(5, *expires_us);
    s.run();
    return t;
  }

  std::optional<TokenRecord> find_token(const std::string& secret_hash) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM tokens WHERE secret_hash=?", kTokenCols).c_str());
    s.bind(1, secret_hash);
    if (!s.step()) return std::nullopt;
    return read_token(s);
  }

  std::optional<TokenRecord> get_token(const std::string& uuid) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM tokens WHERE uuid=?", kTokenCols).c_str());
    s.bind(1, uuid);
    if (!s.step()) return std::nullopt;
    return read_token(s);
  }

  std::vector<TokenRecord> list_tokens() override {
    std::lock_guard lk(mu_);
    Stmt s(db_, fmt::format("SELECT {} FROM tokens ORDER BY created_us, uuid", kTokenCols).c_str());
    std::vector<TokenRecord> out;
    while (s.step()) out.push_back(read_token(s));
    return out;
  }

  bool revoke_token(const std::string& uuid) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, "DELETE FROM tokens WHERE uuid=?");
    s.bind(1, uuid).run();
    return sqlite3_changes(db_) > 0;
  }

  void touch_token(const std::string& uuid, int64_t used_us) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, "UPDATE tokens SET last_used_us=? WHERE uuid=?");
    s.bind(1, used_us).bind(2, uuid).run();
  }

  std::optional<std::string> get_setting(const std::string& key) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, "SELECT value FROM settings WHERE key=?");
    s.bind(1, key);
    if (!s.step()) return std::nullopt;
    return s.text(0);
  }

  void init_setting(const std::string& key, const std::string& value) override {
    std::lock_guard lk(mu_);
    Stmt s(db_, "INSERT INTO settings (key, value) VALUES (?,?) ON CONFLICT(key) DO NOTHING");
    s.bind(1, key).bind(2, value).run();
  }

  void set_setting(const std::string& key, const std::string& value) override {
    std::lock_guard lk(mu_);
    Stmt s(db_,
           "INSERT INTO settings (key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET "
           "value=excluded.value");
    s.bind(1, key).bind(2, value).run();
  }

 private:
  // A transaction that rolls back unless committed.
  class Tx {
   public:
    explicit Tx(SqliteStore& st) : st_(st) { st_.exec("BEGIN IMMEDIATE"); }
    ~Tx() {
      if (!done_) sqlite3_exec(st_.db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    void commit() {
      st_.exec("COMMIT");
      done_ = true;
    }

   private:
    SqliteStore& st_;
    bool done_ = false;
  };

  void exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown";
      sqlite3_free(err);
      throw internal(fmt::format("sqlite: {}: {}", msg, sql));
    }
  }

  void migrate() {
    Stmt v(db_, "PRAGMA user_version");
    v.step();
    int64_t version = v.i64(0);
    constexpr int64_t n = sizeof(kMigrations) / sizeof(kMigrations[0]);
    if (version > n)
      throw internal(
          fmt::format("database schema version {} is newer than this server ({})", version, n));
    for (int64_t i = version; i < n; ++i) {
      exec("BEGIN IMMEDIATE");
      try {
        exec(kMigrations[i]);
        exec(fmt::format("PRAGMA user_version={}", i + 1).c_str());
        exec("COMMIT");
      } catch (...) {
        sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
      }
    }
  }

  // `column` is "uuid" or "sha256" (never user input).
  std::optional<FileRecord> find_file_locked(const char* column, const std::string& project,
                                             const std::string& key) {
    Stmt s(db_,
           fmt::format("SELECT {} FROM files WHERE project=? AND {}=?", kFileCols, column).c_str());
    s.bind(1, project).bind(2, key);
    if (!s.step()) return std::nullopt;
    return read_file_rec(s);
  }

  void insert_image_locked(const ImageRecord& img) {
    Stmt s(db_, fmt::format("INSERT INTO images ({}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", kImageCols)
                    .c_str());
    s.bind(1, img.uuid).bind(2, img.project).bind(3, img.parent_uuid).bind(4, img.layer_id);
    s.bind(5, json(img.layers).dump()).bind(6, img.depth).bind(7, img.tag);
    s.bind(8, img.operation_uuid).bind(9, img.created_us).bind(10, img.size_bytes);
    s.bind(11, img.flat_layer_id).bind(12, img.config.dump());
    s.run();
  }

  void write_op_locked(const OperationRecord& op, const char* verb) {
    Stmt s(db_, fmt::format("{} INTO operations ({}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", verb,
                            kOpCols)
                    .c_str());
    s.bind(1, op.uuid).bind(2, op.project).bind(3, op.kind).bind(4, op.status).bind(5, op.error);
    s.bind(6, op.created_us).bind(7, op.finished_us).bind(8, op.duration_s);
    s.bind(9, op.image_uuid).bind(10, op.result_image_uuid).bind(11, op.result_tag);
    s.bind(12, op.metadata.dump()).bind(13, op.image_size).bind(14, op.consumed_cpu);
    s.bind(15, op.consumed_memory);
    s.run();
  }

  sqlite3* db_ = nullptr;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<MetaStore> open_sqlite_store(const std::filesystem::path& db_path, bool durable) {
  return std::make_unique<SqliteStore>(db_path, durable);
}

}  // namespace coppice::store
