// libext2fs's I/O goes through an io_manager: this one reads and writes a window of a Source
// (the partition), keeps writes in memory until a flush, and never touches anything outside
// the window.
#pragma once

#include <ext2fs/ext2fs.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::fs {

class Source;

class IoChannel {
 public:
  // Writes are kept in memory until flush() or until more than `buffer_limit` bytes are
  // pending (0: write through).
  IoChannel(Source& source, uint64_t offset, uint64_t length, size_t buffer_limit);
  ~IoChannel();
  IoChannel(const IoChannel&) = delete;
  IoChannel& operator=(const IoChannel&) = delete;

  // What to pass to ext2fs_open2 as the device name and the manager.
  const std::string& device_name() const { return name_; }
  static io_manager manager();

  // Writes pending blocks to the source (no source flush). 0 or -errno.
  int write_back();
  // Drops pending blocks: they never reach the source.
  void discard();
  size_t pending_bytes() const;

  // Byte-level access to the window, seen through the pending writes. 0 or -errno.
  int read(uint64_t offset, void* buf, size_t len);
  int write(uint64_t offset, const void* buf, size_t len);
  // Straight to the source, past the buffer (file data, which nothing buffered may refer to
  // yet; see FuseMountOptions::write_data). Pending writes to the same bytes are older, so
  // they are dropped. 0 or -errno.
  int write_through(uint64_t offset, const void* buf, size_t len);
  int flush();  // write_back + source flush (unless set_source_flush(false))
  // Off while the caller is about to close the source, which flushes it anyway: saves the
  // fdatasyncs of a second flush.
  void set_source_flush(bool on) { source_flush_ = on; }

  // Bytes read from the source (reads that pending writes cover entirely are not counted),
  // and bytes written by libext2fs (the same block written twice counts twice).
  uint64_t bytes_read() const { return bytes_read_; }
  uint64_t bytes_written() const { return bytes_written_; }

  // The channel registered under `name` (for the manager's open), or nullptr.
  static IoChannel* find(const std::string& name);

 private:
  // A sequential run of writes grows one extent up to this size, then starts the next.
  static constexpr size_t kMaxAppend = 1u << 20;
  // After this many bytes written through, the source is asked to start writing them to the
  // disk (Source::start_writeback), so that the flush at the end does not do it all.
  static constexpr uint64_t kWritebackStep = 8u << 20;

  int read_locked(uint64_t offset, void* buf, size_t len);
  // Whether pending writes cover every byte of [offset, end).
  bool covered_locked(uint64_t offset, uint64_t end) const;
  int write_back_locked();
  void buffer_write(uint64_t offset, const uint8_t* data, size_t len);
  // Forgets the pending bytes of [offset, end), splitting the extents it cuts.
  void drop_locked(uint64_t offset, uint64_t end);

  Source& source_;
  const uint64_t offset_;
  const uint64_t length_;
  const size_t buffer_limit_;
  std::string name_;
  mutable std::mutex mutex_;
  // Pending writes: window offset -> bytes. Extents never overlap (a write over several
  // merges them); byte-granular, so no write needs to read the source first.
  std::map<uint64_t, std::vector<uint8_t>> dirty_;
  size_t dirty_bytes_ = 0;
  uint64_t through_since_writeback_ = 0;  // bytes written through since the last hint
  bool source_flush_ = true;
  uint64_t bytes_read_ = 0;
  uint64_t bytes_written_ = 0;
};

}  // namespace kiln::fs
