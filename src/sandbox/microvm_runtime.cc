// The microVM runtime: one QEMU virtual machine per run (`-M microvm`, Debian's cloud kernel,
// our static guest agent as /init; see docs/RUNTIMES.md and src/guest/).
//
// Per run:
//  1. The image's layers as one read-only ext4 disk, built once per layer stack (cached under
//     the state dir): an init re-executed from our binary (`__microvm-mkimage`) enters a user
//     namespace mapping sandbox root to uid_base (so owners come out unshifted), mounts the
//     overlay of the layers, and execs `mkfs.ext4 -d`.
//  2. A fresh sparse ext4 scratch disk for the guest's overlay upper.
//  3. QEMU in its jail (qemu_jail.h: own mount, network and pid namespaces, a dedicated uid
//     that owns nothing, its seccomp sandbox, the run's files as descriptors), in the run's
//     cgroups, no network device; the agent talks to us over a virtio-serial port
//     (src/guest/protocol.h): we send the spec (with the files to inject), it streams output,
//     enforces the timeout and the output cap, reports the exit status, and for non-disposable
//     runs sends the upper directory's entries, which we write into run_dir/upper with owners
//     shifted, whiteouts and opaque directories in the store's format. Paths from the guest
//     are resolved beneath the upper directory only. The guest is not trusted with time:
//     vm_session.h holds the host's deadlines, which no frame extends.
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
#include "sandbox/qemu_jail.h"
#include "sandbox/run_dir.h"
#include "sandbox/runtime.h"
#include "sandbox/supervise.h"
#include "sandbox/user_ns.h"
#include "sandbox/vm_session.h"

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
    // QEMU gets the disks as descriptors and the kernel and initramfs as binds into its jail:
    // nothing here needs to be reachable by another uid.
    if (cfg_.qemu_uid == 0 || cfg_.qemu_gid == 0 ||
        (cfg_.qemu_uid >= cfg_.uid_base && cfg_.qemu_uid - cfg_.uid_base < cfg_.uid_range) ||
        (cfg_.qemu_gid >= cfg_.uid_base && cfg_.qemu_gid - cfg_.uid_base < cfg_.uid_range))
      throw Error(400, fmt::format("microvm: QEMU's uid/gid {}/{} must be neither 0 nor in the "
                                   "sandbox range {}-{} (--microvm-uid)",
                                   cfg_.qemu_uid, cfg_.qemu_gid, cfg_.uid_base,
                                   cfg_.uid_base + cfg_.uid_range - 1));
    ::chmod(cfg_.state_dir.c_str(), 0700);
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
  // QEMU's jail for a VM whose private directory is `dir` (the jail's root is mounted on
  // dir/jail, in QEMU's mount namespace only).
  QemuJailConfig jail(const fs::path& dir, bool kvm) const;
  // The arguments every VM gets: machine, accelerator, CPU, memory, no default devices, no
  // network, QEMU's seccomp sandbox, kernel, initramfs and the command line.
  std::vector<std::string> base_args(const std::string& accel, uint64_t mem_mb,
                                     const std::string& append) const;
  MicrovmConfig cfg_;
  CgroupManager cgroups_;
  fs::path initramfs_;
  DiskCache images_;
  mutable std::mutex details_mu_;
  std::string kvm_probe_ = "not tried";
  int64_t last_boot_ms_ = -1;
};

QemuJailConfig MicrovmRuntime::jail(const fs::path& dir, bool kvm) const {
  QemuJailConfig j;
  j.qemu = cfg_.qemu;
  j.uid = cfg_.qemu_uid;
  j.gid = cfg_.qemu_gid;
  j.kvm_gid = cfg_.kvm_gid;
  j.kvm = kvm;
  j.mount_point = dir / "jail";
  make_dirs(j.mount_point, 0700);
  j.files = {{cfg_.kernel, "/vm/kernel"}, {initramfs_, "/vm/initrd"}};
  return j;
}

std::vector<std::string> MicrovmRuntime::base_args(const std::string& accel, uint64_t mem_mb,
                                                   const std::string& append) const {
  std::vector<std::string> a;
  auto add = [&](std::initializer_list<std::string> xs) { a.insert(a.end(), xs); };
  add({"-M", "q35", "-accel", accel, "-cpu", accel == "kvm" ? "host" : "max"});
  add({"-m", std::to_string(mem_mb), "-smp", "1"});
  add({"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none"});
  add({"-kernel", "/vm/kernel", "-initrd", "/vm/initrd", "-append", append});
  for (auto& x : qemu_sandbox_args()) a.push_back(x);
  if (!cfg_.bios.empty()) {
    a.push_back("-bios");
    a.push_back(cfg_.bios);
  }
  return a;
}

bool MicrovmRuntime::probe_kvm() {
  UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm) {
    kvm_probe_ = "no usable /dev/kvm";
    return false;
  }
  kvm.reset();
  fs::path dir = cfg_.state_dir / "kvm-probe";
  remove_tree(dir);
  make_dirs(dir, 0700);
  std::string out;
  int ws = -1;
  auto t0 = Clock::now();
  try {
    QemuLaunch launch(jail(dir, true),
                      base_args("kvm", 256, "console=ttyS0 quiet panic=-1 coppice.probe"), {});
    Pipe err;
    int pidfd = -1;
    pid_t pid = launch.start(-1, {}, err.wr.get(), &pidfd);
    UniqueFd pfd(pidfd);
    err.wr.reset();
    pollfd p{pfd.get(), POLLIN, 0};
    if (::poll(&p, 1, 20000) <= 0) {
      ::syscall(SYS_pidfd_send_signal, pfd.get(), SIGKILL, nullptr, 0);
      out = "the VM did not power off within 20 s\n";
    }
    while (::waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    set_nonblock(err.rd.get());
    char b[4096];
    ssize_t n;
    std::string qemu_out;
    while ((n = ::read(err.rd.get(), b, sizeof b)) > 0 && qemu_out.size() < 8192)
      qemu_out.append(b, static_cast<size_t>(n));
    out = qemu_out.empty() ? out : qemu_out;
  } catch (const std::exception& e) {
    out = e.what();
  }
  remove_tree(dir);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
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
  // The disk is written through a descriptor (fd 3 of the mkimage process, reopened by mkfs
  // and debugfs as /proc/self/fd/3): the cache directory stays private to the server. Owned
  // by sandbox root while it is built, by root afterwards.
  UniqueFd disk_fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!disk_fd || ::fchown(disk_fd.get(), cfg_.uid_base, cfg_.uid_base) != 0)
    throw sys_error("create " + tmp.string());
  const std::string disk_arg = "/proc/self/fd/3";
  json plan = {{"lowers", json::array()},
               {"work", work.string()},
               {"debugfs", (fs::path(cfg_.mkfs).parent_path() / "debugfs").string()},
               {"mkfs",
                {cfg_.mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-N",
                 std::to_string(files * 5 / 4 + 1024), "-d", (work / "merged").string(), disk_arg,
                 fmt::format("{}M", size_mb)}}};
  for (const auto& l : spec.lower_layers) plan["lowers"].push_back(l.string());
  write_file_atomic(work / "plan.json", plan.dump(), false);
  // clone into a new user + mount namespace; the parent writes the id maps; the child then
  // execs our binary's mkimage init (a fresh process, free to allocate).
  Pipe sync;
  std::string exe = cfg_.self_exe, arg1 = "__microvm-mkimage", arg2 = (work / "plan.json").string();
  char* argv[] = {exe.data(), arg1.data(), arg2.data(), nullptr};
  char* envp[] = {nullptr};
  int sync_rd = sync.rd.get(), disk = disk_fd.get();
  clone_args ca{};
  ca.flags = CLONE_NEWUSER | CLONE_NEWNS;
  ca.exit_signal = SIGCHLD;
  long rc = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (rc == 0) {
    char go;
    if (::read(sync_rd, &go, 1) != 1) _exit(1);
    if (::dup2(disk, 3) != 3) _exit(1);  // without close-on-exec
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
  // Built; from now on only the server opens it (QEMU gets a read-only descriptor).
  if (::fchown(disk_fd.get(), 0, 0) != 0 || ::fchmod(disk_fd.get(), 0600) != 0)
    throw sys_error("chown " + tmp.string());
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
  fs::path scratch = vm / "scratch.ext4";
  {
    UniqueFd fd(::open(scratch.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(scratch_size(spec))) != 0)
      throw sys_error("create " + scratch.string());
  }
  int ws = run_and_wait({cfg_.mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-E",
                         "lazy_itable_init=1", scratch.string()});
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
    throw Error(500, "microvm: mkfs of the scratch disk failed");
  // QEMU's descriptors: the image disk (read-only), the scratch disk (QEMU asks for a read-only
  // and a read-write one of the same fdset), and its ends of the control and console sockets.
  UniqueFd image_fd(::open(disk.c_str(), O_RDONLY | O_CLOEXEC));
  UniqueFd scratch_rw(::open(scratch.c_str(), O_RDWR | O_CLOEXEC));
  UniqueFd scratch_ro(::open(scratch.c_str(), O_RDONLY | O_CLOEXEC));
  if (!image_fd || !scratch_rw || !scratch_ro) throw sys_error("microvm: open the disks");
  int sv[2], cv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw sys_error("microvm: socketpair");
  UniqueFd ctl(sv[0]), qemu_ctl(sv[1]);
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cv) != 0)
    throw sys_error("microvm: socketpair");
  UniqueFd console(cv[0]), qemu_console(cv[1]);

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

  uint64_t mem_mb = std::max<uint64_t>(
      (spec.limits.memory_bytes ? spec.limits.memory_bytes : cfg_.default_memory_bytes) >> 20, 128);
  // Descriptors 3.. in QEMU, in the order of `fds` below.
  std::vector<std::string> args = base_args(cfg_.accel, mem_mb, "console=ttyS0 quiet panic=-1");
  for (const char* a : {"-add-fd",  "fd=3,set=1",
                        "-drive",   "id=img,file=/dev/fdset/1,format=raw,if=none,readonly=on",
                        "-device",  "virtio-blk-pci,drive=img",
                        "-add-fd",  "fd=4,set=2",
                        "-add-fd",  "fd=5,set=2",
                        "-drive",   "id=rw,file=/dev/fdset/2,format=raw,if=none",
                        "-device",  "virtio-blk-pci,drive=rw",
                        "-device",  "virtio-serial-pci",
                        "-chardev", "socket,id=ctl,fd=6",
                        "-device",  "virtserialport,chardev=ctl,name=coppice",
                        "-chardev", "socket,id=con,fd=7",
                        "-serial",  "chardev:con"})
    args.push_back(a);
  QemuLaunch launch(
      jail(vm, cfg_.accel == "kvm"), args,
      {image_fd.get(), scratch_rw.get(), scratch_ro.get(), qemu_ctl.get(), qemu_console.get()});

  SandboxProcess vmp;
  CgroupLimits lim;
  lim.memory_bytes = (mem_mb << 20) + (256ull << 20);  // guest + QEMU
  lim.pids = 256;  // QEMU's threads; the command's processes are bounded inside the guest
  lim.cpus = spec.limits.cpus;
  vmp.cgroups = cgroups_.create(lim);
  Pipe err_pipe;
  const std::vector<int> task_fds = vmp.cgroups->open_v1_task_files();
  int pidfd = -1;
  auto t0 = Clock::now();
  vmp.pid = launch.start(vmp.cgroups->v2_fd(), task_fds, err_pipe.wr.get(), &pidfd);
  vmp.pidfd.reset(pidfd);
  if (vmp.cgroups->v2_fd() < 0) vmp.cgroups->attach_v2(vmp.pid);
  vmp.cgroups->close_v1_task_files();
  err_pipe.wr.reset();
  for (UniqueFd* f : {&image_fd, &scratch_rw, &scratch_ro, &qemu_ctl, &qemu_console}) f->reset();
  set_nonblock(err_pipe.rd.get());
  set_nonblock(ctl.get());
  set_nonblock(console.get());

  std::string qemu_err;
  auto read_qemu_err = [&] {
    char b[4096];
    ssize_t n;
    while ((n = ::read(err_pipe.rd.get(), b, sizeof b)) > 0 && qemu_err.size() < 8192)
      qemu_err.append(b, static_cast<size_t>(n));
  };

  RunResult r;
  json exit_info = json::object();
  bool got_exit = false, got_end = false, killed = false;
  std::string guest_error, violation, changes_error;
  uint64_t kept[2] = {0, 0};
  ChangeWriter changes(spec.run_dir / "upper", cfg_.uid_base, cfg_.uid_range,
                       spec.write_limit_bytes);
  g::FrameReader reader;
  VmSession session(t0, spec.timeout, spec.keep_changes, cfg_.allowances);
  // What we still have to write to the guest: the spec now, a kDone later. The socket is
  // non-blocking, so a guest that never reads cannot hold this thread.
  std::string out;
  auto queue = [&](g::FrameType t, const std::string& payload) {
    std::string frame(5, '\0');
    frame[0] = static_cast<char>(t);
    uint32_t len = static_cast<uint32_t>(payload.size());
    for (int i = 0; i < 4; ++i) frame[1 + i] = static_cast<char>((len >> (8 * i)) & 0xff);
    out += frame + payload;
  };
  queue(g::kSpec, gspec.dump());
  gspec = json();
  // The guest waits for kDone before it powers off (see guest/protocol.h); a lost one costs
  // the guest's 10 s wait, never a result.
  auto send_done = [&] { queue(g::kDone, ""); };
  // The end of the guest's serial console, for errors about a VM that did not come up.
  std::string console_tail;
  auto kill_vm = [&] {
    killed = true;
    vmp.kill();
  };
  std::vector<char> buf(1 << 16);
  bool vm_exited = false;
  auto cmd_start = t0;
  while (!vm_exited) {
    pollfd p[4] = {{vmp.pidfd.get(), POLLIN, 0},
                   {cancel.fd(), POLLIN, 0},
                   {console.get(), POLLIN, 0},
                   {ctl.get(), static_cast<short>(POLLIN | (out.empty() ? 0 : POLLOUT)), 0}};
    int left = static_cast<int>(std::clamp<int64_t>(
        std::chrono::ceil<std::chrono::milliseconds>(session.deadline() - Clock::now()).count(), 0,
        1 << 30));
    int n = ::poll(p, ctl ? 4 : 3, killed ? 1000 : left);
    if (n < 0 && errno != EINTR) throw sys_error("poll microvm");
    if (!killed && Clock::now() >= session.deadline()) {
      switch (session.phase()) {
        case VmSession::Phase::kBooting:
          guest_error = "the VM did not boot in time";
          break;
        case VmSession::Phase::kRunning:
          r.timed_out = true;
          break;
        case VmSession::Phase::kSendingChanges:
          changes_error = fmt::format(
              "microvm: the guest did not send its filesystem changes within {} s",
              std::chrono::duration_cast<std::chrono::seconds>(cfg_.allowances.changes).count());
          break;
        case VmSession::Phase::kShuttingDown:
          break;  // everything arrived; the guest just did not power off
      }
      kill_vm();
    }
    if (p[1].revents && !killed) {
      r.cancelled = true;
      kill_vm();
    }
    if (p[2].revents) {
      ssize_t got = ::read(console.get(), buf.data(), buf.size());
      if (got > 0) {
        console_tail.append(buf.data(), static_cast<size_t>(got));
        if (console_tail.size() > 8192) console_tail.erase(0, console_tail.size() - 4096);
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        console.reset();  // poll ignores a negative fd
      }
    }
    if (ctl && (p[3].revents & POLLOUT) && !out.empty()) {
      ssize_t w = ::send(ctl.get(), out.data(), out.size(), MSG_NOSIGNAL);
      if (w > 0) out.erase(0, static_cast<size_t>(w));
    }
    if (ctl && (p[3].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = ::read(ctl.get(), buf.data(), buf.size());
      if (got <= 0) {
        if (got == 0 || (errno != EAGAIN && errno != EINTR)) ctl.reset();
      } else if (violation.empty()) {
        reader.feed(buf.data(), static_cast<size_t>(got));
        g::FrameType t;
        std::string payload;
        try {
          while (violation.empty() && reader.next(t, payload)) {
            if (auto bad = session.on_frame(t, Clock::now())) {
              violation = *bad;
              break;
            }
            switch (t) {
              case g::kStarted: {
                json s = json::parse(payload);
                r.pid = s.value("pid", 1);
                {
                  std::lock_guard lock(details_mu_);
                  last_boot_ms_ = s.value("boot_ms", -1L);
                }
                observer.on_spawn(r.pid);
                cmd_start = Clock::now();
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
                if (!spec.keep_changes) send_done();
                break;
              case g::kError:
                guest_error = payload.substr(0, 4096);
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
                break;  // refused by the session
            }
          }
        } catch (const Error& e) {
          if (e.status() != 502) throw;  // the host's own failure (a write, the disk)
          violation = e.what();          // bad data from the guest (ChangeWriter)
        } catch (const json::exception& e) {
          violation = std::string("bad JSON: ") + e.what();
        } catch (const std::runtime_error& e) {  // FrameReader: a frame over the size limit
          violation = e.what();
        }
        if (!violation.empty() && !killed) kill_vm();
      }
    }
    if (p[0].revents) vm_exited = true;
  }
  vmp.reap();
  auto elapsed = Clock::now() - cmd_start;
  read_qemu_err();
  CgroupStats cs = vmp.cgroups->stats();
  vmp.cgroups->remove();
  ::unlink(scratch.c_str());
  remove_tree(vm);
  if (!violation.empty()) throw Error(502, "microvm: the guest broke the protocol: " + violation);
  if (!guest_error.empty() && !r.timed_out && !r.cancelled) {
    int status = guest_error.rfind("400 ", 0) == 0 ? 400 : 500;
    if (session.phase() == VmSession::Phase::kBooting && !qemu_err.empty())
      guest_error += ": " + qemu_err.substr(0, 300);
    throw Error(status,
                "sandbox setup failed: " + (status == 400 ? guest_error.substr(4) : guest_error));
  }
  if (!changes_error.empty() && !r.cancelled) throw Error(500, changes_error);
  if (session.phase() == VmSession::Phase::kBooting && !killed) {
    std::string why = qemu_err.empty() ? console_tail : qemu_err;
    if (why.size() > 300) why = why.substr(why.size() - 300);
    throw Error(500, "microvm: the VM stopped before the command started" +
                         (why.empty() ? std::string() : ": " + why));
  }
  if (!got_exit && !killed) {
    // The guest's last words (its console) say why, for the log.
    spdlog::warn("microvm: the VM stopped without reporting the command's exit; console: {}",
                 console_tail.size() > 600 ? console_tail.substr(console_tail.size() - 600)
                                           : console_tail);
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
