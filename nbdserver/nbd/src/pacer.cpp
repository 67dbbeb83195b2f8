#include "pacer.h"

#include <algorithm>

namespace kiln::nbd {

ReceivePacer::ReceivePacer(Micros max_wait) {
  waits_[0] = Micros(0);
  for (size_t i = 1; i < kLevels; ++i) waits_[i] = max_wait / (1 << (kLevels - 1 - i));
}

ReceivePacer::Micros ReceivePacer::before_receive(Clock::time_point now, uint64_t batch) {
  if (waits_.back() == Micros(0)) return Micros(0);
  if (epoch_start_ == Clock::time_point{}) epoch_start_ = now;
  const auto elapsed = now - epoch_start_;
  if (elapsed >= kIdle) {
    restart(now);
  } else if (elapsed >= kEpoch && epoch_requests_ >= kEpochRequests) {
    end_epoch(now);
  }
  epoch_requests_ += batch;
  epoch_max_batch_ = std::max(epoch_max_batch_, batch);
  const bool deep = std::max(epoch_max_batch_, prev_max_batch_) >= kDeep;
  return batch >= kMinBatch && deep ? waits_[level_] : Micros(0);
}

void ReceivePacer::restart(Clock::time_point now) {
  level_ = 0;
  last_ = Move::kNone;
  prev_rate_ = climb_rate_ = 0;
  hold_ = 0;
  backoff_ = kFirstHold;
  settled_ = 0;
  epoch_start_ = now;
  epoch_requests_ = 0;
  epoch_max_batch_ = prev_max_batch_ = 0;
}

void ReceivePacer::end_epoch(Clock::time_point now) {
  const double rate =
      double(epoch_requests_) / std::chrono::duration<double>(now - epoch_start_).count();
  if (hold_ > 0) --hold_;
  const bool lower =
      prev_rate_ > 0 && (rate < prev_rate_ * (1 - kTolerance) ||
                         (last_ == Move::kUp && rate < climb_rate_ * (1 - kTolerance)));
  const bool higher = prev_rate_ > 0 && rate > prev_rate_ * (1 + kTolerance);
  const bool top = level_ + 1 == kLevels;
  Move m = Move::kNone;
  bool undo = false;
  if (last_ == Move::kUp && lower) {
    // The longer wait cost requests: undo it, and leave it alone for a while.
    m = Move::kDown;
    undo = true;
    hold_ = backoff_;
    backoff_ = std::min(backoff_ * 2, kMaxHold);
  } else if (last_ == Move::kDown && !higher) {
    // A probe down gained nothing: back to the longer wait.
    m = Move::kUp;
  } else if (last_ == Move::kDown) {
    hold_ = backoff_;  // the shorter wait serves this client better: stay a while
  } else if (last_ == Move::kUp && !top) {
    backoff_ = kFirstHold;
    if (hold_ == 0) m = Move::kUp;
  } else if (hold_ == 0 && !top) {
    m = Move::kUp;
  } else if (level_ > 0 && settled_ >= kProbeEvery) {
    m = Move::kDown;
  }
  // A climb from no wait measures there what every step must keep; one from a longer wait (after
  // an undo or a probe) keeps the rate the first climb measured, so that losses within the
  // tolerance cannot add up over several climbs. (The highest rate seen would be stricter,
  // but under noise it is a lucky epoch that no wait then keeps.)
  if (m == Move::kUp && last_ != Move::kUp && (level_ == 0 || climb_rate_ == 0)) climb_rate_ = rate;
  move(m);
  if (undo) last_ = Move::kNone;  // not a probe down: the next epoch must not judge it as one
  prev_rate_ = rate;
  prev_max_batch_ = epoch_max_batch_;
  epoch_max_batch_ = 0;
  epoch_start_ = now;
  epoch_requests_ = 0;
}

void ReceivePacer::move(Move m) {
  if (m == Move::kUp && level_ + 1 < kLevels)
    ++level_;
  else if (m == Move::kDown && level_ > 0)
    --level_;
  else
    m = Move::kNone;
  last_ = m;
  settled_ = m == Move::kNone ? settled_ + 1 : 0;
}

}  // namespace kiln::nbd
