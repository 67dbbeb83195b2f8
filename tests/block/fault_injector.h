// A fault-injecting file layer for the block layer's tests: rules that fail or hold file
// operations, matched by kind, file and offset, installed on a Reactor with
// set_fault_injector(). Holding an operation (a Gate) makes races deterministic: the test
// decides what happens while a write is "on its way to the disk".
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/block/reactor.h"
#include "kiln/block/task.h"

namespace kiln::test {

// Operations that reach a gate wait there until release().
class Gate {
 public:
  explicit Gate(block::Scheduler& s) : waiters_(s) {}
  block::Task<void> pass() {
    ++held_;
    co_await waiters_.wait();
    --held_;
  }
  void release() { waiters_.notify_all(); }
  int held() const { return held_; }

 private:
  block::WaitList waiters_;
  int held_ = 0;
};

class Faults final : public block::FaultInjector {
 public:
  struct Rule {
    block::FileOp op = block::FileOp::kWrite;
    int fd = -1;        // -1: any file
    uint64_t from = 0;  // reads/writes touching [from, to) match; fsyncs always do
    uint64_t to = ~uint64_t{0};
    int count = -1;        // how many operations it still applies to; -1: all
    int error = -5;        // -errno to fail with (-EIO); 0: let the operation run
    Gate* gate = nullptr;  // hold matching operations here first
    int hits = 0;          // operations it applied to
  };

  explicit Faults(block::Reactor& r) : r_(r) { r_.set_fault_injector(this); }
  ~Faults() override { r_.set_fault_injector(nullptr); }
  Faults(const Faults&) = delete;
  Faults& operator=(const Faults&) = delete;

  // Returns the rule, to read its `hits` or change it later.
  Rule& add(Rule rule) {
    rules_.push_back(std::make_unique<Rule>(rule));
    return *rules_.back();
  }
  void clear() { rules_.clear(); }
  // Operations seen, by kind (whether or not a rule matched).
  int seen(block::FileOp op) const { return seen_[static_cast<int>(op)]; }

  block::Task<int> before(block::FileOp op, int fd, uint64_t offset, uint64_t length) override {
    ++seen_[static_cast<int>(op)];
    for (auto& rule : rules_) {
      Rule& r = *rule;
      if (r.op != op || r.count == 0 || (r.fd >= 0 && r.fd != fd)) continue;
      if (op != block::FileOp::kFsync && (offset + length <= r.from || offset >= r.to)) continue;
      if (r.count > 0) --r.count;
      ++r.hits;
      const int error = r.error;  // the rule may be removed while the operation is held
      if (Gate* gate = r.gate) co_await gate->pass();
      co_return error;
    }
    co_return 0;
  }

 private:
  block::Reactor& r_;
  std::vector<std::unique_ptr<Rule>> rules_;
  int seen_[4] = {};
};

}  // namespace kiln::test
