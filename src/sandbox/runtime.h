// The sandbox runtime interface: run one command in an isolated root filesystem made of
// read-only image layers plus a fresh writable upper directory, and report what happened.
//
// Contract shared by every runtime (namespace today; gVisor and microVM later):
//  * The root filesystem is overlayfs(lowers = spec.lower_layers, upper = run_dir/upper,
//    work = run_dir/work) mounted with `userxattr`, so whiteouts are 0:0 character devices and
//    opaque directories carry `user.overlay.opaque=y`.
//  * When run() returns, no process of the sandbox is alive, nothing is mounted, and
//    run_dir/upper holds exactly the filesystem changes of the run (the caller may rename it
//    into the image store). Mount-point directories the runtime had to create are removed
//    from the upper again.
//  * Sandbox uid/gid 0..range-1 map to host ids uid_base..uid_base+range-1; layers are stored
//    with those shifted host ids.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "sandbox/vm_session.h"

namespace coppice::sandbox {

namespace fs = std::filesystem;

// A file placed into the sandbox before the command starts.
struct FileInjection {
  std::string path;      // absolute path inside the sandbox; parent dirs are created (0755)
  fs::path host_blob;    // host file to copy from
  uint32_t mode = 0644;  // permission bits
  uint32_t uid = 0;      // sandbox uid/gid
  uint32_t gid = 0;
};

struct Limits {
  uint64_t memory_bytes = 0;  // 0 = server default
  uint64_t pids = 0;          // 0 = server default
  double cpus = 0;            // CPU quota in cores; 0 = unlimited
};

struct RunSpec {
  std::vector<fs::path> lower_layers;  // top-most first; at most 500
  fs::path run_dir;                    // private to this run; upper/ work/ merged/ made inside
  std::vector<std::string> argv;       // argv[0]: absolute path, or a name searched in PATH
  std::vector<std::string> env;        // "KEY=VALUE"
  std::string cwd = "/";
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string hostname = "sandbox";
  std::string stdin_data;  // written to the command's stdin, then EOF
  std::vector<FileInjection> files;
  std::chrono::milliseconds timeout{60000};
  uint64_t truncate_output_at = 1 << 20;  // per stream; output beyond is counted, not kept
  Limits limits;
  // False when the caller will discard run_dir/upper (a disposable run): a runtime that has
  // to copy the changes out of its sandbox (microvm) may skip that work.
  bool keep_changes = true;
  // The most the run's changes may take on disk (bytes; 0 = no limit), from the engine's write
  // limit (engine/write_limit.h). On a data filesystem with project quotas the kernel enforces
  // it on run_dir/upper (set up by the engine before run()). The microvm runtime sizes the
  // guest's scratch disk from it and stops copying the changes out past it, whatever the host.
  uint64_t write_limit_bytes = 0;
  // Set when nothing enforces write_limit_bytes while the run writes (no project quotas): the
  // supervisor (supervise.h) then measures run_dir/upper from time to time and kills the run
  // once it holds more. The namespace and gvisor runtimes honour it.
  bool watch_writes = false;
};

enum class Stream { kStdout, kStderr };

// Receives what happens during a run, on the thread that called run().
class RunObserver {
 public:
  virtual ~RunObserver() = default;
  // The command was exec'd (or is about to be) with this pid inside the sandbox.
  virtual void on_spawn(int pid) = 0;
  // A chunk of output, within the truncate_output_at budget of that stream. Chunks of one
  // stream arrive in order; each is at most 64 KiB.
  virtual void on_output(Stream s, std::string_view chunk) = 0;
};

// Resource accounting of a finished run (rusage of every reaped process plus cgroup data).
struct Resources {
  double elapsed_s = 0;
  int64_t user_time_us = 0;
  int64_t sys_time_us = 0;
  int64_t max_rss_kb = 0;         // largest single process (ru_maxrss)
  int64_t memory_peak_bytes = 0;  // cgroup peak (includes page cache), 0 if unknown
  int64_t shared_memory = 0;
  int64_t unshared_memory = 0;
  int64_t swaps = 0;
  int64_t minor_faults = 0;
  int64_t major_faults = 0;
  int64_t voluntary_ctx_switches = 0;
  int64_t involuntary_ctx_switches = 0;
  int64_t block_input_ops = 0;
  int64_t block_output_ops = 0;
  int64_t ipc_msgs_sent = 0;
  int64_t ipc_msgs_received = 0;
  int64_t signals_received = 0;
};

struct RunResult {
  int pid = 0;         // pid of the command inside the sandbox
  int exit_code = -1;  // exit status, or 128+signal when killed (shell convention)
  int signal = -1;     // terminating signal, -1 when it exited normally
  bool core_dump = false;
  bool timed_out = false;     // killed because spec.timeout passed
  bool cancelled = false;     // killed because the cancel token fired
  bool oom_killed = false;    // the memory limit's OOM killer fired
  uint64_t stdout_bytes = 0;  // total produced, kept or not
  uint64_t stderr_bytes = 0;
  // The runtime saw the run's changes pass spec.write_limit_bytes: the write watchdog killed
  // it, or (microvm) the changes copied out of the guest did not fit.
  bool write_limit_hit = false;
  // Bytes the run's changes took as the runtime measured them, when it did (microvm: the used
  // space of the guest's scratch disk; the only measure of a disposable microvm run).
  std::optional<uint64_t> changes_bytes;
  Resources resources;
};

// Wakes a running sandbox so that it is killed. Thread-safe; cancel() may come before run().
class CancelToken {
 public:
  CancelToken();
  void cancel();
  bool cancelled() const { return cancelled_.load(); }
  int fd() const { return efd_.get(); }  // readable once cancelled (an eventfd)

 private:
  std::atomic<bool> cancelled_{false};
  UniqueFd efd_;
};

class Runtime {
 public:
  virtual ~Runtime() = default;
  virtual std::string name() const = 0;
  // Runs the spec to completion. Throws coppice::Error when the sandbox could not be set up
  // (a platform failure); a command that fails to exec reports exit_code 127 and a message
  // on stderr instead.
  virtual RunResult run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) = 0;
  // Facts worth showing in whoami (a JSON object as text), e.g. the microVM's accelerator.
  virtual std::string details_json() const { return "{}"; }
};

struct NamespaceConfig {
  uid_t uid_base = 100000;  // host uid/gid of sandbox root
  uid_t uid_range = 65536;
  uint64_t default_memory_bytes = 1ull << 30;
  uint64_t default_pids = 1024;
  std::string cgroup_name = "coppice";  // sub-cgroup created below our own in each hierarchy
  size_t netns_pool = 16;  // network namespaces made ahead of time (0: one per run, made inline)
  std::string init_path;   // the sandbox init (ns_init.h); empty: coppice-sandbox-init next to
                           // the running executable
};

// The default runtime: Linux namespaces + overlayfs + seccomp + cgroups; the sandbox's pid 1
// is the small coppice-sandbox-init program (ns_init.h).
// Construction detects the cgroup hierarchies available and kills/removes the run cgroups a
// previous server process left behind (startup recovery).
std::unique_ptr<Runtime> make_namespace_runtime(const NamespaceConfig& cfg);

struct GvisorConfig {
  std::string runsc;                // path of gVisor's runsc (see find_runsc)
  std::string platform = "ptrace";  // runsc --platform
  uid_t uid_base = 100000;          // as NamespaceConfig: sandbox root is this host uid
  uid_t uid_range = 65536;
  uint64_t default_memory_bytes = 1ull << 30;
  uint64_t default_pids = 1024;
  std::string cgroup_name = "coppice-gvisor";  // must differ from the namespace runtime's
  std::string self_exe = "/proc/self/exe";     // a binary whose main() dispatches
                                               // `__gvisor-init` to gvisor_init_main
};

// The gVisor runtime (gvisor_runtime.cc): the same overlay root as the namespace runtime,
// mounted by a small init in new mount and pid namespaces, then `runsc run` with an OCI
// bundle (user namespace mapping sandbox root to uid_base, network none) as that init, inside
// the run's cgroups. The user-space kernel (Sentry) sits between the command and the host.
std::unique_ptr<Runtime> make_gvisor_runtime(const GvisorConfig& cfg);

// The runsc to use: `hint` when it is a path, else runsc on PATH; "" when none runs
// (`runsc --version` is tried once).
std::string find_runsc(const std::string& hint = "");

struct MicrovmConfig {
  std::string qemu;                         // qemu-system-x86_64 (machine q35)
  std::string bios;                         // qboot.rom when present (faster than SeaBIOS)
  fs::path kernel;                          // /boot/vmlinuz-*-cloud-amd64
  fs::path modules_dir;                     // /lib/modules/<its version>
  std::string mkfs;                         // mkfs.ext4
  std::string agent;                        // the static guest agent (coppice-guest-agent)
  fs::path state_dir;                       // initramfs and cached image disks
  std::string self_exe = "/proc/self/exe";  // dispatches `__microvm-mkimage`
  std::string accel = "auto";               // auto (probe KVM once, else TCG) | kvm | tcg
  uid_t uid_base = 100000;                  // the sandbox range: image owners are unshifted from it
  uid_t uid_range = 65536;
  // QEMU's own uid and gid (qemu_jail.h): outside the sandbox range, owning nothing on the
  // host (`--microvm-uid`). Debian's adduser never hands out this one.
  uid_t qemu_uid = 99999;
  gid_t qemu_gid = 99999;
  gid_t kvm_gid = 0;                             // group that may open /dev/kvm (0: none)
  uint64_t default_memory_bytes = 512ull << 20;  // guest RAM unless the run asks
  uint64_t default_pids = 1024;                  // the command's processes (in the guest)
  uint64_t scratch_bytes = 4ull << 30;      // the guest's writable disk (sparse) for a run without
                                            // a write limit; else sized from write_limit_bytes
  uint64_t image_cache_bytes = 8ull << 30;  // image disks kept (least recently used out)
  // The host's deadlines of a VM run (vm_session.h); the boot allowance is large because TCG
  // boots take seconds (3 s here, more when the machine is busy).
  VmAllowances allowances;
  std::string cgroup_name = "coppice-microvm";
  // Why this configuration cannot run VMs ("" when it can).
  bool usable(std::string* why) const;
};

// The microVM runtime (microvm_runtime.cc): one QEMU VM per run with our guest agent.
std::unique_ptr<Runtime> make_microvm_runtime(const MicrovmConfig& cfg);
// What this host offers: QEMU, the newest cloud kernel and its modules, mkfs.ext4, group kvm.
MicrovmConfig find_microvm(const fs::path& state_dir, const std::string& agent);
// `SELF __microvm-mkimage PLAN.json`: builds an image disk inside a user namespace.
int microvm_mkimage_main(int argc, char** argv);

// The init of a gVisor run, as `SELF __gvisor-init PLAN.json` (see gvisor_runtime.cc):
// mounts the overlay, creates mount points, injects files, then execs runsc.
int gvisor_init_main(int argc, char** argv);

}  // namespace coppice::sandbox
