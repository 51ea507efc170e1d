#include "store/layer_view.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>

#include "common/error.h"
#include "common/fsutil.h"
#include "layer_fixture.h"

namespace coppice::store {
namespace {

// Three layers (top first: l0, l1, l2), as overlayfs would write them.
class LayerFixture : public coppice::testing::LayerFixture {
 protected:
  void SetUp() override { make_layers(3, "coppice-lv", "HOST SECRET"); }

  LayerView view(uid_t shift = 0) const { return LayerView(layers_, shift); }

  static std::vector<std::string> names(const std::vector<Entry>& es) {
    std::vector<std::string> out;
    for (const auto& e : es) out.push_back(e.name);
    return out;
  }
  static std::string read_fd(const UniqueFd& fd) {
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) out.append(buf, n);
    return out;
  }
  std::string cat(const LayerView& v, std::string_view path) {
    return read_fd(v.open_file(v.resolve(path)));
  }
};

using LayerViewTest = LayerFixture;

TEST_F(LayerViewTest, LookupThroughThreeLayers) {
  file(2, "etc/a", "a2");
  file(2, "etc/b", "b2");
  file(1, "etc/b", "b1");
  file(1, "etc/c", "c1");
  file(0, "etc/c", "c0");
  file(0, "top", "t0");
  auto v = view();
  EXPECT_EQ(cat(v, "/etc/a"), "a2");
  EXPECT_EQ(cat(v, "/etc/b"), "b1");
  EXPECT_EQ(cat(v, "/etc/c"), "c0");
  EXPECT_EQ(cat(v, "/top"), "t0");
  auto e = v.lookup("/etc/b");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->layer, 1u);
  EXPECT_EQ(e->name, "b");
  EXPECT_EQ(e->path, "/etc/b");
  EXPECT_EQ(e->host_path, layers_[1] / "etc/b");
  EXPECT_FALSE(v.lookup("/etc/missing"));
  EXPECT_TRUE(v.lookup("/"));
  EXPECT_EQ(names(v.list("/etc")), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(names(v.list("/")), (std::vector<std::string>{"etc", "top"}));
}

TEST_F(LayerViewTest, WhiteoutHidesLowerFileAndDir) {
  file(2, "etc/gone", "x");
  file(2, "etc/kept", "k");
  file(2, "olddir/deep/f", "f");
  whiteout(1, "etc/gone");
  whiteout(0, "olddir");
  // Re-creating a deleted name in a higher layer shows it again.
  file(1, "etc/again", "lower");
  whiteout(0, "etc/again");
  auto v = view();
  EXPECT_FALSE(v.lookup("/etc/gone"));
  EXPECT_FALSE(v.lookup("/olddir"));
  EXPECT_FALSE(v.lookup("/olddir/deep/f"));
  EXPECT_FALSE(v.lookup("/etc/again"));
  EXPECT_EQ(names(v.list("/etc")), (std::vector<std::string>{"kept"}));
  EXPECT_EQ(names(v.list("/")), (std::vector<std::string>{"etc"}));
  EXPECT_EQ(status_of([&] { v.resolve("/olddir/deep/f"); }), 404);
  EXPECT_EQ(status_of([&] { v.list("/olddir"); }), 404);
  EXPECT_EQ(status_of([&] { v.open_file("/etc/gone"); }), 404);
}

TEST_F(LayerViewTest, WhiteoutThenDirInHigherLayer) {
  file(2, "d/old", "o");
  whiteout(1, "d");
  file(0, "d/new", "n");
  auto v = view();
  EXPECT_EQ(names(v.list("/d")), (std::vector<std::string>{"new"}));
}

TEST_F(LayerViewTest, OpaqueDirHidesLowerContents) {
  file(2, "var/cache/old1", "1");
  file(1, "var/cache/old2", "2");
  opaque(0, "var/cache");
  file(0, "var/cache/new", "n");
  file(2, "var/other", "o");
  auto v = view();
  EXPECT_EQ(names(v.list("/var/cache")), (std::vector<std::string>{"new"}));
  EXPECT_FALSE(v.lookup("/var/cache/old1"));
  EXPECT_FALSE(v.lookup("/var/cache/old2"));
  EXPECT_TRUE(v.lookup("/var/other"));
  EXPECT_EQ(names(v.list("/var")), (std::vector<std::string>{"cache", "other"}));
  // Opaque in the middle: the top layer still merges with it, the bottom is hidden.
  file(2, "m/bottom", "b");
  opaque(1, "m");
  file(1, "m/mid", "m");
  file(0, "m/top", "t");
  EXPECT_EQ(names(v.list("/m")), (std::vector<std::string>{"mid", "top"}));
}

// overlayfs merges the roots of all its layers whatever their markers say, so a layer whose
// root is opaque (an OCI `./.wh..wh..opq`) hides nothing in a sandbox, and the view shows the
// same (found by fuzz/layer_view_fuzz.cc against a real overlay mount).
TEST_F(LayerViewTest, OpaqueRootHidesNothingAsInOverlayfs) {
  file(2, "etc/bottom", "b");
  opaque(1, "");
  file(1, "mid", "m");
  file(0, "top", "t");
  auto v = view();
  EXPECT_EQ(names(v.list("/")), (std::vector<std::string>{"etc", "mid", "top"}));
  EXPECT_EQ(cat(v, "/etc/bottom"), "b");
}

// An image path that fits the API (< 4096 bytes) but whose host path (layer directory plus
// image path) exceeds PATH_MAX: a clear 400, not a 500 (found by fuzz/layer_unpack_fuzz.cc).
TEST_F(LayerViewTest, PathTooLongForTheHostIs400) {
  UniqueFd d(::open(layers_[0].c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(d);
  const std::string name(200, 'd');
  std::string image_path;
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(::mkdirat(d.get(), name.c_str(), 0755), 0);
    d = UniqueFd(::openat(d.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(d);
    image_path += "/" + name;
  }
  UniqueFd f(::openat(d.get(), std::string(70, 'f').c_str(), O_WRONLY | O_CREAT, 0644));
  ASSERT_TRUE(f);
  ASSERT_GT(layers_[0].string().size() + image_path.size() + 71, size_t{PATH_MAX});
  auto v = view();
  EXPECT_EQ(
      status_of([&] { v.walk("/", [](const Entry&) { return LayerView::Walk::kContinue; }); }),
      400);
  EXPECT_EQ(status_of([&] { v.list(image_path); }), 400);
}

TEST_F(LayerViewTest, LowerNonDirUnderDirIsHidden) {
  file(2, "x", "file in bottom");
  file(1, "x/inner", "i");
  auto v = view();
  auto e = v.lookup("/x");
  ASSERT_TRUE(e);
  EXPECT_TRUE(S_ISDIR(e->st.st_mode));
  EXPECT_EQ(names(v.list("/x")), (std::vector<std::string>{"inner"}));
  // A file over a lower dir hides the dir.
  file(2, "y/sub", "s");
  file(0, "y", "file on top");
  EXPECT_EQ(cat(v, "/y"), "file on top");
  EXPECT_FALSE(v.lookup("/y/sub"));
  EXPECT_EQ(status_of([&] { v.resolve("/y/sub"); }), 422);
  EXPECT_EQ(status_of([&] { v.list("/y"); }), 422);
}

TEST_F(LayerViewTest, ListingMergeAndSort) {
  file(2, "d/zeta", "");
  file(2, "d/alpha", "bottom");
  file(1, "d/Beta", "");
  file(0, "d/alpha", "top");
  file(0, "d/mid", "");
  dir(1, "d/sub");
  file(2, "d/sub/low", "");
  auto v = view();
  auto l = v.list("/d");
  EXPECT_EQ(names(l), (std::vector<std::string>{"Beta", "alpha", "mid", "sub", "zeta"}));
  EXPECT_EQ(l[1].layer, 0u);
  EXPECT_EQ(l[1].path, "/d/alpha");
  EXPECT_EQ(l[1].st.st_size, 3);
  EXPECT_EQ(names(v.list("/d/sub")), (std::vector<std::string>{"low"}));
  std::vector<std::string> walked;  // walk merges child directories the same way
  v.walk("/d", [&](const Entry& e) {
    walked.push_back(e.path);
    return LayerView::Walk::kContinue;
  });
  EXPECT_EQ(walked, (std::vector<std::string>{"/d", "/d/Beta", "/d/alpha", "/d/mid", "/d/sub",
                                              "/d/sub/low", "/d/zeta"}));
  EXPECT_EQ(status_of([&] { v.list("/nope"); }), 404);
  EXPECT_EQ(status_of([&] { v.list("/d/mid"); }), 422);
}

TEST_F(LayerViewTest, UidShift) {
  file(0, "owned", "x");
  file(0, "lowid", "x");
  ASSERT_EQ(::chown((layers_[0] / "owned").c_str(), 100000 + 1000, 100000 + 50), 0);
  ASSERT_EQ(::chown((layers_[0] / "lowid").c_str(), 7, 8), 0);
  auto v = view(100000);
  auto e = v.lookup("/owned");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->st.st_uid, 1000u);
  EXPECT_EQ(e->st.st_gid, 50u);
  e = v.lookup("/lowid");
  EXPECT_EQ(e->st.st_uid, 7u);
  EXPECT_EQ(e->st.st_gid, 8u);
  EXPECT_EQ(view(0).lookup("/owned")->st.st_uid, 101000u);
}

TEST_F(LayerViewTest, SymlinksResolveInsideImage) {
  file(2, "etc/passwd", "image passwd");
  link(1, "etc/x", "/etc/passwd");
  link(1, "etc/rel", "passwd");
  link(0, "etc/chain1", "chain2");
  link(0, "etc/chain2", "../etc/./rel");
  link(0, "bin", "usr/bin");
  file(2, "usr/bin/sh", "shell");
  auto v = view();
  EXPECT_EQ(v.resolve("/etc/x"), "/etc/passwd");
  EXPECT_EQ(v.resolve("/etc/x", false), "/etc/x");
  EXPECT_EQ(v.resolve("/etc/rel"), "/etc/passwd");
  EXPECT_EQ(v.resolve("/etc/chain1"), "/etc/passwd");
  EXPECT_EQ(cat(v, "/etc/chain1"), "image passwd");
  EXPECT_EQ(v.resolve("/bin/sh"), "/usr/bin/sh");
  EXPECT_EQ(v.resolve("/bin", false), "/bin");
  EXPECT_EQ(v.resolve("/bin/", false), "/usr/bin");        // trailing slash follows
  EXPECT_EQ(v.resolve("/bin/../bin//sh"), "/usr/bin/sh");  // ".." applies to the target
  EXPECT_EQ(status_of([&] { v.resolve("/bin/../etc/passwd"); }), 404);  // that is /usr/etc
  EXPECT_EQ(v.resolve("/../../etc/./passwd"), "/etc/passwd");
  EXPECT_EQ(v.resolve("/"), "/");
  EXPECT_EQ(v.resolve("//"), "/");
  // open_file never follows a symlink itself.
  EXPECT_EQ(status_of([&] { v.open_file("/etc/x"); }), 422);
}

TEST_F(LayerViewTest, SymlinkLoopsAndBadInput) {
  link(0, "loop1", "loop2");
  link(0, "loop2", "/loop1");
  link(0, "self", "self");
  link(0, "empty_target_dangling", "nowhere");
  file(0, "f", "x");
  auto v = view();
  EXPECT_EQ(status_of([&] { v.resolve("/loop1"); }), 400);
  EXPECT_EQ(status_of([&] { v.resolve("/self/x"); }), 400);
  EXPECT_EQ(v.resolve("/self", false), "/self");
  EXPECT_EQ(status_of([&] { v.resolve("/empty_target_dangling"); }), 404);
  EXPECT_EQ(status_of([&] { v.resolve(""); }), 400);
  EXPECT_EQ(status_of([&] { v.resolve("etc/passwd"); }), 400);
  EXPECT_EQ(status_of([&] { v.resolve(std::string_view("/f\0x", 4)); }), 400);
  EXPECT_EQ(status_of([&] { v.resolve("/f/x"); }), 422);
  EXPECT_EQ(status_of([&] { v.resolve("/f/"); }), 422);
  EXPECT_EQ(status_of([&] { v.resolve("/f/.."); }), 422);
  // 40 hops are fine, 41 are not.
  for (int i = 0; i < 41; ++i) link(1, "h" + std::to_string(i), "h" + std::to_string(i + 1));
  file(1, "h41", "end");
  link(1, "g0", "h2");  // 40 hops to h41
  EXPECT_EQ(v.resolve("/g0"), "/h41");
  EXPECT_EQ(status_of([&] { v.resolve("/h0"); }), 400);
}

TEST_F(LayerViewTest, EscapeAttemptsStayInImage) {
  file(2, "etc/shadow", "image shadow");
  file(2, "etc/hostname", "image hostname");
  // Links aiming at host files: absolute targets resolve from the image root.
  link(0, "up", "../../../../../../../..");
  link(0, "dotdot", "/../../..");
  link(0, "host", canary_.string());
  link(0, "hostname", "/etc/hostname");
  link(0, "d/deep", "../../../../../../etc/shadow");
  link(1, "escape", "up" + canary_.string());
  auto v = view();
  EXPECT_EQ(v.resolve("/up"), "/");
  EXPECT_EQ(v.resolve("/dotdot"), "/");
  EXPECT_EQ(v.resolve("/up/etc/shadow"), "/etc/shadow");
  EXPECT_EQ(v.resolve("/../../../../etc/shadow"), "/etc/shadow");
  EXPECT_EQ(cat(v, "/d/deep"), "image shadow");
  EXPECT_EQ(cat(v, "/hostname"), "image hostname");
  EXPECT_EQ(status_of([&] { v.resolve("/host"); }), 404);    // canary path not in the image
  EXPECT_EQ(status_of([&] { v.resolve("/escape"); }), 404);  // "up" + host path
  // A symlink to a host directory is never traversed by the kernel.
  link(0, "etcdir", root_.string());
  EXPECT_EQ(status_of([&] { v.resolve("/etcdir/canary"); }), 404);
  EXPECT_FALSE(v.lookup("/etcdir/canary"));
  EXPECT_EQ(status_of([&] { v.list("/etcdir"); }), 422);
  EXPECT_EQ(status_of([&] { v.open_file("/etcdir/canary"); }), 404);
  // Planting the canary path inside the image shows the image's file, never the host's.
  file(2, canary_.relative_path().string(), "image copy");
  EXPECT_EQ(cat(v, "/host"), "image copy");
  EXPECT_EQ(cat(v, "/escape"), "image copy");
  EXPECT_EQ(cat(v, "/etcdir/canary"), "image copy");
}

TEST_F(LayerViewTest, WalkVisitsMergedTree) {
  file(2, "a/one", "1");
  file(1, "a/two", "2");
  whiteout(0, "a/one");
  link(0, "a/l", "/");
  file(0, "b", "b");
  auto v = view();
  std::vector<std::string> seen;
  v.walk("/", [&](const Entry& e) {
    seen.push_back(e.path);
    return LayerView::Walk::kContinue;
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"/", "/a", "/a/l", "/a/two", "/b"}));
  seen.clear();
  v.walk("/", [&](const Entry& e) {
    seen.push_back(e.path);
    return e.path == "/a" ? LayerView::Walk::kSkip : LayerView::Walk::kContinue;
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"/", "/a", "/b"}));
}

// --- flatten ---------------------------------------------------------------------------------

using FlattenTest = LayerFixture;

TEST_F(FlattenTest, SameViewAsLayers) {
  file(2, "etc/passwd", "root:x:0:0::/root:/bin/sh\n");
  file(2, "etc/gone", "g");
  file(2, "opq/hidden", "h");
  file(2, "usr/bin/tool", "#!/bin/sh\n", 04755);
  ASSERT_EQ(::setxattr((layers_[2] / "usr/bin/tool").c_str(), "user.note", "v", 1, 0), 0);
  whiteout(1, "etc/gone");
  file(1, "etc/hosts", "hosts");
  opaque(0, "opq");
  file(0, "opq/shown", "s");
  link(0, "bin", "usr/bin");
  ASSERT_EQ(::mkfifo((layers_[0] / "fifo").c_str(), 0600), 0);
  dir(0, "srv");
  ASSERT_EQ(::chmod((layers_[0] / "srv").c_str(), 01777), 0);
  ASSERT_EQ(::setxattr((layers_[0] / "srv").c_str(), "user.overlay.impure", "y", 1, 0), 0);
  ASSERT_EQ(::setxattr((layers_[0] / "srv").c_str(), "user.keep", "k", 1, 0), 0);
  ASSERT_EQ(::lchown((layers_[0] / "bin").c_str(), 100000, 100000), 0);
  ASSERT_EQ(::chown((layers_[0] / "srv").c_str(), 100033, 100033), 0);
  struct timespec ts[2] = {{1000, 0}, {1600000000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (layers_[0] / "srv").c_str(), ts, 0), 0);

  auto v = view(100000);
  fs::path dest = root_ / "flat";
  flatten(v, dest);
  EXPECT_FALSE(fs::exists(root_ / "flat.tmp"));
  auto f = LayerView({dest}, 100000);

  // Same entries, types, modes, owners and contents.
  std::map<std::string, Entry> a, b;
  v.walk("/", [&](const Entry& e) {
    a[e.path] = e;
    return LayerView::Walk::kContinue;
  });
  f.walk("/", [&](const Entry& e) {
    b[e.path] = e;
    return LayerView::Walk::kContinue;
  });
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [path, e] : a) {
    ASSERT_TRUE(b.count(path)) << path;
    const Entry& g = b[path];
    EXPECT_EQ(e.st.st_mode, g.st.st_mode) << path;
    EXPECT_EQ(e.st.st_uid, g.st.st_uid) << path;
    EXPECT_EQ(e.st.st_gid, g.st.st_gid) << path;
    EXPECT_EQ(e.symlink_target, g.symlink_target) << path;
    if (S_ISREG(e.st.st_mode)) {
      EXPECT_EQ(cat(v, path), cat(f, path));
      EXPECT_EQ(e.st.st_ino, g.st.st_ino) << path << " should be a hard link";
    }
    if (!S_ISDIR(e.st.st_mode) || path != "/") {
      EXPECT_EQ(e.st.st_mtim.tv_sec, g.st.st_mtim.tv_sec) << path;
    }
  }
  EXPECT_FALSE(b.count("/etc/gone"));
  EXPECT_FALSE(b.count("/opq/hidden"));
  EXPECT_TRUE(b.count("/opq/shown"));
  EXPECT_TRUE(S_ISFIFO(b["/fifo"].st.st_mode));
  EXPECT_EQ(b["/srv"].st.st_mode & 07777, 01777);
  EXPECT_EQ(b["/srv"].st.st_mtim.tv_sec, 1600000000);
  // Host ids kept as stored; xattrs copied except overlay ones; no whiteouts or opaque marks.
  struct stat st;
  ASSERT_EQ(::lstat((dest / "srv").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 100033u);
  ASSERT_EQ(::lstat((dest / "bin").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 100000u);
  char buf[8];
  EXPECT_EQ(::lgetxattr((dest / "srv").c_str(), "user.keep", buf, sizeof buf), 1);
  EXPECT_LT(::lgetxattr((dest / "srv").c_str(), "user.overlay.impure", buf, sizeof buf), 0);
  EXPECT_LT(::lgetxattr((dest / "opq").c_str(), "user.overlay.opaque", buf, sizeof buf), 0);
  EXPECT_EQ(::lgetxattr((dest / "usr/bin/tool").c_str(), "user.note", buf, sizeof buf), 1);
  EXPECT_FALSE(fs::exists(dest / "etc/gone"));
  // The destination must not exist.
  EXPECT_EQ(status_of([&] { flatten(v, dest); }), 409);
}

TEST_F(FlattenTest, ManyEntries) {
  for (int d = 0; d < 20; ++d)
    for (int i = 0; i < 150; ++i)
      file(i % 3, "d" + std::to_string(d) + "/f" + std::to_string(i), "x");
  auto v = view();
  fs::path dest = root_ / "flat";
  auto t0 = std::chrono::steady_clock::now();
  flatten(v, dest);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_LT(ms, 5000);
  RecordProperty("flatten_ms", static_cast<int>(ms));
  auto f = LayerView({dest}, 0);
  EXPECT_EQ(f.list("/d7").size(), 150u);
}

}  // namespace
}  // namespace coppice::store
