// Runs blocking work (creating an image file: writes and fsync) on a thread of its own, so
// that no reactor, and no export served by it, waits for it.
#pragma once

#include <coroutine>
#include <exception>
#include <functional>
#include <thread>

#include "kiln/block/reactor.h"

namespace kiln::nbd {

// co_await OffThread{reactor, fn}: runs fn on a new thread and resumes on `reactor`;
// rethrows what fn threw.
struct OffThread {
  OffThread(block::Reactor* r, std::function<void()> fn) : r(r), fn(std::move(fn)) {}
  block::Reactor* r;
  std::function<void()> fn;
  std::exception_ptr error;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) {
    std::thread([this, h] {
      try {
        fn();
      } catch (...) {
        error = std::current_exception();
      }
      r->post_remote(h);  // the last touch of `this`: the awaiting frame may go on at once
    }).detach();
  }
  void await_resume() {
    if (error) std::rethrow_exception(error);
  }
};

}  // namespace kiln::nbd
