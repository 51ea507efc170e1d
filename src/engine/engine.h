// The operation engine: accepts spawns at once, queues them, runs them on a bounded pool of
// workers through a sandbox Runtime, snapshots the result into the image store and records
// everything (status, events, result image) in the MetaStore.
//
// Lifecycle: PENDING (queued) -> ASSIGNED (a worker took it) -> EXECUTING (sandbox started)
// -> SUCCESS | FAILED | CANCELLED. A non-zero exit code is still SUCCESS; FAILED means the
// platform could not do the run (bad image, setup failure, layer over its size cap).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/fsutil.h"
#include "engine/import_request.h"
#include "engine/live_operation.h"
#include "engine/scheduler.h"
#include "engine/spawn_request.h"
#include "oci/exporter.h"
#include "engine/write_limit.h"
#include "sandbox/runtime.h"
#include "store/layer_store.h"
#include "store/meta_store.h"

namespace coppice::engine {

struct EngineConfig {
  size_t workers = 16;       // operations (sandboxes, imports, pushes, exports) running at once
  size_t max_queue = 10000;  // PENDING operations on the server accepted before 429
  size_t project_max_queued = 1000;  // PENDING operations of one project accepted before 429
  size_t project_max_running = 0;    // operations of one project running at once; 0 = workers/2
                                     // (at least 1). See engine/scheduler.h for the order.
  size_t flatten_depth = 64;         // an image whose lower stack is deeper gets a flat copy
  size_t max_lowers = 400;           // never mount more lowers than this (overlayfs limit is 500)
  uid_t uid_shift = 100000;          // host uid of sandbox root (the store's, store/id_range.h)
  uid_t uid_range = 65536;           // sandbox ids 0..uid_range-1
  uint64_t min_free_bytes = 512ull << 20;  // runs are refused below this much free data space
  SpawnLimits limits;
  oci::RegistryConfig registry;         // insecure registries, mirrors, retries
  int64_t max_import_timeout_s = 3600;  // cap on an import's or push's `timeout`
  // Decompression-bomb caps of one import (archive extraction and all its layers; 0 = none).
  uint64_t max_import_bytes = 32ull << 30;
  uint64_t max_import_entries = 2000000;
  // Exports: refused (413) when the image's files add up to more than this many bytes,
  // counted by apparent size (st_size: a sparse file counts in full) plus tar headers.
  uint64_t max_export_bytes = 32ull << 30;
  int64_t export_ttl_s = 3600;  // how long a finished export's archive can be downloaded
  WriteLimitConfig write_limit;         // per-run write limit (write_limit.h)
};

class Engine {
 public:
  Engine(EngineConfig cfg, store::MetaStore& meta, store::LayerStore& layers,
         sandbox::Runtime& runtime);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Makes another runtime available to runs that ask for it by name (spawn's `runtime`);
  // the constructor's runtime is the default. Call before start().
  void add_runtime(sandbox::Runtime& runtime);
  // Names of the available runtimes, the default first.
  std::vector<std::string> runtime_names() const;

  // Startup recovery: fails operations a previous process left active and removes scratch
  // directories and unreferenced layers. Call before start().
  void recover();
  void start();
  // Graceful stop: refuses new work, cancels queued operations, lets running ones finish until
  // `deadline`, then cancels them, and joins the workers.
  void shutdown(std::chrono::milliseconds deadline);

  // Validates and queues a spawn; returns the new operation (PENDING). Throws 4xx Errors.
  store::OperationRecord spawn(const std::string& project, const nlohmann::json& body);

  // Validates and queues an image import (contract §2.3; kind "image_import"); returns the
  // new operation (PENDING). Throws 4xx Errors.
  store::OperationRecord import_image(const std::string& project, const nlohmann::json& body);
  // Validates and queues a push of an image to a registry (kind "image_push").
  store::OperationRecord push_image(const std::string& project, const std::string& image_uuid,
                                    const nlohmann::json& body);
  // Validates and queues an export of an image as an OCI archive (kind "image_export"; body
  // {"timeout": s}, optional). Throws 404, 413 when the image is over max_export_bytes (checked
  // here, before any packing), 507 when the data filesystem lacks room, 429 past a queue cap.
  // On SUCCESS the archive can be read with export_archive() for export_ttl_s.
  store::OperationRecord export_image(const std::string& project, const std::string& image_uuid,
                                      const nlohmann::json& body);
  // A finished export's packed image. Throws 404 (unknown operation or not an export), 425
  // (still active), 409 (it did not succeed), 410 (its archive expired or the server restarted).
  struct ExportArchive {
    oci::BuiltImage built;  // layer blobs in a scratch directory, kept while this lives
    std::string ref_name;   // index.json's ref.name annotation
    std::string image_uuid;
    std::shared_ptr<TempDir> dir;
  };
  std::shared_ptr<const ExportArchive> export_archive(const std::string& project,
                                                      const std::string& op_uuid);
  // Forgets a finished export's archive (its files go once no reader holds it).
  void drop_export(const std::string& op_uuid);
  // The bytes an export of `img` would pack: apparent size of its layers' files plus 1 KiB per
  // entry for tar headers (each layer is walked once; layers are immutable, so cached).
  uint64_t export_size(const store::ImageRecord& img);

  // Resolves an image reference ("tag:NAME", a UUID) visible to `project`. Throws 404.
  store::ImageRecord resolve_image(const std::string& project, const std::string& ref);
  // An image visible to `project` by UUID, or nullopt.
  std::optional<store::ImageRecord> find_image(const std::string& project, const std::string& uuid);

  // Current record of an operation of `project` (live state while active). nullopt if unknown.
  std::optional<store::OperationRecord> operation(const std::string& project,
                                                  const std::string& uuid);
  // The live object while the operation is active, else nullptr.
  std::shared_ptr<LiveOperation> live(const std::string& uuid);
  // Cancels an active operation. Throws 404 (unknown) or 409 (already finished).
  void cancel(const std::string& project, const std::string& uuid);

  // The lower-layer directories of an image (top first), using its flat copy when present.
  std::vector<std::filesystem::path> image_layers(const store::ImageRecord& img);

  store::MetaStore& meta() { return meta_; }
  store::LayerStore& layer_store() { return layers_; }
  const EngineConfig& config() const { return cfg_; }
  const WriteLimits& write_limits() const { return write_limits_; }
  size_t running() const { return scheduler_.running(); }
  // Queued and running operations of a project.
  Scheduler::Counts project_counts(const std::string& project) const {
    return scheduler_.counts(project);
  }

 private:
  void execute(const std::shared_ptr<LiveOperation>& op, const SpawnRequest& req);
  void run_import(const std::shared_ptr<LiveOperation>& op, const ImportRequest& req);
  void run_push(const std::shared_ptr<LiveOperation>& op, const store::ImageRecord& img,
                const PushRequest& req);
  void run_export(const std::shared_ptr<LiveOperation>& op, const store::ImageRecord& img,
                  int64_t timeout_s);  // engine/export.cc
  void expire_exports();
  // Finishes an import or push that threw: CANCELLED when cancelled, FAILED otherwise.
  void finish_failed_transfer(const std::shared_ptr<LiveOperation>& op, const Error& e,
                              bool timed_out, int64_t timeout_s);
  // Makes an operation final: applies `final_state` to a copy of its record, stores record,
  // events (+ completion) and the new image in one transaction, and only then shows the final
  // state to readers of the live object, so a client never sees a result image before it can
  // be used.
  void finish(const std::shared_ptr<LiveOperation>& op,
              const std::function<void(store::OperationRecord&)>& final_state,
              const std::optional<store::ImageRecord>& img);
  void schedule_flatten(const store::ImageRecord& img);
  void flatten_loop();
  void flatten_now(const store::ImageRecord& img);

  struct Job {
    std::shared_ptr<LiveOperation> op;
    SpawnRequest req;                                                 // for instances
    std::function<void(const std::shared_ptr<LiveOperation>&)> task;  // for other kinds
  };
  // Registers a PENDING operation and queues its job on the scheduler. Throws 503/429.
  void enqueue(const store::OperationRecord& rec, Job job);
  // Runs a job on a worker thread; whatever it throws ends the operation FAILED (or CANCELLED).
  void run_job(const Job& job);

  EngineConfig cfg_;
  store::MetaStore& meta_;
  store::LayerStore& layers_;
  sandbox::Runtime& runtime_;                          // the default
  std::map<std::string, sandbox::Runtime*> runtimes_;  // by name, the default included
  WriteLimits write_limits_;

  std::mutex mu_;  // guards live_
  std::map<std::string, std::shared_ptr<LiveOperation>> live_;
  Scheduler scheduler_;  // the queues and the worker threads

  // Finished exports' archives by operation uuid (engine/export.cc), and the export size of
  // each layer walked so far.
  struct ExportEntry {
    std::string project;
    int64_t expires_us = 0;
    std::shared_ptr<const ExportArchive> archive;
  };
  std::mutex export_mu_;
  std::map<std::string, ExportEntry> exports_;
  std::map<std::string, uint64_t> layer_export_bytes_;

  // One background thread flattens deep images, in the order they were scheduled.
  std::mutex flat_mu_;
  std::condition_variable flat_cv_;
  std::deque<store::ImageRecord> flat_queue_;
  std::set<std::string> flat_pending_;
  bool flat_stopping_ = false;
  std::thread flattener_;
  std::mutex flatten_now_mu_;
};

// Fills the ConTree InstanceResult ({resources, state, stdout, stderr}) from a run result.
nlohmann::json instance_result_json(const sandbox::RunResult& r, const std::string& out,
                                    bool out_trunc, const std::string& err, bool err_trunc);
// The default (not yet run) InstanceResult: every field present, exit_code -1.
nlohmann::json empty_instance_result();
// {"value","encoding","truncated"} with ascii when printable, else base64 (contract §2.7).
nlohmann::json stream_repr(const std::string& bytes, bool truncated);

}  // namespace coppice::engine
