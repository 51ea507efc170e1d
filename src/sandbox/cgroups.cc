#include "sandbox/cgroups.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "common/ids.h"

namespace coppice::sandbox {

namespace {

bool exists(const std::string& p) {
  return ::access(p.c_str(), F_OK) == 0;
}

// Small writes with open/write/close: cgroup files want one write per value.
bool write_value(const std::string& path, const std::string& value, int* err = nullptr) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd || ::write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size())) {
    if (err) *err = errno;
    return false;
  }
  return true;
}

std::string read_small(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

// Value of `key` in a "key value" per line file (cpu.stat, memory.events, oom_control).
std::optional<int64_t> keyed_value(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string k;
  int64_t v;
  while (in >> k >> v)
    if (k == key) return v;
  return std::nullopt;
}

std::vector<std::string> subdirs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
    out.push_back(dir + "/" + e->d_name);
  }
  ::closedir(d);
  return out;
}

void kill_group(const std::string& dir) {
  if (exists(dir + "/cgroup.kill") && write_value(dir + "/cgroup.kill", "1")) return;
  std::istringstream in(read_small(dir + "/cgroup.procs"));
  pid_t pid;
  while (in >> pid)
    if (pid > 0) ::kill(pid, SIGKILL);
}

// rmdir, retrying while the group is still populated (exiting tasks leave it shortly).
bool remove_group(const std::string& dir) {
  for (int i = 0; i < 200; ++i) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
    if (errno != EBUSY) return false;
    if (i % 20 == 19) kill_group(dir);
    std::this_thread::sleep_for(std::chrono::milliseconds(i < 20 ? 1 : 10));
  }
  return false;
}

struct Mount {
  std::string point;
  std::string root;
};

}  // namespace

CgroupManager::CgroupManager(std::string name) : name_(std::move(name)) {
  // Mount points of v1 controllers and of cgroup2.
  std::map<std::string, Mount> v1;  // controller -> mount
  std::optional<Mount> v2;
  {
    std::ifstream mi("/proc/self/mountinfo");
    std::string line;
    while (std::getline(mi, line)) {
      std::istringstream ls(line);
      std::string id, parent, dev, root, point, opts, f;
      ls >> id >> parent >> dev >> root >> point >> opts;
      while (ls >> f && f != "-") {
      }
      std::string type, source, super;
      ls >> type >> source >> super;
      if (type == "cgroup2") {
        if (!v2) v2 = Mount{point, root};
      } else if (type == "cgroup") {
        std::istringstream so(super);
        std::string o;
        while (std::getline(so, o, ','))
          if (o == "memory" || o == "pids" || o == "cpu") v1.emplace(o, Mount{point, root});
      }
    }
  }
  // Our own cgroup in each hierarchy.
  std::map<std::string, std::string> own;  // controller ("" for cgroup2) -> path
  {
    std::ifstream cg("/proc/self/cgroup");
    std::string line;
    while (std::getline(cg, line)) {
      auto a = line.find(':'), b = line.find(':', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      std::string ctrls = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
      if (ctrls.empty()) {
        own[""] = path;
        continue;
      }
      std::istringstream cs(ctrls);
      std::string c;
      while (std::getline(cs, c, ',')) own[c] = path;
    }
  }
  auto base_for = [&](const Mount& m, const std::string& own_path) {
    std::string rel = own_path;
    if (m.root != "/" && rel.rfind(m.root, 0) == 0) rel = rel.substr(m.root.size());
    if (rel == "/") rel.clear();
    return m.point + rel + "/" + name_;
  };
  std::vector<std::string> missing;
  auto pick_v1 = [&](const char* ctrl, std::string& out) {
    auto m = v1.find(ctrl);
    if (m == v1.end() || !own.count(ctrl)) {
      missing.push_back(fmt::format("cgroup v1 {}", ctrl));
      return;
    }
    out = base_for(m->second, own[ctrl]);
  };
  pure_v2_ = v1.empty() && v2;
  if (v2 && own.count(""))
    v2_ = base_for(*v2, own[""]);
  else
    missing.push_back("cgroup2");
  if (!pure_v2_) {
    pick_v1("memory", memory_v1_);
    pick_v1("pids", pids_v1_);
    pick_v1("cpu", cpu_v1_);
  }
  // Create the bases; a base we cannot create disables that hierarchy.
  for (std::string* base : {&memory_v1_, &pids_v1_, &cpu_v1_, &v2_}) {
    if (base->empty()) continue;
    if (::mkdir(base->c_str(), 0755) != 0 && errno != EEXIST) {
      missing.push_back(fmt::format("{} ({})", *base, std::strerror(errno)));
      base->clear();
    }
  }
  if (pure_v2_ && !v2_.empty()) {
    // Enable the controllers for the run groups. Our own group must delegate them too,
    // which fails when it holds processes (unless it is the root): then limits are missing.
    std::string parent = v2_.substr(0, v2_.rfind('/'));
    for (const char* c : {"+memory", "+pids", "+cpu"}) {
      write_value(parent + "/cgroup.subtree_control", c);
      int err = 0;
      if (!write_value(v2_ + "/cgroup.subtree_control", c, &err))
        missing.push_back(fmt::format("cgroup2 controller {} ({})", c + 1, std::strerror(err)));
    }
  }
  memsw_ = !memory_v1_.empty() && exists(memory_v1_ + "/memory.memsw.limit_in_bytes");
  if (!missing.empty())
    spdlog::warn("sandbox cgroups: not available, skipped: {}", fmt::join(missing, ", "));

  // Startup recovery: kill and remove run groups a previous process left behind.
  for (const std::string& base : base_dirs()) {
    for (const std::string& g : subdirs(base)) {
      kill_group(g);
      if (!remove_group(g)) spdlog::warn("sandbox cgroups: cannot remove leftover {}", g);
    }
  }
}

CgroupManager::~CgroupManager() {
  for (const std::string& base : base_dirs()) ::rmdir(base.c_str());
}

std::vector<std::string> CgroupManager::base_dirs() const {
  std::vector<std::string> out;
  for (const std::string* b : {&memory_v1_, &pids_v1_, &cpu_v1_, &v2_})
    if (!b->empty()) out.push_back(*b);
  return out;
}

std::unique_ptr<RunCgroups> CgroupManager::create(const CgroupLimits& limits) {
  std::unique_ptr<RunCgroups> run(new RunCgroups());
  std::string id = new_uuid();
  auto make = [&](const std::string& base) {
    std::string dir = base + "/" + id;
    if (::mkdir(dir.c_str(), 0755) != 0) throw sys_error("mkdir cgroup " + dir);
    run->dirs_.push_back(dir);
    return dir;
  };
  auto set = [&](const std::string& file, const std::string& value) {
    int err = 0;
    if (!write_value(file, value, &err)) throw sys_error("write " + value + " to " + file, err);
  };
  if (!v2_.empty()) {
    run->v2_ = make(v2_);
    run->v2_fd_ = ::open(run->v2_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  if (pure_v2_ && !run->v2_.empty()) {
    const std::string& g = run->v2_;
    run->memory_ = g;
    run->memory_is_v2_ = true;
    if (limits.memory_bytes && exists(g + "/memory.max")) {
      set(g + "/memory.max", std::to_string(limits.memory_bytes));
      if (exists(g + "/memory.swap.max")) set(g + "/memory.swap.max", "0");
    }
    if (limits.pids && exists(g + "/pids.max")) {
      set(g + "/pids.max", std::to_string(limits.pids));
      run->pids_ = g;
    }
    if (limits.cpus > 0 && exists(g + "/cpu.max"))
      set(g + "/cpu.max", fmt::format("{} 100000", std::llround(limits.cpus * 100000)));
    return run;
  }
  if (!memory_v1_.empty()) {
    std::string g = make(memory_v1_);
    run->memory_ = g;
    if (limits.memory_bytes) {
      set(g + "/memory.limit_in_bytes", std::to_string(limits.memory_bytes));
      if (memsw_) set(g + "/memory.memsw.limit_in_bytes", std::to_string(limits.memory_bytes));
    }
  }
  if (!pids_v1_.empty()) {
    std::string g = make(pids_v1_);
    run->pids_ = g;
    if (limits.pids) set(g + "/pids.max", std::to_string(limits.pids));
  }
  if (!cpu_v1_.empty() && limits.cpus > 0) {
    std::string g = make(cpu_v1_);
    set(g + "/cpu.cfs_period_us", "100000");
    set(g + "/cpu.cfs_quota_us", std::to_string(std::llround(limits.cpus * 100000)));
  }
  return run;
}

RunCgroups::~RunCgroups() {
  if (!removed_) {
    kill_all();
    remove();
  }
  if (v2_fd_ >= 0) ::close(v2_fd_);
  close_v1_task_files();
}

std::vector<int> RunCgroups::open_v1_task_files() {
  for (const std::string& d : dirs_) {
    if (d == v2_) continue;
    std::string f = d + "/tasks";
    int fd = ::open(f.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) throw sys_error("open " + f);
    task_fds_.push_back(fd);
  }
  return task_fds_;
}

void RunCgroups::close_v1_task_files() {
  for (int fd : task_fds_) ::close(fd);
  task_fds_.clear();
}

void RunCgroups::attach_v2(pid_t pid) {
  if (v2_.empty()) return;
  int err = 0;
  if (!write_value(v2_ + "/cgroup.procs", std::to_string(pid), &err))
    throw sys_error("attach to cgroup " + v2_, err);
}

bool RunCgroups::kill_all() {
  bool used_kill = !v2_.empty() && write_value(v2_ + "/cgroup.kill", "1");
  if (!used_kill)
    for (const std::string& d : dirs_) kill_group(d);
  return used_kill;
}

CgroupStats RunCgroups::stats() const {
  CgroupStats s;
  if (!v2_.empty()) {
    std::string cpu = read_small(v2_ + "/cpu.stat");
    s.user_us = keyed_value(cpu, "user_usec");
    s.system_us = keyed_value(cpu, "system_usec");
  }
  if (!memory_.empty()) {
    if (memory_is_v2_) {
      std::string peak = read_small(memory_ + "/memory.peak");
      if (!peak.empty()) s.memory_peak_bytes = std::strtoll(peak.c_str(), nullptr, 10);
      s.oom_killed =
          keyed_value(read_small(memory_ + "/memory.events"), "oom_kill").value_or(0) > 0;
    } else {
      std::string peak = read_small(memory_ + "/memory.max_usage_in_bytes");
      if (!peak.empty()) s.memory_peak_bytes = std::strtoll(peak.c_str(), nullptr, 10);
      s.oom_killed =
          keyed_value(read_small(memory_ + "/memory.oom_control"), "oom_kill").value_or(0) > 0;
    }
  }
  return s;
}

LimitsHit RunCgroups::limits_hit() const {
  LimitsHit h;
  if (!pids_.empty())
    h.pids = keyed_value(read_small(pids_ + "/pids.events"), "max").value_or(0) > 0;
  if (memory_.empty()) return h;
  if (memory_is_v2_) {
    std::string events = read_small(memory_ + "/memory.events");
    h.memory =
        keyed_value(events, "max").value_or(0) > 0 || keyed_value(events, "oom").value_or(0) > 0;
  } else {
    h.memory = std::strtoll(read_small(memory_ + "/memory.failcnt").c_str(), nullptr, 10) > 0;
  }
  return h;
}

void RunCgroups::remove() {
  removed_ = true;
  for (const std::string& d : dirs_)
    if (!remove_group(d))
      spdlog::warn("sandbox cgroups: cannot remove {}: {}", d, std::strerror(errno));
}

}  // namespace coppice::sandbox
