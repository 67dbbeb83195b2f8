// Format probing and backing files. A guest that owns a raw disk can write anything into it,
// including a qcow2 header that names a host file (/etc/shadow, another tenant's disk) as its
// backing file with format raw. Opening that disk without an explicit format finds "qcow2";
// if the backing file were then opened, the host file's bytes would show through every
// unallocated cluster, and copy-on-write would copy them into the guest's disk. So a probed
// image never opens a backing file: it is refused, naming the backing file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::block;
using kiln::test::Dev;
using kiln::test::TempDir;

namespace {

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
}

bool contains(const std::vector<uint8_t>& hay, const std::string& needle) {
  return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

const std::string kSecret = "HOST-SECRET:root:$6$salt$hash:19000:0:99999:7:::\n";

struct HostileDisk {
  std::string disk, secret;
};

// The raw disk of a guest that wrote a qcow2 header naming `secret` (format raw) as backing.
// `dirty`: the header also has the dirty bit, so a writable open would repair refcounts.
HostileDisk make_hostile_disk(Reactor& r, const TempDir& dir, bool dirty) {
  HostileDisk h{dir.file("guest.raw"), dir.file("shadow")};
  std::vector<uint8_t> secret;
  while (secret.size() < (256u << 10)) secret.insert(secret.end(), kSecret.begin(), kSecret.end());
  write_file(h.secret, secret);
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  co.backing_file = h.secret;  // absolute: the host file itself
  co.backing_format = "raw";
  qcow2::create(r, h.disk, co);
  if (dirty) {
    int fd = ::open(h.disk.c_str(), O_RDWR | O_CLOEXEC);
    uint8_t features[8] = {0, 0, 0, 0, 0, 0, 0, 1};  // incompatible features: dirty
    EXPECT_EQ(pwrite(fd, features, 8, 72), 8);
    ::close(fd);
  }
  return h;
}

TEST(Probe, ProbedImageNamingABackingFileIsRefused) {
  for (bool read_only : {true, false}) {
    SCOPED_TRACE(read_only ? "read-only" : "read-write");
    Reactor r;
    TempDir dir;
    HostileDisk h = make_hostile_disk(r, dir, /*dirty=*/true);
    const std::vector<uint8_t> before = file_bytes(h.disk);
    try {
      Dev d = Dev::open(r, h.disk, read_only);  // no format: probed
      std::vector<uint8_t> got = d.read(0, 64u << 10);
      ADD_FAILURE() << "the probed image was opened; it reads "
                    << (contains(got, kSecret) ? "the host file" : "something");
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.code(), EPERM) << msg;
      EXPECT_EQ(e.reason(), Reason::kPermission) << msg;
      EXPECT_NE(msg.find(h.secret), std::string::npos) << msg;  // names the backing file
      EXPECT_NE(msg.find("-f qcow2"), std::string::npos) << msg;
      EXPECT_NE(msg.find("--format=qcow2"), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    // Nothing was written to the disk: not the repair of the dirty image, not host bytes.
    const std::vector<uint8_t> after = file_bytes(h.disk);
    EXPECT_TRUE(after == before);
    EXPECT_FALSE(contains(after, kSecret));
  }
}

// What the refusal tells the user to do works: the format given explicitly means the image is
// trusted, and it opens with its backing file. Given as raw (what the disk really is), the
// header reads as the guest's own bytes.
TEST(Probe, ExplicitFormatOpensTheImageAsTold) {
  Reactor r;
  TempDir dir;
  HostileDisk h = make_hostile_disk(r, dir, /*dirty=*/false);
  OpenOptions o;
  o.format = "qcow2";
  {
    Dev trusted = Dev::open(r, h.disk, true, o);
    EXPECT_EQ(trusted.dev->chain_length(), 1u);
    EXPECT_TRUE(contains(trusted.read(0, 4096), kSecret));
  }
  o.format = "raw";
  Dev raw = Dev::open(r, h.disk, true, o);
  const std::vector<uint8_t> content = raw.read(0, raw.dev->size());
  const std::vector<uint8_t> file = file_bytes(h.disk);
  ASSERT_GE(content.size(), file.size());
  EXPECT_TRUE(std::equal(file.begin(), file.end(), content.begin()));
  EXPECT_FALSE(contains(content, kSecret));
}

// Probing keeps working where no backing file is involved: a qcow2 without one, a raw file,
// and a probed image opened without its backing chain (what info and check do).
TEST(Probe, ProbingStillOpensImagesWithoutBacking) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  qcow2::create(r, dir.file("plain.qcow2"), co);
  {
    Dev d = Dev::open(r, dir.file("plain.qcow2"));
    EXPECT_STREQ(d.dev->format(), "qcow2");
    EXPECT_EQ(d.write(0, std::vector<uint8_t>(4096, 0x5a)), 0);
    EXPECT_EQ(d.close(), 0);
  }
  write_file(dir.file("plain.raw"), std::vector<uint8_t>(8192, 0x11));
  Dev raw = Dev::open(r, dir.file("plain.raw"), true);
  EXPECT_STREQ(raw.dev->format(), "raw");

  HostileDisk h = make_hostile_disk(r, dir, /*dirty=*/false);
  OpenOptions no_backing;
  no_backing.open_backing = false;
  Dev top = Dev::open(r, h.disk, true, no_backing);
  EXPECT_EQ(top.dev->chain_length(), 0u);
  EXPECT_FALSE(contains(top.read(0, 64u << 10), kSecret));
  EXPECT_EQ(qcow2::read_info(r, h.disk).backing_file, h.secret);
}

}  // namespace
