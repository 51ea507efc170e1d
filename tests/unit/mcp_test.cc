// The MCP server's local boundary: the file root (file_root.h) and the HTTP guard
// (http_guard.h).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "error_status.h"
#include "mcp/file_root.h"
#include "mcp/http_guard.h"

namespace coppice::mcp {
namespace {

namespace fs = std::filesystem;

using coppice::testing::status_of;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

class FileRootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base = fs::path("/var/tmp") / ("mcp-root-" + new_uuid());
    root = base / "root";
    outside = base / "outside";
    fs::create_directories(root / "sub");
    fs::create_directories(outside);
    std::ofstream(root / "sub" / "in.txt") << "inside";
    std::ofstream(outside / "secret.txt") << "secret";
    fs::create_symlink(outside / "secret.txt", root / "link-out");
    fs::create_symlink("sub/in.txt", root / "link-in");
    fs::create_symlink(outside, root / "dir-out");
  }
  void TearDown() override { fs::remove_all(base); }
  fs::path base, root, outside;
};

TEST_F(FileRootTest, NamesAreMappedUnderTheRootOnly) {
  FileRoot r(root);
  EXPECT_EQ(r.path(), fs::canonical(root).string());
  EXPECT_EQ(r.relative(root.string()), ".");
  EXPECT_EQ(r.relative((root / "sub/in.txt").string()), "sub/in.txt");
  EXPECT_EQ(r.relative("sub/in.txt"), "sub/in.txt");
  EXPECT_EQ(status_of([&] { r.relative((outside / "secret.txt").string()); }), 403);
  EXPECT_EQ(status_of([&] { r.relative(root.string() + "-other/x"); }), 403);  // no prefix match
  EXPECT_EQ(status_of([&] { r.relative(""); }), 400);
  EXPECT_EQ(status_of([&] { r.relative(std::string("a\0b", 3)); }), 400);
}

TEST_F(FileRootTest, ReadsRefuseEscapesAndSymlinks) {
  FileRoot r(root);
  UniqueFd fd = r.open_file((root / "sub/in.txt").string());
  EXPECT_EQ(read_fd(fd.get(), "in.txt", 100), "inside");
  // Every way out: `..`, an absolute path elsewhere, a symlink (to outside, even to inside),
  // a directory symlink on the way.
  EXPECT_EQ(status_of([&] { r.open_file("../outside/secret.txt"); }), 403);
  EXPECT_EQ(status_of([&] { r.open_file("sub/../../outside/secret.txt"); }), 403);
  EXPECT_EQ(status_of([&] { r.open_file((outside / "secret.txt").string()); }), 403);
  EXPECT_EQ(status_of([&] { r.open_file("link-out"); }), 403);
  EXPECT_EQ(status_of([&] { r.open_file("link-in"); }), 403);
  EXPECT_EQ(status_of([&] { r.open_file("dir-out/secret.txt"); }), 403);
  EXPECT_EQ(status_of([&] { r.open_dir("dir-out"); }), 403);
  EXPECT_EQ(status_of([&] { r.open_file("missing"); }), 404);
  EXPECT_EQ(status_of([&] { r.open_file("sub"); }), 404);  // not a regular file
  // A FIFO is refused at once, not waited on.
  ASSERT_EQ(::mkfifo((root / "fifo").c_str(), 0644), 0);
  EXPECT_EQ(status_of([&] { r.open_file("fifo"); }), 404);
  EXPECT_EQ(status_of([&] { read_fd(r.open_file("sub/in.txt").get(), "in.txt", 3); }), 413);
}

TEST_F(FileRootTest, WritesStayUnderTheRootAndNeverFollowSymlinks) {
  FileRoot r(root);
  mode_t old = ::umask(022);
  EXPECT_EQ(r.write_file("new/deeper/a.txt", "A", 0644, "x"),
            (fs::canonical(root) / "new/deeper/a.txt").string());
  EXPECT_EQ(slurp(root / "new/deeper/a.txt"), "A");
  EXPECT_EQ(fs::status(root / "new/deeper/a.txt").permissions(), fs::perms(0644));
  // An existing directory gets the file under the given name; executable when asked.
  EXPECT_EQ(r.write_file((root / "sub").string(), "B", 0755, "tool"),
            (fs::canonical(root) / "sub/tool").string());
  EXPECT_EQ(fs::status(root / "sub/tool").permissions(), fs::perms(0755));
  // Replacing a regular file is atomic and leaves no temporary file behind.
  r.write_file("sub/in.txt", "replaced", 0644, "x");
  EXPECT_EQ(slurp(root / "sub/in.txt"), "replaced");
  for (const auto& e : fs::directory_iterator(root / "sub"))
    EXPECT_EQ(e.path().filename().string().find(".coppice-part"), std::string::npos);
  // Through a symlink (the target itself, or a directory on the way), outside, `..`: refused,
  // and nothing is written anywhere.
  EXPECT_EQ(status_of([&] { r.write_file("link-out", "pwned", 0644, "x"); }), 403);
  EXPECT_TRUE(fs::is_symlink(root / "link-out"));
  EXPECT_EQ(status_of([&] { r.write_file("dir-out/new.txt", "pwned", 0644, "x"); }), 403);
  EXPECT_EQ(status_of([&] { r.write_file("dir-out", "pwned", 0644, "x"); }), 403);
  EXPECT_EQ(status_of([&] { r.write_file((outside / "new.txt").string(), "pwned", 0644, "x"); }),
            403);
  EXPECT_EQ(status_of([&] { r.write_file("../outside/new.txt", "pwned", 0644, "x"); }), 403);
  EXPECT_EQ(status_of([&] { r.write_file("nope/../../outside/new.txt", "pwned", 0644, "x"); }),
            400);
  EXPECT_EQ(slurp(outside / "secret.txt"), "secret");
  EXPECT_FALSE(fs::exists(outside / "new.txt"));
  EXPECT_FALSE(fs::exists(root / "nope"));
  ::umask(old);
}

TEST(HttpGuard, HostAndOriginAreMatchedExactly) {
  HttpGuard g({"s3cret-s3cret-s3cret",
               "127.0.0.1",
               9452,
               {"mcp.example.com"},
               {"https://app.example.com/"}});
  for (const char* h :
       {"127.0.0.1:9452", "localhost:9452", "LOCALHOST:9452", "[::1]:9452", "mcp.example.com"})
    EXPECT_TRUE(g.host_allowed(h)) << h;
  for (const char* h :
       {"127.0.0.1", "127.0.0.1:9453", "127.0.0.1.rebind.example:9452", "evil.example:9452",
        "localhost.evil:9452", "127.0.0.2:9452", "mcp.example.com:9452", ""})
    EXPECT_FALSE(g.host_allowed(h)) << h;
  for (const char* o : {"http://127.0.0.1:9452", "http://localhost:9452", "http://[::1]:9452",
                        "https://app.example.com"})
    EXPECT_TRUE(g.origin_allowed(o)) << o;
  for (const char* o : {"http://127.0.0.1.rebind.example", "http://127.0.0.1.rebind.example:9452",
                        "http://localhost:3000", "http://127.0.0.1", "https://127.0.0.1:9452",
                        "null", "http://evil.example", "https://app.example.com.evil"})
    EXPECT_FALSE(g.origin_allowed(o)) << o;
}

TEST(HttpGuard, EveryRequestNeedsTheBearerAfterHostAndOrigin) {
  HttpGuard g({"s3cret-s3cret-s3cret", "127.0.0.1", 9452, {}, {}});
  const std::string host = "127.0.0.1:9452", good = "Bearer s3cret-s3cret-s3cret";
  EXPECT_FALSE(g.check(host, std::nullopt, good));
  EXPECT_FALSE(g.check(host, "http://localhost:9452", good));
  EXPECT_FALSE(g.check(host, std::nullopt, "bearer s3cret-s3cret-s3cret"));
  for (const char* bad :
       {"", "Bearer", "Bearer ", "Bearer s3cret-s3cret-s3cre", "Bearer s3cret-s3cret-s3cretX",
        "Basic s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret"}) {
    auto r = g.check(host, std::nullopt, bad);
    ASSERT_TRUE(r) << bad;
    EXPECT_EQ(r->status, 401) << bad;
    EXPECT_EQ(r->message.find("s3cret"), std::string::npos);
  }
  // A rebinding page is refused for its Host or Origin, token or not.
  EXPECT_EQ(g.check("127.0.0.1.rebind.example:9452", std::nullopt, good)->status, 403);
  EXPECT_EQ(g.check("evil.example:9452", std::nullopt, "")->status, 403);
  EXPECT_EQ(g.check(host, "http://127.0.0.1.rebind.example", good)->status, 403);
  EXPECT_EQ(g.check(host, "", good)->status, 403);  // present but empty is foreign too
  EXPECT_EQ(g.check("", std::nullopt, good)->status, 400);
}

TEST(HttpGuard, ListenAddressIsAnsweredAndSecretsAreChecked) {
  HttpGuard g({"s3cret-s3cret-s3cret", "10.1.2.3", 80, {}, {}});
  EXPECT_TRUE(g.host_allowed("10.1.2.3"));
  EXPECT_TRUE(g.host_allowed("10.1.2.3:80"));
  EXPECT_TRUE(g.origin_allowed("http://10.1.2.3"));
  HttpGuard any({"s3cret-s3cret-s3cret", "0.0.0.0", 9000, {}, {}});
  EXPECT_FALSE(any.host_allowed("0.0.0.0:9000"));
  EXPECT_TRUE(any.host_allowed("localhost:9000"));

  bool generated = false;
  ::unsetenv("COPPICE_MCP_TOKEN");
  std::string a = mcp_http_secret("", &generated);
  EXPECT_TRUE(generated);
  EXPECT_EQ(a.size(), 32u);
  EXPECT_NE(a, mcp_http_secret("", &generated));
  ::setenv("COPPICE_MCP_TOKEN", "short", 1);
  EXPECT_EQ(status_of([&] { mcp_http_secret("", &generated); }), 400);
  ::setenv("COPPICE_MCP_TOKEN", "0123456789abcdef0123", 1);
  EXPECT_EQ(mcp_http_secret("", &generated), "0123456789abcdef0123");
  EXPECT_FALSE(generated);
  fs::path f = fs::path("/var/tmp") / ("mcp-token-" + new_uuid());
  std::ofstream(f) << "from-the-file-0123456789\n";
  EXPECT_EQ(mcp_http_secret(f.string(), &generated), "from-the-file-0123456789");
  fs::remove(f);
  ::unsetenv("COPPICE_MCP_TOKEN");
}

}  // namespace
}  // namespace coppice::mcp
