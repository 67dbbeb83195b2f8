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
#include "kiln/common/temp.h"

namespace kiln::test {

using common::TempDir;

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
