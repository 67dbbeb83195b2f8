// This host's name, as every Kiln module names the host it runs on (kiln-spawn's host records
// and claims, kiln-net's per-host settings, agents and port bindings).
#pragma once

#include <string>

namespace kiln::common {

// $KILN_HOST if set, else gethostname(); checked with check_host_name.
std::string this_host_name();

// Throws Error(kInvalidArgument) unless `name` is 1 to 255 characters of A-Z a-z 0-9 . _ -
// starting with a letter or digit.
void check_host_name(const std::string& name);

}  // namespace kiln::common
