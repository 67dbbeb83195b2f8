// The one printer of command-line results: an object as a Field/Value table or as JSON, a list
// of objects as a table of chosen columns or as a JSON array (the OpenStack clients' layout,
// which kiln-net and kiln-spawn follow).
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/common/json.h"

namespace kiln::common::cli {

enum class Format { kTable, kJson };

// "table" or "json"; UsageError "--format must be table or json" otherwise.
Format parse_format(std::string_view text);

// A boxed table. A cell shows a string as it is, null as nothing, a boolean as True or False,
// an array one item per line, anything else as compact JSON.
void print_table(std::ostream& out, const std::vector<std::string>& header,
                 const std::vector<std::vector<Json>>& rows);

// One object: a Field/Value table, or the object as JSON (two-space indent).
void print_object(std::ostream& out, const Json& object, Format format);
// Several objects: a table of `columns` (keys of the objects), or a JSON array of the whole
// objects.
void print_list(std::ostream& out, const std::vector<Json>& objects,
                const std::vector<std::string>& columns, Format format);

}  // namespace kiln::common::cli
