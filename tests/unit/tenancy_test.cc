// The store's boundary towards local users and tenants: file modes, the sandbox id range and
// its check against /etc/subuid and /etc/subgid, tokens, project names, env redaction.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "engine/redact.h"
#include "engine/spawn_request.h"
#include "store/id_range.h"
#include "store/layer_store.h"
#include "store/meta_store.h"
#include "store/project_name.h"

namespace coppice::store {
namespace {

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

gid_t group_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_gid;
}

class TenancyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path("/var/tmp") / ("tenancy-test-" + new_uuid());
    layers_ = std::make_unique<LayerStore>(dir_, false);
    meta_ = open_sqlite_store(layers_->db_path());
    subid_ = dir_ / "etc";
    make_dirs(subid_);
  }
  void TearDown() override { remove_tree(dir_); }

  void subid(const char* name, const std::string& text) {
    write_file_atomic(subid_ / name, text, false);
  }

  fs::path dir_, subid_;
  std::unique_ptr<LayerStore> layers_;
  std::unique_ptr<MetaStore> meta_;
};

TEST_F(TenancyTest, DatabaseFilesAreOwnerOnlyAlsoWhenTheyExisted) {
  meta_->create_token("a", "hash");  // the WAL and SHM exist while a connection is open
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::string p = layers_->db_path().string() + suffix;
    ASSERT_TRUE(fs::exists(p)) << p;
    EXPECT_EQ(mode_of(p), 0600u) << p;
    ::chmod(p.c_str(), 0644);  // as older versions left them
  }
  auto again = open_sqlite_store(layers_->db_path());
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::string p = layers_->db_path().string() + suffix;
    EXPECT_EQ(mode_of(p), 0600u) << p;
  }
}

TEST_F(TenancyTest, RestrictAccessOpensTheDataDirToTheSandboxGroupOnly) {
  ::chmod(dir_.c_str(), 0755);  // as older versions left it
  ::chmod((dir_ / "files").c_str(), 0711);
  layers_->restrict_access(123456);
  EXPECT_EQ(mode_of(dir_), 0710u);
  EXPECT_EQ(group_of(dir_), 123456u);
  for (const char* d : {"layers", "runs"}) {
    EXPECT_EQ(mode_of(dir_ / d), 0710u) << d;
    EXPECT_EQ(group_of(dir_ / d), 123456u) << d;
  }
  for (const char* d : {"files", "tmp"}) {
    EXPECT_EQ(mode_of(dir_ / d), 0700u) << d;
    EXPECT_EQ(group_of(dir_ / d), 0u) << d;
  }
}

TEST_F(TenancyTest, CommitFileStoresOwnerOnlyAndDedups) {
  for (bool durable : {false, true}) {
    LayerStore ls(dir_, durable);
    auto up = ls.tmp_path("upload-1");
    write_file_atomic(up, "content", false);
    ::chmod(up.c_str(), 0644);
    std::string sha(64, durable ? 'b' : 'a');
    ls.commit_file(up, sha);
    EXPECT_FALSE(fs::exists(up));
    EXPECT_EQ(read_file(ls.file_path(sha)), "content");
    EXPECT_EQ(mode_of(ls.file_path(sha)), 0600u);
    // the same content again: the upload goes, the stored file stays
    write_file_atomic(up, "content", false);
    ls.commit_file(up, sha);
    EXPECT_FALSE(fs::exists(up));
    EXPECT_EQ(read_file(ls.file_path(sha)), "content");
  }
}

TEST_F(TenancyTest, SubidFilesParseAndOverlapsAreRefusedByName) {
  subid("subuid", "# comment\nalice:100000:65536\n\n1001:1879048192:10\n");
  subid("subgid", "alice:100000:65536\n");
  auto r = read_subid_file(subid_ / "subuid");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].owner, "alice");
  EXPECT_EQ(r[0].start, 100000u);
  EXPECT_EQ(r[1].owner, "1001");
  EXPECT_TRUE(read_subid_file(subid_ / "missing").empty());

  // the old fixed base is alice's
  try {
    check_subid_overlap(IdRange{100000, 65536}, subid_);
    FAIL() << "overlap accepted";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("'alice'"), std::string::npos) << m;
    EXPECT_NE(m.find("100000-165535"), std::string::npos) << m;
    EXPECT_NE(m.find("subuid"), std::string::npos) << m;
    EXPECT_NE(m.find("--uid-base"), std::string::npos) << m;
  }
  // the last id of a range counts, the one after it does not
  EXPECT_THROW(check_subid_overlap(IdRange{165535, 65536}, subid_), Error);
  EXPECT_NO_THROW(check_subid_overlap(IdRange{165536, 65536}, subid_));
  // uid 1001's ten ids start at the default base
  try {
    check_subid_overlap(IdRange{}, subid_);
    FAIL() << "overlap accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'1001'"), std::string::npos) << e.what();
  }
  // subgid alone is enough to refuse
  subid("subuid", "");
  subid("subgid", "bob:200000:65536\n");
  EXPECT_THROW(check_subid_overlap(IdRange{150000, 65536}, subid_), Error);
  EXPECT_NO_THROW(check_subid_overlap(IdRange{}, subid_));
  subid("subgid", "bob:200000\n");  // malformed: refuse rather than miss a delegation
  EXPECT_THROW(read_subid_file(subid_ / "subgid"), Error);
}

TEST_F(TenancyTest, StoreIdRangeIsRecordedAndFixedOnceTheStoreHasLayers) {
  // a new store gets the default, above Debian's subordinate id ranges
  subid("subuid", "alice:100000:65536\nbob:600100000:65536\n");
  IdRange r = store_id_range(*meta_, *layers_, std::nullopt, std::nullopt, subid_);
  EXPECT_EQ(r, (IdRange{kDefaultUidBase, kDefaultUidRange}));
  // while it holds no layer, another range may be chosen
  r = store_id_range(*meta_, *layers_, 300000, std::nullopt, subid_);
  EXPECT_EQ(r, (IdRange{300000, 65536}));
  EXPECT_EQ(store_id_range(*meta_, *layers_, std::nullopt, std::nullopt, subid_).base, 300000u);
  // then it is fixed
  make_dirs(layers_->layer_path("L"));
  try {
    store_id_range(*meta_, *layers_, 400000, std::nullopt, subid_);
    FAIL() << "a changed base was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), 409);
    EXPECT_NE(std::string(e.what()).find("300000"), std::string::npos) << e.what();
  }
  EXPECT_THROW(store_id_range(*meta_, *layers_, std::nullopt, 131072, subid_), Error);
  EXPECT_EQ(store_id_range(*meta_, *layers_, 300000, 65536, subid_).base, 300000u);
  // a delegation made later stops the server
  subid("subgid", "carol:310000:10\n");
  EXPECT_THROW(store_id_range(*meta_, *layers_, std::nullopt, std::nullopt, subid_), Error);
  // bad ranges
  EXPECT_THROW(validate_id_range(IdRange{1000, 65536}), Error);
  EXPECT_THROW(validate_id_range(IdRange{100000, 1000}), Error);
  EXPECT_THROW(validate_id_range(IdRange{0xFFFF0000u, 65536}), Error);
  EXPECT_NO_THROW(validate_id_range(IdRange{0xFFFE0000u, 65535 + 1}));
}

TEST_F(TenancyTest, AStoreWithLayersButNoRecordIsTheOldFixedRange) {
  make_dirs(layers_->layer_path("old"));
  EXPECT_EQ(store_id_range(*meta_, *layers_, std::nullopt, std::nullopt, subid_).base,
            kLegacyUidBase);
  EXPECT_EQ(store_id_range(*meta_, *layers_, std::nullopt, std::nullopt, subid_).base,
            kLegacyUidBase);  // recorded now
  for (int i = 0; i < 2; ++i) {
    fs::path d = dir_.string() + "-" + std::to_string(i);
    LayerStore other(d, false);
    auto other_meta = open_sqlite_store(other.db_path());
    make_dirs(other.layer_path("old"));
    if (i == 0) {
      // its layers are owned by 100000.. already
      EXPECT_THROW(store_id_range(*other_meta, other, kDefaultUidBase, std::nullopt, subid_),
                   Error);
    } else {
      // and that overlaps the first range Debian's useradd delegates
      subid("subuid", "alice:100000:65536\n");
      EXPECT_THROW(store_id_range(*other_meta, other, std::nullopt, std::nullopt, subid_), Error);
    }
    other_meta.reset();
    remove_tree(d);
  }
}

TEST_F(TenancyTest, TokensExpireListAndRevoke) {
  auto a = meta_->create_token("a", "h1");
  auto b = meta_->create_token("b", "h2", 12345);
  EXPECT_FALSE(a.expires_us);
  auto got = meta_->find_token("h2");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->uuid, b.uuid);
  EXPECT_EQ(got->expires_us, 12345);
  EXPECT_FALSE(got->last_used_us);
  meta_->touch_token(b.uuid, 777);
  EXPECT_EQ(meta_->get_token(b.uuid)->last_used_us, 777);
  auto all = meta_->list_tokens();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_TRUE(meta_->revoke_token(a.uuid));
  EXPECT_FALSE(meta_->revoke_token(a.uuid));
  EXPECT_FALSE(meta_->find_token("h1"));
  EXPECT_EQ(meta_->list_tokens().size(), 1u);
}

TEST(ProjectNames, CharsetAndLength) {
  for (const char* ok : {"a", "alpha", "team-1", "a.b_c", "0x"})
    EXPECT_TRUE(is_valid_project_name(ok)) << ok;
  for (const char* bad : {"", "-a", ".", "a b", "a/b", "a\n", "ä", "_x"})
    EXPECT_FALSE(is_valid_project_name(bad)) << bad;
  EXPECT_TRUE(is_valid_project_name(std::string(64, 'a')));
  EXPECT_FALSE(is_valid_project_name(std::string(65, 'a')));
  EXPECT_THROW(validate_project_name(""), Error);
}

TEST(Durations, UnitsAndErrors) {
  EXPECT_EQ(parse_duration_s("90"), 90);
  EXPECT_EQ(parse_duration_s("15m"), 900);
  EXPECT_EQ(parse_duration_s("30d"), 30 * 86400);
  EXPECT_FALSE(parse_duration_s(""));
  EXPECT_FALSE(parse_duration_s("5x"));
  EXPECT_FALSE(parse_duration_s("m"));
  EXPECT_FALSE(parse_duration_s("1hh"));
}

}  // namespace
}  // namespace coppice::store

namespace coppice::engine {
namespace {

TEST(Redaction, SecretNamesAreMaskedInTheEchoOnly) {
  for (const char* k : {"GITHUB_TOKEN", "token", "Db_Password", "AWS_SECRET", "OPENAI_API_KEY",
                        "GOOGLE_APPLICATION_CREDENTIALS", "HTTP_AUTHORIZATION"})
    EXPECT_TRUE(is_secret_env_name(k)) << k;
  for (const char* k : {"PATH", "TOKENS_DIR", "SECRET_FILE_PATH", "HOME", "PASSWORDS_URL"})
    EXPECT_FALSE(is_secret_env_name(k)) << k;
  SpawnLimits lim;
  auto req = parse_spawn_request(
      {{"command", "env"},
       {"image", "x"},
       {"env", {{"API_TOKEN", "s3cret"}, {"PLAIN", "v"}, {"GONE_PASSWORD", nullptr}}}},
      lim);
  EXPECT_EQ(*req.env.at("API_TOKEN"), "s3cret");  // what the sandbox gets
  auto echo = req.to_json();
  EXPECT_EQ(echo["env"]["API_TOKEN"], kMasked);
  EXPECT_EQ(echo["env"]["PLAIN"], "v");
  EXPECT_TRUE(echo["env"]["GONE_PASSWORD"].is_null());
  EXPECT_EQ(echo.dump().find("s3cret"), std::string::npos);
  auto ev = redacted_env(req.env, true);
  EXPECT_FALSE(ev.contains("GONE_PASSWORD"));
  EXPECT_EQ(ev["API_TOKEN"], kMasked);
}

}  // namespace
}  // namespace coppice::engine
