#include "text_edit.h"

#include <gtest/gtest.h>

#include "kiln/fs/filesystem.h"
#include "kiln/fs/inject.h"

namespace kiln::fs {
namespace {

TEST(TextEdit, PasswdLookup) {
  const std::string passwd =
      "root:x:0:0:root:/root:/bin/bash\n"
      "broken line\n"
      "bad:x:notanumber:0::/home/bad:/bin/sh\n"
      "alice:x:1000:1001:Alice,,,:/home/alice:/bin/bash";  // no final newline
  auto a = find_passwd_entry(passwd, "alice");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->uid, 1000u);
  EXPECT_EQ(a->gid, 1001u);
  EXPECT_EQ(a->home, "/home/alice");
  EXPECT_FALSE(find_passwd_entry(passwd, "bad"));
  EXPECT_FALSE(find_passwd_entry(passwd, "ali"));
  EXPECT_FALSE(find_passwd_entry(passwd, "carol"));
}

TEST(TextEdit, ShadowHash) {
  const std::string shadow = "root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n";
  auto out = set_shadow_hash(shadow, "alice", "$6$s$h");
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, "root:*:19000:0:99999:7:::\nalice:$6$s$h:19000:0:99999:7:::\n");
  EXPECT_FALSE(set_shadow_hash(shadow, "bob", "x"));
}

TEST(TextEdit, HostsLine) {
  EXPECT_EQ(set_hosts_name("127.0.0.1 localhost\n127.0.1.1 old old.lan\n::1 localhost\n",
                           "web.example.org"),
            "127.0.0.1 localhost\n127.0.1.1\tweb.example.org web\n::1 localhost\n");
  EXPECT_EQ(set_hosts_name("127.0.0.1 localhost", "db"), "127.0.0.1 localhost\n127.0.1.1\tdb\n");
  EXPECT_EQ(set_hosts_name("127.0.1.1 a\n127.0.1.1 b\n", "c"), "127.0.1.1\tc\n");
}

TEST(TextEdit, AppendKeys) {
  EXPECT_EQ(append_keys("", "ssh-rsa AAA a\n"), "ssh-rsa AAA a\n");
  EXPECT_EQ(append_keys("ssh-rsa AAA a", "ssh-rsa AAA a\nssh-ed25519 BBB b\n"),
            "ssh-rsa AAA a\nssh-ed25519 BBB b\n");
  EXPECT_EQ(append_keys("x\n", "\n\nssh-ed25519 BBB b\r\n"), "x\nssh-ed25519 BBB b\n");
}

// Bad input from the user: kInvalidArgument, as a caller (kiln-fs's exit code) sees it.
template <class F>
void expect_invalid(F f) {
  try {
    f();
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kInvalidArgument) << e.what();
  }
}

TEST(TextEdit, Checks) {
  EXPECT_NO_THROW(check_hostname("a-1.example.org", "t"));
  expect_invalid([&] { check_hostname("-a", "t"); });
  expect_invalid([&] { check_hostname("a..b", "t"); });
  expect_invalid([&] { check_hostname(std::string(64, 'a'), "t"); });
  expect_invalid([&] { check_hostname("a_b", "t"); });
  expect_invalid([&] { check_user_name("a:b", "t"); });
  expect_invalid([&] { check_user_name("", "t"); });
  expect_invalid([&] { check_shadow_hash("a:b", "t"); });
  expect_invalid([&] { check_shadow_hash("a b", "t"); });
  EXPECT_NO_THROW(check_shadow_hash("!", "t"));
  expect_invalid([&] { check_ssh_keys("", "t"); });
  expect_invalid([&] { check_ssh_keys("# only a comment\n", "t"); });
  expect_invalid([&] { check_ssh_keys("nospace\n", "t"); });
}

TEST(Inject, ValidateNamesTheOperation) {
  try {
    validate({Operation::file("/ok", "x"), Operation::file("rel", "x")});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--file rel"), std::string::npos) << e.what();
    EXPECT_EQ(e.reason(), Reason::kInvalidArgument) << e.what();
  }
  expect_invalid([] { validate({Operation::mkdir("/x", 010000)}); });
  expect_invalid([] { validate({Operation::file("/x", "", 0644, 1, std::nullopt)}); });
  expect_invalid([] { validate({Operation::remove("/")}); });
  EXPECT_NO_THROW(validate({Operation::remove("/a//b/./c")}));
}

}  // namespace
}  // namespace kiln::fs
