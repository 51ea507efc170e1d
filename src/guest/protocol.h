// The wire protocol between the microVM runtime (host) and its guest agent, over one
// virtio-serial port named "coppice". Frames: 1 byte type, 4 bytes little-endian payload length,
// payload. Host → guest: one kSpec frame. Guest → host: kStarted, then kStdout/kStderr chunks,
// kExit, then (for non-disposable runs) the filesystem changes as kEntry headers each followed
// by kData chunks for regular files and one kEnd. The host answers the guest's last frame (kEnd,
// kExit of a disposable run, or kError) with kDone, and only then the guest powers off: a
// virtio-serial write returns once queued, so a guest that powered off at once could lose it.
// The host does not trust the guest with this order or with time: it accepts each frame only
// in its place above and keeps its own deadlines (sandbox/vm_session.h).
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

namespace coppice::guest {

enum FrameType : uint8_t {
  kSpec = 'S',     // JSON: argv, env, cwd, uid, gid, hostname, stdin (base64), timeout_ms,
                   // truncate, files [{path, mode, uid, gid, data (base64)}], changes (bool)
  kStarted = 'B',  // JSON: {"pid": n, "boot_ms": guest uptime in ms}
  kStdout = 'O',
  kStderr = 'E',
  kExit = 'X',   // JSON: exit_code, signal, timed_out, core_dump, stdout_bytes, stderr_bytes,
                 // user_us, sys_us, max_rss_kb, minflt, majflt, nvcsw, nivcsw, inblock, oublock,
                 // scratch_used_bytes (what the run's changes took on the scratch disk)
  kError = 'F',  // text: a setup failure (status 500 unless it starts with "400 ")
  kEntry = 'C',  // JSON: path (relative to the root, no leading '/'), type (dir, file, symlink,
                 // whiteout), mode, uid, gid, mtime, target, opaque
  kData = 'D',   // bytes of the last kEntry file
  kEnd = 'Z',    // no more changes
  kDone = 'K',   // host -> guest: everything arrived, power off
};

constexpr uint32_t kMaxFrame = 64u << 20;  // the spec carries the injected files

inline bool write_frame(int fd, FrameType t, const std::string& payload) {
  std::string buf(5, '\0');
  buf[0] = static_cast<char>(t);
  uint32_t n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) buf[1 + i] = static_cast<char>((n >> (8 * i)) & 0xff);
  buf += payload;
  size_t off = 0;
  while (off < buf.size()) {
    ssize_t w = ::write(fd, buf.data() + off, buf.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    off += static_cast<size_t>(w);
  }
  return true;
}

// Incremental decoder: feed bytes, take complete frames.
class FrameReader {
 public:
  void feed(const char* data, size_t n) { buf_.append(data, n); }
  // True when a whole frame was taken into t/payload. Throws std::runtime_error on a frame
  // larger than kMaxFrame.
  bool next(FrameType& t, std::string& payload) {
    if (buf_.size() < 5) return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i)
      n |= static_cast<uint32_t>(static_cast<unsigned char>(buf_[1 + i])) << (8 * i);
    if (n > kMaxFrame) throw std::runtime_error("guest frame too large");
    if (buf_.size() < 5 + n) return false;
    t = static_cast<FrameType>(buf_[0]);
    payload.assign(buf_, 5, n);
    buf_.erase(0, 5 + n);
    return true;
  }

 private:
  std::string buf_;
};

}  // namespace coppice::guest
