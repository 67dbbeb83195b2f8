#include "kiln/common/cli_output.h"

#include <gtest/gtest.h>

#include <sstream>

#include "kiln/common/cli.h"

namespace kiln::common::cli {
namespace {

TEST(CliOutput, ObjectAsFieldValueTable) {
  Json o = {{"id", "abc"},
            {"shared", false},
            {"segmentation_id", nullptr},
            {"subnets", {"s1", "subnet-2"}},
            {"binding", {{"vif_type", "tap"}}},
            {"mtu", 1500}};
  std::ostringstream out;
  print_object(out, o, Format::kTable);
  EXPECT_EQ(out.str(),
            "+-----------------+--------------------+\n"
            "| Field           | Value              |\n"
            "+-----------------+--------------------+\n"
            "| id              | abc                |\n"
            "| shared          | False              |\n"
            "| segmentation_id |                    |\n"
            "| subnets         | s1                 |\n"
            "|                 | subnet-2           |\n"
            "| binding         | {\"vif_type\":\"tap\"} |\n"
            "| mtu             | 1500               |\n"
            "+-----------------+--------------------+\n");
}

TEST(CliOutput, ListAsColumnsOrJsonArray) {
  std::vector<Json> rows = {{{"id", "1"}, {"name", "a"}, {"extra", 1}}, {{"id", "22"}}};
  std::ostringstream table, json;
  print_list(table, rows, {"id", "name"}, Format::kTable);
  EXPECT_EQ(table.str(),
            "+----+------+\n"
            "| id | name |\n"
            "+----+------+\n"
            "| 1  | a    |\n"
            "| 22 |      |\n"
            "+----+------+\n");
  print_list(json, rows, {"id"}, Format::kJson);  // whole objects, keys in their order
  EXPECT_EQ(json.str(),
            "[\n  {\n    \"id\": \"1\",\n    \"name\": \"a\",\n    \"extra\": 1\n  },\n"
            "  {\n    \"id\": \"22\"\n  }\n]\n");
  std::ostringstream empty;
  print_list(empty, {}, {"id"}, Format::kTable);
  EXPECT_EQ(empty.str(), "+----+\n| id |\n+----+\n+----+\n");
}

TEST(CliOutput, Formats) {
  EXPECT_EQ(parse_format("json"), Format::kJson);
  EXPECT_EQ(parse_format("table"), Format::kTable);
  EXPECT_THROW(parse_format("yaml"), UsageError);
}

}  // namespace
}  // namespace kiln::common::cli
