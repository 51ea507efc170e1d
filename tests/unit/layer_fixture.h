// Test helper: real layer directories in a temp dir, written the way overlayfs (userxattr)
// writes upper dirs, plus a host "canary" file outside them that no view may ever read.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/fsutil.h"

namespace coppice::testing {

namespace fs = std::filesystem;

class LayerFixture : public ::testing::Test {
 protected:
  // Creates `n` empty layers l0 (top) .. l{n-1} and the canary with `canary_text`.
  void make_layers(int n, const char* prefix, std::string_view canary_text) {
    std::string tmpl = std::string("/var/tmp/") + prefix + "-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    for (int i = 0; i < n; ++i) {
      layers_.push_back(root_ / ("l" + std::to_string(i)));
      make_dirs(layers_.back());
    }
    canary_ = root_ / "canary";
    write(canary_, canary_text);
  }
  void TearDown() override {
    if (!root_.empty()) remove_tree(root_);
  }

  static void write(const fs::path& p, std::string_view data, mode_t mode = 0644) {
    make_dirs(p.parent_path());
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
    ASSERT_GE(fd, 0) << p;
    ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(fd);
    ::chmod(p.c_str(), mode);
  }
  void file(int layer, const std::string& rel, std::string_view data, mode_t mode = 0644) {
    write(layers_[layer] / rel, data, mode);
  }
  void dir(int layer, const std::string& rel) { make_dirs(layers_[layer] / rel); }
  void link(int layer, const std::string& rel, const std::string& target) {
    make_dirs((layers_[layer] / rel).parent_path());
    ASSERT_EQ(::symlink(target.c_str(), (layers_[layer] / rel).c_str()), 0);
  }
  // A whiteout: character device 0:0.
  void whiteout(int layer, const std::string& rel) {
    make_dirs((layers_[layer] / rel).parent_path());
    ASSERT_EQ(::mknod((layers_[layer] / rel).c_str(), S_IFCHR | 0, makedev(0, 0)), 0);
  }
  // An opaque directory: user.overlay.opaque=y.
  void opaque(int layer, const std::string& rel) {
    dir(layer, rel);
    ASSERT_EQ(::setxattr((layers_[layer] / rel).c_str(), "user.overlay.opaque", "y", 1, 0), 0);
  }
  // The HTTP-ish status of the coppice::Error `f` throws, 0 when it does not throw.
  static int status_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.status();
    }
    return 0;
  }

  fs::path root_;
  std::vector<fs::path> layers_;
  fs::path canary_;
};

}  // namespace coppice::testing
