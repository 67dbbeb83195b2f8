// Memory held for clients, bounded per connection and in total. Connections run on several
// reactor threads, so the total is an atomic and a connection waiting for room is woken from
// whichever thread gives bytes back.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <mutex>
#include <vector>

#include "kiln/block/reactor.h"

namespace kiln::nbd {

// One coroutine waiting until some condition holds; any thread may wake it. The condition is
// checked again after the waiter is armed, so a wake-up between the caller's own check and
// the suspension is not lost.
class Wakeup {
 public:
  template <typename Ready>
  struct Awaiter {
    Wakeup* w;
    block::Reactor* r;
    Ready ready;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
      w->handle_ = h;
      w->reactor_ = r;
      w->armed_.store(true);
      // Already true: go on now, unless a waker got here first (it resumes us instead).
      if (ready() && w->armed_.exchange(false)) return false;
      return true;
    }
    void await_resume() const noexcept {}
  };
  // Suspends until wake() (resuming on `r`), or not at all if ready() holds once armed.
  template <typename Ready>
  Awaiter<Ready> wait(block::Reactor& r, Ready ready) {
    return Awaiter<Ready>{this, &r, std::move(ready)};
  }
  // Resumes the waiter, if there is one. Safe from any thread.
  void wake() {
    if (armed_.exchange(false)) reactor_->post_remote(handle_);
  }

 private:
  std::atomic<bool> armed_{false};
  std::coroutine_handle<> handle_;
  block::Reactor* reactor_ = nullptr;
};

// The server-wide count of bytes held for requests and replies.
class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t limit) : limit_(limit) {}
  // Takes `n` bytes if the total stays within the limit.
  bool try_take(uint64_t n);
  // Takes `n` bytes whatever the total (the guaranteed request of an idle connection).
  void force_take(uint64_t n) { used_.fetch_add(n); }
  // Gives `n` bytes back and wakes every connection waiting for room.
  void give_back(uint64_t n);
  void add_waiter(Wakeup* w);
  void remove_waiter(Wakeup* w);
  uint64_t used() const { return used_.load(); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
  std::atomic<size_t> waiting_{0};
  std::mutex mutex_;
  std::vector<Wakeup*> waiters_;
};

}  // namespace kiln::nbd
