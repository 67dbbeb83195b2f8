// Tables and JSON for cli_output.h.
#include "kiln/common/cli_output.h"

#include <algorithm>
#include <ostream>

#include "kiln/common/cli.h"

namespace kiln::common::cli {

namespace {

std::vector<std::string> cell_lines(const Json& v) {
  if (v.is_null()) return {""};
  if (v.is_string()) return {v.get<std::string>()};
  if (v.is_boolean()) return {v.get<bool>() ? "True" : "False"};
  if (v.is_array()) {
    std::vector<std::string> out;
    for (const auto& x : v) out.push_back(x.is_string() ? x.get<std::string>() : dump(x));
    if (out.empty()) out.push_back("");
    return out;
  }
  return {dump(v)};
}

}  // namespace

Format parse_format(std::string_view text) {
  if (text == "table") return Format::kTable;
  if (text == "json") return Format::kJson;
  throw UsageError("--format must be table or json");
}

void print_table(std::ostream& out, const std::vector<std::string>& header,
                 const std::vector<std::vector<Json>>& rows) {
  std::vector<std::vector<std::vector<std::string>>> cells;  // row, column, line
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& r : rows) {
    auto& row = cells.emplace_back();
    for (size_t c = 0; c < header.size(); ++c) {
      row.push_back(c < r.size() ? cell_lines(r[c]) : std::vector<std::string>{""});
      for (const auto& l : row.back()) width[c] = std::max(width[c], l.size());
    }
  }
  std::string rule = "+";
  for (size_t w : width) rule += std::string(w + 2, '-') + "+";
  rule += "\n";
  auto line = [&](const std::vector<std::string>& texts) {
    std::string s = "|";
    for (size_t c = 0; c < texts.size(); ++c)
      s += " " + texts[c] + std::string(width[c] - texts[c].size(), ' ') + " |";
    out << s << "\n";
  };
  out << rule;
  line(header);
  out << rule;
  for (const auto& row : cells) {
    size_t height = 1;
    for (const auto& col : row) height = std::max(height, col.size());
    for (size_t h = 0; h < height; ++h) {
      std::vector<std::string> texts;
      for (const auto& col : row) texts.push_back(h < col.size() ? col[h] : "");
      line(texts);
    }
  }
  out << rule;
}

void print_object(std::ostream& out, const Json& object, Format format) {
  if (format == Format::kJson) {
    out << dump(object, 2) << "\n";
    return;
  }
  std::vector<std::vector<Json>> rows;
  for (const auto& [k, v] : object.items()) rows.push_back({k, v});
  print_table(out, {"Field", "Value"}, rows);
}

void print_list(std::ostream& out, const std::vector<Json>& objects,
                const std::vector<std::string>& columns, Format format) {
  if (format == Format::kJson) {
    out << dump(Json(objects), 2) << "\n";
    return;
  }
  std::vector<std::vector<Json>> rows;
  for (const auto& o : objects) {
    std::vector<Json> r;
    for (const auto& c : columns) r.push_back(o.contains(c) ? o[c] : Json(nullptr));
    rows.push_back(std::move(r));
  }
  print_table(out, columns, rows);
}

}  // namespace kiln::common::cli
