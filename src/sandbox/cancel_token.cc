#include <sys/eventfd.h>

#include "common/error.h"
#include "sandbox/runtime.h"

namespace coppice::sandbox {

CancelToken::CancelToken() : efd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!efd_) throw sys_error("eventfd");
}

void CancelToken::cancel() {
  if (cancelled_.exchange(true)) return;
  uint64_t one = 1;
  // Never read by anyone: the fd stays readable once cancelled.
  [[maybe_unused]] ssize_t n = ::write(efd_.get(), &one, sizeof one);
}

}  // namespace coppice::sandbox
