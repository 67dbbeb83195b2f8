// Helpers shared by the block layer tests: a temporary directory removed on every exit path,
// and synchronous wrappers around the asynchronous device API.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"

namespace kiln::test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kiln-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct Dev {
  block::Reactor& r;
  std::unique_ptr<block::BlockDevice> dev;

  static Dev open(block::Reactor& r, const std::string& path, bool ro = false,
                  block::OpenOptions o = {}) {
    o.read_only = ro;
    return Dev{r, r.run(block::open_image(r, path, o))};
  }
  std::vector<uint8_t> read(uint64_t off, uint64_t len) {
    std::vector<uint8_t> b(len);
    int rc = r.run(dev->read(off, b));
    EXPECT_EQ(rc, 0) << "read " << off << "+" << len;
    return b;
  }
  int write(uint64_t off, const std::vector<uint8_t>& data, unsigned flags = 0) {
    return r.run(dev->write(off, data, flags));
  }
  int zero(uint64_t off, uint64_t len, unsigned flags = 0) {
    return r.run(dev->write_zeroes(off, len, flags));
  }
  int discard(uint64_t off, uint64_t len) { return r.run(dev->discard(off, len)); }
  int flush() { return r.run(dev->flush()); }
  int close() {
    int rc = r.run(dev->close());
    dev.reset();
    return rc;
  }
};

}  // namespace kiln::test
