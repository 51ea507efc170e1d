// The metadata store: images, tags, operations, events, files and tokens. The interface is
// backend-neutral so that a PostgreSQL implementation can sit beside the SQLite one.
//
// Invariants every backend keeps:
//  * an image row exists only after its layer directory was renamed into the layer store, so
//    no image points at a missing or half-written layer;
//  * a tag is unique per project (setting it moves it);
//  * an operation's final status, its events and its result image are written in one
//    transaction (finish_operation), so a reader never sees one without the others.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "store/records.h"

namespace coppice::store {

class MetaStore {
 public:
  virtual ~MetaStore() = default;

  // Images.
  virtual void insert_image(const ImageRecord& img) = 0;
  virtual std::optional<ImageRecord> get_image(const std::string& uuid) = 0;
  // Images the project can see: its own and the public ones. Summaries: `layers` and
  // `config` are left empty (a listing must stay small; get_image has them).
  virtual std::vector<ImageRecord> list_images(const std::string& project,
                                               const ImageFilter& f) = 0;
  // The project's image with this exact tag, else the public one, else nullopt.
  virtual std::optional<ImageRecord> find_by_tag(const std::string& project,
                                                 const std::string& tag) = 0;
  // True when a base or imported image (parent_uuid null) of `project`, or a public one, has
  // `layer_id` in its stack: the project has shown it holds that layer's content, so an import
  // may reuse the stored copy without fetching it again.
  virtual bool project_has_layer(const std::string& project, const std::string& layer_id) = 0;
  // The project's newest imported image whose OCI manifest digest (config.oci.manifest_digest)
  // is `digest`, or nullopt: re-importing an unchanged image returns it.
  virtual std::optional<ImageRecord> find_by_source(const std::string& project,
                                                    const std::string& digest) = 0;
  // Puts `tag` on image `uuid`, taking it off whichever image of `project` had it.
  virtual void set_tag(const std::string& project, const std::string& uuid,
                       const std::string& tag) = 0;
  virtual void clear_tag(const std::string& uuid) = 0;
  // Records the flattened copy of an image's stack; a flat layer, once set, never changes.
  virtual void set_flat_layer(const std::string& uuid, const std::string& layer_id) = 0;
  // Every layer id referenced by an image (own, lower stack and flat layers), for recovery.
  virtual std::vector<std::string> referenced_layers() = 0;

  // Operations and their event logs.
  virtual void insert_operation(const OperationRecord& op) = 0;
  virtual std::optional<OperationRecord> get_operation(const std::string& uuid) = 0;
  // Summaries: `metadata` is left empty (get_operation has it).
  virtual std::vector<OperationRecord> list_operations(const std::string& project,
                                                       const OperationFilter& f) = 0;
  // Atomically: stores the final operation record, its whole event log and (optionally) the
  // new image it produced.
  virtual void finish_operation(const OperationRecord& op, const std::vector<EventRecord>& events,
                                const std::optional<ImageRecord>& new_image) = 0;
  virtual std::vector<EventRecord> events(const std::string& op_uuid) = 0;
  // Operations not in a terminal state (after a crash: to be failed by recovery).
  virtual std::vector<OperationRecord> active_operations() = 0;

  // Files (content-addressed uploads).
  // Returns the project's record for this content, creating it when new.
  virtual FileRecord upsert_file(const std::string& project, const std::string& sha256,
                                 int64_t size) = 0;
  virtual std::optional<FileRecord> get_file_by_sha(const std::string& project,
                                                    const std::string& sha256) = 0;
  virtual std::optional<FileRecord> get_file_by_uuid(const std::string& project,
                                                     const std::string& uuid) = 0;
  virtual std::vector<FileRecord> list_files(const std::string& project, const Page& p) = 0;

  // API tokens; only a SHA-256 of the secret is stored. find_token returns expired tokens too
  // (the caller refuses them, saying why).
  virtual TokenRecord create_token(const std::string& project, const std::string& secret_hash,
                                   std::optional<int64_t> expires_us = std::nullopt) = 0;
  virtual std::optional<TokenRecord> find_token(const std::string& secret_hash) = 0;
  virtual std::optional<TokenRecord> get_token(const std::string& uuid) = 0;
  // Every token, oldest first.
  virtual std::vector<TokenRecord> list_tokens() = 0;
  // Deletes the token; false when there is none with this uuid.
  virtual bool revoke_token(const std::string& uuid) = 0;
  virtual void touch_token(const std::string& uuid, int64_t used_us) = 0;

  // Store-wide settings (e.g. the sandbox id range its layers are owned by).
  virtual std::optional<std::string> get_setting(const std::string& key) = 0;
  // Sets `key` to `value` unless it is set already (the first writer wins, across processes).
  virtual void init_setting(const std::string& key, const std::string& value) = 0;
  virtual void set_setting(const std::string& key, const std::string& value) = 0;
};

// SQLite backend: WAL mode, versioned migrations (PRAGMA user_version), one connection
// guarded by a mutex. The database and its -wal/-shm files are made readable by their owner
// only (0600; they hold run environments, stdin and output), also when they exist already. Safe to
// open from several processes (the admin commands run beside the server); busy waits up to 5 s.
// `durable`: synchronous=FULL (a commit survives power loss); otherwise NORMAL (survives a crash of
// the process, may lose the last commits on power loss).
std::unique_ptr<MetaStore> open_sqlite_store(const std::filesystem::path& db_path,
                                             bool durable = false);

}  // namespace coppice::store
