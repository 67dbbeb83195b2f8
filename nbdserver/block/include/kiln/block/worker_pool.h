// A fixed pool of threads for CPU work that must not run on a reactor thread (compression):
// a coroutine hands a function to the pool and is resumed on its reactor when it has run.
// The reactor thread keeps doing I/O and metadata meanwhile.
#pragma once

#include <condition_variable>
#include <coroutine>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "kiln/block/reactor.h"

namespace kiln::block {

class WorkerPool {
 public:
  // `threads` workers (at least one). The reactors that await run() must have called
  // Reactor::enable_remote() on their own thread.
  explicit WorkerPool(unsigned threads);
  ~WorkerPool();  // waits for the jobs queued so far
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  unsigned size() const { return unsigned(threads_.size()); }

  struct Job {
    std::function<void()> fn;
    Reactor* reactor;
    std::coroutine_handle<> handle;
    std::exception_ptr error;
  };
  struct Awaiter {
    WorkerPool* pool;
    Job job;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      job.handle = h;
      pool->push(&job);
    }
    void await_resume() {
      if (job.error) std::rethrow_exception(job.error);
    }
  };
  // `co_await pool.run(reactor, fn)`: runs `fn` on a worker thread; the caller resumes on
  // `reactor` (an exception thrown by `fn` is rethrown there). `fn` must not touch what the
  // reactor's coroutines use meanwhile.
  Awaiter run(Reactor& reactor, std::function<void()> fn) {
    return Awaiter{this, Job{std::move(fn), &reactor, {}, nullptr}};
  }

 private:
  void push(Job* job);
  void work();

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace kiln::block
