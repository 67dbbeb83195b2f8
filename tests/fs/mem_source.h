// A Source over a byte vector, for unit tests: counts writes and can fail on demand.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kiln/fs/source.h"

namespace kiln::fs::testing {

class MemSource final : public Source {
 public:
  explicit MemSource(size_t size, std::string name = "mem.img")
      : bytes_(size), name_(std::move(name)) {}
  MemSource(std::vector<uint8_t> bytes, std::string name = "mem.img")
      : bytes_(std::move(bytes)), name_(std::move(name)) {}

  uint64_t size() const override { return bytes_.size(); }
  bool read_only() const override { return read_only_; }
  const std::string& name() const override { return name_; }
  int pread(void* buf, size_t len, uint64_t off) override {
    if (off > bytes_.size() || len > bytes_.size() - off) return -EINVAL;
    std::memcpy(buf, bytes_.data() + off, len);
    ++reads_;
    return 0;
  }
  int pwrite(const void* buf, size_t len, uint64_t off) override {
    if (read_only_) return -EROFS;
    if (off > bytes_.size() || len > bytes_.size() - off) return -EINVAL;
    if (fail_writes_) return -EIO;
    std::memcpy(bytes_.data() + off, buf, len);
    ++writes_;
    written_.emplace_back(off, len);
    return 0;
  }
  int flush() override {
    ++flushes_;
    return 0;
  }
  void close(bool) override { closed_ = true; }

  std::vector<uint8_t> bytes_;
  std::string name_;
  bool read_only_ = false;
  bool fail_writes_ = false;
  bool closed_ = false;
  int reads_ = 0;
  int writes_ = 0;
  std::vector<std::pair<uint64_t, size_t>> written_;  // offset and length of every write
  int flushes_ = 0;
};

// Forwards to a source the test keeps (a Filesystem takes ownership of what it is given).
class Borrowed final : public Source {
 public:
  explicit Borrowed(Source& s) : s_(s) {}
  uint64_t size() const override { return s_.size(); }
  bool read_only() const override { return s_.read_only(); }
  const std::string& name() const override { return s_.name(); }
  int pread(void* b, size_t n, uint64_t o) override { return s_.pread(b, n, o); }
  int pwrite(const void* b, size_t n, uint64_t o) override { return s_.pwrite(b, n, o); }
  int flush() override { return s_.flush(); }
  void close(bool d) override { s_.close(d); }

 private:
  Source& s_;
};

}  // namespace kiln::fs::testing
