#include <gtest/gtest.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/ids.h"
#include "common/sha256.h"

namespace coppice {

TEST(Ids, UuidShape) {
  std::string u = new_uuid();
  EXPECT_TRUE(is_uuid(u));
  EXPECT_EQ(u[14], '4');
  EXPECT_NE(new_uuid(), u);
  EXPECT_FALSE(is_uuid("not-a-uuid"));
}

TEST(Sha256, KnownVector) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(is_sha256_hex(sha256_hex("")));
  EXPECT_FALSE(is_sha256_hex("ABC"));
}

TEST(Clock, Rfc3339RoundTrip) {
  int64_t t = 1767225600123456;  // 2026-01-01T00:00:00.123456Z
  EXPECT_EQ(format_rfc3339(t), "2026-01-01T00:00:00.123456Z");
  EXPECT_EQ(parse_rfc3339("2026-01-01T00:00:00.123456Z"), t);
  EXPECT_EQ(parse_rfc3339("2026-01-01T02:00:00.123456789+02:00"), t);
  EXPECT_EQ(parse_rfc3339("2026-01-01"), 1767225600000000);
  EXPECT_FALSE(parse_rfc3339("yesterday"));
}

TEST(Clock, TimeFilters) {
  int64_t now = 1767225600000000;
  EXPECT_EQ(parse_time_filter("15m", now), now - 900'000'000);
  EXPECT_EQ(parse_time_filter("2h", now), now - 7200'000'000LL);
  EXPECT_EQ(parse_time_filter("3600", now), now - 3600'000'000LL);
  EXPECT_EQ(parse_time_filter("1w", now), now - 604800'000'000LL);
  EXPECT_THROW(parse_time_filter("5x", now), Error);
  EXPECT_THROW(parse_time_filter("", now), Error);
}

}  // namespace coppice
