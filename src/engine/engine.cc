#include "engine/engine.h"

#include <dirent.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

#include "common/base64.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "engine/operation_util.h"
#include "engine/redact.h"
#include "oci/exporter.h"
#include "oci/importer.h"
#include "store/layer_view.h"

namespace coppice::engine {

using json = nlohmann::json;
using store::ImageRecord;
using store::OperationRecord;

namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

bool is_terminal(const std::string& s) {
  return s == "SUCCESS" || s == "FAILED" || s == "CANCELLED";
}

bool printable(std::string_view s) {
  for (unsigned char c : s)
    if (!((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t' || c == '\r')) return false;
  return true;
}

json event_resources(const sandbox::Resources& r) {
  return {{"user_time_us", r.user_time_us},
          {"sys_time_us", r.sys_time_us},
          {"max_rss_kb", r.max_rss_kb},
          {"shared_memory", r.shared_memory},
          {"unshared_memory", r.unshared_memory},
          {"swaps", r.swaps},
          {"minor_faults", r.minor_faults},
          {"major_faults", r.major_faults},
          {"voluntary_ctx_switches", r.voluntary_ctx_switches},
          {"involuntary_ctx_switches", r.involuntary_ctx_switches},
          {"block_input_ops", r.block_input_ops},
          {"block_output_ops", r.block_output_ops},
          {"ipc_msgs_sent", r.ipc_msgs_sent},
          {"ipc_msgs_received", r.ipc_msgs_received},
          {"signals_received", r.signals_received}};
}

bool dir_is_empty(const std::filesystem::path& p) {
  DIR* d = ::opendir(p.c_str());
  if (!d) return true;
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  return empty;
}

json completion_json(const OperationRecord& rec) {
  return {
      {"status", rec.status},
      {"duration_ms", static_cast<int64_t>(rec.duration_s * 1000)},
      {"result_image_uuid", rec.result_image_uuid ? json(*rec.result_image_uuid) : json(nullptr)},
      {"error", rec.error ? json(*rec.error) : json(nullptr)},
      {"image_size_bytes", rec.image_size}};
}

// Ends an operation's event log as clients require (contract §3.3): an instance gets a spid-1
// exit when its process never reached one (runs that never started), then the completion.
void close_event_log(const OperationRecord& rec, std::vector<store::EventRecord>& events) {
  bool has_exit = false;
  for (const auto& e : events) has_exit = has_exit || (e.type == "exit" && e.spid == 1);
  auto add = [&](int spid, const char* type, json data) {
    events.push_back(store::EventRecord{static_cast<int64_t>(events.size()), rec.finished_us, spid,
                                        type, std::move(data)});
  };
  if (rec.kind == "instance" && !has_exit)
    add(1, "exit",
        {{"pid", 0},
         {"code", -1},
         {"signal", -1},
         {"timed_out", false},
         {"duration_ms", 0},
         {"resources", event_resources(sandbox::Resources{})}});
  add(0, "completion", completion_json(rec));
}

// Chunks of output beyond this size are split into several stdout/stderr events.
constexpr size_t kMaxEventChunk = 64 * 1024;

// Collects what the sandbox reports into events and the kept output.
class EventObserver final : public sandbox::RunObserver {
 public:
  EventObserver(LiveOperation& op, const SpawnRequest& req) : op_(op), req_(req) {}
  void on_spawn(int pid) override {
    pid_ = pid;
    auto argv = req_.argv();
    op_.set_status("EXECUTING");
    op_.append(1, "spawn",
               {{"pid", pid},
                {"command", argv[0]},
                {"args", std::vector<std::string>(argv.begin() + 1, argv.end())},
                {"shell", req_.shell},
                {"cwd", req_.cwd.empty() ? "/" : req_.cwd},
                {"uid", req_.uid},
                {"gid", req_.gid},
                {"timeout", req_.timeout_s},
                {"truncate_at", req_.truncate_output_at},
                {"env", redacted_env(req_.env, true)}});
  }
  void on_output(sandbox::Stream s, std::string_view chunk) override {
    std::string& buf = s == sandbox::Stream::kStdout ? out_ : err_;
    buf.append(chunk);
    for (size_t off = 0; off < chunk.size(); off += kMaxEventChunk) {
      std::string_view part = chunk.substr(off, kMaxEventChunk);
      bool ascii = printable(part);
      op_.append(1, s == sandbox::Stream::kStdout ? "stdout" : "stderr",
                 {{"value", ascii ? std::string(part) : base64_encode(part)},
                  {"encoding", ascii ? "ascii" : "base64"}});
    }
  }
  int pid() const { return pid_; }
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }

 private:
  LiveOperation& op_;
  const SpawnRequest& req_;
  int pid_ = 0;
  std::string out_, err_;
};

}  // namespace

json stream_repr(const std::string& bytes, bool truncated) {
  bool ascii = printable(bytes);
  return {{"value", ascii ? bytes : base64_encode(bytes)},
          {"encoding", ascii ? "ascii" : "base64"},
          {"truncated", truncated}};
}

json empty_instance_result() {
  sandbox::RunResult r;
  r.exit_code = -1;
  return instance_result_json(r, "", false, "", false);
}

json instance_result_json(const sandbox::RunResult& r, const std::string& out, bool out_trunc,
                          const std::string& err, bool err_trunc) {
  const auto& x = r.resources;
  return {{"resources",
           {{"elapsed_time", x.elapsed_s},
            {"monotonic_time", x.elapsed_s},
            {"user_cpu_time", x.user_time_us / 1e6},
            {"system_cpu_time", x.sys_time_us / 1e6},
            {"max_rss", x.max_rss_kb},
            {"shared_memory", x.shared_memory},
            {"unshared_memory", x.unshared_memory},
            {"swaps", x.swaps},
            {"block_input", x.block_input_ops},
            {"block_output", x.block_output_ops},
            {"page_faults", x.minor_faults},
            {"page_faults_io", x.major_faults},
            {"voluntary_switches", x.voluntary_ctx_switches},
            {"involuntary_switches", x.involuntary_ctx_switches},
            {"signals", x.signals_received},
            {"cost", 0.0}}},
          {"state",
           {{"exit_code", r.exit_code},
            {"signal", r.signal},
            {"timed_out", r.timed_out},
            {"pid", r.pid},
            {"core_dump", r.core_dump},
            {"continued", false},
            {"stopped", false}}},
          {"stdout", stream_repr(out, out_trunc)},
          {"stderr", stream_repr(err, err_trunc)}};
}

namespace {
EngineConfig resolved(EngineConfig cfg) {
  if (cfg.workers == 0) cfg.workers = 1;
  if (cfg.project_max_running == 0) cfg.project_max_running = std::max<size_t>(1, cfg.workers / 2);
  if (cfg.limits.max_cpus == 0)
    cfg.limits.max_cpus = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return cfg;
}
SchedulerLimits scheduler_limits(const EngineConfig& cfg) {
  return {cfg.workers, cfg.max_queue, cfg.project_max_queued, cfg.project_max_running};
}
}  // namespace

Engine::Engine(EngineConfig cfg, store::MetaStore& meta, store::LayerStore& layers,
               sandbox::Runtime& runtime)
    : cfg_(resolved(std::move(cfg))),
      meta_(meta),
      layers_(layers),
      runtime_(runtime),
      write_limits_(cfg_.write_limit, layers.root()),
      scheduler_(scheduler_limits(cfg_)) {
  runtimes_[runtime.name()] = &runtime;
}

void Engine::add_runtime(sandbox::Runtime& runtime) {
  runtimes_[runtime.name()] = &runtime;
}

std::vector<std::string> Engine::runtime_names() const {
  std::vector<std::string> out{runtime_.name()};
  for (const auto& [name, _] : runtimes_)
    if (name != runtime_.name()) out.push_back(name);
  return out;
}

Engine::~Engine() {
  shutdown(std::chrono::milliseconds(0));
}

void Engine::recover() {
  for (auto op : meta_.active_operations()) {
    spdlog::warn("recovery: operation {} was {} when the server stopped; marking FAILED", op.uuid,
                 op.status);
    auto events = meta_.events(op.uuid);
    op.status = "FAILED";
    op.error = "the server stopped while the operation was active";
    op.finished_us = now_us();
    op.duration_s = (op.finished_us - op.created_us) / 1e6;
    close_event_log(op, events);
    meta_.finish_operation(op, events, std::nullopt);
  }
  auto refs = meta_.referenced_layers();
  size_t removed = layers_.recover(std::set<std::string>(refs.begin(), refs.end()));
  if (removed) spdlog::warn("recovery: removed {} unreferenced layer(s)", removed);
}

void Engine::start() {
  scheduler_.start();
  std::lock_guard flk(flat_mu_);
  flat_stopping_ = false;
  flattener_ = std::thread([this] { flatten_loop(); });
}

void Engine::shutdown(std::chrono::milliseconds deadline) {
  for (auto& t : scheduler_.stop()) {
    if (auto op = live(t.id))
      finish(
          op,
          [](OperationRecord& r) {
            r.status = "CANCELLED";
            r.error = "cancelled: the server is shutting down";
          },
          std::nullopt);
  }
  auto until = std::chrono::steady_clock::now() + deadline;
  while (scheduler_.running() > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (scheduler_.running() > 0) {
    std::lock_guard lk(mu_);
    for (auto& [id, op] : live_) op->cancel_token().cancel();
  }
  scheduler_.join();
  {
    std::lock_guard lk(flat_mu_);
    flat_stopping_ = true;
    flat_queue_.clear();
  }
  flat_cv_.notify_all();
  if (flattener_.joinable()) flattener_.join();
}

ImageRecord Engine::resolve_image(const std::string& project, const std::string& ref) {
  if (ref.rfind("tag:", 0) == 0) {
    auto img = meta_.find_by_tag(project, ref.substr(4));
    if (!img) throw not_found(fmt::format("image tag not found: {}", ref.substr(4)));
    return *img;
  }
  if (is_uuid(ref)) {
    if (auto img = find_image(project, ref)) return *img;
    throw not_found(fmt::format("image not found: {}", ref));
  }
  // A bare tag is accepted too, as a convenience.
  if (auto img = meta_.find_by_tag(project, ref)) return *img;
  throw not_found(fmt::format("image not found: {}", ref));
}

std::optional<ImageRecord> Engine::find_image(const std::string& project, const std::string& uuid) {
  auto img = meta_.get_image(uuid);
  if (!img || (img->project != project && img->project != store::kPublicProject))
    return std::nullopt;
  return img;
}

std::vector<std::filesystem::path> Engine::image_layers(const ImageRecord& img) {
  if (img.flat_layer_id) return {layers_.layer_path(*img.flat_layer_id)};
  return layers_.layer_paths(img.layers);
}

OperationRecord Engine::spawn(const std::string& project, const json& body) {
  SpawnRequest req = parse_spawn_request(body, cfg_.limits);
  if (!req.runtime.empty() && !runtimes_.count(req.runtime))
    throw bad_request(fmt::format("runtime '{}' is not available on this server (available: {})",
                                  req.runtime, fmt::join(runtime_names(), ", ")));
  ImageRecord img = resolve_image(project, req.image);
  for (auto& [path, f] : req.files) {
    auto rec = meta_.get_file_by_uuid(project, f.uuid);
    if (!rec) throw not_found(fmt::format("file {} (for {}) not found", f.uuid, path));
    f.sha256 = rec->sha256;
  }
  OperationRecord rec = new_operation(project, "instance");
  rec.image_uuid = img.uuid;
  rec.metadata = req.to_json();
  rec.metadata["result"] = empty_instance_result();
  req.image = img.uuid;
  enqueue(rec, Job{nullptr, std::move(req), nullptr});
  spdlog::info("op={} queued instance on image {}", rec.uuid, img.uuid);
  return rec;
}

void Engine::enqueue(const OperationRecord& rec, Job job) {
  job.op = std::make_shared<LiveOperation>(rec);
  auto shared = std::make_shared<const Job>(std::move(job));
  // The row and the live object exist before a worker can take the task; a refused task
  // (queue caps, shutdown) leaves neither.
  scheduler_.submit({rec.uuid, rec.project, [this, shared] { run_job(*shared); }}, [&] {
    meta_.insert_operation(rec);
    std::lock_guard lk(mu_);
    live_[rec.uuid] = shared->op;
  });
}

std::optional<OperationRecord> Engine::operation(const std::string& project,
                                                 const std::string& uuid) {
  if (auto op = live(uuid)) {
    auto r = op->record();
    if (r.project == project) return r;
    return std::nullopt;
  }
  auto r = meta_.get_operation(uuid);
  if (!r || r->project != project) return std::nullopt;
  return r;
}

std::shared_ptr<LiveOperation> Engine::live(const std::string& uuid) {
  std::lock_guard lk(mu_);
  auto it = live_.find(uuid);
  return it == live_.end() ? nullptr : it->second;
}

void Engine::cancel(const std::string& project, const std::string& uuid) {
  auto rec = operation(project, uuid);
  if (!rec) throw not_found(fmt::format("operation not found: {}", uuid));
  std::shared_ptr<LiveOperation> op;
  {
    std::lock_guard lk(mu_);
    auto it = live_.find(uuid);
    if (it == live_.end() || is_terminal(it->second->record().status))
      throw conflict("operation is not cancellable");
    op = it->second;
  }
  // A queued operation leaves its queue and ends CANCELLED here. A running one (or one a
  // worker took meanwhile) takes the cancel only before its point of no return (the result
  // being recorded): then it ends CANCELLED; after it, the cancel is refused.
  if (scheduler_.remove(uuid))
    finish(
        op, [](OperationRecord& r) { r.status = "CANCELLED"; }, std::nullopt);
  else if (!op->request_cancel())
    throw conflict("operation is not cancellable");
  spdlog::info("op={} cancel requested", uuid);
}

void Engine::run_job(const Job& job) {
  try {
    if (job.task)
      job.task(job.op);
    else
      execute(job.op, job.req);
  } catch (const std::exception& e) {
    // A cancel the server accepted ends the operation CANCELLED, whatever the interrupted
    // work threw on its way out (a sandbox killed in the middle of its setup, say).
    const bool cancelled = job.op->cancel_token().cancelled();
    if (cancelled)
      spdlog::warn("op={} cancelled; it stopped with: {}", job.op->record().uuid, e.what());
    else
      spdlog::error("op={} failed: {}", job.op->record().uuid, e.what());
    std::string what = e.what();
    try {
      if (!job.op->finished())
        finish(
            job.op,
            [&](OperationRecord& r) {
              r.status = cancelled ? "CANCELLED" : "FAILED";
              if (!cancelled) r.error = what;
            },
            std::nullopt);
    } catch (const std::exception& e2) {
      spdlog::error("op={} could not be recorded: {}", job.op->record().uuid, e2.what());
    }
  }
}

// Runs the sandbox of `spec`. One that could not be set up for lack of a host resource
// (descriptors, processes, memory: sys_error's 503) before its command started waits and is
// tried again in a fresh run directory, so that a burst past the host's capacity queues instead
// of failing; the resource frees up as other sandboxes end. A cancel, or kMaxResourceWait,
// ends the waiting with the last error. `prepare` sets up each attempt's run directory (its
// write limit) before the sandbox starts.
sandbox::RunResult run_sandbox(sandbox::Runtime& runtime, sandbox::RunSpec& spec,
                               EventObserver& obs, LiveOperation& op, store::LayerStore& layers,
                               const std::function<void()>& prepare) {
  constexpr auto kMaxResourceWait = std::chrono::seconds(120);
  const auto give_up = std::chrono::steady_clock::now() + kMaxResourceWait;
  auto backoff = std::chrono::milliseconds(20);
  for (int attempt = 1;; ++attempt) {
    try {
      prepare();
      return runtime.run(spec, obs, op.cancel_token());
    } catch (const Error& e) {
      layers.release_run_dir(spec.run_dir, false);
      if (e.status() != 503 || obs.pid() > 0 || op.cancel_token().cancelled() ||
          std::chrono::steady_clock::now() + backoff > give_up)
        throw;
      if (attempt == 1 || attempt % 10 == 0)
        spdlog::warn("op={} waits for host resources (attempt {}): {}", op.record().uuid, attempt,
                     e.what());
    } catch (...) {
      layers.release_run_dir(spec.run_dir, false);
      throw;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(2));
    spec.run_dir = layers.acquire_run_dir(op.record().uuid);
  }
}

void Engine::execute(const std::shared_ptr<LiveOperation>& op, const SpawnRequest& req) {
  const std::string op_uuid = op->record().uuid;
  const std::string project = op->record().project;
  op->set_status("ASSIGNED");
  // A run writes into the data filesystem: refuse to start one when it is nearly full, so that
  // the database and the other runs keep room to finish.
  struct statvfs vfs;
  if (::statvfs(layers_.root().c_str(), &vfs) == 0) {
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (free_bytes < cfg_.min_free_bytes)
      throw Error(507, fmt::format("not enough free space in the data directory ({} MiB free, "
                                   "{} MiB needed to start a run)",
                                   free_bytes >> 20, cfg_.min_free_bytes >> 20));
  }
  auto img = meta_.get_image(req.image);
  if (!img) throw not_found(fmt::format("image {} vanished", req.image));

  sandbox::Runtime& runtime = req.runtime.empty() ? runtime_ : *runtimes_.at(req.runtime);
  sandbox::RunSpec spec;
  spec.lower_layers = image_layers(*img);
  if (spec.lower_layers.size() > cfg_.max_lowers) {
    flatten_now(*img);
    img = meta_.get_image(req.image);
    spec.lower_layers = image_layers(*img);
  }
  spec.run_dir = layers_.acquire_run_dir(op_uuid);
  spec.keep_changes = !req.disposable;
  spec.argv = req.argv();
  // Environment: defaults, then the image's preserved env, then the request.
  std::map<std::string, std::string> env{
      {"PATH", kDefaultPath}, {"HOME", "/root"}, {"HOSTNAME", req.hostname}};
  if (req.uid != 0) env["HOME"] = "/";
  if (img->config.contains("env"))
    for (const auto& [k, v] : img->config["env"].items()) env[k] = v.get<std::string>();
  for (const auto& [k, v] : req.env) {
    if (v)
      env[k] = *v;
    else
      env.erase(k);
  }
  for (const auto& [k, v] : env) spec.env.push_back(k + "=" + v);
  spec.cwd = req.cwd;
  if (spec.cwd.empty()) spec.cwd = img->config.value("workdir", std::string("/"));
  spec.uid = req.uid;
  spec.gid = req.gid;
  spec.hostname = req.hostname;
  spec.stdin_data = req.stdin_data;
  spec.timeout = std::chrono::seconds(req.timeout_s);
  spec.truncate_output_at = static_cast<uint64_t>(req.truncate_output_at);
  spec.limits.memory_bytes = static_cast<uint64_t>(req.memory_bytes);
  spec.limits.pids = static_cast<uint64_t>(req.pids);
  spec.limits.cpus = req.cpus;
  for (const auto& [path, f] : req.files)
    spec.files.push_back({path, layers_.file_path(f.sha256), f.mode, f.uid, f.gid});

  struct utsname un {};
  ::uname(&un);
  op->append(0, "init",
             {{"started_at", format_rfc3339(now_us())},
              {"runtime_path", "/proc/self/exe"},
              {"verbose", false},
              {"init_pid", 1},
              {"hostname", req.hostname},
              {"kernel", un.release},
              {"machine", un.machine},
              {"runtime", runtime.name()}});

  EventObserver obs(*op, req);
  const int64_t t_run = now_us();
  std::optional<WriteLimits::Run> write_limit;  // cleared when it goes out of scope
  sandbox::RunResult res = run_sandbox(runtime, spec, obs, *op, layers_, [&] {
    write_limit.reset();
    write_limit.emplace(write_limits_.begin(spec, req.max_layer_bytes));
  });
  const int64_t t_ran = now_us();
  // The point of no return: from here a cancel is refused, and one accepted before (even
  // after the command ended by itself) ends the run CANCELLED without a result image.
  op->begin_finishing();
  res.cancelled = res.cancelled || op->cancel_token().cancelled();
  bool out_trunc = res.stdout_bytes > obs.out().size();
  bool err_trunc = res.stderr_bytes > obs.err().size();
  if (out_trunc)
    op->append(1, "truncated",
               {{"stream", "stdout"},
                {"bytes_emitted", obs.out().size()},
                {"bytes_dropped", res.stdout_bytes - obs.out().size()}});
  if (err_trunc)
    op->append(1, "truncated",
               {{"stream", "stderr"},
                {"bytes_emitted", obs.err().size()},
                {"bytes_dropped", res.stderr_bytes - obs.err().size()}});
  op->append(1, "exit",
             {{"pid", res.pid},
              {"code", res.exit_code},
              {"signal", res.signal},
              {"timed_out", res.timed_out},
              {"duration_ms", static_cast<int64_t>(res.resources.elapsed_s * 1000)},
              {"resources", event_resources(res.resources)},
              {"core_dump", res.core_dump},
              {"oom_killed", res.oom_killed}});

  std::optional<ImageRecord> new_image;
  std::optional<std::string> result_uuid;
  std::string status = "SUCCESS";
  std::optional<std::string> error;
  int64_t layer_size = 0;
  std::filesystem::path upper = spec.run_dir / "upper";
  // The write limit, for every runtime: past it, a size_cap event, and a run whose changes
  // were to be kept fails without an image (a disposable one keeps its exit status).
  std::optional<uint64_t> over;
  if (!res.cancelled) over = write_limit->exceeded(res, upper, !req.disposable);
  if (over)
    op->append(1, "size_cap", {{"limit_bytes", write_limit->limit()}, {"file_size", *over}});
  if (res.cancelled) {
    status = "CANCELLED";
  } else if (!req.disposable) {
    // preserve_env makes the run's environment part of the result: a new image even when no
    // file changed, unless the environment is the image's already.
    json config = img->config;
    if (req.preserve_env) {
      json e = json::object();
      for (const auto& kv : spec.env) {
        auto eq = kv.find('=');
        e[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
      config["env"] = e;
    }
    if (dir_is_empty(upper) && config == img->config) {
      result_uuid = img->uuid;  // nothing changed: same state, same UUID (contract §4)
    } else {
      layer_size = static_cast<int64_t>(tree_size(upper).bytes);
      if (over) {
        status = "FAILED";
        error = write_limit->error(*over, res.write_limit_hit && res.signal == SIGKILL);
      } else {
        ImageRecord ni;
        ni.uuid = new_uuid();
        ni.project = project;
        ni.parent_uuid = img->uuid;
        ni.layer_id = ni.uuid;
        ni.layers.push_back(ni.layer_id);
        if (img->flat_layer_id) {
          ni.layers.push_back(*img->flat_layer_id);
        } else {
          ni.layers.insert(ni.layers.end(), img->layers.begin(), img->layers.end());
        }
        ni.depth = img->depth + 1;
        ni.operation_uuid = op_uuid;
        ni.created_us = now_us();
        ni.size_bytes = layer_size;
        ni.config = config;
        layers_.commit_layer(upper, ni.layer_id);
        result_uuid = ni.uuid;
        new_image = std::move(ni);
      }
    }
  }
  const int64_t t_snap = now_us();
  json result = instance_result_json(res, obs.out(), out_trunc, obs.err(), err_trunc);
  finish(
      op,
      [&](OperationRecord& r) {
        r.status = status;
        r.error = error;
        r.result_image_uuid = result_uuid;
        r.image_size = layer_size;
        r.consumed_cpu = (res.resources.user_time_us + res.resources.sys_time_us) / 1e6;
        r.consumed_memory = res.resources.memory_peak_bytes ? res.resources.memory_peak_bytes
                                                            : res.resources.max_rss_kb * 1024;
        r.metadata["result"] = result;
        // Where the time went (an extension, docs/API.md): waiting for a worker, the
        // sandbox from setup to the last process reaped, and the snapshot (size the upper,
        // rename it into the store) before the result is recorded.
        r.metadata["timings_ms"] = {{"queued", (t_run - r.created_us) / 1e3},
                                    {"sandbox", (t_ran - t_run) / 1e3},
                                    {"snapshot", (t_snap - t_ran) / 1e3}};
      },
      new_image);
  spdlog::debug("op={} queued {:.2f} ms, sandbox {:.2f} ms, snapshot {:.2f} ms, record {:.2f} ms",
                op_uuid, (t_run - op->record().created_us) / 1e3, (t_ran - t_run) / 1e3,
                (t_snap - t_ran) / 1e3, (now_us() - t_snap) / 1e3);
  // A run that was not killed leaves a clean work/ and merged/: the next run reuses them.
  layers_.release_run_dir(spec.run_dir, !res.cancelled && !res.timed_out);
  if (new_image && new_image->layers.size() > cfg_.flatten_depth) schedule_flatten(*new_image);
}

void Engine::finish(const std::shared_ptr<LiveOperation>& op,
                    const std::function<void(OperationRecord&)>& final_state,
                    const std::optional<ImageRecord>& new_image) {
  op->begin_finishing();
  OperationRecord rec = op->record();
  final_state(rec);
  rec.finished_us = now_us();
  rec.duration_s = (rec.finished_us - rec.created_us) / 1e6;
  std::vector<store::EventRecord> events = op->events();
  const size_t first_new = events.size();
  close_event_log(rec, events);
  try {
    meta_.finish_operation(rec, events, new_image);
  } catch (const std::exception& e) {
    // The operation must still end: report FAILED in memory (recovery fixes the stored row
    // at the next start and removes a layer no image names).
    spdlog::error("op={} could not record its result: {}", rec.uuid, e.what());
    rec.status = "FAILED";
    rec.error = std::string("could not record the result: ") + e.what();
    rec.result_image_uuid.reset();
    events.back().data = completion_json(rec);
    try {
      meta_.finish_operation(rec, events, std::nullopt);
    } catch (const std::exception& e2) {
      spdlog::error("op={} could not record its failure either: {}", rec.uuid, e2.what());
    }
  }
  // Durable now (or failed for good): publish record and events in one step.
  op->complete(rec, std::vector<store::EventRecord>(events.begin() + first_new, events.end()));
  {
    std::lock_guard lk(mu_);
    live_.erase(rec.uuid);
  }
  spdlog::info("op={} {} in {:.1f} ms{}", rec.uuid, rec.status, rec.duration_s * 1000,
               rec.result_image_uuid ? " -> image " + *rec.result_image_uuid : "");
}

void Engine::schedule_flatten(const ImageRecord& img) {
  {
    std::lock_guard lk(flat_mu_);
    if (flat_stopping_ || !flat_pending_.insert(img.uuid).second) return;
    flat_queue_.push_back(img);
  }
  flat_cv_.notify_one();
}

void Engine::flatten_loop() {
  for (;;) {
    ImageRecord img;
    {
      std::unique_lock lk(flat_mu_);
      flat_cv_.wait(lk, [&] { return flat_stopping_ || !flat_queue_.empty(); });
      if (flat_stopping_) return;
      img = std::move(flat_queue_.front());
      flat_queue_.pop_front();
    }
    try {
      flatten_now(img);
    } catch (const std::exception& e) {
      spdlog::warn("flatten of image {} failed: {}", img.uuid, e.what());
    }
    std::lock_guard lk(flat_mu_);
    flat_pending_.erase(img.uuid);
  }
}

void Engine::flatten_now(const ImageRecord& img) {
  std::lock_guard serial(flatten_now_mu_);  // background and synchronous flattens never race
  auto current = meta_.get_image(img.uuid);
  if (!current || current->flat_layer_id) return;
  std::string id = new_uuid();
  auto tmp = layers_.tmp_path("flat-" + id);
  store::LayerView view(layers_.layer_paths(img.layers), cfg_.uid_shift);
  auto t0 = now_us();
  store::flatten(view, tmp);
  layers_.commit_layer(tmp, id);
  meta_.set_flat_layer(img.uuid, id);
  spdlog::info("flattened image {} ({} layers) in {:.1f} ms", img.uuid, img.layers.size(),
               (now_us() - t0) / 1e3);
}

}  // namespace coppice::engine
