// One io_uring per thread. Coroutines submit file operations through awaitables; the loop
// submits them in batches (submit_and_wait), reaps completions in one pass and resumes the
// waiting coroutines.
#pragma once

#include <liburing.h>

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "kiln/block/task.h"
#include "kiln/common/fd.h"

namespace kiln::block {

// A test hook under the block layer (leveldb's fault-injecting Env, at the level of file
// operations): the reactor asks it before each whole-buffer file operation whether to run it.
// This kernel has no device-mapper, so failed writes, failed fsyncs and slow writes are made
// here. Production code never installs one; an unarmed reactor pays one predictable branch.
enum class FileOp : uint8_t { kRead, kWrite, kFsync, kFallocate };
class FaultInjector {
 public:
  virtual ~FaultInjector() = default;
  // Returns 0 to let the operation run, or -errno to complete it with that error without
  // touching the file. May suspend to delay the operation (something else must then be in
  // flight on the reactor, or it has nothing to wait for). `offset`/`length` are 0 for fsync.
  virtual Task<int> before(FileOp op, int fd, uint64_t offset, uint64_t length) = 0;
};

class Reactor final : public Scheduler {
 public:
  // Who submits to the ring. kAnyThread: whichever thread runs the reactor at the time (a
  // reactor behind a mutex, as kiln-fs's image source). kOwnThread: only the thread that made
  // it, which lets the kernel run completion work when that thread waits for completions
  // instead of interrupting it whenever an operation finishes (SINGLE_ISSUER|DEFER_TASKRUN;
  // kiln-nbd's serving threads). post_remote() is still the way in from other threads.
  enum class Issuer { kAnyThread, kOwnThread };
  explicit Reactor(unsigned entries = 256, Issuer issuer = Issuer::kAnyThread);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // The reactor of the calling thread, created on first use.
  static Reactor& current();

  void post(std::coroutine_handle<> h) override { ready_.push_back(h); }

  // Cross-thread hand-off. `post_remote` may be called from any thread: the coroutine resumes
  // on this reactor's thread. `co_await reactor.schedule()` moves the calling coroutine there.
  // A reactor that takes remote work must have called enable_remote() on its own thread.
  void enable_remote();
  void post_remote(std::coroutine_handle<> h);
  struct ScheduleAwaiter {
    Reactor* r;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { r->post_remote(h); }
    void await_resume() const noexcept {}
  };
  ScheduleAwaiter schedule() { return ScheduleAwaiter{this}; }

  // A free submission entry; submits what is queued when the ring is full.
  io_uring_sqe* get_sqe();

  // Runs the loop until `done` is true. Throws if nothing can make progress.
  void run_until(const bool& done);

  // Runs `task` to completion on this reactor and returns its result.
  template <typename T>
  T run(Task<T> task) {
    bool done = false;
    std::exception_ptr error;
    if constexpr (std::is_void_v<T>) {
      [](Task<T> t, bool& d, std::exception_ptr& e) -> Detached {
        try {
          co_await t;
        } catch (...) {
          e = std::current_exception();
        }
        d = true;
      }(std::move(task), done, error);
      run_until(done);
      if (error) std::rethrow_exception(error);
    } else {
      std::optional<T> value;
      [](Task<T> t, bool& d, std::exception_ptr& e, std::optional<T>& v) -> Detached {
        try {
          v.emplace(co_await t);
        } catch (...) {
          e = std::current_exception();
        }
        d = true;
      }(std::move(task), done, error, value);
      run_until(done);
      if (error) std::rethrow_exception(error);
      return std::move(*value);
    }
  }

  // Starts `task` now without waiting for it; `group` (optional) is told when it ends.
  void spawn(Task<void> task, WaitGroup* group = nullptr);

  // Awaitables for single io_uring operations; they return the raw CQE result (bytes or -errno).
  struct Op {
    std::coroutine_handle<> handle;
    int result = 0;
  };
  template <typename Prep>
  struct Awaiter {
    Reactor* r;
    Prep prep;
    Op op;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      op.handle = h;
      io_uring_sqe* sqe = r->get_sqe();
      prep(sqe);
      io_uring_sqe_set_data(sqe, &op);
      ++r->inflight_;
    }
    int await_resume() const noexcept { return op.result; }
  };
  template <typename Prep>
  Awaiter<Prep> submit(Prep prep) {
    return Awaiter<Prep>{this, std::move(prep), {}};
  }

  // Suspends the calling coroutine for `d` (an io_uring timeout; completes with -ETIME). The
  // timespec lives in the awaiter, in the caller's frame, until the kernel has read it.
  auto sleep(std::chrono::nanoseconds d) {
    const auto whole = std::chrono::duration_cast<std::chrono::seconds>(d);
    return submit([ts = __kernel_timespec{whole.count(), (d - whole).count()}](
                      io_uring_sqe* s) mutable { io_uring_prep_timeout(s, &ts, 0, 0); });
  }

  // An operation that ended with this result is submitted again (-EAGAIN, -EINTR).
  static constexpr bool retryable(int res) { return res == -EAGAIN || res == -EINTR; }

  // Whole-buffer file I/O: short transfers and -EAGAIN/-EINTR are resubmitted. read_full
  // fills what lies past the end of the file with zeros. Both return 0 or -errno.
  Task<int> read_full(int fd, std::span<uint8_t> buf, uint64_t offset);
  Task<int> write_full(int fd, std::span<const uint8_t> buf, uint64_t offset);
  Task<int> fsync(int fd, bool datasync);
  Task<int> fallocate(int fd, int mode, uint64_t offset, uint64_t len);
  // Cancels every operation in flight on `fd` (they complete with -ECANCELED).
  Task<int> cancel_fd(int fd);

  uint64_t submitted() const { return submitted_; }

  // Buffered file reads and writes through HostFile made with pread/pwrite on the calling
  // thread instead of io_uring (HostFile::read_full/write_full). For a caller that waits for
  // each request anyway, one at a time (kiln-fs's image source): it saves the io_uring round
  // trip, and for writes the hand-off of every buffered write on ext4 to an io-wq worker (a
  // wake-up and two context switches). Never for a reactor with other work to overlap
  // (kiln-nbd's): the thread blocks in the system call. Off while a fault injector is set.
  void set_inline_file_io(bool on) { inline_file_io_ = on; }
  bool inline_file_io() const { return inline_file_io_ && !faults_; }

  // Installs (or, with nullptr, removes) a fault injector for the operations above. Tests only.
  void set_fault_injector(FaultInjector* f) { faults_ = f; }
  // The installed injector (nullptr in production): HostFile's direct I/O asks it too.
  FaultInjector* fault_injector() const { return faults_; }

 private:
  Task<void> drain_inbox();
  bool closing_ = false;
  void* inbox_frame_ = nullptr;
  bool inbox_done_ = false;

  io_uring ring_;
  std::deque<std::coroutine_handle<>> ready_;
  common::Fd wake_fd_;  // closed after the ring (members go after the destructor body)
  std::mutex inbox_mutex_;
  std::vector<std::coroutine_handle<>> inbox_;
  size_t inflight_ = 0;
  uint64_t submitted_ = 0;
  FaultInjector* faults_ = nullptr;
  bool inline_file_io_ = false;
};

}  // namespace kiln::block
