// The conversion engine (kiln/block/convert.h). A few coroutines share one cursor over the
// source's block status: each takes the next unit (a run of zero blocks, or up to a buffer of
// data blocks, on a grid of the target's allocation unit so that no write is a partial
// cluster), reads it, decides block by block what to write, and writes it — in unit order
// unless out_of_order. Compression runs on the worker pool; the reactor thread only does I/O.
#include "kiln/block/convert.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "kiln/block/qcow2.h"
#include "kiln/block/worker_pool.h"

namespace kiln::block {

namespace {

constexpr uint64_t kStatusChunk = uint64_t{1} << 30;
constexpr uint64_t kMaxZeroUnit = uint64_t{1} << 30;

bool all_zero(const uint8_t* p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

struct Unit {
  uint64_t offset = 0, length = 0;
  bool zero = false;
  uint64_t seq = 0;
};

// What to do with one block of a data unit.
enum class Action : uint8_t { kData, kZero, kSkip };

class Converter {
 public:
  Converter(Reactor& r, BlockDevice& src, BlockDevice& dst, const ConvertOptions& o)
      : r_(r), src_(src), dst_(dst), o_(o), size_(src.size()), carve_(r), turn_(r) {
    const uint32_t cluster = qcow2::cluster_size(dst);
    if (o.compress) {
      grid_ = cluster;
    } else if (uint32_t unit = o.target_preallocated ? 0 : qcow2::allocation_unit(dst)) {
      grid_ = unit;
    } else {
      // Raw (or preallocated): zero detection on blocks of -S (whole sectors), 4 KiB at most.
      grid_ = o.sparse_size ? std::min<uint64_t>(o.sparse_size, 4096) : 4096;
    }
    buffer_ = std::max<uint64_t>(o.buffer_size / grid_ * grid_, grid_);
  }

  Task<void> run(ConvertStats* stats) {
    if (o_.compress && (!o_.pool || !qcow2::cluster_size(dst_)))
      throw Error(EINVAL, "compression needs a qcow2 target and a worker pool");
    if (dst_.size() < size_) throw Error(EINVAL, "the target is smaller than the source");
    report();
    WaitGroup group(r_);
    const unsigned n = std::max(1u, o_.coroutines);
    for (unsigned i = 0; i < n; ++i) r_.spawn(worker(), &group);
    co_await group.wait();
    if (err_ == 0) {
      if (int rc = co_await dst_.flush(); rc < 0) fail(rc, "error while writing", size_);
    }
    if (err_ != 0) throw Error(-err_, message_);
    if (stats) *stats = stats_;
  }

 private:
  void fail(int rc, const char* what, uint64_t offset) {
    if (err_ == 0) {
      err_ = rc;
      message_ =
          std::string(what) + " at byte " + std::to_string(offset) + ": " + std::strerror(-rc);
      turn_.notify_all();  // nobody waits for a turn that may never come
    }
  }

  void report() {
    if (o_.progress) o_.progress(done_, size_);
  }

  // --- the cursor over the source's block status ---

  // Makes the extents cover [pos_, end) (clipped to the size).
  Task<int> ensure(uint64_t end) {
    end = std::min(end, size_);
    while (status_end_ < end) {
      const uint64_t len = std::min(kStatusChunk, size_ - status_end_);
      std::vector<Extent> got;
      if (int rc = co_await src_.block_status(status_end_, len, &got); rc < 0) {
        fail(rc, "error while reading block status", status_end_);
        co_return rc;
      }
      uint64_t covered = status_end_;
      for (const Extent& e : got) {
        if (e.offset != covered || e.length == 0 || e.length > status_end_ + len - e.offset) {
          fail(-EIO, "inconsistent block status", e.offset);
          co_return -EIO;
        }
        covered += e.length;
        extents_.push_back(e);
      }
      if (covered == status_end_) {
        fail(-EIO, "inconsistent block status", covered);
        co_return -EIO;
      }
      status_end_ = covered;
    }
    co_return 0;
  }

  // Whether [a, b) (covered by the extents) reads as zeros; `zero_end` gets where the run of
  // zero extents starting at `a` ends.
  bool range_zero(uint64_t a, uint64_t b, uint64_t* zero_end) {
    while (!extents_.empty() && extents_.front().offset + extents_.front().length <= a)
      extents_.pop_front();
    uint64_t end = a;
    for (const Extent& e : extents_) {
      if (!e.zero || e.offset > end) break;
      end = e.offset + e.length;
    }
    *zero_end = end;
    return end >= b;
  }

  // The next unit, or false at the end (or after an error).
  Task<bool> next_unit(Unit* u) {
    co_await carve_.lock();
    LockGuard guard(carve_);
    if (err_ || pos_ >= size_) co_return false;
    const uint64_t a = pos_;
    uint64_t b = std::min(size_, a + grid_);
    if (co_await ensure(b) < 0) co_return false;
    uint64_t zend;
    // -S 0: no zero detection, everything is data (qemu-img fully allocates the target).
    const bool zero = o_.sparse_size != 0 && range_zero(a, b, &zend);
    if (zero) {
      uint64_t end = std::min(zend, a + kMaxZeroUnit);
      if (end < size_) end = std::max(b, a + (end - a) / grid_ * grid_);
      b = std::min(end, size_);
    } else {
      while (b < size_ && b - a < buffer_) {
        const uint64_t nb = std::min(size_, b + grid_);
        if (co_await ensure(nb) < 0) co_return false;
        if (o_.sparse_size != 0 && range_zero(b, nb, &zend)) break;
        b = nb;
      }
    }
    *u = Unit{a, b - a, zero, next_seq_++};
    pos_ = b;
    co_return true;
  }

  // --- ordering of writes ---

  Task<void> my_turn(uint64_t seq) {
    if (o_.out_of_order) co_return;
    while (write_seq_ != seq && err_ == 0) co_await turn_.wait();
  }
  void end_turn(uint64_t seq) {
    if (o_.out_of_order) return;
    if (write_seq_ == seq) {
      ++write_seq_;
      turn_.notify_all();
    }
  }

  // --- the target's backing file (-B) ---

  // Reads what the target's backing file shows at [off, off + buf.size()) (zeros beyond it).
  Task<int> read_backing(uint64_t off, std::span<uint8_t> buf) {
    BlockDevice& b = *o_.target_backing;
    uint64_t have = off < b.size() ? std::min<uint64_t>(buf.size(), b.size() - off) : 0;
    if (have)
      if (int rc = co_await b.read(off, buf.first(have)); rc < 0) co_return rc;
    std::memset(buf.data() + have, 0, buf.size() - have);
    co_return 0;
  }

  // 1 if the backing file reads as zeros over [off, off + len), 0 if not, or -errno.
  Task<int> backing_zero(uint64_t off, uint64_t len) {
    BlockDevice& b = *o_.target_backing;
    if (off >= b.size()) co_return 1;
    std::vector<Extent> ext;
    if (int rc = co_await b.block_status(off, std::min(len, b.size() - off), &ext); rc < 0)
      co_return rc;
    for (const Extent& e : ext)
      if (!e.zero) co_return 0;
    co_return 1;
  }

  // --- one unit ---

  Task<int> zero_unit(const Unit& u) {
    bool need = !o_.target_zeroed;
    if (o_.target_backing) {
      int rc = co_await backing_zero(u.offset, u.length);
      if (rc < 0) {
        fail(rc, "error while reading", u.offset);
        co_return rc;
      }
      need = rc == 0;
    }
    co_await my_turn(u.seq);
    if (!need) {
      stats_.skipped_bytes += u.length;
      co_return 0;
    }
    if (int rc = co_await dst_.write_zeroes(u.offset, u.length, 0); rc < 0) {
      fail(rc, "error while writing", u.offset);
      co_return rc;
    }
    stats_.zero_bytes += u.length;
    co_return 0;
  }

  // Decides, block by block of the grid, what the data unit `u` (read into `buf`) needs.
  Task<int> classify(const Unit& u, std::span<const uint8_t> buf, std::vector<uint8_t>& bbuf,
                     std::vector<Action>* actions) {
    const size_t blocks = (u.length + grid_ - 1) / grid_;
    actions->assign(blocks, Action::kData);
    if (o_.target_backing) {
      bbuf.resize(u.length);
      if (int rc = co_await read_backing(u.offset, bbuf); rc < 0) {
        fail(rc, "error while reading", u.offset);
        co_return rc;
      }
    }
    for (size_t i = 0; i < blocks; ++i) {
      const size_t at = i * grid_;
      const size_t n = std::min<uint64_t>(grid_, u.length - at);
      const uint8_t* p = buf.data() + at;
      if (o_.target_backing) {
        if (std::memcmp(p, bbuf.data() + at, n) == 0)
          (*actions)[i] = Action::kSkip;
        else if (o_.sparse_size && all_zero(p, n))
          (*actions)[i] = Action::kZero;
      } else if (o_.sparse_size && all_zero(p, n)) {
        (*actions)[i] = o_.target_zeroed ? Action::kSkip : Action::kZero;
      }
    }
    // Runs of zeros shorter than -S are written as data, as qemu-img does.
    if (o_.sparse_size > grid_) {
      for (size_t i = 0; i < blocks;) {
        if ((*actions)[i] == Action::kData) {
          ++i;
          continue;
        }
        size_t j = i;
        while (j < blocks && (*actions)[j] != Action::kData) ++j;
        const uint64_t run = std::min<uint64_t>(j * grid_, u.length) - i * grid_;
        // A run at the unit's edge may go on in the neighbour: left as found.
        const bool at_edge =
            (i == 0 && u.offset != 0) || (j == blocks && u.offset + u.length < size_);
        if (run < o_.sparse_size && !at_edge)
          for (size_t k = i; k < j; ++k)
            if ((*actions)[k] != Action::kSkip || !o_.target_backing) (*actions)[k] = Action::kData;
        i = j;
      }
    }
    co_return 0;
  }

  Task<int> write_run(Action a, uint64_t off, std::span<const uint8_t> data) {
    int rc = 0;
    if (a == Action::kSkip) {
      stats_.skipped_bytes += data.size();
    } else if (a == Action::kZero) {
      rc = co_await dst_.write_zeroes(off, data.size(), 0);
      stats_.zero_bytes += data.size();
    } else {
      rc = co_await dst_.write(off, data, 0);
      stats_.data_bytes += data.size();
    }
    if (rc < 0) fail(rc, "error while writing", off);
    co_return rc;
  }

  Task<int> data_unit(const Unit& u, std::span<uint8_t> buf, std::vector<uint8_t>& bbuf) {
    if (int rc = co_await src_.read(u.offset, buf); rc < 0) {
      fail(rc, "error while reading", u.offset);
      co_return rc;
    }
    std::vector<Action> actions;
    if (int rc = co_await classify(u, buf, bbuf, &actions); rc < 0) co_return rc;

    std::vector<std::vector<uint8_t>> packed;
    if (o_.compress) {
      // All the unit's clusters in one job: a worker thread compresses, the reactor waits.
      packed.resize(actions.size());
      int crc = 0;
      co_await o_.pool->run(r_, [&] {
        for (size_t i = 0; i < actions.size() && crc == 0; ++i) {
          if (actions[i] != Action::kData) continue;
          const size_t at = i * grid_;
          crc = qcow2::compress_cluster(
              dst_, buf.subspan(at, std::min<uint64_t>(grid_, u.length - at)), &packed[i]);
        }
      });
      if (crc < 0) {
        fail(crc, "error while compressing", u.offset);
        co_return crc;
      }
    }

    co_await my_turn(u.seq);
    if (o_.compress) {
      for (size_t i = 0; i < actions.size(); ++i) {
        const uint64_t at = i * grid_;
        const auto data = buf.subspan(at, std::min<uint64_t>(grid_, u.length - at));
        if (actions[i] != Action::kData) {
          if (int rc = co_await write_run(actions[i], u.offset + at, data); rc < 0) co_return rc;
          continue;
        }
        const uint64_t cluster = (u.offset + at) / grid_;
        int rc = co_await qcow2::write_compressed(dst_, cluster, data, packed[i]);
        if (rc == -EEXIST) rc = co_await dst_.write(u.offset + at, data, 0);  // -n: taken
        if (rc < 0) {
          fail(rc, "error while writing", u.offset + at);
          co_return rc;
        }
        stats_.data_bytes += data.size();
        if (!packed[i].empty()) ++stats_.compressed_clusters;
      }
      co_return 0;
    }
    for (size_t i = 0; i < actions.size();) {
      size_t j = i + 1;
      while (j < actions.size() && actions[j] == actions[i]) ++j;
      const uint64_t at = i * grid_;
      const uint64_t end = std::min<uint64_t>(j * grid_, u.length);
      if (int rc = co_await write_run(actions[i], u.offset + at, buf.subspan(at, end - at)); rc < 0)
        co_return rc;
      i = j;
    }
    co_return 0;
  }

  Task<void> worker() {
    std::vector<uint8_t> buf(buffer_), bbuf;
    Unit u;
    while (co_await next_unit(&u)) {
      if (u.zero)
        co_await zero_unit(u);
      else
        co_await data_unit(u, std::span<uint8_t>(buf).first(u.length), bbuf);
      end_turn(u.seq);
      done_ += u.length;
      report();
    }
  }

  Reactor& r_;
  BlockDevice& src_;
  BlockDevice& dst_;
  const ConvertOptions& o_;
  const uint64_t size_;
  uint64_t grid_ = 4096;
  uint64_t buffer_ = 0;

  AsyncMutex carve_;
  std::deque<Extent> extents_;  // the source's block status over [pos_, status_end_)
  uint64_t status_end_ = 0;
  uint64_t pos_ = 0;
  uint64_t next_seq_ = 0;

  uint64_t write_seq_ = 0;
  WaitList turn_;

  uint64_t done_ = 0;
  int err_ = 0;
  std::string message_;
  ConvertStats stats_;
};

}  // namespace

Task<void> convert(Reactor& reactor, BlockDevice& src, BlockDevice& dst,
                   const ConvertOptions& options, ConvertStats* stats) {
  Converter c(reactor, src, dst, options);
  co_await c.run(stats);
}

}  // namespace kiln::block
