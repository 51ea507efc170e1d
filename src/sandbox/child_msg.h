// Async-signal-safe helpers for code that runs between clone() and execve() in the sandbox
// child, where nothing may allocate or take a lock (the server is multi-threaded, so a lock
// held by another thread at clone time would never be released in the child).
//
// Also defines the records that the sandbox's init process sends to the server over the
// status pipe. Each record is written with a single write() of less than PIPE_BUF bytes, so
// records never interleave.
#pragma once

#include <string.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace coppice::sandbox {

// A fixed-size message buffer: appends never allocate and silently truncate.
struct ChildMsg {
  char buf[960];
  size_t len = 0;

  ChildMsg() { buf[0] = 0; }
  ChildMsg& add(const char* s) {
    while (s && *s && len + 1 < sizeof buf) buf[len++] = *s++;
    buf[len] = 0;
    return *this;
  }
  ChildMsg& add_num(long v) {
    char tmp[24];
    int n = 0;
    bool neg = v < 0;
    unsigned long u = neg ? 0ul - static_cast<unsigned long>(v) : static_cast<unsigned long>(v);
    do {
      tmp[n++] = static_cast<char>('0' + u % 10);
      u /= 10;
    } while (u && n < 22);
    if (neg) tmp[n++] = '-';
    while (n > 0 && len + 1 < sizeof buf) buf[len++] = tmp[--n];
    buf[len] = 0;
    return *this;
  }
  // Appends ": <description of err>" (untranslated; strerrordesc_np does not allocate).
  ChildMsg& add_errno(int err) {
    const char* d = strerrordesc_np(err);
    add(": ");
    if (d) return add(d);
    return add("errno ").add_num(err);
  }
  void clear() {
    len = 0;
    buf[0] = 0;
  }
};

// Writes all of `len` bytes, retrying on EINTR and short writes. Returns false on error.
inline bool write_all(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// What the sandbox's init reports to the server.
enum class RecordType : int32_t {
  kMountpoints = 1,  // a = bit mask (kCreated*) of mount-point dirs created in the upper
  kSpawned = 2,      // a = pid of the command inside the sandbox
  kSetupError = 3,   // status = HTTP-ish status (400 user error, 500 platform), msg = text
  kExited = 4,       // a = pid of the command, b = its raw wait status
};

inline constexpr int32_t kCreatedProc = 1;
inline constexpr int32_t kCreatedDev = 2;
inline constexpr int32_t kCreatedTmp = 4;

struct StatusRecord {
  RecordType type;
  int32_t a = 0;
  int32_t b = 0;
  int32_t status = 0;
  char msg[960];
};
static_assert(sizeof(StatusRecord) < 4096, "records must be written atomically (PIPE_BUF)");

inline void send_record(int fd, RecordType type, int32_t a, int32_t b = 0) {
  StatusRecord r;
  r.type = type;
  r.a = a;
  r.b = b;
  r.msg[0] = 0;
  write_all(fd, &r, sizeof r);
}

inline void send_error(int fd, int status, const ChildMsg& m) {
  StatusRecord r;
  r.type = RecordType::kSetupError;
  r.status = status;
  memcpy(r.msg, m.buf, m.len + 1);
  write_all(fd, &r, sizeof r);
}

}  // namespace coppice::sandbox
