// coppiced: the Coppice server and its admin commands.
//
//   coppiced serve [--listen 127.0.0.1:8080] [--data-dir DIR] [--uid-base N --uid-range N]
//   coppiced token create --project P [--ttl 30d | --expires TIME] [--data-dir DIR]
//   coppiced token list [--json] [--data-dir DIR]
//   coppiced token revoke ID [--data-dir DIR]
//   coppiced image bootstrap busybox|debian [--tag T] [--data-dir DIR]
//   coppiced image import-rootfs DIR|TAR --tag T [--data-dir DIR]
//   coppiced image import-archive OCI-DIR|OCI-TAR|DOCKER-SAVE-TAR --tag T [--data-dir DIR]
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <iostream>
#include <thread>

#include "api/http_server.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/fd_limit.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "engine/base_images.h"
#include "engine/engine.h"
#include "oci/importer.h"
#include "sandbox/runtime.h"
#include "store/id_range.h"
#include "store/project_name.h"

using namespace coppice;

namespace {

struct Paths {
  std::string data_dir = "/var/lib/coppice";
  std::optional<uid_t> uid_base, uid_range;  // wanted sandbox id range (store/id_range.h)
  std::string subid_dir = "/etc";            // where subuid and subgid are (tests change it)
};

// A data directory opened for a command: its layers, its database and, for commands that make
// layers or run sandboxes (`with_ids`), its sandbox id range (checked against the subordinate
// id files), with access restricted (LayerStore). Token commands work without the range, so
// that a token can be revoked while the server refuses to start.
struct OpenStore {
  std::unique_ptr<store::LayerStore> layers;
  std::unique_ptr<store::MetaStore> meta;
  store::IdRange ids;
};

OpenStore open_store(const Paths& paths, bool durable, bool with_ids = true) {
  OpenStore s;
  s.layers = std::make_unique<store::LayerStore>(paths.data_dir, durable);
  s.meta = store::open_sqlite_store(s.layers->db_path(), durable);
  if (!with_ids) return s;
  s.ids =
      store::store_id_range(*s.meta, *s.layers, paths.uid_base, paths.uid_range, paths.subid_dir);
  s.layers->restrict_access(s.ids.base);
  return s;
}

struct ServeOptions {
  std::string listen = "127.0.0.1:8080";
  size_t workers = 16;
  api::HttpServerConfig http;
  double header_timeout_s = 20, idle_timeout_s = 60, body_timeout_s = 30, write_timeout_s = 60;
  uint64_t body_min_kib = 64;
  size_t flatten_depth = 64;
  bool durable = false;
  int shutdown_grace_s = 30;
  uint64_t memory_mb = 1024;
  uint64_t min_free_mb = 512;
  uint64_t pids = 1024;
  int64_t max_timeout_s = 3600;
  // Tenants' shares (issue #12 item 7): queues, per-run caps, answer sizes.
  size_t max_queued = 10000;
  size_t project_max_queued = 1000;
  size_t project_max_running = 0;  // 0 = half the workers (at least 1)
  uint64_t max_memory_mb = 8192;
  uint64_t max_pids = 4096;
  int64_t max_cpus = 0;  // 0 = the host's CPU count
  uint64_t max_export_mb = 32768;
  int64_t export_ttl_s = 3600;
  uint64_t max_response_mb = 8;
  std::string log_level = "info";
  std::vector<std::string> insecure_registries;
  std::vector<std::string> allowed_registries;
  std::vector<std::string> registry_mirrors;  // REGISTRY=URL
  std::string runtime = "namespace";          // the default runtime
  std::string runsc;                          // path of runsc ("" = look on PATH)
  std::string gvisor_platform = "ptrace";
  std::string microvm_accel = "auto";  // auto | kvm | tcg | off
  uint64_t microvm_cache_mb = 8192;    // image disks kept for the microVM runtime
  uint64_t max_import_mb = 32768;      // expanded size of one import (decompression bombs)
  uint64_t max_import_entries = 2000000;
  uint64_t max_run_write_mb = 10240;   // per-run write limit (0: only max_layer_bytes)
  uint64_t max_run_inodes = 1000000;   // files a run may create (with project quotas)
  std::string write_limit_mode = "auto";
  uint32_t microvm_uid = 99999;        // QEMU's uid and gid (outside the sandbox range)
};

int serve(const Paths& paths, const ServeOptions& o) {
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  // SIGTERM/SIGINT are taken by a dedicated thread; every other thread blocks them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  // Every queued operation holds an eventfd, every live sandbox a few descriptors and every
  // connection a socket: raise the limit as far as the host lets.
  auto fds = raise_fd_limit();
  spdlog::info("descriptor limit {} (hard {}; was {}/{}){}", fds.soft, fds.hard, fds.before_soft,
               fds.before_hard, fds.note.empty() ? "" : ": " + fds.note);
  if (fds.soft < o.http.max_connections + 4096)
    spdlog::warn(
        "--max-connections {} leaves less than 4096 of the descriptor limit {} to sandboxes "
        "and the queue when every connection is open",
        o.http.max_connections, fds.soft);

  OpenStore st = open_store(paths, o.durable);
  store::LayerStore& layers = *st.layers;
  store::MetaStore* meta = st.meta.get();
  spdlog::info("sandbox ids: host {}-{}", st.ids.base, st.ids.last());
  sandbox::NamespaceConfig ns;
  ns.uid_base = st.ids.base;
  ns.uid_range = st.ids.size;
  // One cgroup subtree per data directory, so that two servers on one host (tests, staging)
  // never clean up each other's sandboxes during startup recovery.
  ns.cgroup_name = "coppice-" + sha256_hex(layers.root().string()).substr(0, 12);
  ns.default_memory_bytes = o.memory_mb << 20;
  ns.default_pids = o.pids;
  auto runtime = sandbox::make_namespace_runtime(ns);
  // gVisor is offered when runsc runs here (checked once at start).
  std::unique_ptr<sandbox::Runtime> gvisor;
  if (std::string runsc = sandbox::find_runsc(o.runsc); !runsc.empty()) {
    sandbox::GvisorConfig gc;
    gc.runsc = runsc;
    gc.platform = o.gvisor_platform;
    gc.uid_base = ns.uid_base;
    gc.uid_range = ns.uid_range;
    gc.default_memory_bytes = ns.default_memory_bytes;
    gc.default_pids = ns.default_pids;
    gc.cgroup_name = ns.cgroup_name + "-gvisor";
    gvisor = sandbox::make_gvisor_runtime(gc);
    spdlog::info("gvisor runtime available ({})", runsc);
  } else if (!o.runsc.empty() || o.runtime == "gvisor") {
    throw Error(400,
                "runsc not found or not working: install it (apt-get install runsc) or "
                "pass --runsc PATH");
  }
  // The microVM runtime is offered when QEMU, a cloud kernel and the guest agent are here.
  std::unique_ptr<sandbox::Runtime> microvm;
  if (o.microvm_accel != "off") {
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    auto mc = sandbox::find_microvm(layers.root() / "microvm",
                                    (self.parent_path() / "coppice-guest-agent").string());
    mc.accel = o.microvm_accel;
    mc.uid_base = ns.uid_base;
    mc.uid_range = ns.uid_range;
    mc.cgroup_name = ns.cgroup_name + "-microvm";
    mc.image_cache_bytes = o.microvm_cache_mb << 20;
    mc.qemu_uid = mc.qemu_gid = o.microvm_uid;
    mc.default_pids = ns.default_pids;
    std::string why;
    if (mc.usable(&why)) {
      microvm = sandbox::make_microvm_runtime(mc);
      spdlog::info("microvm runtime available: {}", microvm->details_json());
    } else if (o.runtime == "microvm") {
      throw Error(400, "--runtime microvm: " + why);
    } else {
      spdlog::info("microvm runtime not available: {}", why);
    }
  }
  sandbox::Runtime* default_runtime = runtime.get();
  if (o.runtime == "gvisor")
    default_runtime = gvisor.get();
  else if (o.runtime == "microvm")
    default_runtime = microvm.get();
  else if (o.runtime != "namespace")
    throw Error(400, "--runtime must be namespace, gvisor or microvm, not " + o.runtime);
  engine::EngineConfig ec;
  ec.workers = o.workers;
  ec.flatten_depth = o.flatten_depth;
  ec.uid_shift = ns.uid_base;
  ec.uid_range = ns.uid_range;
  ec.limits.max_timeout_s = o.max_timeout_s;
  if (o.memory_mb > o.max_memory_mb)
    throw Error(400, fmt::format("--memory-mb {} is over --max-memory-mb {}", o.memory_mb,
                                 o.max_memory_mb));
  if (o.pids > o.max_pids)
    throw Error(400, fmt::format("--pids {} is over --max-pids {}", o.pids, o.max_pids));
  ec.limits.max_memory_bytes = static_cast<int64_t>(o.max_memory_mb << 20);
  ec.limits.max_pids = static_cast<int64_t>(o.max_pids);
  ec.limits.max_cpus = o.max_cpus;
  ec.max_queue = o.max_queued;
  ec.project_max_queued = o.project_max_queued;
  ec.project_max_running = o.project_max_running;
  ec.max_export_bytes = o.max_export_mb << 20;
  ec.export_ttl_s = o.export_ttl_s;
  ec.min_free_bytes = o.min_free_mb << 20;
  ec.max_import_timeout_s = o.max_timeout_s;
  ec.max_import_bytes = o.max_import_mb << 20;
  ec.max_import_entries = o.max_import_entries;
  ec.write_limit.default_bytes = o.max_run_write_mb << 20;
  ec.write_limit.max_inodes = o.max_run_inodes;
  ec.write_limit.mode = o.write_limit_mode;
  ec.registry.insecure = o.insecure_registries;
  ec.registry.allowed = o.allowed_registries;
  for (const auto& m : o.registry_mirrors) {
    auto eq = m.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == m.size())
      throw Error(400, "--registry-mirror wants REGISTRY=URL, e.g. docker.io=http://mirror:5000");
    ec.registry.mirrors[m.substr(0, eq)] = m.substr(eq + 1);
  }
  ec.registry.validate();
  engine::Engine engine(ec, *meta, layers, *default_runtime);
  for (sandbox::Runtime* r : {runtime.get(), gvisor.get(), microvm.get()})
    if (r && r != default_runtime) engine.add_runtime(*r);
  engine.recover();
  engine.start();
  api::ApiConfig ac;
  ac.max_response_bytes = o.max_response_mb << 20;
  ac.runtimes = engine.runtime_names();
  ac.runtime_details = [&] {
    nlohmann::json d = nlohmann::json::object();
    for (sandbox::Runtime* r : {runtime.get(), gvisor.get(), microvm.get()})
      if (r) d[r->name()] = nlohmann::json::parse(r->details_json());
    return d;
  };
  api::Api api(ac, engine);
  api::HttpServerConfig hc = o.http;
  hc.listen = o.listen;
  hc.upload_dir = layers.tmp_path("");
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  hc.header_timeout = ms(o.header_timeout_s);
  hc.idle_timeout = ms(o.idle_timeout_s);
  hc.body_window = ms(o.body_timeout_s);
  hc.write_timeout = ms(o.write_timeout_s);
  hc.body_min_bytes = o.body_min_kib << 10;
  api::HttpServer server(api, hc);
  spdlog::info("coppiced listening on {} (port {}), data dir {}", o.listen, server.port(),
               paths.data_dir);
  std::cout << "listening on port " << server.port() << std::endl;

  std::thread sig_thread([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    spdlog::info("signal {}: shutting down (grace {} s)", sig, o.shutdown_grace_s);
    server.stop(false);
  });
  server.run();
  engine.shutdown(std::chrono::seconds(o.shutdown_grace_s));
  server.stop(true);
  server.wait_connections();
  sig_thread.join();
  spdlog::info("coppiced stopped");
  return 0;
}

// `token create`: prints the secret on stdout (only its SHA-256 is stored), its id on stderr.
int token_create_cmd(store::MetaStore& meta, const std::string& project, const std::string& ttl,
                     const std::string& expires) {
  store::validate_project_name(project);
  std::optional<int64_t> expires_us;
  const int64_t now = now_us();
  if (!ttl.empty()) {
    auto s = parse_duration_s(ttl);
    if (!s || *s <= 0)
      throw bad_request(
          fmt::format("--ttl {}: want seconds or a number with s, m, h, d or w "
                      "(e.g. 3600, 12h, 90d)",
                      ttl));
    expires_us = now + *s * 1000000;
  } else if (!expires.empty()) {
    expires_us = parse_rfc3339(expires);
    if (!expires_us)
      throw bad_request("--expires wants an RFC 3339 time, e.g. 2030-01-01T00:00:00Z");
    if (*expires_us <= now) throw bad_request("--expires " + expires + " is in the past");
  }
  std::string secret = "cpc_" + random_hex(24);
  auto rec = meta.create_token(project, sha256_hex(secret), expires_us);
  std::cerr << "token " << rec.uuid << " for project " << project;
  if (expires_us) std::cerr << ", expires " << format_rfc3339(*expires_us);
  std::cerr << ":\n";
  std::cout << secret << std::endl;
  return 0;
}

int token_list_cmd(store::MetaStore& meta, bool as_json) {
  const int64_t now = now_us();
  auto time_or = [](const std::optional<int64_t>& t, const char* none) {
    return t ? format_rfc3339(*t) : std::string(none);
  };
  auto tokens = meta.list_tokens();
  if (as_json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& t : tokens)
      arr.push_back(
          {{"id", t.uuid},
           {"project", t.project},
           {"created_at", format_rfc3339(t.created_us)},
           {"expires_at", t.expires_us ? nlohmann::json(format_rfc3339(*t.expires_us)) : nullptr},
           {"expired", t.expires_us && *t.expires_us <= now},
           {"last_used_at",
            t.last_used_us ? nlohmann::json(format_rfc3339(*t.last_used_us)) : nullptr}});
    std::cout << arr.dump(2) << std::endl;
    return 0;
  }
  std::cout << fmt::format("{:<36}  {:<20}  {:<27}  {:<37}  {}\n", "ID", "PROJECT", "CREATED",
                           "EXPIRES", "LAST USED");
  for (const auto& t : tokens) {
    std::string exp = time_or(t.expires_us, "never");
    if (t.expires_us && *t.expires_us <= now) exp += " (expired)";
    std::cout << fmt::format("{:<36}  {:<20}  {:<27}  {:<37}  {}\n", t.uuid,
                             t.project.empty() ? "(none: revoke it)" : t.project,
                             format_rfc3339(t.created_us), exp, time_or(t.last_used_us, "never"));
  }
  return 0;
}

int token_revoke_cmd(store::MetaStore& meta, const std::string& id) {
  std::vector<std::string> matches;
  for (const auto& t : meta.list_tokens())
    if (t.uuid == id || (id.size() >= 4 && t.uuid.rfind(id, 0) == 0)) matches.push_back(t.uuid);
  if (matches.empty()) throw not_found("no token with id " + id + " (see `coppiced token list`)");
  if (matches.size() > 1)
    throw bad_request(
        fmt::format("{} tokens start with {}: give more of the id", matches.size(), id));
  if (!meta.revoke_token(matches[0])) throw not_found("token " + matches[0] + " is already gone");
  std::cerr << "revoked token " << matches[0] << " (a running server refuses it within 2 s)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The init of a gVisor run re-executes this binary (see sandbox/gvisor_runtime.cc).
  if (argc >= 2 && std::string_view(argv[1]) == "__gvisor-init")
    return sandbox::gvisor_init_main(argc, argv);
  if (argc >= 2 && std::string_view(argv[1]) == "__microvm-mkimage")
    return sandbox::microvm_mkimage_main(argc, argv);
  CLI::App app{"coppiced: branching sandboxes behind a ConTree-compatible API"};
  app.require_subcommand(1);
  Paths paths;
  auto add_data_dir = [&](CLI::App* c) {
    c->add_option("--data-dir", paths.data_dir, "data directory (store, database, files)")
        ->capture_default_str();
    // Where subuid and subgid are read from; for tests only, hence hidden.
    c->add_option("--subid-dir", paths.subid_dir)->group("");
  };
  // Commands that may create a data directory (and so choose its sandbox id range).
  auto add_id_range = [&](CLI::App* c) {
    c->add_option("--uid-base", paths.uid_base,
                  fmt::format("host uid and gid of sandbox root, for a new data directory "
                              "(default {}; fixed once it has images; must overlap no "
                              "/etc/subuid or /etc/subgid range)",
                              store::kDefaultUidBase));
    c->add_option("--uid-range", paths.uid_range,
                  fmt::format("sandbox ids per run (default {})", store::kDefaultUidRange));
  };

  ServeOptions so;
  auto* serve_cmd = app.add_subcommand("serve", "run the HTTP API server");
  add_data_dir(serve_cmd);
  add_id_range(serve_cmd);
  serve_cmd->add_option("--listen", so.listen, "address:port to listen on")->capture_default_str();
  serve_cmd->add_option("--workers", so.workers, "sandboxes running at once")
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-connections", so.http.max_connections,
                   "HTTP connections open at once; more are answered 503 with Retry-After")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  serve_cmd
      ->add_option("--http-threads", so.http.io_threads,
                   "HTTP IO threads (0: one per CPU); they never block")
      ->capture_default_str();
  serve_cmd
      ->add_option("--http-workers", so.http.quick_workers,
                   "threads that run short API requests (0: 2 per CPU, at least 8)")
      ->capture_default_str();
  serve_cmd
      ->add_option("--http-bulk-workers", so.http.bulk_workers,
                   "threads for uploads, downloads, archives, exports and greps; more wait")
      ->check(CLI::Range(size_t{1}, size_t{4096}))
      ->capture_default_str();
  serve_cmd
      ->add_option("--header-timeout", so.header_timeout_s,
                   "seconds a client gets to send a whole request header (else 408)")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  serve_cmd
      ->add_option("--idle-timeout", so.idle_timeout_s,
                   "seconds a keep-alive connection may sit idle between requests")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  serve_cmd
      ->add_option("--body-timeout", so.body_timeout_s,
                   "a request body must deliver --body-min-kib (or the rest of it) in every "
                   "window of this many seconds (else 408)")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  serve_cmd->add_option("--body-min-kib", so.body_min_kib, "see --body-timeout")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 20))
      ->capture_default_str();
  serve_cmd
      ->add_option("--write-timeout", so.write_timeout_s,
                   "seconds a response may make no progress (the client reads nothing) before "
                   "the connection is closed")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  serve_cmd
      ->add_option("--flatten-depth", so.flatten_depth,
                   "flatten an image's layers once its chain is deeper than this")
      ->capture_default_str();
  serve_cmd->add_flag("--durable", so.durable, "syncfs + fsync every snapshot before recording it");
  serve_cmd
      ->add_option("--shutdown-grace", so.shutdown_grace_s,
                   "seconds running operations get to finish on SIGTERM")
      ->capture_default_str();
  serve_cmd->add_option("--memory-mb", so.memory_mb, "default memory limit per sandbox")
      ->capture_default_str();
  serve_cmd
      ->add_option("--min-free-mb", so.min_free_mb,
                   "refuse to start runs when the data filesystem has less free space")
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-import-mb", so.max_import_mb,
                   "largest expanded size of one image import or archive (MiB; 0 = no cap)")
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-import-entries", so.max_import_entries,
                   "most files and directories one image import or archive may hold (0 = no cap)")
      ->capture_default_str();
  serve_cmd->add_option("--pids", so.pids, "default pids limit per sandbox")->capture_default_str();
  serve_cmd
      ->add_option("--max-run-write-mb", so.max_run_write_mb,
                   "most a run's filesystem changes may take (MiB; a run's max_layer_bytes may "
                   "lower it; 0: max_layer_bytes only)")
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-run-inodes", so.max_run_inodes,
                   "files and directories a run may create (with project quotas)")
      ->capture_default_str();
  serve_cmd
      ->add_option("--write-limit-mode", so.write_limit_mode,
                   "how the write limit binds a running sandbox: auto (project quotas when the "
                   "data filesystem has them, else a watchdog) | project-quota | watchdog | "
                   "end-of-run")
      ->capture_default_str();
  serve_cmd->add_option("--max-timeout", so.max_timeout_s, "largest timeout a run may ask for (s)")
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-queued", so.max_queued,
                   "queued operations on the whole server; more are answered 429")
      ->check(CLI::Range(size_t{1}, size_t{10000000}))
      ->capture_default_str();
  serve_cmd
      ->add_option("--project-max-queued", so.project_max_queued,
                   "queued operations of one project; more are answered 429")
      ->check(CLI::Range(size_t{1}, size_t{10000000}))
      ->capture_default_str();
  serve_cmd
      ->add_option("--project-max-running", so.project_max_running,
                   "operations of one project running at once (0 = half of --workers)")
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-memory-mb", so.max_memory_mb,
                   "largest memory limit a run may ask for (resources_limits.memory_bytes)")
      ->check(CLI::Range(uint64_t{4}, uint64_t{1} << 30))
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-pids", so.max_pids,
                   "largest pids limit a run may ask for (resources_limits.pids)")
      ->check(CLI::Range(uint64_t{8}, uint64_t{1} << 22))
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-cpus", so.max_cpus,
                   "largest CPU quota a run may ask for (resources_limits.cpus; 0 = host CPUs)")
      ->check(CLI::Range(int64_t{0}, int64_t{1024}))
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-export-mb", so.max_export_mb,
                   "largest image an export packs, by apparent size (sparse files in full)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30))
      ->capture_default_str();
  serve_cmd
      ->add_option("--export-ttl", so.export_ttl_s,
                   "seconds a finished export's archive stays downloadable")
      ->check(CLI::Range(int64_t{1}, int64_t{7} * 86400))
      ->capture_default_str();
  serve_cmd
      ->add_option("--max-response-mb", so.max_response_mb,
                   "largest grep answer or directory listing; longer ones are cut and say so")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1024}))
      ->capture_default_str();
  serve_cmd->add_option("--insecure-registry", so.insecure_registries,
                        "registry HOST[:PORT] to reach over plain http and at any address "
                        "(loopback, private, ...); matched exactly, no port = every port "
                        "(repeatable)");
  serve_cmd->add_option("--allow-registry", so.allowed_registries,
                        "registry HOST[:PORT] allowed at loopback, private or link-local "
                        "addresses, still over https (repeatable); others must resolve to public "
                        "addresses");
  serve_cmd->add_option("--registry-mirror", so.registry_mirrors,
                        "pull mirror REGISTRY=URL, e.g. docker.io=http://10.0.0.5:5000 "
                        "(repeatable)");
  serve_cmd
      ->add_option("--runtime", so.runtime, "default sandbox runtime: namespace | gvisor | microvm")
      ->capture_default_str();
  serve_cmd->add_option("--runsc", so.runsc, "gVisor's runsc (default: runsc on PATH, if any)");
  serve_cmd->add_option("--gvisor-platform", so.gvisor_platform, "runsc --platform: ptrace | kvm")
      ->capture_default_str();
  serve_cmd
      ->add_option("--microvm-accel", so.microvm_accel,
                   "microvm runtime: auto (probe KVM once, else TCG) | kvm | tcg | off")
      ->capture_default_str();
  serve_cmd
      ->add_option("--microvm-cache-mb", so.microvm_cache_mb,
                   "image disks the microvm runtime keeps (least recently used removed first)")
      ->check(CLI::Range(uint64_t{64}, uint64_t{1} << 30))
      ->capture_default_str();
  serve_cmd
      ->add_option("--microvm-uid", so.microvm_uid,
                   "uid and gid QEMU runs as: one that owns nothing and runs nothing else, "
                   "outside the sandbox uid range")
      ->check(CLI::Range(uint32_t{1}, uint32_t{0xfffffffe}))
      ->capture_default_str();
  serve_cmd->add_option("--log-level", so.log_level, "trace|debug|info|warn|error")
      ->capture_default_str();

  auto* token_cmd = app.add_subcommand("token", "manage API tokens");
  token_cmd->require_subcommand(1);
  std::string project = "default", ttl, expires, token_id;
  bool json_out = false;
  auto* token_create = token_cmd->add_subcommand("create", "create a token and print it");
  add_data_dir(token_create);
  token_create->add_option("--project", project, "the tenant the token belongs to")
      ->capture_default_str();
  auto* ttl_opt = token_create->add_option(
      "--ttl", ttl, "lifetime: seconds or a number with s, m, h, d or w (e.g. 90d)");
  token_create->add_option("--expires", expires, "expiry time (RFC 3339)")->excludes(ttl_opt);
  auto* token_list = token_cmd->add_subcommand("list", "list tokens (never their secrets)");
  add_data_dir(token_list);
  token_list->add_flag("--json", json_out, "one JSON array instead of a table");
  auto* token_revoke =
      token_cmd->add_subcommand("revoke", "delete a token (the server refuses it within 2 s)");
  add_data_dir(token_revoke);
  token_revoke
      ->add_option("id", token_id, "token id (as `token list` shows it, or a unique prefix)")
      ->required();

  auto* image_cmd = app.add_subcommand("image", "manage base images");
  image_cmd->require_subcommand(1);
  std::string tag, kind, source;
  bool private_image = false;
  auto* bootstrap = image_cmd->add_subcommand("bootstrap", "build a base image: busybox | debian");
  add_data_dir(bootstrap);
  bootstrap->add_option("kind", kind, "busybox or debian")
      ->required()
      ->check(CLI::IsMember({"busybox", "debian"}));
  bootstrap->add_option("--tag", tag, "tag (default busybox:latest / debian:bookworm)");
  auto* import_rootfs = image_cmd->add_subcommand("import-rootfs", "import a root filesystem");
  add_data_dir(import_rootfs);
  import_rootfs->add_option("source", source, "directory or tar archive")->required();
  import_rootfs->add_option("--tag", tag, "tag for the new image");
  auto* import_archive = image_cmd->add_subcommand(
      "import-archive", "import an OCI layout directory, an oci-archive tar or a docker-save tar");
  std::string archive_name, platform = "linux/amd64";
  import_archive->add_option("source", source, "OCI layout directory or archive")->required();
  import_archive->add_option("--tag", tag, "tag for the new image");
  import_archive->add_option("--name", archive_name,
                             "which image of an archive holding several (ref name or RepoTag)");
  import_archive->add_option("--platform", platform, "platform to pick from an index")
      ->capture_default_str();
  add_data_dir(import_archive);
  for (auto* c : {bootstrap, import_rootfs, import_archive}) {
    add_id_range(c);
    c->add_option("--project", project, "owner project (with --private)");
    c->add_flag("--private", private_image, "visible to --project only instead of every project");
  }

  CLI11_PARSE(app, argc, argv);
  // Logs go to stderr; stdout carries only command results (tokens, image ids, the port).
  spdlog::set_default_logger(spdlog::stderr_color_mt("coppiced"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  try {
    if (*serve_cmd) return serve(paths, so);
    if (*token_cmd) {
      OpenStore st = open_store(paths, true, false);
      if (*token_create) return token_create_cmd(*st.meta, project, ttl, expires);
      if (*token_list) return token_list_cmd(*st.meta, json_out);
      return token_revoke_cmd(*st.meta, token_id);
    }
    OpenStore st = open_store(paths, true);
    store::LayerStore& layers = *st.layers;
    store::MetaStore* meta = st.meta.get();
    if (private_image) store::validate_project_name(project);
    engine::BaseImageOptions opt;
    opt.project = private_image ? project : store::kPublicProject;
    opt.tag = tag;
    opt.uid_shift = st.ids.base;
    store::ImageRecord img;
    if (*bootstrap) {
      if (opt.tag.empty()) opt.tag = kind == "busybox" ? "busybox:latest" : "debian:bookworm";
      img = kind == "busybox" ? engine::bootstrap_busybox(*meta, layers, opt)
                              : engine::bootstrap_debian(*meta, layers, opt);
    } else if (*import_archive) {
      auto scratch = layers.tmp_path("archive-" + new_uuid());
      try {
        std::filesystem::create_directories(scratch);
        auto src = oci::archive_source(source, scratch, archive_name);
        oci::ImportOptions io;
        io.project = opt.project;
        if (!tag.empty()) io.tag = tag;
        io.platform = oci::parse_platform(platform);
        io.uid_shift = st.ids.base;
        io.uid_range = st.ids.size;
        img = oci::import_image(*src, *meta, layers, io, nullptr, nullptr).image;
      } catch (...) {
        std::filesystem::remove_all(scratch);
        throw;
      }
      std::filesystem::remove_all(scratch);
    } else {
      img = engine::import_rootfs(*meta, layers, source, opt);
    }
    std::cout << img.uuid << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "coppiced: " << e.what() << std::endl;
    return 1;
  }
}
