#include "sandbox/supervise.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "sandbox/write_watch.h"

namespace coppice::sandbox {

namespace {

constexpr size_t kChunk = 64 * 1024;
constexpr size_t kMaxLayers = 500;

bool has_nul(const std::string& s) {
  return s.find('\0') != std::string::npos;
}

struct OutputStream {
  UniqueFd fd;
  Stream stream;
  uint64_t total = 0;
  uint64_t kept = 0;
};

}  // namespace

Pipe::Pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw sys_error("pipe2");
  rd.reset(fds[0]);
  wr.reset(fds[1]);
}

void set_nonblock(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

SigpipeBlock::SigpipeBlock() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &set_, &old_);
}

SigpipeBlock::~SigpipeBlock() {
  timespec zero{0, 0};
  while (::sigtimedwait(&set_, nullptr, &zero) > 0) {
  }
  ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

bool StatusReader::read(const std::function<void(const StatusRecord&)>& on_record) {
  bool open = true;
  char chunk[4096];
  for (;;) {
    ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      open = n != 0;
      break;
    }
    buf_.append(chunk, static_cast<size_t>(n));
  }
  while (buf_.size() >= sizeof(StatusRecord)) {
    StatusRecord rec;
    memcpy(&rec, buf_.data(), sizeof rec);
    buf_.erase(0, sizeof rec);
    rec.msg[sizeof rec.msg - 1] = 0;
    on_record(rec);
  }
  return open;
}

SandboxProcess::~SandboxProcess() {
  if (pid > 0 && !reaped) {
    kill();
    reap();
  }
  if (cgroups) cgroups->remove();
}

void SandboxProcess::kill() {
  if (pid <= 0 || reaped) return;
  if (cgroups) cgroups->kill_all();
  ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
}

void SandboxProcess::reap() {
  if (pid <= 0 || reaped) return;
  while (::wait4(pid, &wait_status, __WALL, &usage) < 0 && errno == EINTR) {
  }
  reaped = true;
}

void fill_resources(Resources& res, const rusage& u, const CgroupStats& cs,
                    Clock::duration elapsed) {
  res.elapsed_s = std::chrono::duration<double>(elapsed).count();
  res.user_time_us = cs.user_us.value_or(u.ru_utime.tv_sec * 1000000 + u.ru_utime.tv_usec);
  res.sys_time_us = cs.system_us.value_or(u.ru_stime.tv_sec * 1000000 + u.ru_stime.tv_usec);
  res.max_rss_kb = u.ru_maxrss;
  res.memory_peak_bytes = cs.memory_peak_bytes;
  res.shared_memory = u.ru_ixrss;
  res.unshared_memory = u.ru_idrss + u.ru_isrss;
  res.swaps = u.ru_nswap;
  res.minor_faults = u.ru_minflt;
  res.major_faults = u.ru_majflt;
  res.voluntary_ctx_switches = u.ru_nvcsw;
  res.involuntary_ctx_switches = u.ru_nivcsw;
  res.block_input_ops = u.ru_inblock;
  res.block_output_ops = u.ru_oublock;
  res.ipc_msgs_sent = u.ru_msgsnd;
  res.ipc_msgs_received = u.ru_msgrcv;
  res.signals_received = u.ru_nsignals;
}

void validate_spec(const RunSpec& spec, uid_t uid_range) {
  if (spec.argv.empty() || spec.argv[0].empty()) throw bad_request("argv must not be empty");
  if (spec.lower_layers.empty()) throw bad_request("at least one image layer is needed");
  if (spec.lower_layers.size() > kMaxLayers)
    throw bad_request(fmt::format("too many image layers: {} (at most {})",
                                  spec.lower_layers.size(), kMaxLayers));
  if (spec.run_dir.empty()) throw internal("run_dir is empty");
  for (const auto& a : spec.argv)
    if (has_nul(a)) throw bad_request("argv must not contain NUL bytes");
  for (const auto& e : spec.env)
    if (has_nul(e) || e.find('=') == std::string::npos)
      throw bad_request(fmt::format("bad environment entry (want KEY=VALUE): {}", e));
  if (spec.cwd.empty() || spec.cwd[0] != '/' || has_nul(spec.cwd))
    throw bad_request(fmt::format("cwd must be an absolute path: {}", spec.cwd));
  if (spec.uid >= uid_range || spec.gid >= uid_range)
    throw bad_request(fmt::format("uid/gid must be below {}", uid_range));
  if (spec.hostname.empty() || spec.hostname.size() > 64 || has_nul(spec.hostname))
    throw bad_request("hostname must be 1 to 64 bytes");
  for (const auto& f : spec.files) {
    if (f.path.empty() || f.path[0] != '/' || has_nul(f.path) || f.path.back() == '/' ||
        f.path.size() >= PATH_MAX)
      throw bad_request(fmt::format("file path must be an absolute file path: {}", f.path));
    if (f.uid >= uid_range || f.gid >= uid_range)
      throw bad_request(fmt::format("file {}: uid/gid must be below {}", f.path, uid_range));
  }
}

Supervised supervise(SuperviseIo& io, const RunSpec& spec, RunObserver& observer,
                     CancelToken& cancel, Clock::time_point t0, const std::function<void()>& kill,
                     const std::function<void()>& reap) {
  Supervised r;
  OutputStream streams[2] = {{std::move(io.stdout_rd), Stream::kStdout},
                             {std::move(io.stderr_rd), Stream::kStderr}};
  for (auto& s : streams) set_nonblock(s.fd.get());
  int extra = io.extra_fd;
  if (extra >= 0) set_nonblock(extra);
  UniqueFd stdin_wr = std::move(io.stdin_wr);
  size_t stdin_off = 0;
  if (spec.stdin_data.empty())
    stdin_wr.reset();
  else if (stdin_wr)
    set_nonblock(stdin_wr.get());
  std::vector<char> buf(kChunk);

  auto read_extra = [&] {
    if (extra >= 0 && !io.on_extra()) extra = -1;
  };
  auto read_output = [&](OutputStream& s) {
    // A status record written just before this output may not have been polled yet.
    read_extra();
    for (int i = 0; i < 16; ++i) {  // bounded, so one busy stream cannot starve the rest
      ssize_t n = ::read(s.fd.get(), buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (n == 0) s.fd.reset();
        return;
      }
      uint64_t un = static_cast<uint64_t>(n);
      s.total += un;
      if (s.kept < spec.truncate_output_at) {
        size_t keep = static_cast<size_t>(std::min<uint64_t>(un, spec.truncate_output_at - s.kept));
        s.kept += keep;
        observer.on_output(s.stream, std::string_view(buf.data(), keep));
      }
      if (un < buf.size()) return;
    }
  };
  const auto deadline = t0 + spec.timeout;
  WriteWatch watch(spec.run_dir / "upper", spec.watch_writes ? spec.write_limit_bytes : 0, t0);
  bool exited = false;
  auto kill_once = [&] {
    if (r.killed) return;
    r.killed = true;
    kill();
  };
  while (!exited) {
    pollfd fds[6];
    int nfds = 0, i_out = -1, i_err = -1, i_extra = -1, i_in = -1, i_cancel = -1;
    if (streams[0].fd) i_out = nfds, fds[nfds++] = {streams[0].fd.get(), POLLIN, 0};
    if (streams[1].fd) i_err = nfds, fds[nfds++] = {streams[1].fd.get(), POLLIN, 0};
    if (extra >= 0) i_extra = nfds, fds[nfds++] = {extra, POLLIN, 0};
    if (stdin_wr) i_in = nfds, fds[nfds++] = {stdin_wr.get(), POLLOUT, 0};
    if (!r.killed) i_cancel = nfds, fds[nfds++] = {cancel.fd(), POLLIN, 0};
    int i_pid = nfds;
    fds[nfds++] = {io.exit_fd, POLLIN, 0};
    int timeout_ms = -1;
    if (!r.killed) {
      auto until = deadline;
      if (auto due = watch.due()) until = std::min(until, *due);
      auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
    }
    int rc = ::poll(fds, static_cast<nfds_t>(nfds), timeout_ms);
    if (rc < 0) {
      if (errno == EINTR) continue;
      throw sys_error("poll sandbox");
    }
    if (!r.killed && Clock::now() >= deadline) {
      r.timed_out = true;
      kill_once();
    }
    if (!r.killed && watch.check(Clock::now())) {
      r.write_limit_hit = true;
      kill_once();
    }
    // The runtime's status (the spawn record among it) before the output, so a command's
    // first bytes never overtake the news that it started.
    if (i_extra >= 0 && fds[i_extra].revents) read_extra();
    if (i_out >= 0 && fds[i_out].revents) read_output(streams[0]);
    if (i_err >= 0 && fds[i_err].revents) read_output(streams[1]);
    if (i_in >= 0 && fds[i_in].revents) {
      if (fds[i_in].revents & (POLLERR | POLLHUP)) {
        stdin_wr.reset();
      } else {
        ssize_t n = ::write(stdin_wr.get(), spec.stdin_data.data() + stdin_off,
                            std::min<size_t>(spec.stdin_data.size() - stdin_off, kChunk));
        if (n > 0) stdin_off += static_cast<size_t>(n);
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || stdin_off == spec.stdin_data.size())
          stdin_wr.reset();
      }
    }
    if (i_cancel >= 0 && fds[i_cancel].revents && !r.killed) {
      r.cancelled = true;
      kill_once();
    }
    if (fds[i_pid].revents) exited = true;
  }
  stdin_wr.reset();
  reap();
  r.elapsed = Clock::now() - t0;
  // Every process of the sandbox is gone: drain what is left in the pipes.
  auto drain_deadline = Clock::now() + std::chrono::seconds(2);
  while ((streams[0].fd || streams[1].fd || extra >= 0) && Clock::now() < drain_deadline) {
    pollfd fds[3];
    int nfds = 0;
    for (auto& s : streams)
      if (s.fd) fds[nfds++] = {s.fd.get(), POLLIN, 0};
    if (extra >= 0) fds[nfds++] = {extra, POLLIN, 0};
    if (::poll(fds, static_cast<nfds_t>(nfds), 100) <= 0) continue;
    for (auto& s : streams)
      if (s.fd) read_output(s);
    read_extra();
  }
  read_extra();
  r.stdout_bytes = streams[0].total;
  r.stderr_bytes = streams[1].total;
  return r;
}

}  // namespace coppice::sandbox
