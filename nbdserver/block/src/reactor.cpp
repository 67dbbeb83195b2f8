#include "kiln/block/reactor.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace kiln::block {

Reactor::Reactor(unsigned entries, Issuer issuer) {
  int rc = -EINVAL;
  if (issuer == Issuer::kOwnThread)  // kernels before 6.1 refuse the flags: plain ring there
    rc = io_uring_queue_init(entries, &ring_,
                             IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
  if (rc == -EINVAL) rc = io_uring_queue_init(entries, &ring_, 0);
  if (rc < 0) throw std::runtime_error(std::string("io_uring_queue_init: ") + strerror(-rc));
}

Reactor::~Reactor() {
  if (wake_fd_) {
    // Let the inbox coroutine finish, so that no frame is left behind.
    closing_ = true;
    const uint64_t one = 1;
    if (::write(wake_fd_.get(), &one, sizeof one) == sizeof one) {
      try {
        run_until(inbox_done_);
      } catch (...) {
      }
    }
  }
  io_uring_queue_exit(&ring_);
}

Task<int> Reactor::cancel_fd(int fd) {
  co_return co_await submit(
      [fd](io_uring_sqe* s) { io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL); });
}

void Reactor::enable_remote() {
  if (wake_fd_) return;
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC));
  if (!wake_fd_) throw std::runtime_error(std::string("eventfd: ") + strerror(errno));
  spawn(drain_inbox());
}

void Reactor::post_remote(std::coroutine_handle<> h) {
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    inbox_.push_back(h);
  }
  const uint64_t one = 1;
  ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  (void)n;  // the counter cannot overflow in practice; a failed wake-up would lose nothing queued
}

// Keeps a read of the wake-up eventfd in flight; each completion moves the inbox to the ready
// queue. The pending read also keeps an idle reactor's loop waiting instead of returning.
Task<void> Reactor::drain_inbox() {
  uint64_t count;
  // While the read is pending, only the kernel holds this frame: keep a pointer to it so that
  // LeakSanitizer sees it reachable.
  inbox_frame_ = &count;
  for (;;) {
    const int fd = wake_fd_.get();
    int n = co_await submit(
        [fd, &count](io_uring_sqe* s) { io_uring_prep_read(s, fd, &count, sizeof count, 0); });
    if (n < 0 && n != -EINTR && n != -EAGAIN) break;
    std::vector<std::coroutine_handle<>> work;
    {
      std::lock_guard<std::mutex> lock(inbox_mutex_);
      work.swap(inbox_);
    }
    for (auto h : work) ready_.push_back(h);
    if (closing_) break;
  }
  inbox_done_ = true;
}

Reactor& Reactor::current() {
  thread_local Reactor reactor;
  return reactor;
}

io_uring_sqe* Reactor::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (!sqe) {
    submitted_ += io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Reactor::run_until(const bool& done) {
  std::vector<std::coroutine_handle<>> completed;
  while (!done) {
    while (!ready_.empty()) {
      auto h = ready_.front();
      ready_.pop_front();
      h.resume();
    }
    if (done) break;
    if (inflight_ == 0) throw std::logic_error("reactor: waiting with nothing in flight");
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
      throw std::runtime_error(std::string("io_uring_submit_and_wait: ") + strerror(-rc));
    if (rc > 0) submitted_ += rc;
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      op->result = cqe->res;
      completed.push_back(op->handle);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    inflight_ -= seen;
    for (auto h : completed) h.resume();
    completed.clear();
  }
}

void Reactor::spawn(Task<void> task, WaitGroup* group) {
  if (group) group->add();
  [](Task<void> t, WaitGroup* g) -> Detached {
    co_await t;
    if (g) g->done();
  }(std::move(task), group);
}

Task<int> Reactor::read_full(int fd, std::span<uint8_t> buf, uint64_t offset) {
  if (faults_) [[unlikely]] {
    if (int rc = co_await faults_->before(FileOp::kRead, fd, offset, buf.size()); rc < 0)
      co_return rc;
  }
  size_t done = 0;
  while (done < buf.size()) {
    uint8_t* p = buf.data() + done;
    unsigned len = static_cast<unsigned>(std::min<size_t>(buf.size() - done, 1u << 30));
    uint64_t off = offset + done;
    int res = co_await submit([=](io_uring_sqe* s) { io_uring_prep_read(s, fd, p, len, off); });
    if (res < 0) {
      if (retryable(res)) continue;
      co_return res;
    }
    if (res == 0) {  // end of file: the rest reads as zeros
      std::memset(p, 0, buf.size() - done);
      break;
    }
    done += static_cast<size_t>(res);
  }
  co_return 0;
}

Task<int> Reactor::write_full(int fd, std::span<const uint8_t> buf, uint64_t offset) {
  if (faults_) [[unlikely]] {
    if (int rc = co_await faults_->before(FileOp::kWrite, fd, offset, buf.size()); rc < 0)
      co_return rc;
  }
  size_t done = 0;
  while (done < buf.size()) {
    const uint8_t* p = buf.data() + done;
    unsigned len = static_cast<unsigned>(std::min<size_t>(buf.size() - done, 1u << 30));
    uint64_t off = offset + done;
    int res = co_await submit([=](io_uring_sqe* s) { io_uring_prep_write(s, fd, p, len, off); });
    if (res < 0) {
      if (retryable(res)) continue;
      co_return res;
    }
    if (res == 0) co_return -EIO;
    done += static_cast<size_t>(res);
  }
  co_return 0;
}

Task<int> Reactor::fsync(int fd, bool datasync) {
  if (faults_) [[unlikely]] {
    if (int rc = co_await faults_->before(FileOp::kFsync, fd, 0, 0); rc < 0) co_return rc;
  }
  unsigned flags = datasync ? IORING_FSYNC_DATASYNC : 0;
  int res;
  do {
    res = co_await submit([=](io_uring_sqe* s) { io_uring_prep_fsync(s, fd, flags); });
  } while (retryable(res));
  co_return res;
}

Task<int> Reactor::fallocate(int fd, int mode, uint64_t offset, uint64_t len) {
  if (faults_) [[unlikely]] {
    if (int rc = co_await faults_->before(FileOp::kFallocate, fd, offset, len); rc < 0)
      co_return rc;
  }
  int res;
  do {
    res = co_await submit(
        [=](io_uring_sqe* s) { io_uring_prep_fallocate(s, fd, mode, offset, len); });
  } while (retryable(res));
  co_return res;
}

}  // namespace kiln::block
