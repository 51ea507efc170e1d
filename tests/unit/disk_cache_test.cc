// The microVM runtime's image-disk cache (sandbox/disk_cache.h): built once, kept under a
// budget, least recently used out, never a file in use.
#include "sandbox/disk_cache.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include "common/error.h"
#include "common/fsutil.h"

namespace coppice::sandbox {
namespace {

namespace fs = std::filesystem;

// A builder writing `kib` KiB of real (non-sparse) data, counting its calls.
struct Builder {
  int calls = 0;
  size_t kib;
  void operator()(const fs::path& out) {
    ++calls;
    std::ofstream f(out, std::ios::binary);
    std::string block(1024, 'x');
    for (size_t i = 0; i < kib; ++i) f << block;
  }
};

class DiskCacheTest : public ::testing::Test {
 protected:
  TempDir tmp{fs::temp_directory_path() / ("disk-cache-test-" + std::to_string(::getpid()))};
  fs::path dir() const { return tmp.path() / "images"; }
  static void sleep_a_bit() {  // mtimes must differ for the LRU order
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
};

TEST_F(DiskCacheTest, BuildsOnceAndReusesTheFile) {
  DiskCache cache(dir(), 1 << 30);
  Builder b{0, 4};
  auto build = [&](const fs::path& p) { b(p); };
  {
    auto l = cache.get("a.ext4", build);
    EXPECT_TRUE(fs::exists(l.path()));
    EXPECT_EQ(l.path(), dir() / "a.ext4");
  }
  auto l2 = cache.get("a.ext4", build);
  EXPECT_EQ(b.calls, 1);
  EXPECT_FALSE(fs::exists(dir() / "a.ext4.tmp"));
}

TEST_F(DiskCacheTest, AFailedBuildLeavesNothing) {
  DiskCache cache(dir(), 1 << 30);
  EXPECT_THROW(cache.get("a.ext4",
                         [](const fs::path& p) {
                           std::ofstream(p) << "half";
                           throw Error(500, "mkfs failed");
                         }),
               Error);
  EXPECT_TRUE(fs::is_empty(dir()));
  EXPECT_THROW(cache.get("../escape", [](const fs::path&) {}), Error);
}

TEST_F(DiskCacheTest, PrunesLeastRecentlyUsedFirstButNeverALeasedFile) {
  // each file takes 64 KiB; the budget holds two
  DiskCache cache(dir(), 2 * 64 * 1024 + 1024);
  Builder b{0, 64};
  auto build = [&](const fs::path& p) { b(p); };
  cache.get("a", build);
  sleep_a_bit();
  cache.get("b", build);
  sleep_a_bit();
  cache.get("a", build);  // a is now more recent than b
  sleep_a_bit();
  cache.get("c", build);  // over budget: b goes
  EXPECT_TRUE(fs::exists(dir() / "a"));
  EXPECT_FALSE(fs::exists(dir() / "b"));
  EXPECT_TRUE(fs::exists(dir() / "c"));
  EXPECT_LE(cache.allocated_bytes(), 2 * 64 * 1024 + 1024u);
  {
    auto held = cache.get("a", build);  // a is in use (and most recent)
    sleep_a_bit();
    auto held_c = cache.get("c", build);
    sleep_a_bit();
    auto d = cache.get("d", build);  // a and c in use: nothing can go, over budget
    EXPECT_TRUE(fs::exists(dir() / "a"));
    EXPECT_TRUE(fs::exists(dir() / "c"));
    EXPECT_TRUE(fs::exists(dir() / "d"));
  }
  sleep_a_bit();
  cache.get("e", build);  // now the oldest unleased ones go: a, then c
  EXPECT_FALSE(fs::exists(dir() / "a"));
  EXPECT_FALSE(fs::exists(dir() / "c"));
  EXPECT_TRUE(fs::exists(dir() / "d"));
  EXPECT_TRUE(fs::exists(dir() / "e"));
  EXPECT_EQ(b.calls, 5);
}

TEST_F(DiskCacheTest, ALeftoverTmpFileIsRemovedAtStart) {
  make_dirs(dir(), 0755);
  std::ofstream(dir() / "x.ext4.tmp") << "crashed build";
  std::ofstream(dir() / "y.ext4") << "kept";
  DiskCache cache(dir(), 1 << 30);
  EXPECT_FALSE(fs::exists(dir() / "x.ext4.tmp"));
  EXPECT_TRUE(fs::exists(dir() / "y.ext4"));
}

TEST_F(DiskCacheTest, ConcurrentGetsBuildOnce) {
  DiskCache cache(dir(), 1 << 30);
  std::atomic<int> calls{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 8; ++i)
    ts.emplace_back([&] {
      auto l = cache.get("shared", [&](const fs::path& p) {
        ++calls;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        std::ofstream(p) << "disk";
      });
      EXPECT_TRUE(fs::exists(l.path()));
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(calls.load(), 1);
}

}  // namespace
}  // namespace coppice::sandbox
