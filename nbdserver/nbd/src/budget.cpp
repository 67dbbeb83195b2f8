#include "budget.h"

#include <algorithm>

namespace kiln::nbd {

bool MemoryBudget::try_take(uint64_t n) {
  uint64_t cur = used_.load();
  do {
    if (cur + n > limit_) return false;
  } while (!used_.compare_exchange_weak(cur, cur + n));
  return true;
}

void MemoryBudget::give_back(uint64_t n) {
  used_.fetch_sub(n);
  if (waiting_.load() == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  for (Wakeup* w : waiters_) w->wake();
}

void MemoryBudget::add_waiter(Wakeup* w) {
  std::lock_guard<std::mutex> lock(mutex_);
  waiters_.push_back(w);
  waiting_.fetch_add(1);
}

void MemoryBudget::remove_waiter(Wakeup* w) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find(waiters_.begin(), waiters_.end(), w);
  if (it == waiters_.end()) return;
  waiters_.erase(it);
  waiting_.fetch_sub(1);
}

}  // namespace kiln::nbd
