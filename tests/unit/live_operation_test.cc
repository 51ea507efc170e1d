#include "engine/live_operation.h"

#include <gtest/gtest.h>

#include <thread>

namespace coppice::engine {
namespace {

TEST(LiveOperation, EventIdsAreOrderedAndFilterable) {
  LiveOperation op(store::OperationRecord{});
  op.append(0, "init", {});
  op.append(1, "spawn", {});
  op.append(1, "stdout", {{"value", "x"}});
  op.append(0, "completion", {});
  auto all = op.events();
  ASSERT_EQ(all.size(), 4u);
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].id, static_cast<int64_t>(i));
  auto after1 = op.events_after(1, std::nullopt, std::chrono::milliseconds(0));
  ASSERT_EQ(after1.size(), 2u);
  EXPECT_EQ(after1[0].id, 2);  // exclusive
  auto spid1 = op.events_after(-1, 1, std::chrono::milliseconds(0));
  EXPECT_EQ(spid1.size(), 2u);
}

TEST(LiveOperation, ACancelIsAcceptedOnlyBeforeThePointOfNoReturn) {
  LiveOperation op(store::OperationRecord{});
  EXPECT_TRUE(op.request_cancel());
  EXPECT_TRUE(op.cancel_token().cancelled());
  EXPECT_TRUE(op.begin_finishing());
  EXPECT_FALSE(op.begin_finishing());
  LiveOperation late(store::OperationRecord{});
  EXPECT_TRUE(late.begin_finishing());
  EXPECT_FALSE(late.request_cancel());  // refused: the token stays as it was
  EXPECT_FALSE(late.cancel_token().cancelled());
}

TEST(LiveOperation, RacingCancelAndFinishAgree) {
  // Whoever wins, an accepted cancel is visible to the finisher after begin_finishing().
  for (int i = 0; i < 2000; ++i) {
    LiveOperation op(store::OperationRecord{});
    bool accepted = false;
    std::thread t([&] { accepted = op.request_cancel(); });
    op.begin_finishing();
    bool seen = op.cancel_token().cancelled();
    t.join();
    ASSERT_EQ(accepted, seen) << i;
  }
}

TEST(LiveOperation, FollowerWakesOnAppendAndFinish) {
  LiveOperation op(store::OperationRecord{});
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    op.append(0, "init", {});
  });
  auto got = op.events_after(-1, std::nullopt, std::chrono::seconds(5));
  t.join();
  ASSERT_EQ(got.size(), 1u);
  std::thread t2([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    store::OperationRecord rec;
    rec.status = "SUCCESS";
    op.complete(rec, {store::EventRecord{1, 0, 0, "completion", {}}});
  });
  auto start = std::chrono::steady_clock::now();
  auto tail = op.events_after(0, std::nullopt, std::chrono::seconds(5));
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0].type, "completion");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  t2.join();
  EXPECT_TRUE(op.finished());
  EXPECT_EQ(op.record().status, "SUCCESS");
  EXPECT_FALSE(op.begin_finishing());
}

TEST(LiveOperation, SubscribersHearEveryAppendAndTheEndUntilTheyLeave) {
  LiveOperation op(store::OperationRecord{});
  int a = 0, b = 0;
  auto ida = op.subscribe([&] { ++a; });
  op.subscribe([&] { ++b; });
  op.append(0, "init", {});
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, 1);
  op.unsubscribe(ida);
  op.append(0, "spawn", {});
  op.complete(op.record(), {});
  EXPECT_EQ(a, 1);  // gone
  EXPECT_EQ(b, 3);  // the append and the completion
  EXPECT_TRUE(op.finished());
}

}  // namespace
}  // namespace coppice::engine
