#include "io_channel.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <iterator>

#include "kiln/fs/source.h"

namespace kiln::fs {
namespace {

std::mutex registry_mutex;
std::map<std::string, IoChannel*>& registry() {
  static std::map<std::string, IoChannel*> channels;
  return channels;
}

IoChannel* self(io_channel ch) { return static_cast<IoChannel*>(ch->private_data); }

// A request of `count` blocks, or of -count bytes when count is negative (libext2fs's rule).
bool request_bytes(io_channel ch, unsigned long long block, int count, uint64_t* offset,
                   size_t* len) {
  const uint64_t bs = static_cast<uint64_t>(ch->block_size);
  *len = count < 0 ? static_cast<size_t>(-static_cast<int64_t>(count))
                   : static_cast<size_t>(count) * bs;
  if (block > UINT64_MAX / bs) return false;
  *offset = block * bs;
  return true;
}

errcode_t ch_open(const char* name, int flags, io_channel* out) {
  IoChannel* owner = IoChannel::find(name ? name : "");
  if (!owner) return EXT2_ET_BAD_DEVICE_NAME;
  io_channel ch = nullptr;
  errcode_t rc = ext2fs_get_mem(sizeof(struct_io_channel), &ch);
  if (rc) return rc;
  std::memset(ch, 0, sizeof *ch);
  rc = ext2fs_get_mem(std::strlen(name) + 1, &ch->name);
  if (rc) {
    ext2fs_free_mem(&ch);
    return rc;
  }
  std::strcpy(ch->name, name);
  ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
  ch->manager = IoChannel::manager();
  ch->block_size = 1024;
  ch->refcount = 1;
  ch->private_data = owner;
  (void)flags;  // read-only or not is the Source's business: it refuses writes itself
  *out = ch;
  return 0;
}

errcode_t ch_close(io_channel ch) {
  if (--ch->refcount > 0) return 0;
  // Pending writes stay with the IoChannel: Filesystem::close writes them, a discard drops them.
  ext2fs_free_mem(&ch->name);
  ext2fs_free_mem(&ch);
  return 0;
}

errcode_t ch_set_blksize(io_channel ch, int blksize) {
  if (blksize <= 0 || blksize > (1 << 16)) return EXT2_ET_INVALID_ARGUMENT;
  ch->block_size = blksize;
  return 0;
}

errcode_t ch_read_blk64(io_channel ch, unsigned long long block, int count, void* data) {
  uint64_t offset;
  size_t len;
  if (!request_bytes(ch, block, count, &offset, &len)) return EXT2_ET_LLSEEK_FAILED;
  int rc = self(ch)->read(offset, data, len);
  if (rc == -ERANGE) {
    std::memset(data, 0, len);
    return EXT2_ET_SHORT_READ;
  }
  return rc < 0 ? static_cast<errcode_t>(-rc) : 0;
}

errcode_t ch_write_blk64(io_channel ch, unsigned long long block, int count, const void* data) {
  uint64_t offset;
  size_t len;
  if (!request_bytes(ch, block, count, &offset, &len)) return EXT2_ET_LLSEEK_FAILED;
  int rc = self(ch)->write(offset, data, len);
  if (rc == -ERANGE) return EXT2_ET_SHORT_WRITE;
  return rc < 0 ? static_cast<errcode_t>(-rc) : 0;
}

errcode_t ch_read_blk(io_channel ch, unsigned long block, int count, void* data) {
  return ch_read_blk64(ch, block, count, data);
}

errcode_t ch_write_blk(io_channel ch, unsigned long block, int count, const void* data) {
  return ch_write_blk64(ch, block, count, data);
}

errcode_t ch_write_byte(io_channel ch, unsigned long offset, int count, const void* data) {
  if (count < 0) return EXT2_ET_INVALID_ARGUMENT;
  int rc = self(ch)->write(offset, data, static_cast<size_t>(count));
  if (rc == -ERANGE) return EXT2_ET_SHORT_WRITE;
  return rc < 0 ? static_cast<errcode_t>(-rc) : 0;
}

errcode_t ch_flush(io_channel ch) {
  int rc = self(ch)->flush();
  return rc < 0 ? static_cast<errcode_t>(-rc) : 0;
}

errcode_t ch_set_option(io_channel, const char*, const char*) { return EXT2_ET_INVALID_ARGUMENT; }

errcode_t ch_get_stats(io_channel ch, io_stats* out) {
  // libext2fs reads the numbers through the pointer it gets; keep them per channel.
  static thread_local struct_io_stats stats;
  stats.num_fields = 2;
  stats.bytes_read = self(ch)->bytes_read();
  stats.bytes_written = self(ch)->bytes_written();
  if (out) *out = &stats;
  return 0;
}

struct_io_manager make_manager() {
  struct_io_manager m;
  std::memset(&m, 0, sizeof m);
  m.magic = EXT2_ET_MAGIC_IO_MANAGER;
  m.name = "kiln-fs I/O manager";
  m.open = ch_open;
  m.close = ch_close;
  m.set_blksize = ch_set_blksize;
  m.read_blk = ch_read_blk;
  m.write_blk = ch_write_blk;
  m.flush = ch_flush;
  m.write_byte = ch_write_byte;
  m.set_option = ch_set_option;
  m.get_stats = ch_get_stats;
  m.read_blk64 = ch_read_blk64;
  m.write_blk64 = ch_write_blk64;
  // discard, zeroout and cache_readahead stay null: libext2fs then writes zeros itself.
  return m;
}

std::atomic<uint64_t> next_id{1};

}  // namespace

io_manager IoChannel::manager() {
  static struct_io_manager m = make_manager();
  return &m;
}

IoChannel::IoChannel(Source& source, uint64_t offset, uint64_t length, size_t buffer_limit)
    : source_(source), offset_(offset), length_(length), buffer_limit_(buffer_limit) {
  // Not the image name: ext2fs_open2 cuts a device name at '?' (io options), and URIs have one.
  name_ = "kiln-fs:" + std::to_string(next_id++);
  std::lock_guard<std::mutex> guard(registry_mutex);
  registry()[name_] = this;
}

IoChannel::~IoChannel() {
  std::lock_guard<std::mutex> guard(registry_mutex);
  registry().erase(name_);
}

IoChannel* IoChannel::find(const std::string& name) {
  std::lock_guard<std::mutex> guard(registry_mutex);
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : it->second;
}

size_t IoChannel::pending_bytes() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return dirty_bytes_;
}

int IoChannel::read(uint64_t offset, void* buf, size_t len) {
  std::lock_guard<std::mutex> guard(mutex_);
  return read_locked(offset, buf, len);
}

bool IoChannel::covered_locked(uint64_t offset, uint64_t end) const {
  auto it = dirty_.upper_bound(offset);
  if (it == dirty_.begin()) return false;
  --it;  // the last extent that starts at or before `offset`
  for (uint64_t at = offset; it != dirty_.end() && it->first <= at; ++it) {
    at = std::max<uint64_t>(at, it->first + it->second.size());
    if (at >= end) return true;
  }
  return false;
}

int IoChannel::read_locked(uint64_t offset, void* buf, size_t len) {
  if (offset > length_ || len > length_ - offset) return -ERANGE;
  if (len == 0) return 0;
  const uint64_t end = offset + len;
  // A block written since the last write-back (an inode-table block, a directory block, an
  // extent leaf: libext2fs reads them back before every change) is read from memory; only
  // what the pending writes do not cover goes to the source.
  if (!covered_locked(offset, end)) {
    int rc = source_.pread(buf, len, offset_ + offset);
    if (rc < 0) return rc;
    bytes_read_ += len;
  }
  // Pending writes are newer than what the source holds.
  auto it = dirty_.lower_bound(offset);
  if (it != dirty_.begin() && std::prev(it)->first + std::prev(it)->second.size() > offset) --it;
  for (; it != dirty_.end() && it->first < end; ++it) {
    const uint64_t from = std::max(it->first, offset);
    const uint64_t to = std::min<uint64_t>(it->first + it->second.size(), end);
    std::memcpy(static_cast<uint8_t*>(buf) + (from - offset),
                it->second.data() + (from - it->first), to - from);
  }
  return 0;
}

void IoChannel::buffer_write(uint64_t offset, const uint8_t* data, size_t len) {
  const uint64_t end = offset + len;
  auto next = dirty_.lower_bound(offset);  // the first extent starting at or after `offset`
  // A rewrite inside one pending extent (inode tables, bitmaps, directory blocks written
  // again and again): in place, without rebuilding the extent.
  auto inside = next;
  if (inside == dirty_.end() || inside->first != offset) {
    inside = inside == dirty_.begin() ? dirty_.end() : std::prev(inside);
  }
  if (inside != dirty_.end() && inside->first <= offset &&
      end <= inside->first + inside->second.size()) {
    std::memcpy(inside->second.data() + (offset - inside->first), data, len);
    return;
  }
  if (next != dirty_.begin()) {
    auto prev = std::prev(next);
    const uint64_t prev_end = prev->first + prev->second.size();
    // Sequential writes: append to the extent that ends where this one starts.
    if (prev_end == offset && (next == dirty_.end() || next->first >= end) &&
        prev->second.size() + len <= kMaxAppend) {
      prev->second.insert(prev->second.end(), data, data + len);
      dirty_bytes_ += len;
      return;
    }
    if (prev_end > offset) next = prev;  // overlaps from the left
  }
  // Merge the new bytes with every extent they overlap into one extent.
  uint64_t start = offset, stop = end;
  auto last = next;
  for (; last != dirty_.end() && last->first < end; ++last) {
    start = std::min(start, last->first);
    stop = std::max<uint64_t>(stop, last->first + last->second.size());
  }
  std::vector<uint8_t> merged(static_cast<size_t>(stop - start));
  for (auto it = next; it != last; ++it) {
    std::memcpy(merged.data() + (it->first - start), it->second.data(), it->second.size());
    dirty_bytes_ -= it->second.size();
  }
  std::memcpy(merged.data() + (offset - start), data, len);
  dirty_.erase(next, last);
  dirty_bytes_ += merged.size();
  dirty_.emplace(start, std::move(merged));
}

int IoChannel::write(uint64_t offset, const void* buf, size_t len) {
  std::lock_guard<std::mutex> guard(mutex_);
  if (offset > length_ || len > length_ - offset) return -ERANGE;
  if (len == 0) return 0;
  bytes_written_ += len;
  if (buffer_limit_ == 0) return source_.pwrite(buf, len, offset_ + offset);
  buffer_write(offset, static_cast<const uint8_t*>(buf), len);
  if (dirty_bytes_ > buffer_limit_) return write_back_locked();
  return 0;
}

int IoChannel::write_through(uint64_t offset, const void* buf, size_t len) {
  std::lock_guard<std::mutex> guard(mutex_);
  if (offset > length_ || len > length_ - offset) return -ERANGE;
  if (len == 0) return 0;
  bytes_written_ += len;
  drop_locked(offset, offset + len);
  int rc = source_.pwrite(buf, len, offset_ + offset);
  through_since_writeback_ += len;
  if (rc == 0 && through_since_writeback_ >= kWritebackStep) {
    through_since_writeback_ = 0;
    source_.start_writeback();
  }
  return rc;
}

void IoChannel::drop_locked(uint64_t offset, uint64_t end) {
  auto it = dirty_.lower_bound(offset);
  if (it != dirty_.begin() && std::prev(it)->first + std::prev(it)->second.size() > offset) --it;
  while (it != dirty_.end() && it->first < end) {
    const uint64_t first = it->first;
    std::vector<uint8_t> bytes = std::move(it->second);
    const uint64_t last = first + bytes.size();
    dirty_bytes_ -= bytes.size();
    it = dirty_.erase(it);
    if (last > end) {  // the part after the range stays; nothing else starts before `last`
      std::vector<uint8_t> after(bytes.begin() + static_cast<ptrdiff_t>(end - first), bytes.end());
      dirty_bytes_ += after.size();
      it = std::next(dirty_.emplace_hint(it, end, std::move(after)));
    }
    if (first < offset) {  // and so does the part before it
      bytes.resize(static_cast<size_t>(offset - first));
      dirty_bytes_ += bytes.size();
      dirty_.emplace(first, std::move(bytes));
    }
  }
}

int IoChannel::write_back() {
  std::lock_guard<std::mutex> guard(mutex_);
  return write_back_locked();
}

int IoChannel::write_back_locked() {
  constexpr size_t kMaxWrite = 4u << 20;
  for (auto it = dirty_.begin(); it != dirty_.end();) {
    const auto& data = it->second;
    for (size_t done = 0; done < data.size();) {
      const size_t n = std::min(data.size() - done, kMaxWrite);
      int rc = source_.pwrite(data.data() + done, n, offset_ + it->first + done);
      if (rc < 0) return rc;  // what is left stays pending
      done += n;
    }
    dirty_bytes_ -= data.size();
    it = dirty_.erase(it);
  }
  return 0;
}

void IoChannel::discard() {
  std::lock_guard<std::mutex> guard(mutex_);
  dirty_.clear();
  dirty_bytes_ = 0;
}

int IoChannel::flush() {
  std::lock_guard<std::mutex> guard(mutex_);
  int rc = write_back_locked();
  if (rc < 0) return rc;
  return source_.read_only() || !source_flush_ ? 0 : source_.flush();
}

}  // namespace kiln::fs
