// Modes and owners of what kiln-spawn leaves on the host (perms.h), whatever the umask; the
// QEMU user's resolution; the reachability check. Giving a file to another user needs root:
// without it, the test checks the error that says so.
#include "perms.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/store.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;

// Sets the umask for the scope.
class Umask {
 public:
  explicit Umask(mode_t m) : old_(::umask(m)) {}
  ~Umask() { ::umask(old_); }

 private:
  mode_t old_;
};

mode_t mode_of(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) throw std::runtime_error("no " + path);
  return st.st_mode & 07777;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// With an umask that lets everything through, and over directories an older kiln-spawn (or
// the umask) made 0755: the store's directories and files come out as perms.h says.
TEST(Perms, StoreAndImagesAreTenantPrivate) {
  Umask open_umask(0);
  TempDir d;
  const std::string state = d / "state";
  std::filesystem::create_directories(state + "/images");
  ::chmod(state.c_str(), 0755);
  ::chmod((state + "/images").c_str(), 0777);
  Store s(state);
  s.set_setting("host_vcpus", "2");  // something in the WAL
  ImageStore images(s);
  std::string data(1 << 20, 'x');
  testing::write_text(d / "img.raw", data);
  Image img = images.create("img", d / "img.raw", "raw", false);
  bool filled = false;
  std::string base = images.ensure_base(img, false, &filled);

  EXPECT_EQ(mode_of(state), 0711u);  // on QEMU's way to instances/<uuid>/disk.config
  EXPECT_EQ(mode_of(state + "/spawn.db"), 0600u);
  EXPECT_EQ(mode_of(state + "/spawn.db-wal"), 0600u);
  EXPECT_EQ(mode_of(state + "/spawn.db-shm"), 0600u);
  EXPECT_EQ(mode_of(state + "/images"), 0700u);
  EXPECT_EQ(mode_of(images.image_path(img)), 0600u);
  EXPECT_EQ(mode_of(state + "/_base"), 0700u);
  EXPECT_EQ(mode_of(base), 0400u);
  EXPECT_EQ(mode_of(base + ".lock"), 0600u);
}

// Files an older kiln-spawn made 0644 are tightened when the store is opened.
TEST(Perms, OlderDatabaseFilesAreTightened) {
  TempDir d;
  const std::string state = d / "state";
  Store first(state);  // kept open: its -wal and -shm stay
  first.set_setting("host_vcpus", "2");
  for (const char* f : {"/spawn.db", "/spawn.db-wal", "/spawn.db-shm"}) {
    ASSERT_TRUE(std::filesystem::exists(state + f)) << f;
    ::chmod((state + f).c_str(), 0644);
  }
  Store second(state);
  for (const char* f : {"/spawn.db", "/spawn.db-wal", "/spawn.db-shm"})
    EXPECT_EQ(mode_of(state + f), 0600u) << f;
}

TEST(Perms, MakeDirAndFileIgnoreTheUmask) {
  TempDir d;
  {
    Umask u(0);
    make_dir(d / "a/b/c", kPrivateDir);
    make_file(d / "a/b/c/f", kPrivateFile);
  }
  EXPECT_EQ(mode_of(d / "a"), kPassageDir);  // parents made on the way
  EXPECT_EQ(mode_of(d / "a/b"), kPassageDir);
  EXPECT_EQ(mode_of(d / "a/b/c"), kPrivateDir);
  EXPECT_EQ(mode_of(d / "a/b/c/f"), kPrivateFile);
  {
    Umask u(0777);
    make_dir(d / "a/b/c", kPassageDir);  // an existing directory gets the mode asked
    make_dir(d / "x/", kPassageDir);
  }
  EXPECT_EQ(mode_of(d / "a/b/c"), kPassageDir);
  EXPECT_EQ(mode_of(d / "x"), kPassageDir);
  testing::write_text(d / "plain", "");
  EXPECT_NE(error_of([&] { make_dir(d / "plain", kPrivateDir); }).find("not a directory"),
            std::string::npos);
  ::symlink("/etc/passwd", (d / "link").c_str());
  EXPECT_NE(error_of([&] { make_file(d / "link", kPrivateFile); }), "");  // O_NOFOLLOW
}

TEST(Perms, ParseHostUser) {
  HostUser r = parse_host_user("root", "--qemu-user");
  EXPECT_EQ(r.uid, 0u);
  EXPECT_EQ(r.gid, 0u);
  EXPECT_EQ(r.spec(), "root:root");
  EXPECT_EQ(parse_host_user("0:0", "x").spec(), "root:root");
  EXPECT_EQ(parse_host_user("+0:+0", "x").uid, 0u);  // qemu.conf's spelling of ids
  HostUser n = parse_host_user("nobody:nogroup", "x");
  EXPECT_EQ(n.uid, 65534u);
  EXPECT_EQ(n.gid, 65534u);
  EXPECT_EQ(parse_host_user("nobody", "x").gid, 65534u);         // the primary group
  HostUser num = parse_host_user("4000000000:4000000001", "x");  // ids without names
  EXPECT_EQ(num.uid, 4000000000u);
  EXPECT_EQ(num.spec(), "4000000000:4000000001");
  const std::pair<const char*, const char*> bad[] = {
      {"", "USER or USER:GROUP"},
      {"root:", "USER or USER:GROUP"},
      {":root", "USER or USER:GROUP"},
      {"2x", "invalid uid '2x'"},
      {"-1", "invalid uid '-1'"},
      {"4294967295", "invalid uid '4294967295'"},
      {"99999999999", "invalid uid '99999999999'"},
      {"root:1e3", "invalid gid '1e3'"},
      {"root:4294967295", "invalid gid"},
      {"no-such-user-kiln", "no user 'no-such-user-kiln'"},
      {"root:no-such-group-kiln", "no group 'no-such-group-kiln'"},
      {"4000000000", "give its group"},
  };
  for (const auto& [spec, needle] : bad) {
    // A copy: clang 14 cannot capture a structured binding in a lambda.
    const std::string s = spec;
    std::string e = error_of([&] { parse_host_user(s, "--qemu-user"); });
    EXPECT_NE(e.find(needle), std::string::npos) << spec << ": " << e;
    EXPECT_NE(e.find("--qemu-user"), std::string::npos) << e;
  }
}

TEST(Perms, QemuUserFromLibvirtsConfiguration) {
  EXPECT_EQ(qemu_conf_value("user = \"a\"\n#user = \"b\"\n  group=\"g\" \n", "user"), "a");
  EXPECT_EQ(qemu_conf_value("user = \"a\"\nuser = \"c\"\n", "user"), "c");  // the last wins
  EXPECT_EQ(qemu_conf_value("username = \"a\"\n", "user"), "");
  EXPECT_EQ(qemu_conf_value("user = \"a\"\n", "group"), "");
  TempDir d;
  testing::write_text(d / "qemu.conf", "# test\nuser = \"nobody\"\ngroup = \"nogroup\"\n");
  EXPECT_EQ(default_qemu_user("qemu:///system", d / "qemu.conf").spec(), "nobody:nogroup");
  EXPECT_EQ(default_qemu_user("qemu+unix:///system", d / "qemu.conf").uid, 65534u);
  testing::write_text(d / "root.conf", "user = \"+0\"\ngroup = \"+0\"\n");
  EXPECT_EQ(default_qemu_user("qemu:///system", d / "root.conf").spec(), "root:root");
  // Every other URI: QEMU (if any) runs as whoever runs kiln-spawn.
  for (const char* uri : {"test:///default", "qemu:///session", "qemu+ssh://h/system"})
    EXPECT_EQ(default_qemu_user(uri, d / "qemu.conf").uid, ::geteuid()) << uri;
  // No qemu.conf setting: libvirt's built-in user, which this host may lack.
  testing::write_text(d / "empty.conf", "");
  std::string e = error_of([&] { default_qemu_user("qemu:///system", d / "empty.conf"); });
  if (!e.empty()) {
    EXPECT_NE(e.find("libvirt-qemu"), std::string::npos) << e;
    EXPECT_NE(e.find("--qemu-user"), std::string::npos) << e;
  } else {
    EXPECT_EQ(default_qemu_user("qemu:///system", d / "empty.conf").user, "libvirt-qemu");
  }
}

TEST(Perms, GiveToQemusUserAndCheckItsWay) {
  TempDir d;
  const HostUser nobody = parse_host_user("nobody:nogroup", "x");
  make_dir(d / "inst", kPassageDir);
  make_file(d / "inst/disk.config", 0644);
  if (::geteuid() != 0) {
    // Only root may give a file away: the error says so.
    std::string e = error_of([&] { give_to(d / "inst/disk.config", nobody); });
    EXPECT_NE(e.find("kiln-spawn needs root for that"), std::string::npos) << e;
  } else {
    give_to(d / "inst/disk.config", nobody);
    struct stat st {};
    ASSERT_EQ(::stat((d / "inst/disk.config").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 65534u);
    EXPECT_EQ(st.st_gid, 65534u);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
  }
  ::symlink((d / "inst/disk.config").c_str(), (d / "inst/link").c_str());
  EXPECT_NE(error_of([&] { give_to(d / "inst/link", nobody); }), "");  // not through links

  // mkdtemp made the test's directory 0700: QEMU as nobody could not get in.
  std::string e =
      error_of([&] { check_reachable(d / "inst/disk.config", nobody, "the config drive"); });
  EXPECT_NE(e.find("QEMU runs as nobody:nogroup and cannot reach the config drive"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find(d.str() + " is 0700"), std::string::npos) << e;
  ::chmod(d.str().c_str(), 0711);
  EXPECT_EQ(error_of([&] { check_reachable(d / "inst/disk.config", nobody, "x"); }), "");
  ::chmod((d / "inst").c_str(), 0770);  // owner and group only: not nobody's
  EXPECT_NE(error_of([&] { check_reachable(d / "inst/disk.config", nobody, "x"); }), "");
  ::chmod((d / "inst").c_str(), 0701);
  EXPECT_EQ(error_of([&] { check_reachable(d / "inst/disk.config", nobody, "x"); }), "");
  // The file itself: a socket QEMU must connect to (write), a drive it reads.
  make_file(d / "inst/shared.sock", 0644);
  EXPECT_EQ(error_of([&] { check_reachable(d / "inst/shared.sock", nobody, "x", 4); }), "");
  e = error_of([&] { check_reachable(d / "inst/shared.sock", nobody, "kiln-nbd's socket", 2); });
  EXPECT_NE(e.find("cannot use kiln-nbd's socket " + d / "inst/shared.sock"), std::string::npos)
      << e;
  EXPECT_NE(e.find("is 0644"), std::string::npos) << e;
  ::chmod((d / "inst/shared.sock").c_str(), 0666);
  EXPECT_EQ(error_of([&] { check_reachable(d / "inst/shared.sock", nobody, "x", 2); }), "");
  // Whoever owns a 0700 directory gets through it (root gets through everything).
  ::chmod((d / "inst").c_str(), 0700);
  EXPECT_EQ(error_of([&] { check_reachable(d / "inst/disk.config", current_host_user(), "x"); }),
            "");
}

}  // namespace
}  // namespace kiln::spawn
