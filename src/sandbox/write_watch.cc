#include "sandbox/write_watch.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "common/fsutil.h"

namespace coppice::sandbox {

WriteWatch::WriteWatch(std::filesystem::path upper, uint64_t limit, Clock::time_point start)
    : upper_(std::move(upper)), limit_(limit), next_(start + kFirst) {}

std::optional<WriteWatch::Clock::time_point> WriteWatch::due() const {
  if (!limit_) return std::nullopt;
  return next_;
}

bool WriteWatch::check(Clock::time_point now) {
  if (!limit_ || now < next_) return false;
  auto t0 = Clock::now();
  last_bytes_ = live_tree_bytes(upper_);
  auto cost = Clock::now() - t0;
  next_ =
      Clock::now() + std::clamp<Clock::duration>(cost * 20, kFirst, Clock::duration(kMaxInterval));
  return last_bytes_ > limit_;
}

uint64_t live_tree_bytes(const std::filesystem::path& dir, size_t max_depth) {
  uint64_t bytes = 0;
  std::set<std::pair<dev_t, ino_t>> linked;
  std::vector<DIR*> stack;  // each one owns its fd
  bool deep = false;
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return 0;
  struct stat st;
  if (::fstat(fd, &st) == 0) bytes += static_cast<uint64_t>(st.st_blocks) * 512;
  if (DIR* d = ::fdopendir(fd))
    stack.push_back(d);
  else
    ::close(fd);
  while (!stack.empty()) {
    DIR* d = stack.back();
    dirent* e = ::readdir(d);
    if (!e) {
      ::closedir(d);
      stack.pop_back();
      continue;
    }
    std::string_view n = e->d_name;
    if (n == "." || n == "..") continue;
    int dfd = ::dirfd(d);
    if (::fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone already
    if (S_ISDIR(st.st_mode)) {
      bytes += static_cast<uint64_t>(st.st_blocks) * 512;
      if (stack.size() >= max_depth) {
        deep = true;
        continue;
      }
      int sub = ::openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) continue;
      if (DIR* sd = ::fdopendir(sub))
        stack.push_back(sd);
      else
        ::close(sub);
      continue;
    }
    if (st.st_nlink > 1 && !linked.insert({st.st_dev, st.st_ino}).second) continue;
    bytes += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  if (!deep) return bytes;
  // Deeper than the fd stack may go: the bounded-fd walker (it climbs with "..", so a tree
  // changing under it may be counted wrong, never written to).
  try {
    return std::max(bytes, tree_size(dir).bytes);
  } catch (const std::exception&) {
    return bytes;
  }
}

}  // namespace coppice::sandbox
