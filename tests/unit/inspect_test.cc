#include "inspect/inspect.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <map>

#include "common/error.h"
#include "common/fsutil.h"
#include "layer_fixture.h"

namespace coppice::inspect {
namespace {

namespace fs = std::filesystem;
using store::LayerView;

constexpr uid_t kShift = 100000;

// Two layers (l0 on top of l1) holding a small image with its own /etc/passwd and /etc/group.
class InspectTest : public coppice::testing::LayerFixture {
 protected:
  void SetUp() override {
    make_layers(2, "coppice-inspect", "HOST SECRET canary\n");
    file(1, "etc/passwd",
         "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n");
    file(1, "etc/group", "root:x:0:\nstaff:x:50:alice\n");
    file(1, "etc/hosts", "127.0.0.1 localhost\n");
    file(0, "etc/hostname", "box\n");
    file(1, "usr/bin/python3", std::string(5000, 'p'), 0755);
    link(0, "bin", "usr/bin");
    link(0, "usr/bin/python", "/usr/bin/python3");
    file(1, "home/alice/notes.txt", "hello\n");
    own("home/alice/notes.txt", 1, kShift + 1000, kShift + 50);
    own("home/alice", 1, kShift + 1000, kShift + 1000);
    own("etc/passwd", 1, kShift, kShift);
    own("etc/group", 1, kShift, kShift);
    own("etc/hosts", 1, kShift, kShift);
    own("etc/hostname", 0, kShift, kShift);
    own("etc", 0, kShift, kShift);
    own("etc", 1, kShift, kShift);
    own("bin", 0, kShift, kShift);
  }

  void own(const std::string& rel, int layer, uid_t u, gid_t g) {
    auto p = layers_[layer] / rel;
    if (!fs::exists(fs::symlink_status(p))) make_dirs(p);
    ASSERT_EQ(::lchown(p.c_str(), u, g), 0) << p;
  }

  LayerView view() const { return LayerView(layers_, kShift); }
  static const nlohmann::json* find(const nlohmann::json& files, const std::string& name) {
    for (const auto& f : files)
      if (f["path"] == name) return &f;
    return nullptr;
  }
};

// --- list ------------------------------------------------------------------------------------

TEST_F(InspectTest, ListJsonFields) {
  auto v = view();
  auto j = list_json(v, "/home/alice");
  EXPECT_EQ(j["path"], "/home/alice");
  ASSERT_EQ(j["files"].size(), 1u);
  const auto& f = j["files"][0];
  EXPECT_EQ(f.size(), 15u);
  EXPECT_EQ(f["path"], "notes.txt");
  EXPECT_EQ(f["size"], 6);
  EXPECT_EQ(f["owner"], "alice");
  EXPECT_EQ(f["group"], "staff");
  EXPECT_EQ(f["uid"], 1000);
  EXPECT_EQ(f["gid"], 50);
  EXPECT_EQ(f["mode"], 0100644);
  EXPECT_EQ(f["nlink"], 1);
  EXPECT_EQ(f["is_dir"], false);
  EXPECT_EQ(f["is_regular"], true);
  EXPECT_EQ(f["is_symlink"], false);
  EXPECT_EQ(f["is_socket"], false);
  EXPECT_EQ(f["is_fifo"], false);
  EXPECT_EQ(f["symlink_to"], "");
  EXPECT_GT(f["mtime"].get<int64_t>(), 1600000000);

  auto root = list_json(v, "/");
  const auto* bin = find(root["files"], "bin");
  ASSERT_TRUE(bin);
  EXPECT_EQ((*bin)["is_symlink"], true);
  EXPECT_EQ((*bin)["symlink_to"], "usr/bin");
  EXPECT_EQ((*bin)["owner"], "root");
  const auto* etc = find(root["files"], "etc");
  ASSERT_TRUE(etc);
  EXPECT_EQ((*etc)["is_dir"], true);
  EXPECT_EQ((*etc)["mode"], 040755);
  // Unknown ids are numbers as strings.
  own("home/alice/notes.txt", 1, kShift + 4242, kShift + 4343);
  auto f2 = list_json(v, "/home/alice")["files"][0];
  EXPECT_EQ(f2["owner"], "4242");
  EXPECT_EQ(f2["group"], "4343");
}

TEST_F(InspectTest, ListFollowsSymlinkAndMergesLayers) {
  auto v = view();
  auto j = list_json(v, "/bin");
  EXPECT_EQ(j["path"], "/bin");
  std::vector<std::string> names;
  for (const auto& f : j["files"]) names.push_back(f["path"]);
  EXPECT_EQ(names, (std::vector<std::string>{"python", "python3"}));
  names.clear();
  auto etc = list_json(v, "/etc");
  for (const auto& f : etc["files"]) names.push_back(f["path"]);
  EXPECT_EQ(names, (std::vector<std::string>{"group", "hostname", "hosts", "passwd"}));
  EXPECT_EQ(status_of([&] { list_json(v, "/nope"); }), 404);
  EXPECT_EQ(status_of([&] { list_json(v, "/etc/hosts"); }), 422);
  EXPECT_EQ(status_of([&] { list_json(v, "etc"); }), 400);
}

TEST_F(InspectTest, NonUtf8NamesAndContentStaySerializable) {
  file(0, "odd/bad\xff\xfename", "caf\xe9 latin1 needle\n");
  auto v = view();
  auto j = list_json(v, "/odd");
  EXPECT_NO_THROW(j.dump());
  EXPECT_EQ(j["files"][0]["path"], "bad\xEF\xBF\xBD\xEF\xBF\xBDname");
  GrepQuery q;
  q.patterns = {"needle"};
  q.paths = {"/odd"};
  auto r = grep(v, q);
  EXPECT_NO_THROW(r.dump());
  ASSERT_EQ(r["matches"].size(), 1u);
  EXPECT_EQ(r["matches"][0]["submatches"][0]["start"], 12);  // byte offsets in the raw line
  EXPECT_EQ(r["matches"][0]["line_bytes"], 18);
}

TEST_F(InspectTest, ListText) {
  auto v = view();
  std::string t = list_text(v, "/usr/bin");
  EXPECT_EQ(t.substr(0, 6), "total ");
  EXPECT_NE(t.find("lrwxrwxrwx"), std::string::npos) << t;
  EXPECT_NE(t.find(" python -> /usr/bin/python3\n"), std::string::npos) << t;
  EXPECT_NE(t.find("-rwxr-xr-x 1 root root 4.88 KB "), std::string::npos) << t;
  EXPECT_NE(t.find("16 B "), std::string::npos) << t;
  std::string home = list_text(v, "/home/alice");
  EXPECT_NE(home.find("-rw-r--r-- 1 alice staff 6 B "), std::string::npos) << home;
  EXPECT_EQ(std::count(t.begin(), t.end(), '\n'), 3);
  // Stable: same input, same text.
  EXPECT_EQ(t, list_text(v, "/bin"));
  EXPECT_EQ(status_of([&] { list_text(v, "/etc/hosts"); }), 422);
}

// --- download --------------------------------------------------------------------------------

TEST_F(InspectTest, Download) {
  auto v = view();
  auto h = open_download(v, "/etc/hosts");
  EXPECT_EQ(h.size, 20u);
  char buf[64];
  ssize_t n = ::read(h.fd.get(), buf, sizeof buf);
  EXPECT_EQ(std::string(buf, n), "127.0.0.1 localhost\n");
  auto py = open_download(v, "/bin/python");  // two symlinks
  EXPECT_EQ(py.size, 5000u);
  EXPECT_EQ(status_of([&] { open_download(v, "/etc"); }), 422);
  EXPECT_EQ(status_of([&] { open_download(v, "/etc/missing"); }), 404);
  ASSERT_EQ(::mkfifo((layers_[0] / "fifo").c_str(), 0600), 0);
  EXPECT_EQ(status_of([&] { open_download(v, "/fifo"); }), 422);
  EXPECT_TRUE(exists(v, "/etc/hosts"));
  EXPECT_TRUE(exists(v, "/bin/python"));
  EXPECT_FALSE(exists(v, "/etc/missing"));
  EXPECT_FALSE(exists(v, "relative"));
  // A link to a host path resolves inside the image.
  link(0, "leak", canary_.string());
  EXPECT_EQ(status_of([&] { open_download(v, "/leak"); }), 404);
  whiteout(0, "etc/hosts");
  EXPECT_FALSE(exists(v, "/etc/hosts"));
}

// --- archive ---------------------------------------------------------------------------------

struct Member {
  std::string type;  // "file", "dir", "symlink", "hardlink", "other"
  std::string data, link, uname, gname;
  int64_t uid = -1, gid = -1;
  mode_t perm = 0;
};

std::map<std::string, Member> read_tar(const std::string& tar) {
  std::map<std::string, Member> out;
  struct archive* a = archive_read_new();
  archive_read_support_format_tar(a);
  EXPECT_EQ(archive_read_open_memory(a, tar.data(), tar.size()), ARCHIVE_OK);
  struct archive_entry* e;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    Member m;
    if (archive_entry_hardlink(e)) {
      m.type = "hardlink";
      m.link = archive_entry_hardlink(e);
    } else if (archive_entry_filetype(e) == AE_IFREG) {
      m.type = "file";
    } else if (archive_entry_filetype(e) == AE_IFDIR) {
      m.type = "dir";
    } else if (archive_entry_filetype(e) == AE_IFLNK) {
      m.type = "symlink";
      m.link = archive_entry_symlink(e);
    } else {
      m.type = "other";
    }
    m.uid = archive_entry_uid(e);
    m.gid = archive_entry_gid(e);
    m.perm = archive_entry_perm(e);
    if (archive_entry_uname(e)) m.uname = archive_entry_uname(e);
    if (archive_entry_gname(e)) m.gname = archive_entry_gname(e);
    char buf[8192];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0) m.data.append(buf, n);
    out[archive_entry_pathname(e)] = m;
  }
  archive_read_free(a);
  return out;
}

TEST_F(InspectTest, ArchiveRoundTrip) {
  // A big file (several 64 KiB blocks) and a hard link inside the subtree.
  std::string big;
  for (int i = 0; i < 50000; ++i) big += std::to_string(i) + ",";
  file(0, "etc/big", big);
  ASSERT_EQ(::link((layers_[0] / "etc/big").c_str(), (layers_[0] / "etc/big2").c_str()), 0);
  link(0, "etc/localtime", "/usr/share/zoneinfo/UTC");
  ASSERT_EQ(::setxattr((layers_[1] / "etc/hosts").c_str(), "user.overlay.origin", "", 0, 0), 0);
  auto v = view();
  std::string tar;
  size_t chunks = 0;
  write_archive(v, "/etc", [&](std::string_view c) {
    tar.append(c);
    ++chunks;
  });
  EXPECT_GT(chunks, 1u);
  auto m = read_tar(tar);
  std::vector<std::string> names;
  for (const auto& [k, _] : m) names.push_back(k);
  EXPECT_EQ(names,
            (std::vector<std::string>{"etc/", "etc/big", "etc/big2", "etc/group", "etc/hostname",
                                      "etc/hosts", "etc/localtime", "etc/passwd"}));
  EXPECT_EQ(m["etc/"].type, "dir");
  EXPECT_EQ(m["etc/hosts"].data, "127.0.0.1 localhost\n");
  EXPECT_EQ(m["etc/hosts"].uid, 0);
  EXPECT_EQ(m["etc/hosts"].uname, "root");
  EXPECT_EQ(m["etc/hosts"].gname, "root");
  EXPECT_EQ(m["etc/hosts"].perm, 0644u);
  EXPECT_EQ(m["etc/hostname"].data, "box\n");
  EXPECT_EQ(m["etc/big"].data, big);
  EXPECT_EQ(m["etc/big2"].type, "hardlink");
  EXPECT_EQ(m["etc/big2"].link, "etc/big");
  EXPECT_EQ(m["etc/localtime"].type, "symlink");
  EXPECT_EQ(m["etc/localtime"].link, "/usr/share/zoneinfo/UTC");

  // Whole image: no member for the root, no leading slashes; a single file.
  tar.clear();
  write_archive(v, "/", [&](std::string_view c) { tar.append(c); });
  m = read_tar(tar);
  EXPECT_TRUE(m.count("bin"));
  EXPECT_EQ(m["bin"].type, "symlink");
  EXPECT_TRUE(m.count("home/alice/notes.txt"));
  EXPECT_EQ(m["home/alice/notes.txt"].uname, "alice");
  EXPECT_EQ(m["home/alice/notes.txt"].gname, "staff");
  EXPECT_EQ(m["home/alice/notes.txt"].uid, 1000);
  for (const auto& [k, _] : m) EXPECT_NE(k[0], '/') << k;
  tar.clear();
  write_archive(v, "/etc/hostname", [&](std::string_view c) { tar.append(c); });
  m = read_tar(tar);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m["etc/hostname"].data, "box\n");
  // Intermediate symlinks are followed: /bin/python3 is /usr/bin/python3.
  tar.clear();
  write_archive(v, "/bin/python3", [&](std::string_view c) { tar.append(c); });
  m = read_tar(tar);
  EXPECT_EQ(m["usr/bin/python3"].data.size(), 5000u);
  // Missing: 404 before any output.
  tar.clear();
  EXPECT_EQ(
      status_of([&] { write_archive(v, "/nope", [&](std::string_view c) { tar.append(c); }); }),
      404);
  EXPECT_TRUE(tar.empty());
  // A failing sink stops the archive with the sink's exception.
  EXPECT_THROW(write_archive(v, "/", [](std::string_view) { throw std::runtime_error("gone"); }),
               std::runtime_error);
}

// --- grep ------------------------------------------------------------------------------------

class InspectGrepTest : public InspectTest {
 protected:
  void SetUp() override {
    InspectTest::SetUp();
    file(0, "src/a.py", "import os\nprint('Hello')\nx = 1\nhello = 2\nend\n");
    file(0, "src/b.txt", "nothing here\nHELLO world hello\n");
    file(0, "src/deep/c.py", "l1\nl2\nhello\nl4\nl5\nl6\nhello\nl8");
    file(0, "src/bin.dat", std::string("hello\0binary\n", 13));
    link(0, "src/link.py", "a.py");
  }
  static std::vector<std::string> where(const nlohmann::json& r, const char* type = "match") {
    std::vector<std::string> out;
    for (const auto& m : r["matches"])
      if (m["type"] == type)
        out.push_back(m["path"].get<std::string>() + ":" +
                      std::to_string(m["line_number"].get<int>()));
    return out;
  }
};

TEST_F(InspectGrepTest, MatchFieldsAndOffsets) {
  auto v = view();
  GrepQuery q;
  q.patterns = {"root"};
  q.paths = {"/etc/passwd"};
  auto r = grep(v, q);
  EXPECT_EQ(r["path"], "/etc/passwd");
  EXPECT_EQ(r["patterns"], nlohmann::json({"root"}));
  EXPECT_EQ(r["truncated"], false);
  ASSERT_EQ(r["matches"].size(), 1u);
  const auto& m = r["matches"][0];
  EXPECT_EQ(m["path"], "/etc/passwd");
  EXPECT_EQ(m["line_number"], 1);
  EXPECT_EQ(m["absolute_offset"], 0);
  EXPECT_EQ(m["line_text"], "root:x:0:0:root:/root:/bin/sh\n");
  EXPECT_EQ(m["line_bytes"], 29);
  EXPECT_EQ(m["type"], "match");
  EXPECT_EQ(m["submatches"], nlohmann::json::parse(R"([{"text":"root","start":0,"end":4},
               {"text":"root","start":11,"end":15},{"text":"root","start":17,"end":21}])"));
  q.patterns = {"alice"};
  r = grep(v, q);
  ASSERT_EQ(r["matches"].size(), 1u);
  EXPECT_EQ(r["matches"][0]["line_number"], 2);
  EXPECT_EQ(r["matches"][0]["absolute_offset"], 30);
  // Default path is the root; no match gives an empty list.
  q.paths.clear();
  q.patterns = {"no such text anywhere"};
  r = grep(v, q);
  EXPECT_EQ(r["path"], "/");
  EXPECT_TRUE(r["matches"].empty());
}

TEST_F(InspectGrepTest, PatternsCaseAndGlobs) {
  auto v = view();
  GrepQuery q;
  q.paths = {"/src"};
  q.patterns = {"hello"};
  EXPECT_EQ(where(grep(v, q)), (std::vector<std::string>{"/src/a.py:4", "/src/b.txt:2",
                                                         "/src/deep/c.py:3", "/src/deep/c.py:7"}));
  q.case_mode = "insensitive";
  EXPECT_EQ(where(grep(v, q)),
            (std::vector<std::string>{"/src/a.py:2", "/src/a.py:4", "/src/b.txt:2",
                                      "/src/deep/c.py:3", "/src/deep/c.py:7"}));
  auto r = grep(v, q);
  EXPECT_EQ(r["matches"][2]["submatches"].size(), 2u);  // HELLO and hello on one line
  q.case_mode = "smart";
  EXPECT_EQ(where(grep(v, q)).size(), 5u);  // all lower case: insensitive
  q.patterns = {"Hello"};
  EXPECT_EQ(where(grep(v, q)), (std::vector<std::string>{"/src/a.py:2"}));  // sensitive
  q.patterns = {"\\Sello"};  // an escape is not an upper-case letter
  EXPECT_EQ(where(grep(v, q)).size(), 5u);
  q.case_mode = "sensitive";
  q.patterns = {"^import", "x = \\d"};
  EXPECT_EQ(where(grep(v, q)), (std::vector<std::string>{"/src/a.py:1", "/src/a.py:3"}));
  q.patterns = {"hello"};
  q.globs = {"*.py"};
  EXPECT_EQ(where(grep(v, q)),
            (std::vector<std::string>{"/src/a.py:4", "/src/deep/c.py:3", "/src/deep/c.py:7"}));
  q.globs = {"/src/deep/*"};
  EXPECT_EQ(where(grep(v, q)), (std::vector<std::string>{"/src/deep/c.py:3", "/src/deep/c.py:7"}));
  q.globs = {"*.py", "!c.py"};
  EXPECT_EQ(where(grep(v, q)), (std::vector<std::string>{"/src/a.py:4"}));
  // Bad input: 400.
  q.globs.clear();
  q.patterns = {"("};
  EXPECT_EQ(status_of([&] { grep(v, q); }), 400);
  q.patterns = {};
  EXPECT_EQ(status_of([&] { grep(v, q); }), 400);
  q.patterns = {"x"};
  q.case_mode = "weird";
  EXPECT_EQ(status_of([&] { grep(v, q); }), 400);
  q.case_mode = "sensitive";
  q.paths = {"/missing"};
  EXPECT_EQ(status_of([&] { grep(v, q); }), 404);
}

TEST_F(InspectGrepTest, ContextAndLimits) {
  auto v = view();
  GrepQuery q;
  q.paths = {"/src/deep/c.py"};
  q.patterns = {"hello"};
  q.before = 1;
  q.after = 2;
  auto r = grep(v, q);
  std::vector<std::string> seq;
  for (const auto& m : r["matches"])
    seq.push_back(m["type"].get<std::string>() + std::to_string(m["line_number"].get<int>()));
  EXPECT_EQ(seq, (std::vector<std::string>{"context2", "match3", "context4", "context5", "context6",
                                           "match7", "context8"}));
  EXPECT_EQ(r["matches"][0]["submatches"], nlohmann::json::array());
  EXPECT_EQ(r["matches"][6]["line_text"], "l8");  // last line without a newline
  EXPECT_EQ(r["matches"][6]["line_bytes"], 2);
  EXPECT_EQ(r["matches"][6]["absolute_offset"], 27);
  // Overlapping windows produce no duplicates.
  q.before = 5;
  q.after = 5;
  r = grep(v, q);
  EXPECT_EQ(r["matches"].size(), 8u);
  // max_count per file.
  q.before = q.after = 0;
  q.paths = {"/src"};
  q.max_count = 1;
  EXPECT_EQ(where(grep(v, q)),
            (std::vector<std::string>{"/src/a.py:4", "/src/b.txt:2", "/src/deep/c.py:3"}));
  // max_total overall.
  q.max_count.reset();
  q.max_total = 2;
  r = grep(v, q);
  EXPECT_EQ(r["matches"].size(), 2u);
  EXPECT_EQ(r["truncated"], true);
  q.max_total = 4;  // exactly as many as there are: not truncated
  r = grep(v, q);
  EXPECT_EQ(r["matches"].size(), 4u);
  EXPECT_EQ(r["truncated"], false);
}

TEST_F(InspectGrepTest, SkipsBinaryAndSymlinksStaysInImage) {
  // The canary is outside the image; a link to it must never be read.
  link(0, "src/host.txt", canary_.string());
  link(0, "src/hostdir", root_.string());
  auto v = view();
  GrepQuery q;
  q.patterns = {"hello", "canary", "import"};
  q.paths = {"/"};
  auto r = grep(v, q);
  for (const auto& m : r["matches"]) {
    std::string p = m["path"];
    EXPECT_NE(p, "/src/bin.dat");
    EXPECT_NE(p, "/src/link.py");
    EXPECT_EQ(p.find("host"), std::string::npos) << p;
    EXPECT_EQ(m["line_text"].get<std::string>().find("SECRET"), std::string::npos);
  }
  EXPECT_EQ(where(r),
            (std::vector<std::string>{"/home/alice/notes.txt:1", "/src/a.py:1", "/src/a.py:4",
                                      "/src/b.txt:2", "/src/deep/c.py:3", "/src/deep/c.py:7"}));
  // Naming the link as a path resolves it inside the image: the host file is not there.
  q.paths = {"/src/host.txt"};
  EXPECT_EQ(status_of([&] { grep(v, q); }), 404);
}

TEST_F(InspectGrepTest, LongLinesAndManyLines) {
  std::string data;
  for (int i = 0; i < 200000; ++i) data += "line " + std::to_string(i) + "\n";
  data += std::string(3 << 20, 'a') + "needle\n";  // beyond the searched prefix of a line
  data += "needle at the end\n";
  file(0, "big/log", data);
  auto v = view();
  GrepQuery q;
  q.patterns = {"needle", "^line 199999$"};
  q.paths = {"/big"};
  auto r = grep(v, q);
  ASSERT_EQ(r["matches"].size(), 2u);
  EXPECT_EQ(r["matches"][0]["line_number"], 200000);
  EXPECT_EQ(r["matches"][1]["line_number"], 200002);
  EXPECT_EQ(r["matches"][1]["absolute_offset"], data.size() - 18);
}

TEST_F(InspectGrepTest, LongLinesAreCutAndMarked) {
  std::string longline = std::string(10000, 'x') + "needle" + std::string(10000, 'y');
  file(0, "cut/a.txt", "short needle\n" + longline + "\n" + std::string(2 << 20, 'z') + "needle\n");
  auto v = view();
  GrepQuery q;
  q.patterns = {"needle", "^z"};
  q.paths = {"/cut"};
  q.max_line_bytes = 100;
  auto r = grep(v, q);
  ASSERT_EQ(r["matches"].size(), 3u);
  EXPECT_EQ(r["matches"][0]["line_text"], "short needle\n");
  EXPECT_EQ(r["matches"][0]["line_truncated"], false);
  const auto& m = r["matches"][1];
  EXPECT_EQ(m["line_truncated"], true);
  EXPECT_EQ(m["line_text"], std::string(100, 'x'));  // no newline on a cut line
  EXPECT_EQ(m["line_bytes"], longline.size());       // the whole line's length
  EXPECT_TRUE(m["submatches"].empty());              // the match lies past the cut
  // A line longer than the searched prefix (1 MiB) still reports its whole length.
  const auto& z = r["matches"][2];
  EXPECT_EQ(z["line_truncated"], true);
  EXPECT_EQ(z["line_bytes"], (2 << 20) + 6);
  ASSERT_EQ(z["submatches"].size(), 1u);
  EXPECT_EQ(z["submatches"][0]["start"], 0);
  EXPECT_EQ(r["truncated"], false);
  EXPECT_TRUE(r["truncated_reason"].is_null());
  // A cut never splits a UTF-8 sequence.
  file(0, "cut/u.txt", "\xc3\xa9\xc3\xa9 needle\n");
  q.paths = {"/cut/u.txt"};
  q.max_line_bytes = 3;
  r = grep(v, q);
  ASSERT_EQ(r["matches"].size(), 1u);
  EXPECT_EQ(r["matches"][0]["line_text"], "\xc3\xa9");
}

TEST_F(InspectGrepTest, AnswerStaysUnderItsByteBudget) {
  std::string many;
  for (int i = 0; i < 20000; ++i) many += "match number " + std::to_string(i) + "\n";
  file(0, "many/log", many);
  auto v = view();
  GrepQuery q;
  q.patterns = {"match"};
  q.paths = {"/many"};
  q.max_total = 100000;
  q.before = 2;
  q.max_bytes = kMinResponseBytes;
  std::string raw = grep_response(v, q);
  EXPECT_LE(raw.size(), static_cast<size_t>(kMinResponseBytes));
  auto r = nlohmann::json::parse(raw);
  EXPECT_EQ(r["truncated"], true);
  EXPECT_EQ(r["truncated_reason"], "max_bytes");
  EXPECT_GT(r["matches"].size(), 100u);
  EXPECT_LT(r["matches"].size(), 20000u);
  q.max_total = 10;
  r = grep(v, q);
  EXPECT_EQ(r["truncated_reason"], "max_total");
  q.max_bytes = 1000;  // below the minimum
  EXPECT_EQ(status_of([&] { grep(v, q); }), 400);
  q.max_bytes = 1 << 20;
  q.max_line_bytes = 0;
  EXPECT_EQ(status_of([&] { grep(v, q); }), 400);
}

TEST_F(InspectTest, ListingsArePagedAndCut) {
  for (int i = 0; i < 3000; ++i) file(1, fmt::format("big/f{:05}", i), "");
  file(0, "big/f00007", "top");  // the upper layer shadows one name
  auto v = view();
  auto all = list_json(v, "/big");
  EXPECT_EQ(all["files"].size(), 3000u);
  EXPECT_EQ(all["truncated"], false);
  EXPECT_TRUE(all["next_offset"].is_null());
  ListOptions o;
  o.offset = 100;
  o.limit = 50;
  auto page = list_json(v, "/big", o);
  ASSERT_EQ(page["files"].size(), 50u);
  EXPECT_EQ(page["files"][0]["path"], "f00100");
  EXPECT_EQ(page["truncated"], true);
  EXPECT_EQ(page["truncated_reason"], "limit");
  EXPECT_EQ(page["next_offset"], 150);
  // The byte budget: the answer holds what fits, and says where to go on.
  o = {};
  o.max_bytes = kMinResponseBytes;
  std::string raw = list_response(v, "/big", o);
  EXPECT_LE(raw.size(), static_cast<size_t>(kMinResponseBytes));
  auto cut = nlohmann::json::parse(raw);
  EXPECT_EQ(cut["truncated_reason"], "max_bytes");
  size_t got = cut["files"].size();
  EXPECT_GT(got, 10u);
  EXPECT_LT(got, 3000u);
  EXPECT_EQ(cut["next_offset"], got);
  // Directories with more names than a listing reads are cut too.
  o = {};
  o.max_names = 1000;
  auto capped = list_json(v, "/big", o);
  EXPECT_EQ(capped["files"].size(), 1000u);
  EXPECT_EQ(capped["truncated_reason"], "max_entries");
  // Text listings are cut the same way and end with a note.
  o = {};
  o.max_bytes = kMinResponseBytes;
  std::string text = list_text(v, "/big", o);
  EXPECT_LE(text.size(), static_cast<size_t>(kMinResponseBytes));
  EXPECT_NE(text.find("# truncated (max_bytes): more entries from offset="), std::string::npos);
  o = {};
  o.limit = 2;
  text = list_text(v, "/big", o);
  EXPECT_NE(text.find("f00001\n# truncated (limit): more entries from offset=2\n"),
            std::string::npos)
      << text;
  o.offset = -1;
  EXPECT_EQ(status_of([&] { list_json(v, "/big", o); }), 400);
}

}  // namespace
}  // namespace coppice::inspect
