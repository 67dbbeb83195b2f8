// Small string helpers: split, join, trim, base64.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln::common {

// "a,,b" -> {"a", "", "b"}; "" -> {} (an empty text has no fields, so join(split(x)) == x).
std::vector<std::string> split(std::string_view s, char sep);
// As split, without the empty pieces: "a,,b," -> {"a", "b"}.
std::vector<std::string> split_nonempty(std::string_view s, char sep);
// QEMU's option lists (qemu-img -o, --object, --image-opts, -l): pieces separated by ',' in
// which ",," stands for a comma. "a=1,,2,b" -> {"a=1,2", "b"}; "" -> {""}.
std::vector<std::string> split_qemu_options(std::string_view s);
std::string join(const std::vector<std::string>& parts, std::string_view sep);
// Without leading and trailing spaces, tabs, CR and LF.
std::string trim(std::string_view s);
// RFC 4648 base64 with padding, no line breaks ("hi" -> "aGk=").
std::string base64(std::string_view in);

}  // namespace kiln::common
