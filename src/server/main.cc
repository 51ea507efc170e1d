// coppiced: the Coppice server and its admin commands.
//
//   coppiced serve [--listen 127.0.0.1:8080] [--data-dir DIR]
//   coppiced token create --project P [--data-dir DIR]
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
#include "common/error.h"
#include "common/fd_limit.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "engine/base_images.h"
#include "engine/engine.h"
#include "oci/importer.h"
#include "sandbox/runtime.h"

using namespace coppice;

namespace {

struct Paths {
  std::string data_dir = "/var/lib/coppice";
};

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
  std::string log_level = "info";
  std::vector<std::string> insecure_registries;
  std::vector<std::string> registry_mirrors;  // REGISTRY=URL
  std::string runtime = "namespace";          // the default runtime
  std::string runsc;                          // path of runsc ("" = look on PATH)
  std::string gvisor_platform = "ptrace";
  std::string microvm_accel = "auto";  // auto | kvm | tcg | off
  uint64_t microvm_cache_mb = 8192;    // image disks kept for the microVM runtime
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

  store::LayerStore layers(paths.data_dir, o.durable);
  auto meta = store::open_sqlite_store(layers.db_path(), o.durable);
  sandbox::NamespaceConfig ns;
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
  ec.limits.max_timeout_s = o.max_timeout_s;
  ec.min_free_bytes = o.min_free_mb << 20;
  ec.max_import_timeout_s = o.max_timeout_s;
  ec.registry.insecure = o.insecure_registries;
  for (const auto& m : o.registry_mirrors) {
    auto eq = m.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == m.size())
      throw Error(400, "--registry-mirror wants REGISTRY=URL, e.g. docker.io=http://mirror:5000");
    ec.registry.mirrors[m.substr(0, eq)] = m.substr(eq + 1);
  }
  engine::Engine engine(ec, *meta, layers, *default_runtime);
  for (sandbox::Runtime* r : {runtime.get(), gvisor.get(), microvm.get()})
    if (r && r != default_runtime) engine.add_runtime(*r);
  engine.recover();
  engine.start();
  api::ApiConfig ac;
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
  };

  ServeOptions so;
  auto* serve_cmd = app.add_subcommand("serve", "run the HTTP API server");
  add_data_dir(serve_cmd);
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
  serve_cmd->add_option("--pids", so.pids, "default pids limit per sandbox")->capture_default_str();
  serve_cmd->add_option("--max-timeout", so.max_timeout_s, "largest timeout a run may ask for (s)")
      ->capture_default_str();
  serve_cmd->add_option("--insecure-registry", so.insecure_registries,
                        "registry host[:port] to reach over plain http (repeatable; loopback "
                        "registries always are)");
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
  serve_cmd->add_option("--log-level", so.log_level, "trace|debug|info|warn|error")
      ->capture_default_str();

  auto* token_cmd = app.add_subcommand("token", "manage API tokens");
  token_cmd->require_subcommand(1);
  std::string project = "default";
  auto* token_create = token_cmd->add_subcommand("create", "create a token and print it");
  add_data_dir(token_create);
  token_create->add_option("--project", project, "the tenant the token belongs to")
      ->capture_default_str();

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
    c->add_option("--project", project, "owner project (with --private)");
    c->add_flag("--private", private_image, "visible to --project only instead of every project");
  }

  CLI11_PARSE(app, argc, argv);
  // Logs go to stderr; stdout carries only command results (tokens, image ids, the port).
  spdlog::set_default_logger(spdlog::stderr_color_mt("coppiced"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  try {
    if (*serve_cmd) return serve(paths, so);
    store::LayerStore layers(paths.data_dir, true);
    auto meta = store::open_sqlite_store(layers.db_path());
    if (*token_create) {
      std::string secret = "cpc_" + random_hex(24);
      auto rec = meta->create_token(project, sha256_hex(secret));
      std::cerr << "token " << rec.uuid << " for project " << project << ":\n";
      std::cout << secret << std::endl;
      return 0;
    }
    engine::BaseImageOptions opt;
    opt.project = private_image ? project : store::kPublicProject;
    opt.tag = tag;
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
