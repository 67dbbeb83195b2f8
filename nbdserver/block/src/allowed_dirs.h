// The --allow-dir restriction (OpenOptions::allowed_dirs): a path is checked before it is
// opened (so that nothing outside is even opened), and the opened file is checked again
// through its descriptor (so that a symlink swapped in between cannot lead outside).
#pragma once

#include <string>
#include <vector>

namespace kiln::block {

// Throws Error(EACCES) unless `path`, resolved, lies under one of `dirs` (empty: anywhere).
void check_allowed_path(const std::string& path, const std::vector<std::string>& dirs);
// The same for the file open on `fd` (named `path` in the error).
void check_allowed_fd(int fd, const std::string& path, const std::vector<std::string>& dirs);

}  // namespace kiln::block
