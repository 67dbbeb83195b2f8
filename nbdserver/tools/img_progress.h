// qemu-img's -p: "    (12.34/100%)" and a carriage return on stdout, printed again each time
// the value moves by at least the command's step (and at 0 and 100), a newline at the end.
// convert, commit and rebase end with finish(); compare prints 100% only when the images are
// identical, then its result, then the newline (end()).
#pragma once

#include <cstdint>
#include <cstdio>

namespace kiln::block::cli {

class Progress {
 public:
  // `step`: qemu-img's minimum change between two lines (1% for convert and commit, 2% for
  // compare and rebase).
  explicit Progress(bool on, double step = 1.0) : on_(on), step_(step) {}
  void update(uint64_t done, uint64_t total) {
    if (!on_) return;
    const double pct = total ? 100.0 * double(done) / double(total) : 100.0;
    if (printed_ >= 0 && pct < 100.0 && pct - printed_ < step_) return;
    printed_ = pct;
    std::printf("    (%4.2f/100%%)\r", pct);
    std::fflush(stdout);
  }
  void finish() {
    if (!on_) return;
    std::printf("    (100.00/100%%)\r\n");
    std::fflush(stdout);
    on_ = false;
  }
  void end() {
    if (!on_) return;
    std::printf("\n");
    std::fflush(stdout);
    on_ = false;
  }

 private:
  bool on_;
  double step_;
  double printed_ = -1;
};

}  // namespace kiln::block::cli
