// boot --inject: the key, the hostname and the --file files written into the guest's file
// system through the fusefs library (no FUSE, no kernel mount), before the disk is exported.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kiln::spawn {

struct InjectRequest {
  std::string hostname;
  std::string key;  // OpenSSH public key line(s) for root, or empty
  std::vector<std::pair<std::string, std::string>> files;  // guest path, content
};

// Checks the request without touching an image; throws Error(kInvalidArgument).
void check_injection(const InjectRequest& req);
// Applies it to the qcow2 image `path` (all or nothing), unlocked with `key` if it is
// encrypted; throws Error.
void inject_into(const std::string& path, const InjectRequest& req,
                 const std::optional<std::string>& key = std::nullopt);

}  // namespace kiln::spawn
