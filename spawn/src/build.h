// What one boot carries from step to step, and what the steps and the rest of Compute share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
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
  // The claim put the instance on another host: its agent builds it (a build row queued in
  // the claim's transaction); nothing more happens here.
  bool remote = false;
};

// One step of the boot pipeline: its name (in the instance's `steps`, the events and
// KILN_SPAWN_FAIL_AT), Nova's task state while it runs, its work, and the undo of that work. A
// step cannot be made without an undo: there is no constructor without one, and a null one
// (nullptr or 0) picks a deleted constructor, a compile error. A step that leaves nothing of its
// own says so with Compute::nothing_to_undo. An undo gets the instance as recorded, also one
// that a killed build left, and is idempotent: it removes what exists, ignores what does not,
// and clears the fields that named it.
struct Compute::Step {
  using Work = void (Compute::*)(Build&);
  using Undo = void (Compute::*)(Instance&);
  // Who records the step in the instance's steps: the runner, before the work starts (a build
  // that dies half-way leaves a record saying the undo is due), or the work itself, in the
  // transaction that does it (the claim: no record without a claim, no claim without a record).
  enum class Record { kBeforeWork, kByWork };

  // (Not a null check on `w` and `u` here: GCC does not take a comparison of member pointers
  // as a constant expression under -fsanitize=undefined.)
  consteval Step(const char* step_name, const char* state, Work w, Undo u,
                 Record r = Record::kBeforeWork)
      : name(step_name), task_state(state), work(w), undo(u), record(r) {
    if (!step_name || !*step_name || !state || !*state)
      throw "a build step needs a name and a task state";
  }
  Step(const char*, const char*, std::nullptr_t, Undo, Record = Record::kBeforeWork) = delete;
  Step(const char*, const char*, Work, std::nullptr_t, Record = Record::kBeforeWork) = delete;

  const char* name;
  const char* task_state;
  Work work;
  Undo undo;
  Record record;
};

inline constexpr uint64_t kGiB = uint64_t{1} << 30;

// True once interrupt_boot() was called.
bool interrupted();

// The overlay (with its base) as the image store would make it (build_steps.cpp).
void create_overlay(const std::string& path, const std::string& base, const std::string& format,
                    uint64_t base_size, uint64_t size, const ComputeOptions& opt,
                    const std::optional<std::string>& key);

// An instance whose disk a storage host made names that host in this file of its directory.
inline constexpr const char* kStorageHostFile = "disk.storage_host";

inline std::string export_name_of(const std::string& uuid) { return "kiln-" + uuid; }
inline std::string domain_name_of(const std::string& uuid) { return "kiln-" + uuid; }

}  // namespace kiln::spawn
