// The image store (Glance's job, locally) and the base cache (Nova's _base).
//
//   STATE/images/<id>        registered images, copied in at image-create
//   STATE/_base/<digest>     bases: one copy per distinct content (XXH3-128), shared by every
//                            overlay built from it; filled once under STATE/_base/<digest>.lock
//                            (a copy to a temporary name, then rename), so concurrent boots of
//                            one image copy it once; removed only when no image and no instance
//                            refers to it any more.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/spawn/store.h"

namespace kiln::spawn {

// Limits of what image-create accepts.
inline constexpr uint64_t kMaxImageBytes = uint64_t{1} << 42;  // 4 TiB
inline constexpr size_t kMaxNameLength = 63;

// Checks a user-chosen name (images, flavors, instances): 1-63 characters of [A-Za-z0-9._-],
// starting with a letter or digit. Throws Error(kInvalidArgument).
void check_name(const std::string& what, const std::string& name);

class ImageStore {
 public:
  explicit ImageStore(Store& store);

  // Registers `file` as image `name`: the format is probed from the content (and must match
  // `disk_format` when one is given), a qcow2 with a backing file is refused, the file is
  // copied into the store while its XXH3-128 digest is computed. `progress`: show a progress
  // line on stderr.
  Image create(const std::string& name, const std::string& file, const std::string& disk_format,
               bool progress);
  // Refused while an instance was built from the image.
  void remove(const std::string& ref);
  Image get(const std::string& ref);

  std::string image_path(const Image& image) const;
  std::string base_path(const std::string& digest) const;

  // The cached base of `image`, copied (and its digest verified) if it is not there yet.
  // `*filled` tells whether this call copied it.
  std::string ensure_base(const Image& image, bool progress, bool* filled);
  // Removes the base of `digest` if no image and no instance refers to it.
  void prune_base(const std::string& digest);

 private:
  Store& store_;
  std::string images_dir_, base_dir_;
};

// Hex XXH3-128 of a file (32 digits).
std::string file_digest(const std::string& path);

}  // namespace kiln::spawn
