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

// An internal error that appends strerror(errno) to `what`.
inline Error sys_error(const std::string& what, int err = errno) {
  return Error(500, fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace coppice
