#include "kiln/common/random.h"

#include <gtest/gtest.h>

#include <array>
#include <set>

namespace kiln::common {
namespace {

TEST(Random, UuidIsVersion4InCanonicalForm) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    std::string u = new_uuid();
    ASSERT_TRUE(is_uuid(u)) << u;
    EXPECT_EQ(u[14], '4') << u;
    EXPECT_NE(std::string("89ab").find(u[19]), std::string::npos) << u;
    for (char c : u) EXPECT_FALSE(c >= 'A' && c <= 'F') << u;
    seen.insert(u);
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(Random, IsUuidRejectsOtherText) {
  EXPECT_TRUE(is_uuid("123E4567-e89b-12d3-a456-426614174000"));
  EXPECT_FALSE(is_uuid(""));
  EXPECT_FALSE(is_uuid("123e4567e89b12d3a456426614174000"));
  EXPECT_FALSE(is_uuid("123e4567-e89b-12d3-a456-42661417400g"));
  EXPECT_FALSE(is_uuid("123e4567-e89b-12d3-a456_426614174000"));
}

TEST(Random, BytesFillTheWholeBuffer) {
  std::array<uint8_t, 4096> a{}, b{};
  random_bytes(a.data(), a.size());
  random_bytes(b.data(), b.size());
  EXPECT_NE(a, b);
  // The tail is written too (a short read from getrandom would leave zeros there).
  int zeros = 0;
  for (size_t i = a.size() - 64; i < a.size(); ++i) zeros += a[i] == 0;
  EXPECT_LT(zeros, 16);
}

}  // namespace
}  // namespace kiln::common
