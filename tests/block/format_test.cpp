#include "qcow2/format.h"

#include <gtest/gtest.h>

#include <random>

#include "kiln/block/device.h"

using namespace kiln::block;
using namespace kiln::block::qcow2;

TEST(Format, RefcountEntriesOfEveryWidthRoundTrip) {
  for (uint32_t order = 0; order <= 6; ++order) {
    std::vector<uint8_t> block(512, 0);
    const uint64_t entries = 512 * 8 / (1u << order);
    std::vector<uint64_t> model(entries, 0);
    std::mt19937_64 rng(order);
    for (int i = 0; i < 2000; ++i) {
      uint64_t idx = rng() % entries;
      uint64_t v = rng() & max_refcount(order);
      set_refcount(block.data(), idx, order, v);
      model[idx] = v;
    }
    for (uint64_t i = 0; i < entries; ++i)
      ASSERT_EQ(get_refcount(block.data(), i, order), model[i]) << "order " << order;
  }
}

TEST(Format, SubByteRefcountsUseLeastSignificantBitsFirst) {
  uint8_t b[1] = {0};
  set_refcount(b, 0, 0, 1);
  EXPECT_EQ(b[0], 0x01);
  set_refcount(b, 3, 1, 2);  // entry 3 of 2-bit entries: bits 6..7
  EXPECT_EQ(b[0], 0x81);
}

TEST(Format, HeaderRejectsBadMagicAndClusterBits) {
  std::vector<uint8_t> b(4096, 0);
  Header h;
  EXPECT_TRUE(parse_header(b, &h).has_value());
  store_be32(&b[0], kMagic);
  store_be32(&b[4], 3);
  store_be32(&b[20], 8);
  store_be32(&b[100], 104);
  store_be32(&b[96], 4);
  auto err = parse_header(b, &h);
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("cluster_bits"), std::string::npos);
  store_be32(&b[20], 12);
  EXPECT_FALSE(parse_header(b, &h).has_value());
  store_be32(&b[96], 7);
  EXPECT_TRUE(parse_header(b, &h).has_value());
}

TEST(Format, BackingNameMustFitTheFirstCluster) {
  std::vector<uint8_t> b(4096, 0);
  store_be32(&b[0], kMagic);
  store_be32(&b[4], 3);
  store_be32(&b[20], 12);
  store_be32(&b[96], 4);
  store_be32(&b[100], 104);
  store_be64(&b[8], 4000);
  store_be32(&b[16], 200);
  Header h;
  auto err = parse_header(b, &h);
  ASSERT_TRUE(err.has_value());
  store_be32(&b[16], 1024);
  store_be64(&b[8], 200);
  err = parse_header(b, &h);
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("too long"), std::string::npos);
}

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(parse_size("512"), 512u);
  EXPECT_EQ(parse_size("1k"), 1024u);
  EXPECT_EQ(parse_size("2M"), 2u << 20);
  EXPECT_EQ(parse_size("1.5G"), 3ull << 29);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
  EXPECT_THROW(parse_size("abc"), Error);
  EXPECT_THROW(parse_size("1Q"), Error);
  EXPECT_THROW(parse_size(""), Error);
  EXPECT_THROW(parse_size("1.5"), Error);
}

// The whole string, decimal only, a whole number of bytes, below 2^64: what strtod would also
// take (exponents, hexadecimal, leading spaces, inf) is refused.
TEST(ParseSize, Strict) {
  EXPECT_EQ(parse_size("0.5k"), 512u);
  EXPECT_EQ(parse_size("3b"), 3u);
  EXPECT_EQ(parse_size("15E"), 15ull << 60);
  for (const char* bad : {"1e3", "0x10", " 12", "12 ", "+5", "-5", "1KB", "1k5", "inf", "nan", "1.",
                          ".5k", "0.1k", "1,5k", "1.0000000000000000000001k"}) {
    try {
      parse_size(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), EINVAL) << bad;
      EXPECT_EQ(e.reason(), Reason::kInvalidArgument) << bad;
    }
  }
  for (const char* big : {"16E", "18446744073709551616", "99999999999999999999999"}) {
    try {
      parse_size(big);
      ADD_FAILURE() << "accepted '" << big << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ERANGE) << big;
      EXPECT_EQ(e.reason(), Reason::kInvalidArgument) << big;
    }
  }
}
