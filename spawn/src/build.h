// What one boot carries from step to step, and what the steps and the rest of Compute share.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kiln/net/plumber.h"
#include "kiln/net/service.h"
#include "kiln/spawn/compute.h"
#include "kiln/spawn/store.h"

namespace kiln::spawn {

struct Compute::Build {
  BootRequest req;
  Instance inst;
  Image image;
  Flavor flavor;
  std::string key_name, key_data;
  bool has_user_data = false;
  std::string user_data;
  std::vector<std::pair<std::string, std::string>> files;  // guest path, content
};

inline constexpr uint64_t kGiB = uint64_t{1} << 30;

// True once interrupt_boot() was called.
bool interrupted();

// Nova's task state while `step` runs.
const char* task_state_of(const std::string& step);
inline std::string export_name_of(const std::string& uuid) { return "kiln-" + uuid; }
inline std::string domain_name_of(const std::string& uuid) { return "kiln-" + uuid; }

}  // namespace kiln::spawn
