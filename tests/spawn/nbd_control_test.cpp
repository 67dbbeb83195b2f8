// The control requests kiln-spawn sends kiln-nbd, read back by a stand-in control socket.
#include "kiln/spawn/nbd_control.h"

#include <gtest/gtest.h>

#include "fake_nbd_control.h"
#include "kiln/spawn/error.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using json = nlohmann::json;
using testing::FakeNbdControl;
using testing::TempDir;

TEST(NbdControl, AddExportWithItsOwnSocket) {
  TempDir d;
  FakeNbdControl fake(d / "ctl.sock");
  NbdControl nbd(fake.path());
  ExportSocket socket{d / "vm1.sock", "root:root"};
  nbd.add_export("kiln-vm1", "/var/lib/kiln/spawn/instances/vm1/disk", "qcow2", &socket);
  auto adds = fake.requests("add-export");
  ASSERT_EQ(adds.size(), 1u);
  EXPECT_EQ(adds[0], (json{{"cmd", "add-export"},
                           {"name", "kiln-vm1"},
                           {"path", "/var/lib/kiln/spawn/instances/vm1/disk"},
                           {"format", "qcow2"},
                           {"socket", d / "vm1.sock"},
                           {"owner", "root:root"}}));
  EXPECT_TRUE(nbd.has_export("kiln-vm1"));
  EXPECT_TRUE(nbd.remove_export("kiln-vm1"));
  EXPECT_EQ(fake.requests("remove-export").at(0),
            (json{{"cmd", "remove-export"}, {"name", "kiln-vm1"}}));
  EXPECT_FALSE(nbd.remove_export("kiln-vm1"));  // gone: no second request
  EXPECT_EQ(fake.requests("remove-export").size(), 1u);
}

TEST(NbdControl, AddExportOnTheSharedSocketHasNoSocketFields) {
  TempDir d;
  FakeNbdControl fake(d / "ctl.sock");
  NbdControl(fake.path()).add_export("kiln-vm2", "/x/disk", "qcow2");
  auto adds = fake.requests("add-export");
  ASSERT_EQ(adds.size(), 1u);
  EXPECT_FALSE(adds[0].contains("socket"));
  EXPECT_FALSE(adds[0].contains("owner"));
  // The same line as the static helper builds, which is what goes on the wire.
  EXPECT_EQ(adds[0].dump(),
            NbdControl::add_export_request("kiln-vm2", "/x/disk", "qcow2", nullptr));
}

// A disk over NBD+TLS: the export is for one TLS identity (kiln-nbd's "tls-identity"), and no
// socket of its own.
TEST(NbdControl, AddExportForATlsIdentity) {
  json r = json::parse(NbdControl::add_export_request("kiln-vm3", "/x/disk", "qcow2", nullptr,
                                                      "CN=compute-1,O=Kiln"));
  EXPECT_EQ(r, (json{{"cmd", "add-export"},
                     {"name", "kiln-vm3"},
                     {"path", "/x/disk"},
                     {"format", "qcow2"},
                     {"tls-identity", "CN=compute-1,O=Kiln"}}));
  EXPECT_FALSE(json::parse(NbdControl::add_export_request("a", "/p", "qcow2", nullptr))
                   .contains("tls-identity"));
}

TEST(NbdControl, AddExportOfAnEncryptedDiskNamesItsKeyFile) {
  TempDir d;
  FakeNbdControl fake(d / "ctl.sock");
  NbdControl nbd(fake.path());
  ExportSocket socket{d / "vm3.sock", "root:root"};
  nbd.add_export("kiln-vm3", "/i/vm3/disk", "qcow2", &socket, "", "/i/vm3/disk.key");
  nbd.add_export("kiln-vm4", "/i/vm4/disk", "qcow2", nullptr, "", "/i/vm4/disk.key");
  auto adds = fake.requests("add-export");
  ASSERT_EQ(adds.size(), 2u);
  EXPECT_EQ(adds[0]["key-secret-file"], "/i/vm3/disk.key");
  EXPECT_EQ(adds[0]["socket"], d / "vm3.sock");
  EXPECT_EQ(adds[1]["key-secret-file"], "/i/vm4/disk.key");
  // Without a key file, no field (a plain overlay).
  EXPECT_FALSE(json::parse(NbdControl::add_export_request("n", "/p", "qcow2", nullptr))
                   .contains("key-secret-file"));
}

TEST(NbdControl, RequestEscapesAndErrors) {
  ExportSocket s{"/run/kiln/nbd/a\"b.sock", "libvirt-qemu:kvm"};
  json r = json::parse(NbdControl::add_export_request("n\n", "/p", "qcow2", &s));
  EXPECT_EQ(r["socket"], "/run/kiln/nbd/a\"b.sock");
  EXPECT_EQ(r["name"], "n\n");
  TempDir d;
  FakeNbdControl fake(d / "ctl.sock");
  NbdControl nbd(fake.path());
  nbd.add_export("dup", "/p", "qcow2");
  try {
    nbd.add_export("dup", "/p", "qcow2");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot add export dup: export exists"), std::string::npos)
        << e.what();
  }
}

TEST(NbdControl, SnapshotCommitAndJob) {
  TempDir d;
  FakeNbdControl fake(d / "ctl.sock");
  NbdControl nbd(fake.path());
  nbd.add_export("kiln-vm3", "/i/disk", "qcow2");
  EXPECT_EQ(nbd.job("kiln-vm3").state, "");  // no commit yet
  nbd.snapshot("kiln-vm3", "/i/snap.qcow2");
  EXPECT_EQ(fake.requests("snapshot").at(0),
            (json{{"cmd", "snapshot"}, {"name", "kiln-vm3"}, {"path", "/i/snap.qcow2"}}));
  EXPECT_EQ(nbd.list_exports().at(0).path, "/i/snap.qcow2");
  nbd.commit("kiln-vm3");
  EXPECT_EQ(fake.requests("commit").at(0), (json{{"cmd", "commit"}, {"name", "kiln-vm3"}}));
  NbdJob j = nbd.job("kiln-vm3");
  EXPECT_EQ(j.state, "completed");
  EXPECT_EQ(j.top, "/i/snap.qcow2");
  EXPECT_EQ(j.base, "/i/disk");
  EXPECT_EQ(j.done, 65536u);
  EXPECT_EQ(nbd.list_exports().at(0).path, "/i/disk");
  nbd.commit("kiln-vm3", "/i/disk");
  EXPECT_EQ(fake.requests("commit").at(1)["base"], "/i/disk");
  try {
    nbd.snapshot("nope", "/i/x.qcow2");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot snapshot export nope: no export named 'nope'"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kiln::spawn
