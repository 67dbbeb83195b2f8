// JSON: nlohmann's library everywhere. `Json` keeps members in the order they were added, so
// output reads as the code wrote it (qemu-img's order in kiln-img, for instance).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace kiln::common {

using Json = nlohmann::ordered_json;

// Serialises `j`: compact when indent < 0, else pretty-printed with `indent` spaces a level.
// Bytes that are not UTF-8 (file names, labels read from a hostile image) become U+FFFD
// instead of making the whole output fail.
std::string dump(const Json& j, int indent = -1);

// `s` as a JSON string literal, quotes included.
std::string json_quote(std::string_view s);

// Parses at most `limit` bytes of JSON; beyond it, or when malformed, throws Error(kCorrupt)
// naming `what`.
Json parse_json(std::string_view text, size_t limit, const std::string& what);

}  // namespace kiln::common
