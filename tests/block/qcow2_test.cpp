#include "kiln/block/qcow2.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>

#include "kiln/common/fd.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::block;
using kiln::test::Dev;
using kiln::test::TempDir;

namespace {

struct Variant {
  uint32_t version;
  uint32_t cluster_size;
  uint32_t refcount_bits;
  bool backing;
  bool extended = false;  // extended L2 entries (32 subclusters per cluster)
};

std::string name_of(const testing::TestParamInfo<Variant>& info) {
  const Variant& v = info.param;
  return "v" + std::to_string(v.version) + "_cs" + std::to_string(v.cluster_size) + "_rc" +
         std::to_string(v.refcount_bits) + (v.backing ? "_backing" : "") +
         (v.extended ? "_extl2" : "");
}

// Pseudo-random bytes (splitmix64), fast enough for megabytes per operation.
std::vector<uint8_t> pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> b(len);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(&b[i], &z, std::min<size_t>(8, len - i));
  }
  return b;
}

// Every image here is qcow2, and overlays are opened with their backing chains: say so (a
// probed image that names a backing file is refused; see probe_test.cpp).
Dev open_qcow2(Reactor& r, const std::string& path, bool ro = false, OpenOptions o = {}) {
  o.format = "qcow2";
  return Dev::open(r, path, ro, o);
}

void expect_clean(Reactor& r, const std::string& path) {
  qcow2::CheckResult res = qcow2::check(r, path, qcow2::Repair::kNone);
  EXPECT_EQ(res.corruptions, 0u);
  EXPECT_EQ(res.leaks, 0u);
  EXPECT_EQ(res.check_errors, 0u);
  for (auto& m : res.messages) ADD_FAILURE() << m;
}

class Qcow2Variants : public testing::TestWithParam<Variant> {};

// Random writes, zeroes, discards and flushes, sequential and concurrent, against a byte
// model; the content is compared in full, again after reopening, and the image checked.
TEST_P(Qcow2Variants, RandomOperationsMatchModel) {
  const Variant v = GetParam();
  Reactor r;
  TempDir dir;
  const uint64_t size = std::max<uint64_t>(4u << 20, uint64_t(v.cluster_size) * 24) + 1536;
  std::vector<uint8_t> model(size, 0);
  const std::vector<uint8_t> base_data = pattern(size - 1024, 7);
  const std::string img = dir.file("img.qcow2");
  qcow2::CreateOptions co;
  co.size = size;
  co.version = v.version;
  co.cluster_size = v.cluster_size;
  co.refcount_bits = v.refcount_bits;
  co.extended_l2 = v.extended;
  if (v.backing) {
    qcow2::CreateOptions bo = co;
    bo.extended_l2 = false;
    bo.size = size - 1024;  // the overlay reads zeros past the backing's end
    qcow2::create(r, dir.file("base.qcow2"), bo);
    Dev base = open_qcow2(r, dir.file("base.qcow2"));
    ASSERT_EQ(base.write(0, base_data), 0);
    ASSERT_EQ(base.close(), 0);
    std::memcpy(model.data(), base_data.data(), base_data.size());
    co.backing_file = "base.qcow2";
    co.backing_format = "qcow2";
  }
  qcow2::create(r, img, co);

  Dev d = open_qcow2(r, img);
  ASSERT_EQ(d.dev->size(), size);
  std::mt19937_64 rng(v.cluster_size * 31 + v.refcount_bits + v.version);
  const uint64_t cs = v.cluster_size;
  auto random_range = [&](uint64_t* off, uint64_t* len) {
    const bool aligned = rng() % 2;
    *len = aligned ? cs * (1 + rng() % 3) : 1 + rng() % (3 * cs);
    *len = std::min<uint64_t>(*len, size);
    *off = rng() % (size - *len + 1);
    if (aligned) *off = std::min<uint64_t>(*off / cs * cs, size - *len);
  };
  for (int round = 0; round < 40; ++round) {
    // A batch of concurrent operations on disjoint byte ranges.
    std::vector<std::pair<uint64_t, uint64_t>> taken;
    WaitGroup wg(r);
    int err = 0;
    std::vector<std::vector<uint8_t>> buffers;
    buffers.reserve(16);
    for (int i = 0; i < 16; ++i) {
      uint64_t off, len;
      random_range(&off, &len);
      bool overlaps = false;
      for (auto& [o, l] : taken) overlaps |= off < o + l && o < off + len;
      if (overlaps) continue;
      const int op = int(rng() % 10);
      if (op < 6) {
        buffers.push_back(pattern(len, uint32_t(rng())));
        std::memcpy(&model[off], buffers.back().data(), len);
        auto t = [](BlockDevice* dev, uint64_t o, std::span<const uint8_t> b,
                    int* e) -> Task<void> {
          int rc = co_await dev->write(o, b, 0);
          if (rc) *e = rc;
        };
        r.spawn(t(d.dev.get(), off, buffers.back(), &err), &wg);
      } else if (op < 8) {
        std::memset(&model[off], 0, len);
        auto t = [](BlockDevice* dev, uint64_t o, uint64_t l, unsigned f, int* e) -> Task<void> {
          int rc = co_await dev->write_zeroes(o, l, f);
          if (rc) *e = rc;
        };
        r.spawn(t(d.dev.get(), off, len, rng() % 2 ? unsigned(kWriteNoUnmap) : 0u, &err), &wg);
      } else {
        // Discard changes whole clusters only (whole subclusters with extended L2 entries);
        // what they read afterwards is the driver's documented behaviour: zeros (v3), or the
        // backing file's data (v2 with backing).
        const uint64_t unit = v.extended ? cs / 32 : cs;
        uint64_t first = (off + unit - 1) / unit * unit;
        uint64_t end = off + len == size ? size : (off + len) / unit * unit;
        for (uint64_t p = first; p < end; ++p) {
          const bool from_backing = v.version == 2 && v.backing && p < size - 1024;
          model[p] = from_backing ? base_data[p] : 0;
        }
        auto t = [](BlockDevice* dev, uint64_t o, uint64_t l, int* e) -> Task<void> {
          int rc = co_await dev->discard(o, l);
          if (rc) *e = rc;
        };
        r.spawn(t(d.dev.get(), off, len, &err), &wg);
      }
      taken.emplace_back(off, len);
    }
    auto wait = [](WaitGroup* g) -> Task<void> { co_await g->wait(); };
    r.run(wait(&wg));
    ASSERT_EQ(err, 0) << "round " << round;
    if (round % 7 == 3) {
      ASSERT_EQ(d.flush(), 0);
    }
  }
  auto all = d.read(0, size);
  auto bad = std::mismatch(all.begin(), all.end(), model.begin());
  ASSERT_TRUE(bad.first == all.end()) << "first difference at " << bad.first - all.begin();
  ASSERT_EQ(d.close(), 0);
  expect_clean(r, img);

  Dev again = open_qcow2(r, img, true);
  all = again.read(0, size);
  bad = std::mismatch(all.begin(), all.end(), model.begin());
  ASSERT_TRUE(bad.first == all.end()) << "first difference at " << bad.first - all.begin();
}

INSTANTIATE_TEST_SUITE_P(
    All, Qcow2Variants,
    testing::Values(Variant{3, 65536, 16, false}, Variant{3, 65536, 16, true},
                    Variant{2, 65536, 16, false}, Variant{2, 65536, 16, true},
                    Variant{3, 512, 1, true}, Variant{3, 512, 64, false}, Variant{3, 4096, 2, true},
                    Variant{3, 4096, 8, false}, Variant{3, 16384, 4, true},
                    Variant{3, 32768, 32, true}, Variant{3, 2u << 20, 16, true},
                    Variant{3, 16384, 16, true, true}, Variant{3, 65536, 16, false, true},
                    Variant{3, 65536, 16, true, true}, Variant{3, 131072, 16, true, true},
                    Variant{3, 2u << 20, 16, true, true}),
    name_of);

TEST(Qcow2, FreshImageReadsZerosAndMapsUnallocated) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 10u << 20;
  qcow2::create(r, dir.file("a.qcow2"), co);
  Dev d = open_qcow2(r, dir.file("a.qcow2"), true);
  auto b = d.read(0, 1u << 20);
  EXPECT_TRUE(std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; }));
  std::vector<Extent> ext;
  ASSERT_EQ(r.run(d.dev->block_status(0, co.size, &ext)), 0);
  ASSERT_EQ(ext.size(), 1u);
  EXPECT_EQ(ext[0].length, co.size);
  EXPECT_FALSE(ext[0].present);
  EXPECT_TRUE(ext[0].zero);
}

TEST(Qcow2, OutOfRangeRequestsAreRefused) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  qcow2::create(r, dir.file("a.qcow2"), co);
  Dev d = open_qcow2(r, dir.file("a.qcow2"));
  std::vector<uint8_t> b(4096);
  EXPECT_EQ(r.run(d.dev->read(co.size - 100, b)), -EINVAL);
  EXPECT_EQ(d.write(co.size - 100, b), -ENOSPC);
  EXPECT_EQ(d.zero(co.size, 1), -ENOSPC);
  block::OpenOptions share;  // the image is open for writing above: read it without locks
  share.lock = false;
  Dev ro = open_qcow2(r, dir.file("a.qcow2"), true, share);
  EXPECT_EQ(ro.write(0, b), -EPERM);
  EXPECT_EQ(d.close(), 0);
}

// Many writes in flight into the same clusters of a fresh overlay, with reads racing them:
// every cluster is allocated once, untouched bytes keep the backing data at every instant.
TEST(Qcow2, ConcurrentAllocatingWritesAndRacingReads) {
  Reactor r;
  TempDir dir;
  const uint64_t size = 1u << 20;
  qcow2::CreateOptions co;
  co.size = size;
  qcow2::create(r, dir.file("base.qcow2"), co);
  auto base_data = pattern(size, 3);
  {
    Dev base = open_qcow2(r, dir.file("base.qcow2"));
    ASSERT_EQ(base.write(0, base_data), 0);
    ASSERT_EQ(base.close(), 0);
  }
  co.backing_file = dir.file("base.qcow2");
  co.backing_format = "qcow2";
  qcow2::create(r, dir.file("top.qcow2"), co);
  Dev d = open_qcow2(r, dir.file("top.qcow2"));

  // Each 64 KiB cluster of the first four gets 32 writes of 1 KiB at even KiB offsets.
  std::vector<uint8_t> model = base_data;
  std::vector<std::vector<uint8_t>> bufs;
  bufs.reserve(128);
  WaitGroup wg(r);
  int err = 0, bad_reads = 0;
  auto writer = [](BlockDevice* dev, uint64_t o, std::span<const uint8_t> b, int* e) -> Task<void> {
    int rc = co_await dev->write(o, b, 0);
    if (rc) *e = rc;
  };
  auto reader = [](BlockDevice* dev, uint64_t o, const std::vector<uint8_t>* want,
                   int* bad) -> Task<void> {
    std::vector<uint8_t> got(1024);
    if (co_await dev->read(o, got) != 0 || std::memcmp(got.data(), want->data() + o, 1024)) ++*bad;
  };
  std::mt19937 rng(5);
  for (uint64_t c = 0; c < 4; ++c)
    for (uint64_t k = 0; k < 32; ++k) {
      const uint64_t off = c * 65536 + k * 2048;
      bufs.push_back(pattern(1024, uint32_t(rng())));
      std::memcpy(&model[off], bufs.back().data(), 1024);
      r.spawn(writer(d.dev.get(), off, bufs.back(), &err), &wg);
      r.spawn(reader(d.dev.get(), off + 1024, &base_data, &bad_reads), &wg);
    }
  auto wait = [](WaitGroup* g) -> Task<void> { co_await g->wait(); };
  r.run(wait(&wg));
  EXPECT_EQ(err, 0);
  EXPECT_EQ(bad_reads, 0);
  EXPECT_EQ(d.read(0, size), model);
  std::vector<Extent> ext;
  ASSERT_EQ(r.run(d.dev->block_status(0, size, &ext)), 0);
  ASSERT_GE(ext.size(), 2u);
  EXPECT_EQ(ext[0].length, 4u * 65536);  // four clusters, contiguous on the host
  EXPECT_EQ(ext[0].depth, 0u);
  EXPECT_EQ(ext[1].depth, 1u);
  ASSERT_EQ(d.close(), 0);
  expect_clean(r, dir.file("top.qcow2"));
}

TEST(Qcow2, GrowBeyondTheL1TableAndRefcountTable) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 64 * 1024;
  co.cluster_size = 512;
  co.refcount_bits = 64;  // a refcount block covers 64 clusters: the table must grow often
  qcow2::create(r, dir.file("a.qcow2"), co);
  Dev d = open_qcow2(r, dir.file("a.qcow2"));
  const uint64_t new_size = 8u << 20;
  ASSERT_EQ(r.run(d.dev->resize(new_size)), 0);
  EXPECT_EQ(d.dev->size(), new_size);
  auto data = pattern(new_size / 2, 9);
  ASSERT_EQ(d.write(new_size / 2, data), 0);
  ASSERT_EQ(d.close(), 0);
  expect_clean(r, dir.file("a.qcow2"));
  Dev again = open_qcow2(r, dir.file("a.qcow2"), true);
  EXPECT_EQ(again.dev->size(), new_size);
  EXPECT_EQ(again.read(new_size / 2, data.size()), data);
  auto head = again.read(0, new_size / 2);
  EXPECT_TRUE(std::all_of(head.begin(), head.end(), [](uint8_t x) { return x == 0; }));
}

TEST(Qcow2, ShrinkIsRefused) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  qcow2::create(r, dir.file("a.qcow2"), co);
  Dev d = open_qcow2(r, dir.file("a.qcow2"));
  EXPECT_EQ(r.run(d.dev->resize(1u << 19)), -ENOTSUP);
  EXPECT_EQ(d.close(), 0);
}

TEST(Qcow2, BackingLoopIsRefused) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  qcow2::create(r, dir.file("a.qcow2"), co);
  co.backing_file = "a.qcow2";
  co.backing_format = "qcow2";
  qcow2::create(r, dir.file("b.qcow2"), co);
  co.backing_file = "b.qcow2";
  qcow2::create(r, dir.file("a.qcow2"), co);  // a -> b -> a
  try {
    open_qcow2(r, dir.file("a.qcow2"), true);
    FAIL() << "a loop was opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("loop"), std::string::npos) << e.what();
    EXPECT_EQ(e.reason(), Reason::kCorrupt) << e.what();
  }
}

TEST(Qcow2, DeepChainIsRefusedBeyondTheLimit) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  qcow2::create(r, dir.file("0.qcow2"), co);
  for (int i = 1; i <= 5; ++i) {
    co.backing_file = std::to_string(i - 1) + ".qcow2";
    co.backing_format = "qcow2";
    qcow2::create(r, dir.file(std::to_string(i) + ".qcow2"), co);
  }
  OpenOptions o;
  o.max_chain_depth = 6;
  EXPECT_NO_THROW(open_qcow2(r, dir.file("5.qcow2"), true, o));
  o.max_chain_depth = 5;
  try {
    open_qcow2(r, dir.file("5.qcow2"), true, o);
    ADD_FAILURE() << "a chain deeper than the limit was opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kCorrupt) << e.what();
    EXPECT_NE(std::string(e.what()).find("deeper than 5"), std::string::npos) << e.what();
  }
}

// Each refusal to open says why with a reason a caller can match: a header or table that breaks
// the format is kCorrupt, a valid feature Kiln does not read kUnsupported, a missing file
// kNotFound. The message stays one line naming the image.
TEST(Qcow2, OpenErrorsCarryTheirReason) {
  Reactor r;
  TempDir dir;
  struct Case {
    const char* what;
    size_t offset;  // header bytes to overwrite (big-endian value of `bytes` bytes)
    int bytes;
    uint64_t value;
    Reason reason;
    const char* message;
    uint32_t cluster_size = 65536;
  } cases[] = {
      {"version 4", 4, 4, 4, Reason::kUnsupported, "unsupported qcow2 version 4"},
      {"cluster_bits 30", 20, 4, 30, Reason::kCorrupt, "cluster_bits 30 out of range"},
      {"L1 table past the end", 40, 8, 1ull << 40, Reason::kCorrupt, "L1 table lies past the end"},
      {"L1 table unaligned", 40, 8, 65536 + 512, Reason::kCorrupt, "not cluster aligned"},
      {"huge L1 table", 36, 4, 1u << 30, Reason::kCorrupt, "L1 table is too large"},
      {"encryption", 32, 4, 1, Reason::kUnsupported, "encrypted images are not supported"},
      // QEMU refuses subclusters under 512 bytes too.
      {"extended L2, 4 KiB clusters", 72, 8, 1u << 4, Reason::kUnsupported,
       "extended L2 entries with clusters smaller than 16 KiB are not supported", 4096},
      {"marked corrupt", 72, 8, 1u << 1, Reason::kCorrupt, "image is marked corrupt"},
      {"unknown feature", 72, 8, 1u << 9, Reason::kUnsupported, "incompatible feature bit 9"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string path = dir.file("hostile.qcow2");
    qcow2::CreateOptions co;
    co.size = 1u << 20;
    co.cluster_size = c.cluster_size;
    qcow2::create(r, path, co);
    uint8_t be[8];
    for (int i = 0; i < c.bytes; ++i) be[i] = uint8_t(c.value >> (8 * (c.bytes - 1 - i)));
    {
      common::Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
      ASSERT_EQ(pwrite(fd.get(), be, c.bytes, off_t(c.offset)), c.bytes);
    }
    try {
      open_qcow2(r, path);
      ADD_FAILURE() << "opened";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.reason(), c.reason) << msg;
      EXPECT_NE(msg.find(c.message), std::string::npos) << msg;
      EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  try {
    open_qcow2(r, dir.file("missing.qcow2"));
    ADD_FAILURE() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kNotFound) << e.what();
    EXPECT_EQ(e.code(), ENOENT) << e.what();
  }
}

// Opening an image takes QEMU's advisory lock bytes: one writer, or any number of readers;
// a base under an open overlay cannot be written; -U style opens take no locks.
TEST(Qcow2, ImagesInUseAreLocked) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  qcow2::create(r, dir.file("base.qcow2"), co);
  co.backing_file = "base.qcow2";
  co.backing_format = "qcow2";
  qcow2::create(r, dir.file("top.qcow2"), co);
  auto refused = [&](const std::string& name, bool ro, OpenOptions o = {}) {
    try {
      open_qcow2(r, dir.file(name), ro, o);
      return std::string("opened");
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), EAGAIN) << e.what();
      EXPECT_EQ(e.reason(), Reason::kBusy) << e.what();
      return std::string(e.what());
    }
  };
  {
    Dev writer = open_qcow2(r, dir.file("top.qcow2"));
    EXPECT_NE(refused("top.qcow2", false).find("\"write\" lock"), std::string::npos);
    EXPECT_NE(refused("top.qcow2", true).find("shared \"write\" lock"), std::string::npos);
    EXPECT_NE(refused("base.qcow2", false).find("\"write\" lock"), std::string::npos);
    EXPECT_THROW(qcow2::create(r, dir.file("top.qcow2"), co), Error);  // not truncated...
    OpenOptions share;
    share.lock = false;
    EXPECT_EQ(refused("top.qcow2", true, share), "opened");
    Dev other_reader_of_base = open_qcow2(r, dir.file("base.qcow2"), true);  // readers share
    auto data = pattern(4096, 7);
    EXPECT_EQ(writer.write(0, data), 0);
    EXPECT_EQ(writer.close(), 0);
  }
  Dev again = open_qcow2(r, dir.file("top.qcow2"));  // ...and whole again once let go
  EXPECT_EQ(again.read(0, 4096), pattern(4096, 7));
  EXPECT_EQ(again.close(), 0);
}

// Closing an image lets its locks go even while something else still refers to its open file
// description: here a child forked while the image was open (as a server forks a helper
// that has not yet called exec; an io_uring worker that has not yet let go of the file does
// the same for a moment, which made OpenErrorsCarryTheirReason fail once in CI).
TEST(Qcow2, LocksGoWithTheImageWhileAForkedChildHoldsItsFile) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 1u << 20;
  const std::string path = dir.file("disk.qcow2");
  qcow2::create(r, path, co);
  int gate[2];
  ASSERT_EQ(pipe2(gate, O_CLOEXEC), 0);
  pid_t child;
  {
    Dev d = open_qcow2(r, path);
    child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {  // holds every descriptor of the parent until the pipe closes
      ::close(gate[1]);
      char c;
      while (::read(gate[0], &c, 1) < 0 && errno == EINTR) {
      }
      _exit(0);
    }
    EXPECT_EQ(d.close(), 0);
  }
  std::string error;
  try {
    Dev again = open_qcow2(r, path);
    EXPECT_EQ(again.close(), 0);
  } catch (const Error& e) {
    error = e.what();
  }
  ::close(gate[1]);
  ::close(gate[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_EQ(error, "");
}

// Requests over tens of thousands of clusters (an 8 MiB write allocating 16384 of them, then
// block status over allocated L2 tables whose entries are mostly empty) complete without
// nesting a coroutine resumption per cluster: in the ASan build, where GCC emits no tail calls
// for symmetric transfer, both overflowed the stack before Task returned to its caller like a
// function call when it finishes without suspending.
TEST(Qcow2, BlockStatusOverManyClusters) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 64u << 20;
  co.cluster_size = 512;
  qcow2::create(r, dir.file("a.qcow2"), co);
  Dev d = open_qcow2(r, dir.file("a.qcow2"));
  ASSERT_EQ(d.write(0, pattern(8u << 20, 3)), 0);             // 16384 allocated clusters
  for (uint64_t off = 8u << 20; off < co.size; off += 32768)  // one cluster per L2 table
    ASSERT_EQ(d.write(off, pattern(512, uint32_t(off))), 0);
  std::vector<Extent> ext;
  ASSERT_EQ(r.run(d.dev->block_status(0, co.size, &ext)), 0);
  ASSERT_FALSE(ext.empty());
  uint64_t pos = 0, data = 0;
  for (const Extent& e : ext) {
    EXPECT_EQ(e.offset, pos);
    pos += e.length;
    if (e.data) data += e.length;
  }
  EXPECT_EQ(pos, co.size);
  EXPECT_EQ(data, (8u << 20) + (co.size - (8u << 20)) / 32768 * 512);
  EXPECT_TRUE(ext[0].data);
  EXPECT_EQ(d.close(), 0);
}

TEST(Qcow2, SmallCacheStillCorrect) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 64u << 20;
  co.cluster_size = 4096;  // 512 entries per L2: 32 tables for 64 MiB
  qcow2::create(r, dir.file("a.qcow2"), co);
  OpenOptions o;
  o.l2_cache_bytes = 8 * 4096;  // far fewer slices than tables
  o.refcount_cache_bytes = 8 * 4096;
  Dev d = open_qcow2(r, dir.file("a.qcow2"), false, o);
  std::mt19937_64 rng(11);
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> written;
  for (int i = 0; i < 300; ++i) {
    uint64_t off = (rng() % (co.size / 4096)) * 4096;
    written.emplace_back(off, pattern(4096, uint32_t(i)));
    ASSERT_EQ(d.write(off, written.back().second), 0);
  }
  std::map<uint64_t, std::vector<uint8_t>> last;
  for (auto& [o2, b] : written) last[o2] = b;
  for (auto& [o2, b] : last) ASSERT_EQ(d.read(o2, 4096), b) << o2;
  ASSERT_EQ(d.close(), 0);
  expect_clean(r, dir.file("a.qcow2"));
}

}  // namespace

namespace {

// An acknowledged write must be in the file even if the process dies before a flush: a second
// reader of the file (standing in for the next process) sees it without any flush or close.
TEST(Qcow2, AcknowledgedWritesAreInTheFileBeforeAnyFlush) {
  Reactor r;
  TempDir dir;
  qcow2::CreateOptions co;
  co.size = 8u << 20;
  qcow2::create(r, dir.file("base.qcow2"), co);
  co.backing_file = "base.qcow2";
  co.backing_format = "qcow2";
  qcow2::create(r, dir.file("top.qcow2"), co);
  Dev d = open_qcow2(r, dir.file("top.qcow2"));
  auto data = pattern(3 * 65536 + 1000, 21);
  ASSERT_EQ(d.write(70000, data), 0);     // allocating writes
  ASSERT_EQ(d.zero(4u << 20, 65536), 0);  // a zero cluster over the backing
  block::OpenOptions share;  // `d` holds the write lock: look without locks, as qemu-img -U
  share.lock = false;
  Dev other = open_qcow2(r, dir.file("top.qcow2"), true, share);
  EXPECT_EQ(other.read(70000, data.size()), data);
  std::vector<Extent> ext;
  ASSERT_EQ(r.run(other.dev->block_status(4u << 20, 65536, &ext)), 0);
  ASSERT_EQ(ext.size(), 1u);
  EXPECT_TRUE(ext[0].present && ext[0].zero);
  // What is in the file is consistent (refcounts written before the tables), and the image
  // is marked dirty until it is closed cleanly.
  qcow2::CheckResult res = qcow2::check(r, dir.file("top.qcow2"), qcow2::Repair::kNone, false);
  EXPECT_EQ(res.corruptions, 0u);
  EXPECT_EQ(res.leaks, 0u);
  EXPECT_TRUE(qcow2::read_info(r, dir.file("top.qcow2"), false).dirty);
  ASSERT_EQ(d.close(), 0);
  EXPECT_FALSE(qcow2::read_info(r, dir.file("top.qcow2")).dirty);
  expect_clean(r, dir.file("top.qcow2"));
}

}  // namespace
