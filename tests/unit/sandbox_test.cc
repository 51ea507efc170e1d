// Tests of the namespace sandbox runtime against a busybox root filesystem.
// They need root (user namespaces with a shifted map, cgroups); they are skipped otherwise.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/error.h"
#include "common/fsutil.h"
#include "engine/write_limit.h"
#include "sandbox/cgroups.h"
#include "sandbox/runtime.h"

namespace coppice::sandbox {
namespace {

constexpr uid_t kBase = 100000;

struct Collect : RunObserver {
  std::string out, err;
  int spawned = -1;
  size_t max_chunk = 0;
  void on_spawn(int pid) override { spawned = pid; }
  void on_output(Stream s, std::string_view c) override {
    max_chunk = std::max(max_chunk, c.size());
    (s == Stream::kStdout ? out : err).append(c);
  }
};

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream(p) << s;
}

// Two layers: `base` (busybox + /etc + /root) and `dirs` (/proc /dev /tmp) on top.
class SandboxEnv {
 public:
  SandboxEnv() {
    char tmpl[] = "/var/tmp/coppice-sbx-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
    root_ = tmpl;
    ::chmod(root_.c_str(), 0755);
    base_ = root_ / "base";
    dirs_ = root_ / "dirs";
    for (const char* d : {"bin", "etc", "root", "mnt"}) fs::create_directories(base_ / d);
    fs::copy_file("/bin/busybox", base_ / "bin/busybox");
    FILE* f = ::popen("/bin/busybox --list", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
      std::string n(line);
      while (!n.empty() && n.back() == '\n') n.pop_back();
      if (!n.empty() && n != "busybox") fs::create_symlink("busybox", base_ / "bin" / n);
    }
    if (f) ::pclose(f);
    write_text(base_ / "etc/passwd",
               "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n");
    write_text(base_ / "etc/group", "root:x:0:\nnogroup:x:65534:\n");
    write_text(base_ / "root/.profile", "# profile\n");
    for (const char* d : {"proc", "dev", "tmp"}) fs::create_directories(dirs_ / d);
    fs::permissions(dirs_ / "tmp", fs::perms(01777));
    shift_ownership(base_, kBase);
    shift_ownership(dirs_, kBase);
    NamespaceConfig cfg;
    cfg.cgroup_name = "coppice-test-" + std::to_string(::getpid());
    cgroup_name = cfg.cgroup_name;
    runtime = make_namespace_runtime(cfg);
  }
  ~SandboxEnv() {
    runtime.reset();
    remove_tree(root_);
  }

  RunSpec spec(std::vector<std::string> argv) {
    RunSpec s;
    s.lower_layers = {dirs_, base_};
    s.run_dir = root_ / ("run" + std::to_string(++runs_));
    s.argv = std::move(argv);
    s.timeout = std::chrono::milliseconds(10000);
    return s;
  }
  RunResult run(const RunSpec& s, Collect& c) {
    CancelToken t;
    return runtime->run(s, c, t);
  }
  RunResult sh(const std::string& script, Collect& c) { return run(spec({"sh", "-c", script}), c); }

  // Leftover run groups below our cgroup bases (v1 pids, memory, cgroup2 ...).
  int leftover_groups() const {
    int n = 0;
    for (const char* h : {"pids", "memory", "unified", "cpu"}) {
      std::error_code ec;
      for (auto it = fs::recursive_directory_iterator("/sys/fs/cgroup/" + std::string(h), ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->path().filename() == cgroup_name) {
          for (auto& e : fs::directory_iterator(it->path()))
            if (e.is_directory()) ++n;
          it.disable_recursion_pending();
        }
      }
    }
    return n;
  }

  fs::path root_, base_, dirs_;
  std::string cgroup_name;
  std::unique_ptr<Runtime> runtime;
  int runs_ = 0;
};

SandboxEnv* env = nullptr;

class SandboxTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0 || ::access("/bin/busybox", X_OK) != 0) return;
    env = new SandboxEnv();
  }
  static void TearDownTestSuite() {
    delete env;
    env = nullptr;
  }
  void SetUp() override {
    if (!env) GTEST_SKIP() << "needs root and /bin/busybox (busybox-static)";
  }
  void TearDown() override {
    if (env) {
      EXPECT_EQ(env->leftover_groups(), 0);
    }
  }
};

TEST_F(SandboxTest, EchoAndExitCodes) {
  Collect c;
  RunResult r = env->sh("echo hello; echo oops >&2; exit 3", c);
  EXPECT_EQ(c.out, "hello\n");
  EXPECT_EQ(c.err, "oops\n");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.signal, -1);
  EXPECT_EQ(r.stdout_bytes, 6u);
  EXPECT_EQ(r.pid, 2);
  EXPECT_EQ(c.spawned, 2);
  Collect k;
  r = env->sh("kill -9 $$", k);
  EXPECT_EQ(r.signal, 9);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_FALSE(r.timed_out);
}

TEST_F(SandboxTest, StdinDeliveredLargeBothWays) {
  RunSpec s = env->spec({"cat"});
  s.stdin_data = std::string(3 << 20, 'x');
  s.truncate_output_at = 8 << 20;
  Collect c;
  RunResult r = env->run(s, c);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(c.out, s.stdin_data);
  EXPECT_LE(c.max_chunk, 64u * 1024);
  // A command that ignores its stdin must not hang the run or kill the server (SIGPIPE).
  s = env->spec({"true"});
  s.stdin_data = std::string(4 << 20, 'y');
  Collect d;
  EXPECT_EQ(env->run(s, d).exit_code, 0);
}

TEST_F(SandboxTest, EnvCwdAndIdentity) {
  RunSpec s = env->spec({"sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G"});
  s.env = {"FOO=bar", "PATH=/bin"};
  s.cwd = "/etc";
  s.uid = 1000;
  s.gid = 1001;
  Collect c;
  RunResult r = env->run(s, c);
  EXPECT_EQ(r.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "bar\n/etc\n1000\n1001\n1001\n");
}

TEST_F(SandboxTest, MissingCwdIsABadRequest) {
  RunSpec s = env->spec({"true"});
  s.cwd = "/nonexistent";
  Collect c;
  try {
    env->run(s, c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find("cwd not found: /nonexistent"), std::string::npos)
        << e.what();
  }
  RunSpec f = env->spec({"true"});
  f.files.push_back({"relative/path", "/etc/hostname"});
  EXPECT_THROW(env->run(f, c), Error);
}

TEST_F(SandboxTest, FileInjection) {
  fs::path blob = env->root_ / "blob";
  write_text(blob, "secret contents\n");
  RunSpec s = env->spec({"sh", "-c",
                         "stat -c '%a %u %g %s' /opt/app/conf.txt; cat /opt/app/conf.txt; "
                         "stat -c '%a %u %g' /opt/app"});
  s.files.push_back({"/opt/app/conf.txt", blob, 0640, 1000, 1001});
  Collect c;
  RunResult r = env->run(s, c);
  EXPECT_EQ(r.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "640 1000 1001 16\nsecret contents\n755 0 0\n");
  // The injected file is a change of the run: it is in the upper, with shifted ownership.
  struct stat st;
  ASSERT_EQ(::stat((s.run_dir / "upper/opt/app/conf.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kBase + 1000);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
}

TEST_F(SandboxTest, UpperRecordsChangesWhiteoutsAndOpaqueDirs) {
  Collect c;
  RunSpec s = env->spec({"sh", "-c",
                         "echo new > /etc/newfile && rm /etc/passwd && rm -rf /root && "
                         "mkdir /root && echo x > /tmp/t"});
  RunResult r = env->run(s, c);
  ASSERT_EQ(r.exit_code, 0) << c.err;
  fs::path up = s.run_dir / "upper";
  struct stat st;
  ASSERT_EQ(::lstat((up / "etc/passwd").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
  char val[8] = {};
  EXPECT_EQ(::lgetxattr((up / "root").c_str(), "user.overlay.opaque", val, sizeof val), 1);
  EXPECT_EQ(val[0], 'y');
  EXPECT_TRUE(fs::exists(up / "etc/newfile"));
  EXPECT_TRUE(fs::exists(up / "tmp/t"));
  EXPECT_FALSE(fs::exists(up / "work"));
}

TEST_F(SandboxTest, NoChangeLeavesUpperEmpty) {
  Collect c;
  RunSpec s = env->spec({"sh", "-c", "cat /etc/passwd > /dev/null; ls / > /dev/null"});
  ASSERT_EQ(env->run(s, c).exit_code, 0) << c.err;
  EXPECT_TRUE(fs::is_empty(s.run_dir / "upper"));
  // The image has no /proc /dev /tmp: the runtime creates them and removes them again.
  RunSpec bare = env->spec({"sh", "-c", "test -d /tmp && test -e /proc/self && test -c /dev/null"});
  bare.lower_layers = {env->base_};
  Collect d;
  EXPECT_EQ(env->run(bare, d).exit_code, 0) << d.err;
  EXPECT_TRUE(fs::is_empty(bare.run_dir / "upper"));
}

TEST_F(SandboxTest, TimeoutKillsEscapees) {
  auto t0 = std::chrono::steady_clock::now();
  RunSpec s = env->spec({"sh", "-c", "setsid sleep 100 & sleep 100"});
  s.timeout = std::chrono::milliseconds(300);
  Collect c;
  RunResult r = env->run(s, c);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.signal, 9);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_LT(took, std::chrono::seconds(3));
  // The main command exits at once: the escaped background job must not keep the run alive.
  t0 = std::chrono::steady_clock::now();
  Collect d;
  r = env->sh("setsid sleep 100 & echo started", d);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_FALSE(r.timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

TEST_F(SandboxTest, OutputTruncation) {
  RunSpec s = env->spec({"sh", "-c", "yes | head -c 5000000"});
  s.truncate_output_at = 1000;
  Collect c;
  RunResult r = env->run(s, c);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(c.out.size(), 1000u);
  EXPECT_EQ(r.stdout_bytes, 5000000u);
}

TEST_F(SandboxTest, MemoryLimitOom) {
  RunSpec s = env->spec({"sh", "-c", "head -c 200m /dev/zero | tail > /dev/null"});
  s.limits.memory_bytes = 32 << 20;
  Collect c;
  RunResult r = env->run(s, c);
  EXPECT_TRUE(r.oom_killed);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_GT(r.resources.memory_peak_bytes, 16 << 20);
  EXPECT_LE(r.resources.memory_peak_bytes, 40 << 20);
}

TEST_F(SandboxTest, PidsLimitContainsForkBomb) {
  auto t0 = std::chrono::steady_clock::now();
  RunSpec s = env->spec({"sh", "-c", "f() { f | f & }; f; sleep 100"});
  s.limits.pids = 64;
  s.timeout = std::chrono::milliseconds(1000);
  Collect c;
  RunResult r = env->run(s, c);
  EXPECT_TRUE(r.timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST_F(SandboxTest, NoNetwork) {
  int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(ls, 4), 0);
  socklen_t len = sizeof a;
  ::getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  Collect c;
  RunResult r = env->sh(
      "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; "
      "wget -q -T 2 -O - http://127.0.0.1:" +
          std::to_string(port) +
          "/ && echo CONNECTED; "
          "wget -q -T 2 -O - http://10.0.0.1/ && echo CONNECTED; exit 0",
      c);
  ::close(ls);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(c.out, "lo\n");
}

TEST_F(SandboxTest, IsolationOfProcessesAndHost) {
  Collect c;
  RunResult r = env->sh(
      "ps -o pid,comm | tail -n +2 | wc -l; test -d /proc/1 && echo init1; "
      "hostname",
      c);
  EXPECT_EQ(r.exit_code, 0) << c.err;
  // init, sh, ps, tail, wc (at most) and nothing of the host.
  int n = std::stoi(c.out);
  EXPECT_GE(n, 2);
  EXPECT_LE(n, 5);
  EXPECT_NE(c.out.find("init1\nsandbox\n"), std::string::npos) << c.out;

  RunSpec s = env->spec({"hostname"});
  s.hostname = "sbx-test";
  Collect h;
  env->run(s, h);
  EXPECT_EQ(h.out, "sbx-test\n");
}

TEST_F(SandboxTest, PrivilegedOperationsFail) {
  Collect c;
  RunResult r = env->sh(
      "mount -t tmpfs x /mnt 2>/dev/null && echo MOUNTED; "
      "unshare -U true 2>/dev/null && echo UNSHARED; "
      "echo garbage > /tmp/m.ko; insmod /tmp/m.ko 2>/dev/null && echo INSMOD; "
      "grep -E '^(Seccomp|NoNewPrivs|CapBnd|CapEff):' /proc/self/status",
      c);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(c.out,
            "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nNoNewPrivs:\t1\n"
            "Seccomp:\t2\n")
      << c.out;
  Collect u;
  RunSpec s = env->spec({"grep", "CapEff", "/proc/self/status"});
  s.uid = 1000;
  env->run(s, u);
  EXPECT_EQ(u.out, "CapEff:\t0000000000000000\n");
}

TEST_F(SandboxTest, CancelKillsRunningCommand) {
  CancelToken token;
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    token.cancel();
  });
  Collect c;
  auto t0 = std::chrono::steady_clock::now();
  RunResult r = env->runtime->run(env->spec({"sleep", "100"}), c, token);
  t.join();
  EXPECT_TRUE(r.cancelled);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.signal, 9);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

TEST_F(SandboxTest, MissingCommand) {
  Collect c;
  RunResult r = env->run(env->spec({"no-such-command"}), c);
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_EQ(c.err, "coppice: no-such-command: No such file or directory\n");
  Collect d;
  r = env->run(env->spec({"/etc/passwd"}), d);
  EXPECT_EQ(r.exit_code, 126);
}

TEST_F(SandboxTest, ResourcesAndLatency) {
  Collect c;
  RunResult r = env->sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done", c);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_GT(r.resources.user_time_us + r.resources.sys_time_us, 1000);
  EXPECT_GT(r.resources.max_rss_kb, 0);
  EXPECT_GT(r.resources.minor_faults, 0);
  EXPECT_GT(r.resources.elapsed_s, 0);

  std::vector<double> ms;
  for (int i = 0; i < 30; ++i) {
    RunSpec s = env->spec({"/bin/true"});
    Collect t;
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(env->run(s, t).exit_code, 0);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    remove_tree(s.run_dir);
  }
  std::sort(ms.begin(), ms.end());
  std::printf("[ sandbox ] /bin/true run: p50 %.2f ms, p90 %.2f ms, max %.2f ms\n", ms[15], ms[27],
              ms.back());
}

// The write limit in a real sandbox (engine/write_limit.h): a run's upper is set up by
// WriteLimits::begin as the engine does it. With project quotas on the filesystem of /var/tmp
// (an XFS prjquota mount: tests/vm/quota_in_vm.sh runs this in a guest whose kernel has them)
// the command's own writes fail; the watchdog kills a run past its limit everywhere else.
TEST_F(SandboxTest, WriteLimitFailsTheCommandsWritesWithProjectQuotas) {
  engine::WriteLimitConfig cfg;
  cfg.default_bytes = 8 << 20;
  make_dirs(env->root_ / "tmp");
  engine::WriteLimits limits(cfg, env->root_);
  if (limits.mode() != engine::WriteLimits::Mode::kProjectQuota)
    GTEST_SKIP() << "no project quotas below /var/tmp: " << limits.describe()["detail"];
  for (int i = 0; i < 2; ++i) {  // the second run reuses nothing of the first's project
    RunSpec s = env->spec({"sh", "-c",
                           "echo x > /etc/copied; dd if=/dev/zero of=/tmp/big bs=1M count=100 "
                           "2>&1; echo rc=$?"});
    auto wl = limits.begin(s, std::nullopt);
    Collect c;
    RunResult r = env->run(s, c);
    EXPECT_EQ(r.exit_code, 0) << c.out << c.err;
    EXPECT_TRUE(c.out.find("No space left on device") != std::string::npos ||
                c.out.find("Disk quota exceeded") != std::string::npos)
        << c.out;
    EXPECT_NE(c.out.find("rc=1"), std::string::npos) << c.out;
    auto over = wl.exceeded(r, s.run_dir / "upper", true);
    ASSERT_TRUE(over);
    EXPECT_GT(*over, 8u << 20);
    EXPECT_LE(*over, (8u << 20) + engine::WriteLimits::kHeadroom + (1u << 20));
    remove_tree(s.run_dir);
  }
}

TEST_F(SandboxTest, WriteWatchdogStopsARunPastItsLimit) {
  engine::WriteLimitConfig cfg;
  cfg.default_bytes = 8 << 20;
  cfg.mode = "watchdog";
  engine::WriteLimits limits(cfg, env->root_);
  RunSpec s = env->spec({"sh", "-c", "dd if=/dev/zero of=/tmp/big bs=1M count=3000; echo rc=$?"});
  auto wl = limits.begin(s, std::nullopt);
  EXPECT_TRUE(s.watch_writes);
  Collect c;
  auto t0 = std::chrono::steady_clock::now();
  RunResult r = env->run(s, c);
  EXPECT_TRUE(r.write_limit_hit);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_EQ(c.out.find("rc="), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(8));
  auto over = wl.exceeded(r, s.run_dir / "upper", false);
  ASSERT_TRUE(over);
  EXPECT_GT(*over, 8u << 20);
  EXPECT_LT(*over, 3000ull << 20);
  remove_tree(s.run_dir);
  // a run within its limit is left alone
  RunSpec ok = env->spec({"sh", "-c", "dd if=/dev/zero of=/tmp/f bs=1M count=2; sleep 0.3"});
  auto wl2 = limits.begin(ok, std::nullopt);
  Collect c2;
  RunResult r2 = env->run(ok, c2);
  EXPECT_FALSE(r2.write_limit_hit);
  EXPECT_EQ(r2.exit_code, 0);
  EXPECT_FALSE(wl2.exceeded(r2, ok.run_dir / "upper", true));
  remove_tree(ok.run_dir);
}

}  // namespace
}  // namespace coppice::sandbox
