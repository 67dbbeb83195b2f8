// Serialising requests on an encrypted image, as QEMU serialises them (tracked requests with
// a "serialising" flag). A write that is not whole 512-byte sectors is a read-modify-write: it
// reads the partial sectors, patches them and writes them back, so a whole-sector write that
// lands between its read and its write would be undone. Cluster locks do not prevent that:
// in-place writes to an allocated cluster take no lock (overlapping writes may land in either
// order), and the read of the RMW takes none either. So an RMW holds its sectors exclusively:
// it starts when no write in flight overlaps them, and no overlapping write (or zeroing or
// discard) starts while it runs. Requests that do not overlap run concurrently.
#pragma once

#include <cstdint>
#include <list>
#include <utility>

#include "kiln/block/task.h"

namespace kiln::block::qcow2 {

class Overlaps {
 public:
  struct Range {
    uint64_t begin, end;
    bool serialising;
  };
  // Holds a range until it goes out of scope.
  class Guard {
   public:
    Guard() = default;
    Guard(Overlaps* o, std::list<Range>::iterator it) : o_(o), it_(it) {}
    Guard(Guard&& g) noexcept : o_(std::exchange(g.o_, nullptr)), it_(g.it_) {}
    Guard& operator=(Guard&& g) noexcept {
      release();
      o_ = std::exchange(g.o_, nullptr);
      it_ = g.it_;
      return *this;
    }
    Guard(const Guard&) = delete;
    ~Guard() { release(); }

   private:
    void release() {
      if (!o_) return;
      o_->in_flight_.erase(it_);
      o_->changed_.notify_all();
      o_ = nullptr;
    }
    Overlaps* o_ = nullptr;
    std::list<Range>::iterator it_;
  };

  explicit Overlaps(Scheduler& s) : changed_(s) {}

  // Waits until [begin, end) may start (no overlapping request in flight if `serialising`, no
  // overlapping serialising one otherwise), then holds it.
  Task<Guard> enter(uint64_t begin, uint64_t end, bool serialising) {
    while (blocked(begin, end, serialising)) co_await changed_.wait();
    in_flight_.push_front({begin, end, serialising});
    co_return Guard(this, in_flight_.begin());
  }

 private:
  bool blocked(uint64_t begin, uint64_t end, bool serialising) const {
    for (const Range& r : in_flight_)
      if (r.begin < end && begin < r.end && (serialising || r.serialising)) return true;
    return false;
  }

  std::list<Range> in_flight_;
  WaitList changed_;
};

}  // namespace kiln::block::qcow2
