// OCI pieces without a network: references, manifests and platform selection, layer
// unpacking (whiteouts, ownership, hostile entries) and packing (the round trip).
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "common/fsutil.h"
#include "common/sha256.h"
#include "error_status.h"
#include "oci/layer_pack.h"
#include "oci/layer_unpack.h"
#include "oci/manifest.h"
#include "oci/reference.h"
#include "store/layer_view.h"

namespace coppice::oci {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

using coppice::testing::status_of;

TEST(Reference, Forms) {
  auto r = parse_reference("busybox");
  EXPECT_EQ(r.str(), "docker.io/library/busybox:latest");
  EXPECT_EQ(default_tag(r), "busybox:latest");
  r = parse_reference("docker://python:3.11-slim");
  EXPECT_EQ(r.str(), "docker.io/library/python:3.11-slim");
  r = parse_reference("docker.io/library/python:3.12-slim");
  EXPECT_EQ(r.repository, "library/python");
  r = parse_reference("index.docker.io/owner/app");
  EXPECT_EQ(r.str(), "docker.io/owner/app:latest");
  r = parse_reference("docker://ghcr.io/owner/image:tag");
  EXPECT_EQ(r.registry, "ghcr.io");
  EXPECT_EQ(r.repository, "owner/image");
  EXPECT_EQ(default_tag(r), "ghcr.io/owner/image:tag");
  std::string d = "sha256:" + std::string(64, 'a');
  r = parse_reference("oci://localhost:5000/a/b-c/d_e@" + d);
  EXPECT_EQ(r.registry, "localhost:5000");
  EXPECT_EQ(r.repository, "a/b-c/d_e");
  EXPECT_EQ(r.tag, "");
  EXPECT_EQ(r.manifest_ref(), d);
  r = parse_reference("127.0.0.1:5000/x:1@" + d);
  EXPECT_EQ(r.tag, "1");
  EXPECT_EQ(r.manifest_ref(), d);
}

TEST(Reference, BadInputIs400) {
  for (const char* bad : {"", "docker://", "UPPER", "a//b", "x:bad tag", "x:-lead", "x@sha256:zz",
                          "x@md5:"
                          "0123",
                          "a/../b", "host:5000/", "-x"})
    EXPECT_EQ(status_of([&] { parse_reference(bad); }), 400) << bad;
}

json descriptor(const std::string& arch, const std::string& variant, char fill) {
  json p = {{"os", "linux"}, {"architecture", arch}};
  if (!variant.empty()) p["variant"] = variant;
  return {{"mediaType", media::kOciManifest},
          {"digest", "sha256:" + std::string(64, fill)},
          {"size", 10},
          {"platform", p}};
}

TEST(Manifest, PlatformSelection) {
  json index = {{"schemaVersion", 2},
                {"mediaType", media::kOciIndex},
                {"manifests",
                 {descriptor("amd64", "", 'a'), descriptor("arm64", "v8", 'b'),
                  descriptor("arm", "v7", 'c')}}};
  EXPECT_TRUE(is_index("", index));
  EXPECT_EQ(select_platform(index, parse_platform("linux/amd64")).digest[7], 'a');
  EXPECT_EQ(select_platform(index, parse_platform("linux/arm64")).digest[7], 'b');
  EXPECT_EQ(select_platform(index, parse_platform("arm64")).digest[7], 'b');
  EXPECT_EQ(select_platform(index, parse_platform("linux/arm/v7")).digest[7], 'c');
  try {
    select_platform(index, parse_platform("linux/s390x"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), 404);
    EXPECT_NE(std::string(e.what()).find("linux/arm64/v8"), std::string::npos) << e.what();
  }
  EXPECT_EQ(status_of([] { parse_platform("a/b/c/d"); }), 400);
}

TEST(Manifest, ParseAndReject) {
  json m = {{"schemaVersion", 2},
            {"mediaType", media::kDockerManifest},
            {"config",
             {{"mediaType", media::kDockerConfig},
              {"digest", "sha256:" + std::string(64, '1')},
              {"size", 5}}},
            {"layers",
             {{{"mediaType", media::kDockerLayerGzip},
               {"digest", "sha256:" + std::string(64, '2')},
               {"size", 7}}}}};
  auto pm = parse_manifest("", m);
  EXPECT_EQ(pm.layers.size(), 1u);
  EXPECT_EQ(layer_compression(pm.layers[0].media_type), LayerCompression::kGzip);
  EXPECT_EQ(layer_compression(media::kOciLayerZstd), LayerCompression::kZstd);
  json foreign = m;
  foreign["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
  EXPECT_EQ(status_of([&] { parse_manifest("", foreign); }), 422);
  json bad_digest = m;
  bad_digest["layers"][0]["digest"] = "sha512:abc";
  EXPECT_EQ(status_of([&] { parse_manifest("", bad_digest); }), 422);
  EXPECT_EQ(status_of([] { parse_manifest("", json{{"schemaVersion", 1}}); }), 422);
  auto cfg = parse_image_config(
      json{{"architecture", "amd64"},
           {"config", {{"Env", {"PATH=/x", "A=b=c"}}, {"WorkingDir", "/app"}, {"Cmd", {"sh"}}}},
           {"rootfs", {{"diff_ids", {"sha256:x"}}}}});
  json sj = cfg.to_store_json();
  EXPECT_EQ(sj["env"]["A"], "b=c");
  EXPECT_EQ(sj["workdir"], "/app");
  EXPECT_EQ(sj["cmd"][0], "sh");
}

TEST(Unpack, MemberNames) {
  EXPECT_EQ(normalize_member_name("./a/./b/"), "a/b");
  EXPECT_EQ(normalize_member_name("./"), "");
  EXPECT_EQ(status_of([] { normalize_member_name("/etc/passwd"); }), 422);
  EXPECT_EQ(status_of([] { normalize_member_name("a/../../b"); }), 422);
}

// A tar built in memory with libarchive.
struct TarEntry {
  std::string name;
  mode_t type = AE_IFREG;
  std::string content{};
  std::string link{};  // symlink target
  std::string hardlink{};
  int64_t uid = 0, gid = 0;
  mode_t perm = 0644;
  std::vector<std::pair<std::string, std::string>> xattrs{};
  dev_t rdev = 0;  // devices
};

std::string make_tar(const std::vector<TarEntry>& entries, const std::string& filter = "") {
  std::string out;
  std::unique_ptr<archive, decltype(&archive_write_free)> a(archive_write_new(),
                                                            archive_write_free);
  archive_write_set_format_pax_restricted(a.get());
  archive_write_set_bytes_in_last_block(a.get(), 1);  // no zero padding after a zstd frame
  if (filter == "gzip") archive_write_add_filter_gzip(a.get());
  if (filter == "zstd") archive_write_add_filter_zstd(a.get());
  archive_write_open(
      a.get(), &out, nullptr,
      [](archive*, void* ud, const void* buf, size_t n) -> la_ssize_t {
        static_cast<std::string*>(ud)->append(static_cast<const char*>(buf), n);
        return static_cast<la_ssize_t>(n);
      },
      nullptr);
  for (const auto& t : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, t.name.c_str());
    archive_entry_set_filetype(e, t.type);
    archive_entry_set_perm(e, t.perm);
    archive_entry_set_uid(e, t.uid);
    archive_entry_set_gid(e, t.gid);
    if (!t.link.empty()) archive_entry_set_symlink(e, t.link.c_str());
    if (!t.hardlink.empty()) archive_entry_set_hardlink(e, t.hardlink.c_str());
    for (const auto& [k, v] : t.xattrs)
      archive_entry_xattr_add_entry(e, k.c_str(), v.data(), v.size());
    if (t.type == AE_IFCHR || t.type == AE_IFBLK) archive_entry_set_rdev(e, t.rdev);
    archive_entry_set_size(e, t.type == AE_IFREG && t.hardlink.empty() ? t.content.size() : 0);
    archive_write_header(a.get(), e);
    if (t.type == AE_IFREG && !t.content.empty())
      archive_write_data(a.get(), t.content.data(), t.content.size());
    archive_entry_free(e);
  }
  archive_write_close(a.get());
  return out;
}

class UnpackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/oci-unit-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { remove_tree(root_); }

  // Unpacks `tar` into a fresh directory `name` with `opt`; returns what it reported.
  UnpackStats unpack_with(const std::string& name, const std::string& tar,
                          const UnpackOptions& opt) {
    fs::path dest = root_ / name;
    make_dirs(dest);
    fs::path file = root_ / (name + ".tar");
    write_file_atomic(file, tar, false);
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    return unpack_layer(fd.get(), dest, opt);
  }
  // Unpacks `tar` into a fresh directory `name`; returns it.
  fs::path unpack(const std::string& name, const std::string& tar,
                  const store::LayerView* lower = nullptr) {
    UnpackOptions opt;
    opt.lower = lower;
    unpack_with(name, tar, opt);
    return root_ / name;
  }
  int unpack_status(const std::string& name, const std::string& tar,
                    const store::LayerView* lower = nullptr) {
    return status_of([&] { unpack(name, tar, lower); });
  }
  fs::path root_;
};

TEST_F(UnpackTest, WhiteoutsOwnershipAndCompression) {
  for (std::string filter : {"", "gzip", "zstd"}) {
    std::string tar = make_tar(
        {{.name = "etc/", .type = AE_IFDIR, .perm = 0755},
         {.name = "etc/passwd", .content = "root\n", .uid = 1000, .gid = 1001},
         {.name = "etc/.wh.shadow"},
         {.name = "opt/.wh..wh..opq"},
         {.name = "opt/new", .content = "n"},
         {.name = "bin/sh", .type = AE_IFLNK, .link = "/bin/busybox"},
         {.name = "bin/hard", .hardlink = "etc/passwd"},
         {.name = "x",
          .content = "x",
          .perm = 04755,
          .xattrs = {{"user.keep", "1"}, {"user.overlay.opaque", "y"}, {"trusted.x", "t"}}}},
        filter);
    fs::path d = unpack("l" + filter, tar);
    struct stat st;
    ASSERT_EQ(::lstat((d / "etc/passwd").c_str(), &st), 0) << filter;
    EXPECT_EQ(st.st_uid, 101000u);
    EXPECT_EQ(st.st_gid, 101001u);
    ASSERT_EQ(::lstat((d / "etc/shadow").c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0));
    char v[8] = {};
    EXPECT_EQ(::lgetxattr((d / "opt").c_str(), "user.overlay.opaque", v, sizeof v), 1);
    EXPECT_EQ(read_file(d / "opt/new"), "n");
    struct stat a, b;
    ASSERT_EQ(::lstat((d / "bin/hard").c_str(), &a), 0);
    ASSERT_EQ(::lstat((d / "etc/passwd").c_str(), &b), 0);
    EXPECT_EQ(a.st_ino, b.st_ino);
    ASSERT_EQ(::lstat((d / "x").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 04755u);
    EXPECT_EQ(::lgetxattr((d / "x").c_str(), "user.keep", v, sizeof v), 1);
    EXPECT_LT(::lgetxattr((d / "x").c_str(), "user.overlay.opaque", v, sizeof v), 0);
    EXPECT_LT(::lgetxattr((d / "x").c_str(), "trusted.x", v, sizeof v), 0);
  }
}

TEST_F(UnpackTest, WhiteoutAndDirInOneLayerMeansReplaced) {
  fs::path d = unpack("l", make_tar({{.name = ".wh.etc"},
                                     {.name = "etc/", .type = AE_IFDIR, .perm = 0755},
                                     {.name = "etc/only", .content = "o"}}));
  char v[8] = {};
  EXPECT_EQ(::lgetxattr((d / "etc").c_str(), "user.overlay.opaque", v, sizeof v), 1);
}

TEST_F(UnpackTest, HostileLayersAreRefusedAndWriteNothingOutside) {
  fs::path outside = root_ / "outside";
  make_dirs(outside);
  EXPECT_EQ(unpack_status("a", make_tar({{.name = "../outside/evil", .content = "x"}})), 422);
  EXPECT_EQ(unpack_status("b", make_tar({{.name = "/outside/evil", .content = "x"}})), 422);
  EXPECT_EQ(
      unpack_status("c", make_tar({{.name = "link", .type = AE_IFLNK, .link = outside.string()},
                                   {.name = "link/evil", .content = "x"}})),
      422);
  EXPECT_EQ(unpack_status("d", make_tar({{.name = "rel", .type = AE_IFLNK, .link = "../outside"},
                                         {.name = "rel/evil", .content = "x"}})),
            422);
  EXPECT_EQ(unpack_status("e", make_tar({{.name = "h", .hardlink = "../outside/f"}})), 422);
  EXPECT_EQ(unpack_status("f", make_tar({{.name = "big", .content = "x", .uid = 70000}})), 422);
  EXPECT_EQ(unpack_status("g", make_tar({{.name = "link", .type = AE_IFLNK, .link = "/"},
                                         {.name = "link/.wh.etc"}})),
            422);
  EXPECT_TRUE(fs::is_empty(outside));
  EXPECT_FALSE(fs::exists(root_ / "evil"));
}

// Issue #12 item 1: a device node in a layer would be a host device (the gVisor runtime mounts
// image content in the host's namespaces). Only the 0:0 whiteout is kept.
TEST_F(UnpackTest, DeviceNodesAreSkippedAndReported) {
  UnpackStats st = unpack_with(
      "l",
      make_tar({{.name = "etc/", .type = AE_IFDIR, .perm = 0755},
                {.name = "etc/app.conf", .type = AE_IFCHR, .perm = 0666, .rdev = makedev(1, 7)},
                {.name = "disk", .type = AE_IFBLK, .perm = 0660, .rdev = makedev(8, 0)},
                {.name = "gone", .type = AE_IFCHR, .perm = 0, .rdev = makedev(0, 0)},
                {.name = "ok", .content = "fine"}}),
      {});
  fs::path d = root_ / "l";
  struct stat sb;
  EXPECT_NE(::lstat((d / "etc/app.conf").c_str(), &sb), 0);
  EXPECT_NE(::lstat((d / "disk").c_str(), &sb), 0);
  ASSERT_EQ(::lstat((d / "gone").c_str(), &sb), 0);
  EXPECT_TRUE(S_ISCHR(sb.st_mode) && sb.st_rdev == makedev(0, 0));
  EXPECT_EQ(sb.st_uid, 100000u);
  EXPECT_EQ(read_file(d / "ok"), "fine");
  EXPECT_EQ(st.skipped_count, 2u);
  ASSERT_EQ(st.skipped.size(), 2u);
  EXPECT_EQ(st.skipped[0], "/etc/app.conf (a character device)");
  EXPECT_EQ(st.skipped[1], "/disk (a block device)");
}

// Issue #12 item 2 (reproduced on the old code, which cached "a" as checked before skipping
// its .wh..wh.plnk entry, then created outside/x through the symlink a): every write is
// resolved beneath the layer by the kernel, so the order of entries cannot matter.
TEST_F(UnpackTest, SkippedEntryDoesNotVouchForALaterSymlink) {
  fs::path outside = root_ / "outside";
  make_dirs(outside);
  EXPECT_EQ(unpack_status("a", make_tar({{.name = "a/.wh..wh.plnk"},
                                         {.name = "a", .type = AE_IFLNK, .link = outside.string()},
                                         {.name = "a/x/.wh.y"}})),
            422);
  EXPECT_EQ(unpack_status("b", make_tar({{.name = "a/sock", .type = AE_IFSOCK},
                                         {.name = "a", .type = AE_IFLNK, .link = outside.string()},
                                         {.name = "a/x/f", .content = "evil"}})),
            422);
  EXPECT_EQ(unpack_status("c", make_tar({{.name = "a/", .type = AE_IFDIR, .perm = 0755},
                                         {.name = "a/f", .content = "1"},
                                         {.name = "a", .type = AE_IFLNK, .link = outside.string()},
                                         {.name = "a/.wh..wh..opq"}})),
            422);
  EXPECT_EQ(unpack_status("d", make_tar({{.name = "a/", .type = AE_IFDIR, .perm = 0755},
                                         {.name = "a", .type = AE_IFLNK, .link = outside.string()},
                                         {.name = "a/hard", .hardlink = "etc/passwd"}})),
            422);
  EXPECT_TRUE(fs::is_empty(outside));
  char v[8];
  EXPECT_LT(::lgetxattr(outside.c_str(), "user.overlay.opaque", v, sizeof v), 0);
}

TEST_F(UnpackTest, HardLinksStayInsideAndNeverReachWhiteouts) {
  EXPECT_EQ(unpack_status("a", make_tar({{.name = ".wh.gone"}, {.name = "h", .hardlink = "gone"}})),
            422);
  EXPECT_EQ(unpack_status("b", make_tar({{.name = "d/", .type = AE_IFDIR, .perm = 0755},
                                         {.name = "h", .hardlink = "d"}})),
            422);
  // A hard link to a symlink links the symlink itself.
  fs::path d = unpack("c", make_tar({{.name = "s", .type = AE_IFLNK, .link = "/etc/passwd"},
                                     {.name = "h", .hardlink = "s"}}));
  EXPECT_EQ(fs::read_symlink(d / "h"), "/etc/passwd");
}

// Issue #12 item 5: caps on what a layer expands to, by apparent size and entry count.
TEST_F(UnpackTest, DecompressionBombsHitTheCaps) {
  UnpackOptions opt;
  opt.max_bytes = 1000;
  std::string big(4000, '\0');
  EXPECT_EQ(
      status_of([&] { unpack_with("a", make_tar({{.name = "z", .content = big}}, "gzip"), opt); }),
      413);
  // A header that claims a huge size (8 GiB, as a sparse file would) counts by that size, before
  // any data is read: patch the first ustar header's size field and checksum.
  std::string lying = make_tar({{.name = "z", .content = "x"}});
  std::memcpy(&lying[124], "77777777777", 11);
  std::memset(&lying[148], ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) sum += static_cast<unsigned char>(lying[i]);
  std::snprintf(&lying[148], 8, "%06o", sum);
  EXPECT_EQ(status_of([&] { unpack_with("b", lying, opt); }), 413);
  opt = {};
  opt.max_entries = 10;
  std::vector<TarEntry> many;
  for (int i = 0; i < 20; ++i) many.push_back({.name = "f" + std::to_string(i), .content = "x"});
  EXPECT_EQ(status_of([&] { unpack_with("c", make_tar(many), opt); }), 413);
  opt.max_entries = 20;
  EXPECT_EQ(unpack_with("d", make_tar(many), opt).entries, 20u);
}

TEST_F(UnpackTest, SymlinkPlantedByALowerLayerIsRefused) {
  fs::path l0 = unpack("l0", make_tar({{.name = "etc", .type = AE_IFLNK, .link = "/host/etc"}}));
  store::LayerView lower({l0}, 100000);
  EXPECT_EQ(unpack_status("l1", make_tar({{.name = "etc/passwd", .content = "x"}}), &lower), 422);
  // Replacing the symlink itself is fine.
  EXPECT_EQ(
      unpack_status("l2", make_tar({{.name = "etc/", .type = AE_IFDIR, .perm = 0755}}), &lower), 0);
}

// A layer that changes a directory's contents without describing the directory itself keeps
// the lower layer's attributes for it (found by the OCI integration tests: /data lost 0750).
TEST_F(UnpackTest, ImplicitDirectoryKeepsLowerAttributes) {
  fs::path l0 = unpack(
      "l0", make_tar({{.name = "data/", .type = AE_IFDIR, .uid = 1000, .gid = 1000, .perm = 0750},
                      {.name = "data/gone", .content = "g"}}));
  store::LayerView lower({l0}, 100000);
  fs::path l1 = root_ / "l1";
  make_dirs(l1);
  fs::path file = root_ / "l1.tar";
  write_file_atomic(
      file, make_tar({{.name = "data/.wh.gone"}, {.name = "data/sub/new", .content = "n"}}), false);
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  UnpackOptions opt;
  opt.lower = &lower;
  // Issue #12 item 9: such a layer's content depends on the layers below, and says so (the
  // importer then keys it by them too, so that another stack never reuses it).
  EXPECT_TRUE(unpack_layer(fd.get(), l1, opt).depends_on_lower);
  EXPECT_FALSE(unpack_with("l2",
                           make_tar({{.name = "data/", .type = AE_IFDIR, .perm = 0750},
                                     {.name = "data/x", .content = "x"}}),
                           opt)
                   .depends_on_lower);
  struct stat st;
  ASSERT_EQ(::lstat((l1 / "data").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  EXPECT_EQ(st.st_uid, 101000u);
  ASSERT_EQ(::lstat((l1 / "data/sub").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(st.st_uid, 100000u);
}

TEST_F(UnpackTest, PackUnpackRoundTripIsFaithfulAndReproducible) {
  std::string tar = make_tar({{.name = "etc/", .type = AE_IFDIR, .perm = 0755},
                              {.name = "etc/.wh.gone"},
                              {.name = "etc/passwd", .content = "root\n", .uid = 5, .gid = 6},
                              {.name = "etc/hard", .hardlink = "etc/passwd"},
                              {.name = "opt/.wh..wh..opq"},
                              {.name = "opt/f", .content = "f", .perm = 0600},
                              {.name = "bin/sh", .type = AE_IFLNK, .link = "busybox"}});
  fs::path a = unpack("a", tar);
  PackedLayer p1 = pack_layer(a, root_ / "a1.tgz", 100000);
  PackedLayer p2 = pack_layer(a, root_ / "a2.tgz", 100000);
  EXPECT_EQ(p1.digest, p2.digest);
  EXPECT_EQ(p1.digest, "sha256:" + sha256_hex(read_file(p1.file)));
  EXPECT_NE(p1.digest, p1.diff_id);
  fs::path b = unpack("b", read_file(p1.file));
  // Compare the two directories entry by entry.
  std::vector<std::string> la, lb;
  for (auto& [dir, list] : {std::pair{a, &la}, std::pair{b, &lb}})
    for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
         ++it) {
      struct stat st;
      ASSERT_EQ(::lstat(it->path().c_str(), &st), 0);
      char v[8] = {};
      ssize_t opq = ::lgetxattr(it->path().c_str(), "user.overlay.opaque", v, sizeof v);
      list->push_back(fmt::format("{} {:o} {}:{} {} {} {}", fs::relative(it->path(), dir).string(),
                                  st.st_mode, st.st_uid, st.st_gid,
                                  S_ISREG(st.st_mode) ? st.st_size : 0, st.st_nlink, opq));
    }
  std::sort(la.begin(), la.end());
  std::sort(lb.begin(), lb.end());
  EXPECT_EQ(la, lb);
  EXPECT_EQ(fs::read_symlink(b / "bin/sh"), "busybox");
}

}  // namespace
}  // namespace coppice::oci
