// The microVM runtime: one QEMU virtual machine per run (`-M microvm`, Debian's cloud kernel,
// our static guest agent as /init; see docs/RUNTIMES.md and src/guest/).
//
// Per run:
//  1. The image's layers as one read-only ext4 disk, built once per layer stack (cached under
//     the state dir): an init re-executed from our binary (`__microvm-mkimage`) enters a user
//     namespace mapping sandbox root to uid_base (so owners come out unshifted), mounts the
//     overlay of the layers, and execs `mkfs.ext4 -d`.
//  2. A fresh sparse ext4 scratch disk for the guest's overlay upper.
//  3. QEMU as the unprivileged uid_base, in the run's cgroups, no network device; the agent
//     talks to us over a virtio-serial port (src/guest/protocol.h): we send the spec (with the
//     files to inject), it streams output, enforces the timeout and the output cap, reports the
//     exit status, and for non-disposable runs sends the upper directory's entries, which we
//     write into run_dir/upper with owners shifted, whiteouts and opaque directories in the
//     store's format. Paths from the guest are resolved beneath the upper directory only.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/base64.h"
#include "common/beneath.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "guest/protocol.h"
#include "sandbox/cgroups.h"
#include "sandbox/disk_cache.h"
#include "sandbox/mounts.h"
#include "sandbox/run_dir.h"
#include "sandbox/runtime.h"
#include "sandbox/supervise.h"
#include "sandbox/user_ns.h"

namespace coppice::sandbox {

using nlohmann::json;
namespace g = coppice::guest;

namespace {

// q35 with PCI virtio devices: `-M microvm` (virtio-mmio, no PIT/HPET) hangs at boot in most
// tries under TCG here (the guest clock never ticks); q35 with qboot boots every time.
const char* const kModules[] = {"virtio_pci", "virtio_blk", "virtio_console", "overlay"};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The module files (relative to modules_dir) for kModules and their dependencies, in load order.
std::vector<std::string> module_order(const fs::path& modules_dir) {
  std::map<std::string, std::vector<std::string>> deps;  // path -> dep paths
  std::map<std::string, std::string> by_name;            // module name -> path
  std::istringstream in(slurp(modules_dir / "modules.dep"));
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string path = line.substr(0, colon);
    std::istringstream rest(line.substr(colon + 1));
    std::string d;
    while (rest >> d) deps[path].push_back(d);
    std::string base = path.substr(path.rfind('/') + 1);
    base = base.substr(0, base.find(".ko"));
    for (auto& c : base)
      if (c == '-') c = '_';
    by_name[base] = path;
  }
  std::vector<std::string> order;
  std::set<std::string> seen;
  std::function<void(const std::string&)> visit = [&](const std::string& p) {
    if (seen.count(p)) return;
    seen.insert(p);
    auto it = deps.find(p);
    if (it != deps.end())
      for (auto d = it->second.rbegin(); d != it->second.rend(); ++d) visit(*d);
    order.push_back(p);
  };
  for (const char* m : kModules) {
    auto it = by_name.find(m);
    if (it == by_name.end()) {
      // built into the kernel (modules.builtin), nothing to load
      continue;
    }
    visit(it->second);
  }
  return order;
}

struct ArchiveWriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

// initramfs (cpio newc): /init = the agent, mount points, the modules and their load order.
void build_initramfs(const MicrovmConfig& cfg, const fs::path& out) {
  fs::path modules_dir = cfg.modules_dir;
  std::vector<std::string> mods = module_order(modules_dir);
  std::unique_ptr<archive, ArchiveWriteFree> a(archive_write_new());
  archive_write_set_format_cpio_newc(a.get());
  fs::path tmp = out.string() + ".tmp";
  if (archive_write_open_filename(a.get(), tmp.c_str()) != ARCHIVE_OK)
    throw Error(500, fmt::format("initramfs: {}", archive_error_string(a.get())));
  auto add = [&](const std::string& name, mode_t type_mode, const std::string& data) {
    std::unique_ptr<archive_entry, EntryFree> e(archive_entry_new());
    archive_entry_set_pathname(e.get(), name.c_str());
    archive_entry_set_mode(e.get(), type_mode);
    archive_entry_set_size(e.get(), static_cast<la_int64_t>(data.size()));
    if (archive_write_header(a.get(), e.get()) != ARCHIVE_OK ||
        (!data.empty() && archive_write_data(a.get(), data.data(), data.size()) < 0))
      throw Error(500, fmt::format("initramfs: {}", archive_error_string(a.get())));
  };
  for (const char* d : {"dev", "proc", "sys", "lower", "rw", "root", "lib", "lib/modules"})
    add(d, S_IFDIR | 0755, "");
  add("init", S_IFREG | 0755, slurp(cfg.agent));
  std::string list;
  for (const auto& m : mods) {
    std::string base = m.substr(m.rfind('/') + 1);
    if (base.size() > 3 && base.substr(base.size() - 3) != ".ko")
      throw Error(500, "microvm: compressed kernel modules are not supported: " + base);
    add("lib/modules/" + base, S_IFREG | 0644, slurp(modules_dir / m));
    list += base + "\n";
  }
  add("modules", S_IFREG | 0644, list);
  if (archive_write_close(a.get()) != ARCHIVE_OK)
    throw Error(500, fmt::format("initramfs: {}", archive_error_string(a.get())));
  ::chmod(tmp.c_str(), 0644);
  fs::rename(tmp, out);
}

// Runs argv (absolute path) as a child and waits; returns its wait status.
int run_and_wait(const std::vector<std::string>& argv) {
  std::vector<char*> av;
  std::vector<std::string> copy = argv;
  for (auto& s : copy) av.push_back(s.data());
  av.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) throw sys_error("fork " + argv[0]);
  if (pid == 0) {
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::execv(av[0], av.data());
    _exit(127);
  }
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  return ws;
}

class MicrovmRuntime final : public Runtime {
 public:
  MicrovmRuntime(const MicrovmConfig& cfg)
      : cfg_(cfg),
        cgroups_(cfg.cgroup_name),
        images_(cfg.state_dir / "images", cfg.image_cache_bytes) {
    // QEMU runs unprivileged: it must read the initramfs and the image disks.
    ::chmod(cfg_.state_dir.c_str(), 0755);
    initramfs_ = cfg_.state_dir / "initramfs.cpio";
    build_initramfs(cfg_, initramfs_);
    if (cfg_.accel == "auto") cfg_.accel = probe_kvm() ? "kvm" : "tcg";
  }
  std::string name() const override { return "microvm"; }
  RunResult run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) override;
  std::string details_json() const override {
    std::lock_guard lock(details_mu_);
    return json{{"accel", cfg_.accel},
                {"kvm_probe", kvm_probe_},
                {"kernel", cfg_.kernel.string()},
                {"last_boot_ms", last_boot_ms_}}
        .dump();
  }

 private:
  // The image's read-only disk, from the cache (built on a miss); leased for the run.
  DiskCache::Lease image_disk(const RunSpec& spec);
  // The scratch disk's size: room for write_limit_bytes of changes plus what ext4 keeps for
  // itself (inode tables, bitmaps: under 2% with mkfs's defaults), so the guest gets ENOSPC
  // soon after its changes pass the limit; cfg_.scratch_bytes for a run without a limit.
  uint64_t scratch_size(const RunSpec& spec) const {
    if (!spec.write_limit_bytes) return cfg_.scratch_bytes;
    return spec.write_limit_bytes + spec.write_limit_bytes / 32 + (32ull << 20);
  }
  // Builds the disk of spec's layer stack at `out`.
  void build_image_disk(const RunSpec& spec, const fs::path& out);
  // Boots the guest once with KVM (the agent powers off at once in probe mode): true when the
  // VM came up and shut down cleanly within 20 s.
  bool probe_kvm();
  MicrovmConfig cfg_;
  CgroupManager cgroups_;
  fs::path initramfs_;
  DiskCache images_;
  mutable std::mutex details_mu_;
  std::string kvm_probe_ = "not tried";
  int64_t last_boot_ms_ = -1;
};

bool MicrovmRuntime::probe_kvm() {
  UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm) {
    kvm_probe_ = "no usable /dev/kvm";
    return false;
  }
  kvm.reset();
  fs::path log = cfg_.state_dir / "kvm-probe.log";
  std::string cmd = fmt::format(
      "timeout 20 setpriv --reuid={0} --regid={0} --groups={1} {2} -M q35 {6} -accel kvm -cpu host "
      "-m 256 -no-user-config -display none -monitor none -no-reboot -nic none -serial none "
      "-kernel {3} -initrd {4} "
      "-append 'console=ttyS0 quiet panic=-1 coppice.probe' >{5} 2>&1",
      cfg_.uid_base, cfg_.kvm_gid, cfg_.qemu, cfg_.kernel.string(), initramfs_.string(),
      log.string(), cfg_.bios.empty() ? "" : "-bios " + cfg_.bios);
  auto t0 = Clock::now();
  int ws = std::system(cmd.c_str());
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  std::string out = read_file(log);
  ::unlink(log.c_str());
  bool ok = WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
  if (ok) {
    kvm_probe_ = fmt::format("booted and powered off in {} ms", ms);
  } else {
    auto nl = out.find('\n');
    kvm_probe_ = "failed: " + (out.empty() ? fmt::format("status {:#x}", ws) : out.substr(0, nl));
  }
  return ok;
}

DiskCache::Lease MicrovmRuntime::image_disk(const RunSpec& spec) {
  std::string key;
  for (const auto& l : spec.lower_layers) key += l.string() + "\n";
  return images_.get(sha256_hex(key).substr(0, 32) + ".ext4",
                     [&](const fs::path& out) { build_image_disk(spec, out); });
}

void MicrovmRuntime::build_image_disk(const RunSpec& spec, const fs::path& tmp) {
  uint64_t bytes = 0, files = 0;
  for (const auto& l : spec.lower_layers) {
    auto t = tree_size(l);
    bytes += t.bytes;
    files += t.entries;
  }
  uint64_t size_mb = bytes / (1 << 20) * 5 / 4 + 64;
  fs::path work = spec.run_dir.string() + ".mkimage";
  remove_tree(work);
  prepare_run_dir(work, cfg_.uid_base);
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd || ::fchown(fd.get(), cfg_.uid_base, cfg_.uid_base) != 0)
      throw sys_error("create " + tmp.string());
  }
  json plan = {{"lowers", json::array()},
               {"work", work.string()},
               {"debugfs", (fs::path(cfg_.mkfs).parent_path() / "debugfs").string()},
               {"mkfs",
                {cfg_.mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-N",
                 std::to_string(files * 5 / 4 + 1024), "-d", (work / "merged").string(),
                 tmp.string(), fmt::format("{}M", size_mb)}}};
  for (const auto& l : spec.lower_layers) plan["lowers"].push_back(l.string());
  write_file_atomic(work / "plan.json", plan.dump(), false);
  // clone into a new user + mount namespace; the parent writes the id maps; the child then
  // execs our binary's mkimage init (a fresh process, free to allocate).
  Pipe sync;
  std::string exe = cfg_.self_exe, arg1 = "__microvm-mkimage", arg2 = (work / "plan.json").string();
  char* argv[] = {exe.data(), arg1.data(), arg2.data(), nullptr};
  char* envp[] = {nullptr};
  int sync_rd = sync.rd.get();
  clone_args ca{};
  ca.flags = CLONE_NEWUSER | CLONE_NEWNS;
  ca.exit_signal = SIGCHLD;
  long rc = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (rc == 0) {
    char go;
    if (::read(sync_rd, &go, 1) != 1) _exit(1);
    // uid 0 of the namespace before execve, or the exec drops every capability.
    if (become_namespace_root() != 0) _exit(3);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    ::execve(argv[0], argv, envp);
    _exit(127);
  }
  if (rc < 0) throw sys_error("clone3 mkimage");
  pid_t pid = static_cast<pid_t>(rc);
  write_id_maps(pid, cfg_.uid_base, cfg_.uid_range);
  [[maybe_unused]] ssize_t w = ::write(sync.wr.get(), "g", 1);
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  remove_tree(work);
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
    throw Error(500, fmt::format("microvm: building the image disk failed (status {:#x})", ws));
}

// Writes one change from the guest beneath `upper` (an O_PATH directory fd), refusing anything
// that would resolve outside it. Past `limit` bytes (a block per entry plus the data; 0 = no
// limit), or when the host's filesystem refuses a write for want of space or quota, it stops
// writing and says so (full()): the run went past its write limit, and its changes are not
// kept.
class ChangeWriter {
 public:
  ChangeWriter(const fs::path& upper, uid_t base, uid_t range, uint64_t limit)
      : base_(base), range_(range), limit_(limit) {
    root_.reset(::open(upper.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
    if (!root_) throw sys_error("open " + upper.string());
  }
  bool full() const { return full_; }
  void entry(const json& h) {
    file_.reset();
    if (full_ || !take(4096)) return;
    std::string path = h.at("path");
    if (path.empty() || path.front() == '/' || path.size() > 4096)
      throw Error(502, "microvm: bad path from the guest: " + path);
    for (size_t s = 0, e; s <= path.size(); s = e + 1) {
      e = path.find('/', s);
      if (e == std::string::npos) e = path.size();
      std::string c = path.substr(s, e - s);
      if (c.empty() || c == "." || c == "..")
        throw Error(502, "microvm: bad path from the guest: " + path);
    }
    auto slash = path.rfind('/');
    std::string parent = slash == std::string::npos ? "." : path.substr(0, slash);
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    UniqueFd dir = try_open_beneath(root_.get(), parent, O_DIRECTORY | O_RDONLY);
    if (!dir) throw Error(502, "microvm: the guest's change has no parent directory: " + path);
    uid_t uid = h.value("uid", 0u), gid = h.value("gid", 0u);
    if (uid >= range_ || gid >= range_) throw Error(502, "microvm: owner out of range: " + path);
    uid += base_;
    gid += base_;
    mode_t mode = h.value("mode", 0644u) & 07777;
    std::string type = h.at("type");
    const char* n = name.c_str();
    if (type == "dir") {
      if (::mkdirat(dir.get(), n, 0700) != 0) throw sys_error("microvm: mkdir " + path);
      UniqueFd d(::openat(dir.get(), n, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
      if (!d || ::fchown(d.get(), uid, gid) != 0 || ::fchmod(d.get(), mode) != 0)
        throw sys_error("microvm: dir " + path);
      if (h.value("opaque", false) && ::fsetxattr(d.get(), "user.overlay.opaque", "y", 1, 0) != 0)
        throw sys_error("microvm: opaque " + path);
    } else if (type == "whiteout") {
      if (::mknodat(dir.get(), n, S_IFCHR | 0000, 0) != 0 ||
          ::fchownat(dir.get(), n, base_, base_, AT_SYMLINK_NOFOLLOW) != 0)
        throw sys_error("microvm: whiteout " + path);
    } else if (type == "symlink") {
      std::string target = h.value("target", "");
      if (::symlinkat(target.c_str(), dir.get(), n) != 0 ||
          ::fchownat(dir.get(), n, uid, gid, AT_SYMLINK_NOFOLLOW) != 0)
        throw sys_error("microvm: symlink " + path);
    } else if (type == "file") {
      file_.reset(
          ::openat(dir.get(), n, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
      if (!file_ || ::fchown(file_.get(), uid, gid) != 0 || ::fchmod(file_.get(), mode) != 0)
        throw sys_error("microvm: file " + path);
    } else {
      throw Error(502, "microvm: unknown change type " + type);
    }
    if (type != "symlink") {
      timespec ts[2] = {{h.value("mtime", 0L), 0}, {h.value("mtime", 0L), 0}};
      ::utimensat(dir.get(), n, ts, AT_SYMLINK_NOFOLLOW);
    }
  }
  void data(const std::string& bytes) {
    if (full_) return;
    if (!file_) throw Error(502, "microvm: file data without a file entry");
    if (!take(bytes.size())) return;
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::write(file_.get(), bytes.data() + off, bytes.size() - off);
      if (n < 0 && (errno == ENOSPC || errno == EDQUOT)) {
        full_ = true;
        file_.reset();
        return;
      }
      if (n <= 0) throw sys_error("microvm: write a changed file");
      off += static_cast<size_t>(n);
    }
  }

 private:
  // Counts `n` more bytes; false (and full) once past the limit.
  bool take(uint64_t n) {
    written_ += n;
    if (limit_ && written_ > limit_) {
      full_ = true;
      file_.reset();
    }
    return !full_;
  }
  UniqueFd root_, file_;
  uid_t base_, range_;
  uint64_t limit_;
  uint64_t written_ = 0;
  bool full_ = false;
};

RunResult MicrovmRuntime::run(const RunSpec& spec, RunObserver& observer, CancelToken& cancel) {
  validate_spec(spec, cfg_.uid_range);
  prepare_run_dir(spec.run_dir, cfg_.uid_base);
  DiskCache::Lease disk_lease = image_disk(spec);
  const fs::path disk = disk_lease.path();
  fs::path vm = spec.run_dir / "vm";
  make_dirs(vm, 0700);
  if (::chown(vm.c_str(), cfg_.uid_base, cfg_.uid_base) != 0)
    throw sys_error("chown " + vm.string());
  fs::path scratch = vm / "scratch.ext4";
  {
    UniqueFd fd(::open(scratch.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(scratch_size(spec))) != 0 ||
        ::fchown(fd.get(), cfg_.uid_base, cfg_.uid_base) != 0)
      throw sys_error("create " + scratch.string());
  }
  int ws = run_and_wait({cfg_.mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-E",
                         "lazy_itable_init=1", scratch.string()});
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
    throw Error(500, "microvm: mkfs of the scratch disk failed");

  json files = json::array();
  for (const auto& f : spec.files)
    files.push_back({{"path", f.path},
                     {"mode", f.mode},
                     {"uid", f.uid},
                     {"gid", f.gid},
                     {"data", base64_encode(read_file(f.host_blob))}});
  json gspec = {{"argv", spec.argv},
                {"env", spec.env},
                {"cwd", spec.cwd},
                {"uid", spec.uid},
                {"gid", spec.gid},
                {"hostname", spec.hostname},
                {"stdin", base64_encode(spec.stdin_data)},
                {"timeout_ms", spec.timeout.count()},
                {"truncate", spec.truncate_output_at},
                {"files", files},
                {"changes", spec.keep_changes},
                {"pids", spec.limits.pids ? spec.limits.pids : cfg_.default_pids}};
  bool has_path = false;
  for (const auto& e : spec.env) has_path = has_path || e.rfind("PATH=", 0) == 0;
  if (!has_path) gspec["env"].push_back(std::string("PATH=") + kDefaultPath);

  fs::path sock = vm / "ctl.sock";
  uint64_t mem_mb =
      (spec.limits.memory_bytes ? spec.limits.memory_bytes : cfg_.default_memory_bytes) >> 20;
  std::vector<std::string> args = {
      cfg_.qemu,
      "-M",
      "q35",
      "-accel",
      cfg_.accel,
      "-cpu",
      cfg_.accel == "kvm" ? "host" : "max",
      "-m",
      std::to_string(std::max<uint64_t>(mem_mb, 128)),
      "-smp",
      "1",
      "-no-user-config",
      "-display",
      "none",
      "-monitor",
      "none",
      "-no-reboot",
      "-nic",
      "none",
      "-kernel",
      cfg_.kernel.string(),
      "-initrd",
      initramfs_.string(),
      "-append",
      "console=ttyS0 quiet panic=-1",
      "-serial",
      "file:" + (vm / "console.log").string(),
      "-drive",
      fmt::format("id=img,file={},format=raw,if=none,readonly=on", disk.string()),
      "-device",
      "virtio-blk-pci,drive=img",
      "-drive",
      fmt::format("id=rw,file={},format=raw,if=none", scratch.string()),
      "-device",
      "virtio-blk-pci,drive=rw",
      "-device",
      "virtio-serial-pci",
      "-chardev",
      fmt::format("socket,id=ctl,path={},server=on,wait=off", sock.string()),
      "-device",
      "virtserialport,chardev=ctl,name=coppice"};
  if (!cfg_.bios.empty()) {
    args.insert(args.begin() + 1, cfg_.bios);
    args.insert(args.begin() + 1, "-bios");
  }
  std::vector<char*> av;
  for (auto& a : args) av.push_back(a.data());
  av.push_back(nullptr);
  char* envp[] = {nullptr};

  SandboxProcess vmp;
  CgroupLimits lim;
  lim.memory_bytes = (std::max<uint64_t>(mem_mb, 128) << 20) + (256ull << 20);  // guest + QEMU
  lim.pids = 256;  // QEMU's threads; the command's processes are bounded inside the guest
  lim.cpus = spec.limits.cpus;
  vmp.cgroups = cgroups_.create(lim);
  Pipe err_pipe;
  const std::vector<int> task_fds = vmp.cgroups->open_v1_task_files();
  uid_t uid = cfg_.uid_base;
  gid_t kvm_gid = cfg_.kvm_gid;
  int err_wr = err_pipe.wr.get();
  int pidfd = -1;
  clone_args ca{};
  ca.flags = CLONE_PIDFD;
  ca.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  ca.exit_signal = SIGCHLD;
  if (vmp.cgroups->v2_fd() >= 0) {
    ca.flags |= CLONE_INTO_CGROUP;
    ca.cgroup = static_cast<uint64_t>(vmp.cgroups->v2_fd());
  }
  auto t0 = Clock::now();
  long rc = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (rc == 0) {
    // QEMU as the unprivileged sandbox-root uid (plus group kvm when KVM is used), in the
    // run's v1 cgroups too (hybrid hosts).
    for (int fd : task_fds)
      if (::write(fd, "0", 1) != 1) _exit(125);
    ::dup2(err_wr, 2);
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::syscall(SYS_close_range, 3, ~0U, 0);
    gid_t groups[1] = {kvm_gid};
    if (::setgroups(kvm_gid ? 1 : 0, groups) != 0 || ::setresgid(uid, uid, uid) != 0 ||
        ::setresuid(uid, uid, uid) != 0)
      _exit(126);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    ::execve(av[0], av.data(), envp);
    _exit(127);
  }
  if (rc < 0) throw sys_error("clone3 qemu");
  vmp.pid = static_cast<pid_t>(rc);
  vmp.pidfd.reset(pidfd);
  if (vmp.cgroups->v2_fd() < 0) vmp.cgroups->attach_v2(vmp.pid);
  vmp.cgroups->close_v1_task_files();
  err_pipe.wr.reset();
  set_nonblock(err_pipe.rd.get());

  // Connect to QEMU's control socket once it exists.
  UniqueFd ctl(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
  bool connected = false;
  for (int i = 0; i < 1000 && !connected; ++i) {
    connected = ::connect(ctl.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    if (!connected) {
      pollfd p{vmp.pidfd.get(), POLLIN, 0};
      if (::poll(&p, 1, 10) > 0) break;  // QEMU exited
    }
  }
  std::string qemu_err;
  auto read_qemu_err = [&] {
    char b[4096];
    ssize_t n;
    while ((n = ::read(err_pipe.rd.get(), b, sizeof b)) > 0 && qemu_err.size() < 8192)
      qemu_err.append(b, static_cast<size_t>(n));
  };
  if (!connected) {
    vmp.kill();
    vmp.reap();
    read_qemu_err();
    throw Error(500, "microvm: QEMU did not start: " + qemu_err.substr(0, 500));
  }
  if (!g::write_frame(ctl.get(), g::kSpec, gspec.dump())) throw sys_error("microvm: send the spec");
  set_nonblock(ctl.get());

  RunResult r;
  json exit_info = json::object();
  bool got_exit = false, got_end = false, killed = false, started = false;
  std::string guest_error;
  uint64_t kept[2] = {0, 0};
  ChangeWriter changes(spec.run_dir / "upper", cfg_.uid_base, cfg_.uid_range,
                       spec.write_limit_bytes);
  g::FrameReader reader;
  auto boot_deadline = t0 + cfg_.boot_timeout;
  auto deadline = boot_deadline;
  std::vector<char> buf(1 << 16);
  bool vm_exited = false;
  // The guest waits for this before it powers off (see guest/protocol.h); a lost one costs
  // the guest's 10 s wait, never a result.
  auto send_done = [&] {
    if (ctl) (void)g::write_frame(ctl.get(), g::kDone, "");
  };
  while (!vm_exited) {
    pollfd p[3] = {{ctl.get(), POLLIN, 0}, {vmp.pidfd.get(), POLLIN, 0}, {cancel.fd(), POLLIN, 0}};
    int left = static_cast<int>(std::clamp<int64_t>(
        std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count(), 0, 1 << 30));
    int n = ::poll(p, ctl ? 3 : 2, killed ? 1000 : left);
    if (n < 0 && errno != EINTR) throw sys_error("poll microvm");
    if (!killed && Clock::now() >= deadline) {
      r.timed_out = started;
      if (!started) guest_error = "the VM did not boot in time";
      killed = true;
      vmp.kill();
    }
    if (p[2].revents && !killed) {
      r.cancelled = true;
      killed = true;
      vmp.kill();
    }
    if (ctl && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = ::read(ctl.get(), buf.data(), buf.size());
      if (got <= 0) {
        if (got == 0 || (errno != EAGAIN && errno != EINTR)) ctl.reset();
      } else {
        reader.feed(buf.data(), static_cast<size_t>(got));
        g::FrameType t;
        std::string payload;
        while (reader.next(t, payload)) {
          switch (t) {
            case g::kStarted: {
              started = true;
              json s = json::parse(payload);
              r.pid = s.value("pid", 1);
              {
                std::lock_guard lock(details_mu_);
                last_boot_ms_ = s.value("boot_ms", -1L);
              }
              observer.on_spawn(r.pid);
              deadline = Clock::now() + spec.timeout + std::chrono::seconds(30);
              t0 = Clock::now();
              break;
            }
            case g::kStdout:
            case g::kStderr: {
              int i = t == g::kStdout ? 0 : 1;
              uint64_t room =
                  kept[i] < spec.truncate_output_at ? spec.truncate_output_at - kept[i] : 0;
              size_t k = static_cast<size_t>(std::min<uint64_t>(room, payload.size()));
              if (k)
                observer.on_output(i == 0 ? Stream::kStdout : Stream::kStderr,
                                   std::string_view(payload).substr(0, k));
              kept[i] += k;
              break;
            }
            case g::kExit:
              exit_info = json::parse(payload);
              got_exit = true;
              if (spec.timeout.count() >= 0) deadline = Clock::now() + std::chrono::seconds(120);
              if (!spec.keep_changes) send_done();
              break;
            case g::kError:
              guest_error = payload;
              send_done();
              break;
            case g::kEntry:
              changes.entry(json::parse(payload));
              break;
            case g::kData:
              changes.data(payload);
              break;
            case g::kEnd:
              got_end = true;
              send_done();
              break;
            case g::kSpec:
            case g::kDone:
              throw Error(502, "microvm: the guest sent a host-to-guest frame");
          }
        }
      }
    }
    if (p[1].revents) vm_exited = true;
  }
  vmp.reap();
  auto elapsed = Clock::now() - t0;
  read_qemu_err();
  CgroupStats cs = vmp.cgroups->stats();
  vmp.cgroups->remove();
  ::unlink(scratch.c_str());
  if (!guest_error.empty() && !r.timed_out && !r.cancelled) {
    int status = guest_error.rfind("400 ", 0) == 0 ? 400 : 500;
    throw Error(status,
                "sandbox setup failed: " + (status == 400 ? guest_error.substr(4) : guest_error));
  }
  if (!got_exit && !killed) {
    // The guest's last words (its console) say why, for the log.
    std::string console;
    try {
      console = read_file(vm / "console.log");
    } catch (const std::exception&) {
    }
    if (console.size() > 600) console = console.substr(console.size() - 600);
    spdlog::warn("microvm: the VM stopped without reporting the command's exit; console: {}",
                 console);
    throw Error(500, "microvm: the VM stopped without reporting the command's exit" +
                         (qemu_err.empty() ? std::string() : ": " + qemu_err.substr(0, 300)));
  }
  if (got_exit && !got_end && !killed && spec.keep_changes)
    throw Error(500, "microvm: the VM stopped before sending the filesystem changes");
  if (killed && !got_exit) {
    r.signal = SIGKILL;
    r.exit_code = 128 + SIGKILL;
  } else {
    r.exit_code = exit_info.value("exit_code", -1);
    r.signal = exit_info.value("signal", -1);
    r.core_dump = exit_info.value("core_dump", false);
    r.timed_out = r.timed_out || exit_info.value("timed_out", false);
    if (r.timed_out && r.signal < 0) r.signal = SIGKILL;
  }
  if (exit_info.contains("scratch_used_bytes"))
    r.changes_bytes = exit_info.value("scratch_used_bytes", uint64_t{0});
  r.write_limit_hit = changes.full();
  r.stdout_bytes = exit_info.value("stdout_bytes", kept[0]);
  r.stderr_bytes = exit_info.value("stderr_bytes", kept[1]);
  r.oom_killed = cs.oom_killed;
  // The guest's own accounting of the command, plus the cgroup's view of the whole VM.
  rusage u{};
  u.ru_utime = {exit_info.value("user_us", 0L) / 1000000, exit_info.value("user_us", 0L) % 1000000};
  u.ru_stime = {exit_info.value("sys_us", 0L) / 1000000, exit_info.value("sys_us", 0L) % 1000000};
  u.ru_maxrss = exit_info.value("max_rss_kb", 0L);
  u.ru_minflt = exit_info.value("minflt", 0L);
  u.ru_majflt = exit_info.value("majflt", 0L);
  u.ru_nvcsw = exit_info.value("nvcsw", 0L);
  u.ru_nivcsw = exit_info.value("nivcsw", 0L);
  u.ru_inblock = exit_info.value("inblock", 0L);
  u.ru_oublock = exit_info.value("oublock", 0L);
  CgroupStats guest = cs;
  guest.user_us.reset();  // the cgroup's CPU time is QEMU's (emulation included), not the command's
  guest.system_us.reset();
  fill_resources(r.resources, u, guest, elapsed);
  remove_tree(vm);
  return r;
}

}  // namespace

int microvm_mkimage_main(int argc, char** argv) {
  if (argc < 3) return 2;
  json plan = json::parse(read_file(argv[2]));
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 4;
  std::vector<std::string> lowers = plan["lowers"];
  std::string work = plan["work"];
  std::string upper = work + "/upper", wdir = work + "/work", merged = work + "/merged";
  MountPlan mp;
  for (const auto& l : lowers) mp.lowers.push_back(l.c_str());
  mp.upper = upper.c_str();
  mp.work = wdir.c_str();
  mp.merged = merged.c_str();
  ChildMsg m;
  if (mount_overlay(mp, m) != 0) {
    std::fprintf(stderr, "mkimage: %s\n", m.buf);
    return 5;
  }
  // mkfs.ext4 adds /lost+found; take it out again unless the image has one.
  struct stat st {};
  bool image_has_lost_found = ::lstat((merged + "/lost+found").c_str(), &st) == 0;
  int ws = run_and_wait(plan["mkfs"].get<std::vector<std::string>>());
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) return 6;
  if (!image_has_lost_found) {
    std::string image = plan["mkfs"][plan["mkfs"].size() - 2];
    std::string debugfs = plan["debugfs"];
    ws = run_and_wait({debugfs, "-w", "-R", "rmdir lost+found", image});
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) return 7;
  }
  return 0;
}

std::unique_ptr<Runtime> make_microvm_runtime(const MicrovmConfig& cfg) {
  return std::make_unique<MicrovmRuntime>(cfg);
}

MicrovmConfig find_microvm(const fs::path& state_dir, const std::string& agent) {
  MicrovmConfig c;
  c.state_dir = state_dir;
  c.agent = agent;
  for (const char* q : {"/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"})
    if (::access(q, X_OK) == 0) c.qemu = q;
  for (const char* m : {"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"})
    if (::access(m, X_OK) == 0) c.mkfs = m;
  // The newest cloud kernel with its modules.
  std::error_code ec;
  std::string best;
  for (const auto& e : fs::directory_iterator("/boot", ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind("vmlinuz-", 0) == 0 && n.find("-cloud-") != std::string::npos && n > best &&
        fs::exists(fs::path("/lib/modules") / n.substr(8) / "modules.dep"))
      best = n;
  }
  if (!best.empty()) {
    c.kernel = fs::path("/boot") / best;
    c.modules_dir = fs::path("/lib/modules") / best.substr(8);
  }
  if (struct group* gr = ::getgrnam("kvm")) c.kvm_gid = gr->gr_gid;
  if (::access("/usr/share/qemu/qboot.rom", R_OK) == 0) c.bios = "/usr/share/qemu/qboot.rom";
  return c;
}

bool MicrovmConfig::usable(std::string* why) const {
  auto miss = [&](const std::string& w) {
    if (why) *why = w;
    return false;
  };
  if (qemu.empty()) return miss("qemu-system-x86_64 not found (apt-get install qemu-system-x86)");
  if (kernel.empty())
    return miss("no cloud kernel in /boot (apt-get install linux-image-cloud-amd64)");
  if (mkfs.empty()) return miss("mkfs.ext4 not found (apt-get install e2fsprogs)");
  if (agent.empty() || ::access(agent.c_str(), R_OK) != 0)
    return miss("the guest agent coppice-guest-agent is not next to coppiced");
  return true;
}

}  // namespace coppice::sandbox
