#include "kiln/common/json.h"

#include <gtest/gtest.h>

#include "kiln/common/error.h"

namespace kiln::common {
namespace {

TEST(Json, QuoteEscapesAsTheToolsDid) {
  EXPECT_EQ(json_quote("plain"), "\"plain\"");
  EXPECT_EQ(json_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(json_quote("\n\t\r\b\f"), "\"\\n\\t\\r\\b\\f\"");
  EXPECT_EQ(json_quote(std::string("\x01\x1f", 2)), "\"\\u0001\\u001f\"");
  EXPECT_EQ(json_quote("caf\xc3\xa9"), "\"caf\xc3\xa9\"");  // UTF-8 stays as it is
}

TEST(Json, BytesThatAreNotUtf8BecomeReplacementCharacters) {
  // A label read from a hostile image must not make the whole output fail.
  EXPECT_EQ(json_quote("a\xff"
                       "b"),
            "\"a\xef\xbf\xbd"
            "b\"");
}

TEST(Json, KeepsInsertionOrderAndIndents) {
  Json j;
  j["zeta"] = 1;
  j["alpha"] = "x";
  j["list"] = Json::array({true, nullptr});
  EXPECT_EQ(dump(j), R"({"zeta":1,"alpha":"x","list":[true,null]})");
  EXPECT_EQ(dump(j, 4),
            "{\n    \"zeta\": 1,\n    \"alpha\": \"x\",\n    \"list\": [\n        true,\n"
            "        null\n    ]\n}");
}

TEST(Json, ParseHasALimitAndAReason) {
  EXPECT_EQ(parse_json(R"({"a": [1, 2]})", 100, "reply")["a"][1], 2);
  try {
    parse_json(R"({"a": 1})", 4, "reply");
    FAIL() << "no error beyond the limit";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kCorrupt);
    EXPECT_STREQ(e.what(), "reply is larger than 4 bytes");
  }
  try {
    parse_json("{\"a\":", 100, "reply");
    FAIL() << "no error for truncated JSON";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kCorrupt);
    EXPECT_STREQ(e.what(), "reply is not valid JSON");
  }
}

}  // namespace
}  // namespace kiln::common
