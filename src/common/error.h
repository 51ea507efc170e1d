// Errors in Coppice are exceptions that carry a category (an HTTP status, since every error
// eventually reaches an API client) and a message that says what failed and why.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <stdexcept>
#include <string>

namespace coppice {

class Error : public std::runtime_error {
 public:
  Error(int status, std::string message)
      : std::runtime_error(std::move(message)), status_(status) {}
  // HTTP status that best describes the error (400, 404, 409, 422, 500, ...).
  int status() const { return status_; }

 private:
  int status_;
};

inline Error bad_request(std::string m) {
  return Error(400, std::move(m));
}
inline Error not_found(std::string m) {
  return Error(404, std::move(m));
}
inline Error conflict(std::string m) {
  return Error(409, std::move(m));
}
inline Error unprocessable(std::string m) {
  return Error(422, std::move(m));
}
inline Error internal(std::string m) {
  return Error(500, std::move(m));
}

// An error that appends strerror(errno) to `what`: 500, or 503 (try again later) when the host
// ran short of a resource (descriptors, processes, memory), which is no fault of the request.
inline bool is_resource_shortage(int err) {
  return err == EMFILE || err == ENFILE || err == ENOMEM || err == EAGAIN;
}
inline Error sys_error(const std::string& what, int err = errno) {
  if (is_resource_shortage(err))
    return Error(503, fmt::format("{}: {} (the host is short of resources; try again later)", what,
                                  std::strerror(err)));
  return Error(500, fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace coppice
