#include "kiln/common/error.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace kiln::common {
namespace {

TEST(Error, CarriesReasonErrnoAndMessage) {
  Error e = errno_error("cannot open /x", ENOENT);
  EXPECT_EQ(e.reason(), Reason::kNotFound);
  EXPECT_EQ(e.error_number(), ENOENT);
  EXPECT_STREQ(e.what(), "cannot open /x: No such file or directory");
  EXPECT_EQ(exit_code(e), 3);
  EXPECT_EQ(exit_code(invalid("bad")), 1);
  EXPECT_EQ(invalid("bad").error_number(), 0);
}

TEST(Error, ReasonOfErrno) {
  EXPECT_EQ(reason_of_errno(EEXIST), Reason::kExists);
  EXPECT_EQ(reason_of_errno(EBUSY), Reason::kBusy);
  EXPECT_EQ(reason_of_errno(EACCES), Reason::kPermission);
  EXPECT_EQ(reason_of_errno(EPERM), Reason::kPermission);
  EXPECT_EQ(reason_of_errno(ENOSPC), Reason::kNoSpace);
  EXPECT_EQ(reason_of_errno(EINVAL), Reason::kInvalidArgument);
  EXPECT_EQ(reason_of_errno(ENOTSUP), Reason::kUnsupported);
  EXPECT_EQ(reason_of_errno(EIO), Reason::kIo);
}

TEST(Error, HelpersAndNames) {
  EXPECT_EQ(exists("x").reason(), Reason::kExists);
  EXPECT_EQ(busy("x").reason(), Reason::kBusy);
  EXPECT_EQ(no_space("x").reason(), Reason::kNoSpace);
  EXPECT_EQ(corrupt("x").reason(), Reason::kCorrupt);
  EXPECT_EQ(unsupported("x").reason(), Reason::kUnsupported);
  EXPECT_EQ(system_error("x").reason(), Reason::kIo);
  EXPECT_STREQ(reason_name(Reason::kInvalidArgument), "invalid-argument");
  EXPECT_STREQ(reason_name(Reason::kNotFound), "not-found");
  EXPECT_STREQ(reason_name(Reason::kCorrupt), "corrupt");
  // Catchable as std::runtime_error, where older code catches that.
  EXPECT_THROW(throw busy("in use"), std::runtime_error);
}

}  // namespace
}  // namespace kiln::common
