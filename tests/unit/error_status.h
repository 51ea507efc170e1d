// Unit-test helper: the HTTP status of the coppice::Error that `f` throws (0 when it throws
// nothing, -1 for any other exception), so a test can assert `status_of(...) == 422`.
#pragma once

#include <exception>
#include <functional>

#include "common/error.h"

namespace coppice::testing {

inline int status_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.status();
  } catch (const std::exception&) {
    return -1;
  }
  return 0;
}

}  // namespace coppice::testing
