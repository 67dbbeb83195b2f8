// Opening an ext2/3/4 filesystem in an image: the source, the partition, libext2fs over our
// io_manager, and the checks that decide whether it may be written.
#include "kiln/fs/filesystem.h"

extern "C" {
#include <e2p/e2p.h>  // a C header without extern "C" of its own
}
#include <et/com_err.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "group_bitmaps.h"
#include "io_channel.h"
#include "kiln/fs/partition.h"
#include "kiln/fs/source.h"

namespace kiln::fs {
namespace {

std::string join_numbers(const std::vector<int>& v) {
  std::string out;
  for (int n : v) out += (out.empty() ? "" : ", ") + std::to_string(n);
  return out;
}

std::string where(const std::string& image, int partition) {
  return partition > 0 ? image + " partition " + std::to_string(partition) : image;
}

std::string describe_content(const FsInfo& info) {
  if (info.type.empty()) return "no filesystem that kiln-fs recognises";
  if (info.type == "jbd") return "an external ext journal, not a filesystem";
  return "a " + info.type + " filesystem";
}

struct Choice {
  int number = 0;
  uint64_t offset = 0, length = 0;
  FsInfo info;
};

Choice choose_partition(Source& src, const OpenOptions& options) {
  const std::string& image = src.name();
  PartitionTable table = read_partition_table(src);
  Choice c;
  if (table.scheme == "none") {
    if (options.partition != 0)
      throw Error(Reason::kInvalidArgument,
                  image + " has no partition table: leave out the partition number");
    c.length = src.size();
    c.info = probe_filesystem(src, 0, c.length);
    return c;
  }
  std::vector<int> numbers;
  for (const auto& p : table.partitions) numbers.push_back(p.number);
  if (options.partition != 0) {
    auto it = std::find_if(table.partitions.begin(), table.partitions.end(),
                           [&](const Partition& p) { return p.number == options.partition; });
    if (it == table.partitions.end())
      throw Error(Reason::kNotFound,
                  image + " has no partition " + std::to_string(options.partition) +
                      (numbers.empty() ? std::string(" (the table is empty)")
                                       : " (partitions: " + join_numbers(numbers) + ")"));
    c.number = it->number;
    c.offset = it->offset;
    c.length = it->length;
    c.info = probe_filesystem(src, c.offset, c.length);
    return c;
  }
  std::vector<Choice> ext;
  for (const auto& p : table.partitions) {
    FsInfo info = probe_filesystem(src, p.offset, p.length);
    if (is_ext_type(info.type)) ext.push_back({p.number, p.offset, p.length, info});
  }
  if (ext.empty())
    throw Error(Reason::kNotFound, image + ": no ext2, ext3 or ext4 filesystem in its " +
                                       table.scheme + " partitions" +
                                       (numbers.empty() ? "" : " (" + join_numbers(numbers) + ")"));
  if (ext.size() > 1) {
    std::vector<int> found;
    for (const auto& e : ext) found.push_back(e.number);
    throw Error(Reason::kInvalidArgument, image + " has several ext filesystems (partitions " +
                                              join_numbers(found) +
                                              "): choose one with --partition");
  }
  return ext[0];
}

// Features named as e2fsprogs names them, for the error messages.
std::string feature_names(int compat_type, uint32_t mask) {
  std::string out;
  for (int bit = 0; bit < 32; ++bit) {
    if (!(mask & (1u << bit))) continue;
    const char* name = e2p_feature2string(compat_type, 1u << bit);
    out += (out.empty() ? "" : ", ") + std::string(name);
  }
  return out;
}

// Why libext2fs must not write this filesystem, or "" if it may.
std::string write_refusal(ext2_filsys fs) {
  ext2_super_block* sb = fs->super;
  // Reading stays possible in every case below.
  const std::string ro = " (read-only use works: ls, cat, stat, mount --ro)";
  if (ext2fs_has_feature_journal_needs_recovery(sb))
    return "its journal needs recovery (the guest was not shut down cleanly) and kiln-fs does "
           "not replay journals: boot the guest or run e2fsck on the image first" +
           ro.substr(0, ro.size() - 1) + "; recent changes in the journal are not visible then)";
  if (ext2fs_has_feature_orphan_present(sb))
    return "its orphan file holds inodes still to be released (not shut down cleanly): run "
           "e2fsck on the image first" +
           ro;
  if (sb->s_state & EXT2_ERROR_FS)
    return "it has errors recorded in its superblock: run e2fsck on the image first" + ro;
  if (!(sb->s_state & EXT2_VALID_FS))
    return "it was not cleanly unmounted: run e2fsck on the image first" + ro;
  if (ext2fs_has_feature_mmp(sb))
    return "it uses multi-mount protection (mmp), which kiln-fs does not take part in" + ro;
  return "";
}

std::string open_error(errcode_t code, bool writable) {
  switch (code) {
    case EXT2_ET_UNSUPP_FEATURE:
      return "it uses incompatible features that libext2fs does not support";
    case EXT2_ET_RO_UNSUPP_FEATURE:
      return writable ? "it uses read-only-compatible features that libext2fs cannot write "
                        "(read-only use works: ls, cat, stat, mount --ro)"
                      : ext2_error(code);
    case EXT2_ET_BAD_MAGIC:
    case EXT2_ET_CORRUPT_SUPERBLOCK:
    case EXT2_ET_SB_CSUM_INVALID:
    case EXT2_ET_UNEXPECTED_BLOCK_SIZE:
      return "its superblock is corrupt (" + ext2_error(code) + "; e2fsck -b may repair it)";
    default:
      return ext2_error(code);
  }
}

}  // namespace

std::string ext2_error(errcode_t code) {
  const char* m = error_message(code);
  return m ? m : "error " + std::to_string(code);
}

Reason ext2_reason(errcode_t code) {
  if (code > 0 && code < 4096) return common::reason_of_errno(int(code));
  switch (code) {
    case EXT2_ET_BLOCK_ALLOC_FAIL:
    case EXT2_ET_INODE_ALLOC_FAIL:
    case EXT2_ET_DIR_NO_SPACE:
    case EXT2_ET_EA_NO_SPACE:
    case EXT2_ET_NO_MEMORY:
      return Reason::kNoSpace;
    case EXT2_ET_UNSUPP_FEATURE:
    case EXT2_ET_RO_UNSUPP_FEATURE:
    case EXT2_ET_UNIMPLEMENTED:
    case EXT2_ET_OP_NOT_SUPPORTED:
      return Reason::kUnsupported;
    case EXT2_ET_RO_FILSYS:
      return Reason::kPermission;
    case EXT2_ET_SHORT_READ:
    case EXT2_ET_SHORT_WRITE:
      return Reason::kIo;
    default:
      return Reason::kCorrupt;
  }
}

std::unique_ptr<Filesystem> Filesystem::open(const std::string& image, const OpenOptions& options) {
  if (options.partition < 0)
    throw Error(Reason::kInvalidArgument,
                image + ": invalid partition number " + std::to_string(options.partition));
  return open(open_source(image, {options.read_only, options.format, options.key_secret}), options);
}

std::unique_ptr<Filesystem> Filesystem::open(std::unique_ptr<Source> source,
                                             const OpenOptions& options) {
  const std::string image = source->name();
  if (options.partition < 0)
    throw Error(Reason::kInvalidArgument,
                image + ": invalid partition number " + std::to_string(options.partition));
  if (!options.read_only && source->read_only())
    throw Error(Reason::kPermission,
                image + ": the source is read-only (open the filesystem read-only)");
  static std::once_flag error_table;
  std::call_once(error_table, [] { initialize_ext2_error_table(); });
  std::unique_ptr<Filesystem> f(new Filesystem());
  f->image_ = image;
  f->read_only_ = options.read_only;
  f->source_ = std::move(source);
  Choice c = choose_partition(*f->source_, options);
  f->partition_ = c.number;
  const std::string name = where(image, c.number);
  if (!is_ext_type(c.info.type))
    // Nothing recognisable is not found; another filesystem (xfs, ntfs, ...) is unsupported.
    throw Error(
        c.info.type.empty() ? Reason::kNotFound : Reason::kUnsupported,
        name + " holds " + describe_content(c.info) + ": kiln-fs opens ext2, ext3 and ext4 only");
  f->type_ = c.info.type;
  f->channel_ = std::make_unique<IoChannel>(*f->source_, c.offset, c.length,
                                            options.read_only ? 0 : options.write_buffer_bytes);
  int flags = EXT2_FLAG_64BITS | EXT2_FLAG_SKIP_MMP;
  if (!options.read_only) flags |= EXT2_FLAG_RW;
  ext2_filsys fs = nullptr;
  errcode_t rc = ext2fs_open2(f->channel_->device_name().c_str(), nullptr, flags, 0, 0,
                              IoChannel::manager(), &fs);
  if (rc) {
    std::string why = open_error(rc, !options.read_only);
    if (rc == EXT2_ET_UNSUPP_FEATURE || rc == EXT2_ET_RO_UNSUPP_FEATURE) {
      // libext2fs does not say which: read them from the superblock.
      ext2_super_block sb;
      if (f->channel_->read(SUPERBLOCK_OFFSET, &sb, sizeof sb) == 0) {
        std::string names =
            rc == EXT2_ET_UNSUPP_FEATURE
                ? feature_names(E2P_FEATURE_INCOMPAT,
                                sb.s_feature_incompat & ~EXT2_LIB_FEATURE_INCOMPAT_SUPP)
                : feature_names(E2P_FEATURE_RO_INCOMPAT,
                                sb.s_feature_ro_compat & ~EXT2_LIB_FEATURE_RO_COMPAT_SUPP);
        if (!names.empty()) why += " (" + names + ")";
      }
    }
    throw Error(ext2_reason(rc), name + ": cannot open the " + f->type_ + " filesystem: " + why);
  }
  f->fs_ = fs;
  const uint64_t fs_bytes = ext2fs_blocks_count(fs->super) * uint64_t{fs->blocksize};
  if (fs_bytes > c.length)
    throw Error(Reason::kCorrupt, name + ": the " + f->type_ + " filesystem (" +
                                      std::to_string(fs_bytes) +
                                      " bytes) is larger than its partition (" +
                                      std::to_string(c.length) + " bytes)");
  if (ext2fs_has_feature_journal_dev(fs->super))
    throw Error(Reason::kUnsupported, name + " is an external ext journal, not a filesystem");
  if (!options.read_only) {
    std::string why = write_refusal(fs);
    if (!why.empty())
      throw Error(ext2_reason(rc),
                  name + ": refusing to write the " + f->type_ + " filesystem: " + why);
  }
  if (options.read_only) return f;  // nothing to allocate from
  switch (options.bitmaps) {
    case OpenOptions::Bitmaps::kAll:
      rc = ext2fs_read_bitmaps(fs);
      break;
    case OpenOptions::Bitmaps::kPerGroup:
      // Not for bigalloc (which libext2fs cannot write safely anyway): all of them then.
      rc = ext2fs_has_feature_bigalloc(fs->super) ? ext2fs_read_bitmaps(fs)
                                                  : GroupBitmaps::attach(fs, f->bitmaps_);
      break;
    case OpenOptions::Bitmaps::kNone:
      break;
  }
  if (rc)
    throw Error(ext2_reason(rc), name + ": cannot read the allocation bitmaps: " + ext2_error(rc));
  return f;
}

Filesystem::~Filesystem() { discard(); }

std::string Filesystem::describe() const { return where(image_, partition_); }

void Filesystem::discard() noexcept {
  if (fs_) {
    ext2fs_free(fs_);
    fs_ = nullptr;
  }
  if (channel_) channel_->discard();
  if (source_) {
    try {
      source_->close(true);
    } catch (...) {
    }
  }
}

size_t Filesystem::pending_write_bytes() const { return channel_ ? channel_->pending_bytes() : 0; }

int Filesystem::write_back() { return channel_ ? channel_->write_back() : 0; }

int Filesystem::write_through(uint64_t offset, const void* data, size_t len) {
  return channel_ ? channel_->write_through(offset, data, len) : -EBADF;
}

void Filesystem::close() {
  std::string error;
  Reason reason = Reason::kIo;
  // The source's close below flushes durably; the flush inside ext2fs_close2 only needs to
  // hand the blocks over.
  if (channel_) channel_->set_source_flush(false);
  if (fs_) {
    errcode_t rc = ext2fs_close2(fs_, 0);
    if (rc) {
      error = describe() + ": cannot write the filesystem's metadata: " + ext2_error(rc);
      reason = ext2_reason(rc);
      ext2fs_free(fs_);
    }
    fs_ = nullptr;
  }
  if (error.empty() && channel_) {
    int rc = channel_->write_back();
    if (rc < 0) {
      error = describe() + ": write error: " + std::strerror(-rc);
      reason = common::reason_of_errno(-rc);
    }
  }
  if (!error.empty()) {
    discard();
    throw Error(reason, error);
  }
  source_->close(false);
}

}  // namespace kiln::fs
