#include <gtest/gtest.h>
#include <sys/stat.h>

#include <set>

#include "common/error.h"
#include "common/fsutil.h"
#include "common/ids.h"
#include "store/layer_store.h"
#include "store/meta_store.h"

namespace coppice::store {
namespace {

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path("/var/tmp") / ("store-test-" + new_uuid());
    layers_ = std::make_unique<LayerStore>(dir_, false);
    meta_ = open_sqlite_store(layers_->db_path());
  }
  void TearDown() override { remove_tree(dir_); }

  ImageRecord image(const std::string& project, int64_t t, std::optional<std::string> tag = {}) {
    ImageRecord r;
    r.uuid = new_uuid();
    r.project = project;
    r.layer_id = r.uuid;
    r.layers = {r.uuid};
    r.created_us = t;
    r.tag = std::move(tag);
    return r;
  }

  fs::path dir_;
  std::unique_ptr<LayerStore> layers_;
  std::unique_ptr<MetaStore> meta_;
};

TEST_F(StoreTest, ImagesRoundTripAndVisibility) {
  auto pub = image(kPublicProject, 1);
  auto mine = image("a", 2);
  mine.parent_uuid = pub.uuid;
  mine.layers = {mine.uuid, pub.uuid};
  mine.config = {{"env", {{"A", "1"}}}};
  auto theirs = image("b", 3);
  for (auto* i : {&pub, &mine, &theirs}) meta_->insert_image(*i);
  auto got = meta_->get_image(mine.uuid);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->layers, mine.layers);
  EXPECT_EQ(got->parent_uuid, pub.uuid);
  EXPECT_EQ(got->config["env"]["A"], "1");
  auto list = meta_->list_images("a", ImageFilter{});
  ASSERT_EQ(list.size(), 2u);  // own + public, newest first
  EXPECT_EQ(list[0].uuid, mine.uuid);
  EXPECT_EQ(list[1].uuid, pub.uuid);
}

TEST_F(StoreTest, TagsAreUniquePerProjectAndMove) {
  auto a1 = image("a", 1), a2 = image("a", 2), b1 = image("b", 3);
  for (auto* i : {&a1, &a2, &b1}) meta_->insert_image(*i);
  meta_->set_tag("a", a1.uuid, "t:1");
  meta_->set_tag("b", b1.uuid, "t:1");  // same tag, other tenant: fine
  meta_->set_tag("a", a2.uuid, "t:1");  // moves within tenant a
  EXPECT_FALSE(meta_->get_image(a1.uuid)->tag);
  EXPECT_EQ(meta_->find_by_tag("a", "t:1")->uuid, a2.uuid);
  EXPECT_EQ(meta_->find_by_tag("b", "t:1")->uuid, b1.uuid);
  ImageFilter f;
  f.tag_prefix = "t:";
  EXPECT_EQ(meta_->list_images("a", f).size(), 1u);
}

TEST_F(StoreTest, ExactTagMatchSortsFirst) {
  auto exact = image("a", 1, "ubuntu"), longer = image("a", 2, "ubuntu-dev");
  meta_->insert_image(exact);
  meta_->insert_image(longer);
  ImageFilter f;
  f.tag_prefix = "ubuntu";
  auto l = meta_->list_images("a", f);
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0].uuid, exact.uuid);
}

TEST_F(StoreTest, FinishOperationIsAtomicWithImageAndEvents) {
  OperationRecord op;
  op.uuid = new_uuid();
  op.project = "a";
  op.kind = "instance";
  op.status = "PENDING";
  op.created_us = 5;
  meta_->insert_operation(op);
  EXPECT_EQ(meta_->active_operations().size(), 1u);
  auto img = image("a", 6);
  img.operation_uuid = op.uuid;
  op.status = "SUCCESS";
  op.result_image_uuid = img.uuid;
  std::vector<EventRecord> ev{{0, 1, 0, "init", {{"x", 1}}}, {1, 2, 0, "completion", {}}};
  meta_->finish_operation(op, ev, img);
  EXPECT_TRUE(meta_->active_operations().empty());
  EXPECT_EQ(meta_->get_operation(op.uuid)->result_image_uuid, img.uuid);
  EXPECT_EQ(meta_->events(op.uuid).size(), 2u);
  EXPECT_EQ(meta_->events(op.uuid)[0].data["x"], 1);
  // A failing transaction (duplicate image uuid) leaves nothing half-written.
  OperationRecord op2 = op;
  op2.uuid = new_uuid();
  EXPECT_THROW(meta_->finish_operation(op2, ev, img), Error);
  EXPECT_FALSE(meta_->get_operation(op2.uuid));
}

TEST_F(StoreTest, FilesDedupPerProject) {
  auto f1 = meta_->upsert_file("a", std::string(64, 'a'), 3);
  auto f2 = meta_->upsert_file("a", std::string(64, 'a'), 3);
  auto f3 = meta_->upsert_file("b", std::string(64, 'a'), 3);
  EXPECT_EQ(f1.uuid, f2.uuid);
  EXPECT_NE(f1.uuid, f3.uuid);
  EXPECT_FALSE(meta_->get_file_by_uuid("b", f1.uuid));
  EXPECT_EQ(meta_->list_files("a", Page{}).size(), 1u);
}

TEST_F(StoreTest, SchemaMigrationIsIdempotentOnReopen) {
  auto img = image("a", 1);
  meta_->insert_image(img);
  meta_.reset();
  meta_ = open_sqlite_store(layers_->db_path());
  EXPECT_TRUE(meta_->get_image(img.uuid));
}

TEST_F(StoreTest, RecoveryRemovesOrphanLayersAndScratch) {
  make_dirs(layers_->layer_path("kept"));
  make_dirs(layers_->layer_path("orphan") / "sub");
  make_dirs(layers_->run_path("op") / "upper");
  make_dirs(layers_->tmp_path("partial"));
  EXPECT_EQ(layers_->recover({"kept"}), 1u);
  EXPECT_TRUE(fs::exists(layers_->layer_path("kept")));
  EXPECT_FALSE(fs::exists(layers_->layer_path("orphan")));
  EXPECT_TRUE(fs::is_empty(dir_ / "runs"));
  EXPECT_TRUE(fs::is_empty(dir_ / "tmp"));
}

TEST_F(StoreTest, ReferencedLayersIncludeStacksAndFlatCopies) {
  auto parent = image("a", 1);
  meta_->insert_image(parent);
  meta_->set_flat_layer(parent.uuid, "flat-1");
  meta_->set_flat_layer(parent.uuid, "flat-2");  // ignored: a flat layer never changes
  EXPECT_EQ(meta_->get_image(parent.uuid)->flat_layer_id, "flat-1");
  auto child = image("a", 2);
  child.layers = {child.uuid, "flat-0"};  // a stack that names an older flat copy
  meta_->insert_image(child);
  auto refs = meta_->referenced_layers();
  std::set<std::string> s(refs.begin(), refs.end());
  EXPECT_TRUE(s.count("flat-0"));
  EXPECT_TRUE(s.count("flat-1"));
  EXPECT_FALSE(s.count("flat-2"));
  EXPECT_TRUE(s.count(child.uuid));
}

TEST_F(StoreTest, CommitLayerIsARename) {
  auto src = layers_->tmp_path("upper");
  make_dirs(src);
  write_file_atomic(src / "f", "x", false);
  struct stat before;
  ASSERT_EQ(::stat((src / "f").c_str(), &before), 0);
  layers_->commit_layer(src, "L");
  struct stat after;
  ASSERT_EQ(::stat((layers_->layer_path("L") / "f").c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);  // moved, not copied
}

// A finished run's work/ and merged/ are kept for the next run (their inodes are not freed
// and allocated again); anything unexpected in them, or a killed run, removes the directory.
TEST_F(StoreTest, RunDirectoriesAreRecycledOnlyWhenClean) {
  auto make_run = [&](const std::string& op) {
    fs::path d = layers_->acquire_run_dir(op);
    EXPECT_EQ(d, layers_->run_path(op));
    make_dirs(d / "upper");
    make_dirs(d / "work" / "work");
    make_dirs(d / "merged");
    return d;
  };
  fs::path a = make_run("op-a");
  struct stat work_a;
  ASSERT_EQ(::stat((a / "work").c_str(), &work_a), 0);
  write_file_atomic(a / "upper" / "left-over", "x", false);  // a disposable run's changes
  layers_->release_run_dir(a, true);
  EXPECT_FALSE(fs::exists(a));
  // the next run gets the same directories back, with an empty upper
  fs::path b = layers_->acquire_run_dir("op-b");
  struct stat work_b;
  ASSERT_EQ(::stat((b / "work").c_str(), &work_b), 0);
  EXPECT_EQ(work_a.st_ino, work_b.st_ino);
  EXPECT_TRUE(!fs::exists(b / "upper") || fs::is_empty(b / "upper"));
  EXPECT_TRUE(fs::is_empty(b / "merged"));
  // unexpected content (or a killed run) is not reused
  write_file_atomic(b / "work" / "work" / "stale", "x", false);
  layers_->release_run_dir(b, true);
  EXPECT_FALSE(fs::exists(b));
  EXPECT_FALSE(fs::exists(layers_->acquire_run_dir("op-c")));
  fs::path d = make_run("op-d");
  layers_->release_run_dir(d, false);
  EXPECT_TRUE(fs::is_empty(dir_ / "runs"));
  // spares are scratch: recovery removes them
  layers_->release_run_dir(make_run("op-e"), true);
  EXPECT_FALSE(fs::is_empty(dir_ / "runs"));
  layers_->recover({});
  EXPECT_TRUE(fs::is_empty(dir_ / "runs"));
}

}  // namespace
}  // namespace coppice::store
