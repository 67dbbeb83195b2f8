// Receive pacing: how long a connection's reader lets requests gather in the socket before its
// next receive.
//
// A server faster than its client wakes up for every one or two requests the client sends:
// each wake-up costs a receive, a context switch and a sendmsg of few replies, and the client
// gets its replies a few at a time. A short wait before the next receive lets a client that
// keeps many requests in flight send several, and both sides then handle them as one batch
// (docs/kiln-nbd.md, "Receive pacing"). The same wait slows a client that has sent everything
// it can and waits for replies, and nothing the server sees says which of the two it serves:
// the client's queue depth stays on the client's side.
//
// So the wait is chosen by its effect, as network cards choose interrupt moderation (Linux's
// net/dim), with a bias towards waiting, which saves CPU on both sides:
// - Each epoch (about 10 ms of requests) ends with the request rate of the connection.
// - The pacer steps up to a longer wait while the rate holds: within kTolerance of the level
//   below, and of the rate at no wait when the pacer last climbed from there (so that small
//   losses do not add up step by step). A step up that lowered it is undone and not tried
//   again for a while, longer each time it fails.
// - Every kProbeEvery epochs at a level, it tries one step down; it stays there only if the
//   rate rose.
// - A client that paused longer than kIdle starts again from no wait.
// A receive that brought fewer than kMinBatch requests never waits, nor does any while no
// receive of this epoch or the last brought kDeep or more: a client that keeps only a few
// requests in flight has sent them all and is waiting for the replies.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

namespace kiln::nbd {

class ReceivePacer {
 public:
  using Clock = std::chrono::steady_clock;
  using Micros = std::chrono::microseconds;

  static constexpr size_t kLevels = 5;  // waits of 0, max/8, max/4, max/2 and max
  static constexpr auto kEpoch = std::chrono::milliseconds(10);
  static constexpr uint64_t kEpochRequests = 64;  // and at least this many requests
  static constexpr auto kIdle = std::chrono::milliseconds(100);
  static constexpr double kTolerance = 0.10;
  static constexpr unsigned kFirstHold = 4, kMaxHold = 64;  // epochs
  static constexpr unsigned kProbeEvery = 8;                // epochs
  static constexpr uint64_t kMinBatch = 2, kDeep = 8;

  // `max_wait` zero: never wait.
  explicit ReceivePacer(Micros max_wait);

  // Called before each receive; `batch` is how many requests the previous receive brought.
  // Returns how long to wait before receiving (zero: receive now).
  Micros before_receive(Clock::time_point now, uint64_t batch);

  size_t level() const { return level_; }

 private:
  enum class Move { kNone, kUp, kDown };
  void end_epoch(Clock::time_point now);
  void restart(Clock::time_point now);
  void move(Move m);

  std::array<Micros, kLevels> waits_;
  size_t level_ = 0;
  Move last_ = Move::kNone;  // the move made when this epoch began
  double prev_rate_ = 0;     // requests per second in the previous epoch; 0: none yet
  double climb_rate_ = 0;    // the rate at no wait when the last climb from there began
  unsigned hold_ = 0;        // epochs before a step up may be tried again
  unsigned backoff_ = kFirstHold;
  unsigned settled_ = 0;  // epochs at this level since the last move
  Clock::time_point epoch_start_{};
  uint64_t epoch_requests_ = 0;
  uint64_t epoch_max_batch_ = 0, prev_max_batch_ = 0;
};

}  // namespace kiln::nbd
