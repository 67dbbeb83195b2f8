#include "kiln/common/json.h"

#include "kiln/common/error.h"

namespace kiln::common {

std::string dump(const Json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string json_quote(std::string_view s) { return dump(Json(std::string(s))); }

Json parse_json(std::string_view text, size_t limit, const std::string& what) {
  if (text.size() > limit)
    throw corrupt(what + " is larger than " + std::to_string(limit) + " bytes");
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded()) throw corrupt(what + " is not valid JSON");
  return j;
}

}  // namespace kiln::common
