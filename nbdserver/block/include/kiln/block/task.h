// Coroutine plumbing for the data path: a lazy Task<T>, a detached launcher, and the two
// synchronisation primitives the block layer needs (a wait list and an async mutex).
// Everything here is single-threaded: a Task runs on the reactor of the thread that resumes it.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

namespace kiln::block {

template <typename T>
class Task;

namespace detail {

// Coroutine frames come from a per-thread cache of recently freed ones (frame_pool.cpp): the
// data path makes and ends several per request. Any thread may free a frame any thread made.
void* allocate_frame(size_t size);
void free_frame(void* p, size_t size) noexcept;
size_t cached_frames() noexcept;  // frames this thread's cache holds (for tests)

struct FramePooled {
  static void* operator new(size_t size) { return allocate_frame(size); }
  static void operator delete(void* p, size_t size) noexcept { free_frame(p, size); }
};

struct PromiseBase : FramePooled {
  std::coroutine_handle<> continuation;
  std::exception_ptr exception;
  // Meeting point of the awaiter leaving Task::await_suspend and this task reaching its end:
  // whichever comes second goes on with the awaiter (see Task::await_suspend).
  std::atomic<bool> rendezvous{false};

  std::suspend_always initial_suspend() noexcept { return {}; }
  struct FinalAwaiter {
    bool await_ready() noexcept { return false; }
    template <typename P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      PromiseBase& p = h.promise();
      // The awaiter already suspended: resume it. Otherwise the task finished inside the
      // awaiter's await_suspend, which goes on by itself when resume() returns.
      if (p.rendezvous.exchange(true, std::memory_order_acq_rel) && p.continuation)
        return p.continuation;
      return std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  FinalAwaiter final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { exception = std::current_exception(); }
};

template <typename T>
struct Promise : PromiseBase {
  std::optional<T> value;
  Task<T> get_return_object() noexcept;
  template <typename U>
  void return_value(U&& v) {
    value.emplace(std::forward<U>(v));
  }
  T take() {
    if (exception) std::rethrow_exception(exception);
    return std::move(*value);
  }
};

template <>
struct Promise<void> : PromiseBase {
  Task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void take() {
    if (exception) std::rethrow_exception(exception);
  }
};

}  // namespace detail

// A lazily started coroutine. `co_await task` runs it; its exception, if any, is rethrown in
// the caller. A task that finishes without suspending returns to its caller like a function
// call, on the same stack depth: a loop that awaits thousands of such tasks (cache hits) does
// not nest a resumption per iteration, whether or not the compiler turns symmetric transfer
// into tail calls (GCC does not at -O0 or under ASan). A task that suspends resumes its caller
// when it finishes, possibly on another thread (the atomic rendezvous orders the two sides).
template <typename T = void>
class [[nodiscard]] Task {
 public:
  using promise_type = detail::Promise<T>;
  using Handle = std::coroutine_handle<promise_type>;

  Task() = default;
  explicit Task(Handle h) : h_(h) {}
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() {
    if (h_) h_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> caller) noexcept {
    auto& p = h_.promise();
    p.continuation = caller;
    h_.resume();
    // false: it already finished, the caller goes on now; true: it suspended and will resume
    // the caller from its final suspend.
    return !p.rendezvous.exchange(true, std::memory_order_acq_rel);
  }
  T await_resume() { return h_.promise().take(); }

 private:
  Handle h_;
};

namespace detail {
template <typename T>
Task<T> Promise<T>::get_return_object() noexcept {
  return Task<T>{std::coroutine_handle<Promise<T>>::from_promise(*this)};
}
inline Task<void> Promise<void>::get_return_object() noexcept {
  return Task<void>{std::coroutine_handle<Promise<void>>::from_promise(*this)};
}
}  // namespace detail

// A fire-and-forget coroutine: starts at once, frees itself when done.
struct Detached {
  struct promise_type : detail::FramePooled {
    Detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

// Resumes coroutines later, from the reactor loop; implemented by Reactor.
class Scheduler {
 public:
  virtual void post(std::coroutine_handle<> h) = 0;

 protected:
  ~Scheduler() = default;
};

// Coroutines wait here until notify_all(); they are resumed through the scheduler, never
// inline, so a notifier's state is settled before the waiters run.
class WaitList {
 public:
  explicit WaitList(Scheduler& s) : sched_(&s) {}
  struct Awaiter {
    WaitList* list;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { list->waiters_.push_back(h); }
    void await_resume() const noexcept {}
  };
  Awaiter wait() { return Awaiter{this}; }
  void notify_all() {
    for (auto h : waiters_) sched_->post(h);
    waiters_.clear();
  }
  bool empty() const { return waiters_.empty(); }

 private:
  Scheduler* sched_;
  std::vector<std::coroutine_handle<>> waiters_;
};

// A mutex for coroutines on one thread. unlock() hands the lock straight to the first waiter.
class AsyncMutex {
 public:
  explicit AsyncMutex(Scheduler& s) : sched_(&s) {}
  struct Awaiter {
    AsyncMutex* m;
    bool await_ready() noexcept {
      if (m->locked_) return false;
      m->locked_ = true;
      return true;
    }
    void await_suspend(std::coroutine_handle<> h) { m->waiters_.push_back(h); }
    void await_resume() const noexcept {}
  };
  Awaiter lock() { return Awaiter{this}; }
  void unlock() {
    if (head_ < waiters_.size()) {
      sched_->post(waiters_[head_++]);  // lock stays held, ownership moves
      if (head_ == waiters_.size()) {
        waiters_.clear();
        head_ = 0;
      }
    } else {
      locked_ = false;
    }
  }
  bool locked() const { return locked_; }

 private:
  Scheduler* sched_;
  bool locked_ = false;
  std::vector<std::coroutine_handle<>> waiters_;
  size_t head_ = 0;
};

// RAII holder for an AsyncMutex taken with `co_await mutex.lock()`.
class LockGuard {
 public:
  explicit LockGuard(AsyncMutex& m) : m_(&m) {}
  LockGuard(LockGuard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
  LockGuard(const LockGuard&) = delete;
  ~LockGuard() {
    if (m_) m_->unlock();
  }

 private:
  AsyncMutex* m_;
};

// Counts tasks started with spawn() and lets one coroutine wait until all of them finished.
class WaitGroup {
 public:
  explicit WaitGroup(Scheduler& s) : done_(s) {}
  void add() { ++pending_; }
  void done() {
    if (--pending_ == 0) done_.notify_all();
  }
  struct Awaiter {
    WaitGroup* g;
    bool await_ready() const noexcept { return g->pending_ == 0; }
    void await_suspend(std::coroutine_handle<> h) { g->done_.wait().await_suspend(h); }
    void await_resume() const noexcept {}
  };
  Awaiter wait() { return Awaiter{this}; }

 private:
  size_t pending_ = 0;
  WaitList done_;
};

}  // namespace kiln::block
