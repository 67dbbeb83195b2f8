// An ext2/3/4 filesystem inside a disk image, opened in user space: the image (a local raw or
// qcow2 file through the block layer, or an nbd:// / nbd+unix:// export through libnbd), the
// partition that holds the filesystem, and libext2fs on top of an io_manager of our own.
//
//   auto fs = kiln::fs::Filesystem::open("vm1.qcow2", {.partition = 1});
//   ext2_filsys h = fs->handle();   // any libext2fs call
//   fs->close();                    // ext2fs_close + flush of the source + close of the image
//
// Writes are buffered in memory (up to OpenOptions::write_buffer_bytes) and reach the image
// only at close() or at a flush (ext2fs_flush / io_channel_flush). A Filesystem destroyed
// without close() discards what was not yet written: an operation that fails half-way leaves
// the image as it was, as long as it wrote less than the buffer holds.
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "kiln/common/error.h"

namespace kiln::fs {

// Every failure of kiln-fs's library: a common::Error, with a reason callers and tests match
// (docs/common.md) and one clear line naming the image and the problem. A damaged partition
// table or filesystem is kCorrupt, a path that is not there kNotFound, a refusal for safety
// (a symbolic link, a filesystem libext2fs cannot write safely) kPermission or kUnsupported.
class Error : public common::Error {
 public:
  Error(common::Reason reason, const std::string& what) : common::Error(reason, what) {}
  // The tools' own failures (reading a local file, writing standard output): kIo.
  explicit Error(const std::string& what) : common::Error(common::Reason::kIo, what) {}
};
using common::Reason;

class Source;
class IoChannel;
class GroupBitmaps;

struct OpenOptions {
  // 1-based partition number (MBR: 1-4 primary, 5+ logical; GPT: the entry's index), or 0 to
  // choose: the whole disk if it holds a filesystem, otherwise the only partition that holds
  // an ext2/3/4 filesystem (an error if there are none or several).
  int partition = 0;
  bool read_only = false;
  // Local images only: "raw", "qcow2", or empty to probe the top image (backing formats are
  // never probed, see docs/block-layer.md).
  std::string format;
  // Writes kept in memory before they are written back to the image (0: write through).
  size_t write_buffer_bytes = size_t{256} << 20;
  // Local qcow2 LUKS images: the passphrase (see SourceOptions::key_secret).
  std::optional<std::string> key_secret;
  // Allocation bitmaps of a writable open (read-only opens read none):
  // - kAll: every group's, read at open (what libext2fs's allocators expect of any caller);
  // - kPerGroup: a group's when an allocation or a free first reaches it, and at close only
  //   the groups that changed are written (a few files into a large filesystem). Callers that
  //   take or free inodes themselves must tell it first (src/group_bitmaps.h; Guest does);
  // - kNone: the caller reads them (fuse_mount does).
  enum class Bitmaps { kAll, kPerGroup, kNone };
  Bitmaps bitmaps = Bitmaps::kAll;
};

class Filesystem {
 public:
  // Opens IMAGE (a path, or an nbd:// or nbd+unix:// URI) and the ext2/3/4 filesystem in it.
  // Writable opens are refused with a clear Error when libext2fs cannot write the filesystem
  // safely (a journal that needs recovery, errors recorded, unknown features, ...).
  static std::unique_ptr<Filesystem> open(const std::string& image, const OpenOptions& options);
  // The same on a source the caller opened (options.format is not used; the source must be
  // writable unless options.read_only). The Filesystem owns and closes it.
  static std::unique_ptr<Filesystem> open(std::unique_ptr<Source> source,
                                          const OpenOptions& options);

  // Without close(): discards buffered writes and closes the image without flushing.
  ~Filesystem();
  Filesystem(const Filesystem&) = delete;
  Filesystem& operator=(const Filesystem&) = delete;

  // The libext2fs handle. Opened with EXT2_FLAG_64BITS, bitmaps loaded as
  // OpenOptions::bitmaps says; EXT2_FLAG_RW unless read-only. Valid until close() or destruction.
  // Not thread-safe: callers serialise.
  ext2_filsys handle() const { return fs_; }
  bool read_only() const { return read_only_; }
  const std::string& image() const { return image_; }
  int partition() const { return partition_; }  // 0: whole disk
  // "ext2", "ext3" or "ext4".
  const std::string& type() const { return type_; }
  // "IMAGE" or "IMAGE partition N": how errors name this filesystem.
  std::string describe() const;

  // Writes everything back: ext2fs_close (superblock, group descriptors, bitmaps), the
  // buffered blocks, a flush of the source, and the close of the image. Throws Error; the
  // handle is gone afterwards either way.
  void close();

  // Bytes of writes kept in memory, not yet in the image.
  size_t pending_write_bytes() const;
  // Writes the kept writes to the image, without flushing the image. 0 or -errno.
  int write_back();
  // Writes LEN bytes at OFFSET (bytes into the filesystem) straight to the image, past the
  // buffer, dropping what the buffer held for them. For file data the caller knows no
  // metadata in the image can refer to (FuseMountOptions::write_data). 0 or -errno.
  int write_through(uint64_t offset, const void* data, size_t len);

 private:
  Filesystem() = default;
  void discard() noexcept;

  ext2_filsys fs_ = nullptr;
  std::unique_ptr<Source> source_;
  std::unique_ptr<IoChannel> channel_;
  std::unique_ptr<GroupBitmaps> bitmaps_;  // with OpenOptions::Bitmaps::kPerGroup
  std::string image_;
  std::string type_;
  int partition_ = 0;
  bool read_only_ = false;
};

// libext2fs's error code as text ("Bad magic number in super-block").
std::string ext2_error(errcode_t code);
// Its reason: an errno's own; no space or no inode left kNoSpace; a feature libext2fs lacks
// kUnsupported; a read-only filesystem kPermission; any other libext2fs code (a bad magic
// number, a corrupt directory, an illegal block number) kCorrupt.
common::Reason ext2_reason(errcode_t code);

}  // namespace kiln::fs
