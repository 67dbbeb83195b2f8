#include "kiln/common/fd.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace kiln::common {
namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

int open_null() { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }

TEST(Fd, ClosesWhenTheOwnerGoes) {
  int raw;
  {
    Fd fd(open_null());
    raw = fd.get();
    ASSERT_TRUE(fd.valid());
    EXPECT_TRUE(is_open(raw));
  }
  EXPECT_FALSE(is_open(raw));
}

TEST(Fd, MoveTransfersOwnership) {
  Fd a(open_null());
  int raw = a.get();
  Fd b(std::move(a));
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(b.get(), raw);
  Fd c;
  c = std::move(b);
  EXPECT_EQ(c.get(), raw);
  EXPECT_TRUE(is_open(raw));
  Fd d(open_null());
  int other = d.get();
  d = std::move(c);  // closes what d had
  EXPECT_FALSE(is_open(other));
  EXPECT_TRUE(is_open(raw));
}

TEST(Fd, ReleaseGivesTheDescriptorAway) {
  int raw;
  {
    Fd fd(open_null());
    raw = fd.release();
    EXPECT_FALSE(fd);
  }
  EXPECT_TRUE(is_open(raw));
  ::close(raw);
}

TEST(Fd, ResetAndCloseReportResult) {
  Fd fd(open_null());
  int first = fd.get();
  fd.reset(open_null());
  EXPECT_FALSE(is_open(first) && first != fd.get());
  EXPECT_EQ(fd.close(), 0);
  EXPECT_FALSE(fd.valid());
  EXPECT_EQ(fd.close(), 0);  // nothing left to close
  // A descriptor that is not open: close() reports EBADF instead of hiding it.
  Fd bad(1000000);
  EXPECT_EQ(bad.close(), EBADF);
}

}  // namespace
}  // namespace kiln::common
