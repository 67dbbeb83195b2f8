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
#include <functional>
#include <map>
#include <string>

#include "kiln/common/temp.h"
#include "kiln/spawn/store.h"

namespace kiln::spawn {

// Limits of what image-create accepts.
inline constexpr uint64_t kMaxImageBytes = uint64_t{1} << 42;  // 4 TiB
inline constexpr size_t kMaxNameLength = 63;
// A download stops here unless --max-size says otherwise (a server that streams forever).
inline constexpr uint64_t kDefaultMaxDownloadBytes = uint64_t{64} << 30;  // 64 GiB
// Glance's limits on properties (image_property_quota, and its 255-character columns).
inline constexpr size_t kMaxProperties = 128;
inline constexpr size_t kMaxPropertyLength = 255;

// What image-create records besides the bytes.
struct ImageOptions {
  std::string disk_format;  // expected format; empty: whatever the content is
  std::string checksum;     // "sha256:HEX" or "md5:HEX" to verify, or empty
  int64_t min_disk = 0;     // GiB
  int64_t min_ram = 0;      // MiB
  std::map<std::string, std::string> properties;
  uint64_t max_bytes = kDefaultMaxDownloadBytes;  // downloads only
  bool progress = false;                          // a progress line on stderr
  std::function<bool()> interrupted;              // polled while downloading
};

// Parses "K=V" (--property); checks the key against Glance's reserved names and the limits.
// Throws Error(kInvalidArgument).
std::pair<std::string, std::string> parse_property(const std::string& text);

// Checks a user-chosen name (images, flavors, instances): 1-63 characters of [A-Za-z0-9._-],
// starting with a letter or digit. Throws Error(kInvalidArgument).
void check_name(const std::string& what, const std::string& name);

using common::TempFile;

class ImageStore {
 public:
  explicit ImageStore(Store& store);

  // Registers `file` as image `name`: the file is copied into the store while its digests
  // (hashes.h) are computed, the checksum (if given) is verified, the format is probed from
  // the content (and must match `opt.disk_format` when one is given), and a qcow2 with a
  // backing file, an external data file or anything the block layer refuses to open is
  // refused.
  Image create(const std::string& name, const std::string& file, const ImageOptions& opt);
  Image create(const std::string& name, const std::string& file, const std::string& disk_format,
               bool progress) {
    ImageOptions opt;
    opt.disk_format = disk_format;
    opt.progress = progress;
    return create(name, file, opt);
  }
  // The same for the bytes at `url` (file, http, https; see download.h): downloaded into a
  // temporary file in the store that is removed on any failure, including an interruption.
  Image create_from_url(const std::string& name, const std::string& url, const ImageOptions& opt);
  // The same for a file that was written into the store's temporary name for image `id`
  // (temp_path(id)): hashed and registered in place, under that id, without a copy (an
  // instance snapshot, snapshot.cpp). The file is removed on failure.
  Image adopt(const std::string& name, const std::string& id, const ImageOptions& opt);
  std::string temp_path(const std::string& id) const;
  // Refused while an instance was built from the image.
  void remove(const std::string& ref);
  Image get(const std::string& ref);

  std::string image_path(const Image& image) const;
  std::string base_path(const std::string& digest) const;

  // The cached base of `image`, copied (and its digest verified) if it is not there yet.
  // `*filled` tells whether this call copied it.
  std::string ensure_base(const Image& image, bool progress, bool* filled);
  // Copies `file` into this host's store as the registered image `ref` (a store shared by
  // several hosts has each image's file on the host that registered it): refused unless its
  // digest is the image's. False when the file was there already.
  bool cache(const std::string& ref, const std::string& file, bool progress);
  // Removes the base of `digest` if no image and no instance refers to it.
  void prune_base(const std::string& digest);

 private:
  Store& store_;
  std::string images_dir_, base_dir_;

  void check_new(const std::string& name, const ImageOptions& opt);
  // Probes and inspects `tmp` (already hashed into `img`), then renames it into the store and
  // records `img`; `source` names it in errors.
  Image register_file(Image img, const std::string& tmp, TempFile& guard, const std::string& source,
                      const ImageOptions& opt);
};

// Hex XXH3-128 of a file (32 digits).
std::string file_digest(const std::string& path);

}  // namespace kiln::spawn
