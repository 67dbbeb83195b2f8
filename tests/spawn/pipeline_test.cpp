// The boot pipeline in-process, against a kiln-nbd started by the test, a netplumb store in a
// temporary directory (no plumbing) and libvirt's test:///default driver, which keeps its
// domains per process: the test opens its own connection to see what kiln-spawn defined.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "fake_nbd_control.h"
#include "kiln/block/qcow2.h"
#include "kiln/net/service.h"
#include "kiln/net/store.h"
#include "kiln/spawn/compute.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/metadata.h"
#include "kiln/spawn/nbd_control.h"
#include "kiln/spawn/resources.h"
#include "kiln/spawn/virt.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::TestNetStore;
using testing::TestStore;

// kiln-nbd with a control socket, stopped by PID (SIGTERM, then SIGKILL) when the test ends.
class NbdServer {
 public:
  NbdServer(const std::string& dir) : sock_(dir + "/nbd.sock"), ctl_(dir + "/nbd-ctl.sock") {
    std::string log = dir + "/kiln-nbd.log";
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execl(KILN_NBD_PATH, "kiln-nbd", "-e", "0", "-k", sock_.c_str(), "--control", ctl_.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      try {
        NbdControl(ctl_).list_exports();
        return;
      } catch (const Error&) {
      }
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("kiln-nbd exited at start; see " + log);
      }
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error("kiln-nbd not ready; see " + log);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~NbdServer() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 300; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  const std::string& sock() const { return sock_; }
  const std::string& ctl() const { return ctl_; }

 private:
  std::string sock_, ctl_;
  pid_t pid_ = -1;
};

class Pipeline : public ::testing::Test {
 protected:
  Pipeline()
      : nbd_(dir_.str()),
        store_(dir_ / "spawn"),
        net_store_(dir_ / "netplumb.db"),
        net_(net_store_),
        virt_("test:///default") {
    net::NetworkSpec n;
    n.name = "demo-net";
    net_.create_network(n);
    net::SubnetSpec s;
    s.name = "demo-subnet";
    s.network = "demo-net";
    s.cidr = "192.168.0.0/24";
    s.dns_nameservers = {"8.8.8.8"};
    net_.create_subnet(s);
    // A small qcow2 image.
    block::qcow2::CreateOptions o;
    o.size = 32 << 20;
    block::qcow2::create(block::Reactor::current(), dir_ / "img.qcow2", o);
    image_ = ImageStore(store_).create("img", dir_ / "img.qcow2", "qcow2", false);
    // A host that is known, not discovered.
    store_.set_setting("host_vcpus", "4");
    store_.set_setting("host_memory_mb", "8192");
    store_.set_setting("host_disk_gb", "100");
    ::unsetenv(kFailAtEnv);
  }
  ~Pipeline() override { ::unsetenv(kFailAtEnv); }

  ComputeOptions options() {
    ComputeOptions o;
    o.libvirt_uri = "test:///default";
    o.nbd_control = nbd_.ctl();
    o.nbd_socket = nbd_.sock();
    o.virt_type = "qemu";
    o.plumb = false;
    o.wait_timeout_s = 10;
    return o;
  }

  BootRequest request(const std::string& name) {
    BootRequest r;
    r.name = name;
    r.image = "img";
    r.flavor = "m1.tiny";
    r.network = "demo-net";
    return r;
  }

  std::vector<net::Port> instance_ports() {
    std::vector<net::Port> out;
    for (const auto& p : net_store_.ports())
      if (p.device_owner.rfind("compute:", 0) == 0) out.push_back(p);
    return out;
  }

  // Nothing of instance `id` exists anywhere.
  void expect_nothing_left(const std::string& id) {
    EXPECT_FALSE(store_.has_claim(id));
    EXPECT_EQ(store_.usage().instances, 0);
    EXPECT_EQ(store_.usage().ram_mb, 0);
    for (const auto& p : net_store_.ports()) EXPECT_NE(p.device_id, id) << "port " << p.id;
    EXPECT_TRUE(instance_ports().empty());
    // Only the DHCP port holds an address of the subnet.
    int addresses = 0;
    for (const auto& p : net_store_.ports()) addresses += static_cast<int>(p.fixed_ips.size());
    EXPECT_EQ(addresses, 1);
    EXPECT_FALSE(fs::exists(dir_ / ("spawn/instances/" + id)));
    EXPECT_FALSE(store_.metadata_of(id)) << "the metadata service's record";
    EXPECT_TRUE(NbdControl(nbd_.ctl()).list_exports().empty());
    EXPECT_FALSE(virt_.exists(id));
    for (const auto& n : virt_.domain_names()) EXPECT_NE(n, "kiln-" + id);
  }

  TempDir dir_;
  NbdServer nbd_;
  TestStore store_;
  TestNetStore net_store_;
  net::NetService net_;
  Virt virt_;
  Image image_;
};

TEST_F(Pipeline, BootDefinesEverythingAndDeleteRemovesIt) {
  Compute c(store_, net_store_, options());
  Instance i = c.boot(request("vm1"));
  EXPECT_EQ(i.status, kStatusActive);
  EXPECT_EQ(i.task_state, "");
  EXPECT_EQ(build_steps(), i.steps_done);

  // The record, as stored.
  Instance s = c.get("vm1");
  EXPECT_EQ(s.id, i.id);
  EXPECT_EQ(s.status, kStatusActive);
  EXPECT_FALSE(s.ip.empty());
  EXPECT_TRUE(store_.has_claim(i.id));
  EXPECT_EQ(store_.usage().ram_mb, 512);

  // State transitions, in order.
  std::vector<std::string> tasks;
  for (const auto& e : store_.events(i.id))
    if (tasks.empty() || tasks.back() != e.status + "/" + e.task_state)
      tasks.push_back(e.status + "/" + e.task_state);
  std::vector<std::string> want = {"building/scheduling", "building/networking",
                                   "building/block_device_mapping", "building/spawning", "active/"};
  EXPECT_EQ(tasks, want);

  // The port.
  net::Port port = net_.port(i.port_id);
  EXPECT_EQ(port.device_id, i.id);
  EXPECT_EQ(port.mac_address.str(), i.mac);
  EXPECT_EQ(port.fixed_ips.at(0).ip_address.str(), i.ip);

  // The overlay: qcow2 on the cached base, explicit backing format, grown to the flavor.
  auto info = block::qcow2::read_info(block::Reactor::current(), i.dir + "/disk", false);
  EXPECT_EQ(info.backing_file, ImageStore(store_).base_path(image_.digest));
  EXPECT_EQ(info.backing_format, "qcow2");
  EXPECT_EQ(info.virtual_size, 1ull << 30);
  EXPECT_TRUE(fs::exists(i.dir + "/disk.config"));

  // The metadata service's record, found by the port's network and address, the drive's data.
  auto record = store_.metadata_for(port.network_id, i.ip);
  ASSERT_TRUE(record);
  ConfigDriveInput md = parse_metadata_record(*record);
  EXPECT_EQ(md.uuid, i.id);
  EXPECT_EQ(md.hostname, "vm1");
  ASSERT_EQ(md.networks.size(), 1u);
  EXPECT_EQ(md.networks[0].mac, i.mac);

  // The export.
  auto exports = NbdControl(nbd_.ctl()).list_exports();
  ASSERT_EQ(exports.size(), 1u);
  EXPECT_EQ(exports[0].name, i.export_name);
  EXPECT_EQ(exports[0].path, i.dir + "/disk");
  EXPECT_EQ(exports[0].format, "qcow2");

  // The domain, running, as libvirt has it.
  EXPECT_EQ(virt_.state(i.id), PowerState::kRunning);
  std::string xml = virt_.xml(i.id);
  EXPECT_NE(xml.find("protocol='nbd' name='" + i.export_name + "'"), std::string::npos) << xml;
  EXPECT_NE(xml.find("socket='" + nbd_.sock() + "'"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<mac address='" + i.mac + "'/>"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<target dev='" + i.tap + "'"), std::string::npos) << xml;
  EXPECT_NE(xml.find(i.dir + "/disk.config"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<memory unit='KiB'>524288</memory>"), std::string::npos) << xml;
  EXPECT_NE(xml.find(">1</vcpu>"), std::string::npos) << xml;

  c.remove("vm1");
  EXPECT_FALSE(store_.find_instance("vm1"));
  expect_nothing_left(i.id);
  // The base stays cached while the image exists.
  EXPECT_TRUE(fs::exists(ImageStore(store_).base_path(image_.digest)));
}

// --config-drive false: no drive file and no CD-ROM in the domain; the metadata service's
// record is there all the same (the guest's only source), and delete removes it.
TEST_F(Pipeline, BootWithoutConfigDriveKeepsTheMetadataRecord) {
  Compute c(store_, net_store_, options());
  BootRequest r = request("vm1");
  r.config_drive = false;
  Instance i = c.boot(r);
  EXPECT_EQ(i.status, kStatusActive);
  EXPECT_FALSE(fs::exists(i.dir + "/disk.config"));
  std::string xml = virt_.xml(i.id);
  EXPECT_EQ(xml.find("device='cdrom'"), std::string::npos) << xml;
  EXPECT_EQ(xml.find("disk.config"), std::string::npos) << xml;
  auto record = store_.metadata_for(net_.port(i.port_id).network_id, i.ip);
  ASSERT_TRUE(record);
  EXPECT_EQ(parse_metadata_record(*record).uuid, i.id);
  c.remove("vm1");
  expect_nothing_left(i.id);
}

// The "undid step X" events of instance `id`, in order: what a rollback or delete undid.
std::vector<std::string> undone_steps(Store& store, const std::string& id) {
  const std::string kPrefix = "undid step ";
  std::vector<std::string> out;
  for (const auto& e : store.events(id))
    if (e.message.starts_with(kPrefix)) out.push_back(e.message.substr(kPrefix.size()));
  return out;
}

// KILN_SPAWN_FAIL_AT at every step of the pipeline's table in turn (a step added to it is
// covered without more): the boot fails, the instance is left in error with the reason, exactly
// the steps done until then (the failing one included: the fault comes after its work) are
// undone, newest first, and nothing it built is left.
TEST_F(Pipeline, RollbackAtEveryStep) {
  std::vector<std::string> done;
  for (const auto& step : build_steps()) {
    done.insert(done.begin(), step);
    SCOPED_TRACE("fail at " + step);
    ::setenv(kFailAtEnv, step.c_str(), 1);
    Compute c(store_, net_store_, options());
    std::string name = "f-" + step;
    std::replace(name.begin(), name.end(), '_', '-');
    try {
      c.boot(request(name));
      ADD_FAILURE() << "boot succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("fault injected at step " + step), std::string::npos)
          << e.what();
    }
    ::unsetenv(kFailAtEnv);
    Instance i = c.get(name);
    EXPECT_EQ(i.status, kStatusError);
    EXPECT_NE(i.fault.find(step), std::string::npos) << i.fault;
    EXPECT_TRUE(i.steps_done.empty());
    EXPECT_TRUE(i.ip.empty());
    EXPECT_EQ(undone_steps(store_, i.id), done);
    EXPECT_EQ(store_.events(i.id).back().status, kStatusError);
    expect_nothing_left(i.id);
    c.remove(name);
    EXPECT_FALSE(store_.find_instance(name));
  }
  // The host is whole again: a boot now succeeds.
  Compute c(store_, net_store_, options());
  Instance ok = c.boot(request("after"));
  EXPECT_EQ(ok.status, kStatusActive);
  c.remove("after");
  expect_nothing_left(ok.id);
}

// Real failures, not the hook: an unknown network fails the port step, a libvirt that
// refuses the domain fails the domain step; both roll back.
TEST_F(Pipeline, RealFailuresRollBack) {
  Compute c(store_, net_store_, options());
  BootRequest r = request("badnet");
  r.network = "no-such-net";
  try {
    c.boot(r);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-net"), std::string::npos) << e.what();
  }
  expect_nothing_left(c.get("badnet").id);

  ComputeOptions o = options();
  o.nbd_socket = "/bad'path";  // XML stays well-formed; the export step still works
  o.virt_type = "nonsense";    // libvirt refuses an unknown domain type
  Compute c2(store_, net_store_, o);
  try {
    c2.boot(request("badvirt"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("libvirt"), std::string::npos) << e.what();
  }
  Instance i = c2.get("badvirt");
  EXPECT_EQ(i.status, kStatusError);
  expect_nothing_left(i.id);

  // kiln-nbd not reachable: the export step fails, the rest is undone.
  ComputeOptions o3 = options();
  o3.nbd_control = dir_ / "nowhere.sock";
  Compute c3(store_, net_store_, o3);
  EXPECT_THROW(c3.boot(request("nonbd")), Error);
  i = c3.get("nonbd");
  EXPECT_NE(i.fault.find("kiln-nbd"), std::string::npos) << i.fault;
  expect_nothing_left(i.id);
  // The export's undo could not reach kiln-nbd either: that step stays recorded (and named in
  // the fault), the older ones are undone all the same, and delete finishes the rollback once
  // kiln-nbd answers.
  EXPECT_NE(i.fault.find("cleanup: export: "), std::string::npos) << i.fault;
  EXPECT_EQ(i.steps_done, std::vector<std::string>{"export"});
  EXPECT_EQ(undone_steps(store_, i.id),
            (std::vector<std::string>{"inject", "config_drive", "overlay", "port", "claim"}));
  Compute(store_, net_store_, options()).remove("nonbd");
  EXPECT_FALSE(store_.find_instance("nonbd"));
  expect_nothing_left(i.id);
}

// A record naming a step this kiln-spawn has no undo for (one written by another version): delete
// undoes the steps it knows, and says it cannot forget the other rather than dropping it.
TEST_F(Pipeline, DeleteRefusesToForgetAStepItCannotUndo) {
  Compute c(store_, net_store_, options());
  Instance i = c.boot(request("vm"));
  i.steps_done.push_back("future_step");
  store_.put(i);
  try {
    c.remove("vm");
    FAIL() << "delete forgot a step it cannot undo";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("future_step: no such build step here"), std::string::npos)
        << e.what();
  }
  Instance left = c.get("vm");
  EXPECT_EQ(left.status, kStatusError);
  EXPECT_EQ(left.steps_done, std::vector<std::string>{"future_step"});
  expect_nothing_left(i.id);
}

TEST_F(Pipeline, CapacityFailureLeavesNothing) {
  store_.set_setting("host_memory_mb", "1536");  // (1536 - 512) * 1.5 = 1536 MiB to give
  Compute c(store_, net_store_, options());
  c.boot(request("a"));
  c.boot(request("b"));
  c.boot(request("c"));
  try {
    c.boot(request("d"));
    FAIL() << "a fourth m1.tiny fitted";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kNoSpace);
    EXPECT_NE(std::string(e.what()).find("memory"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(store_.find_instance("d"));
  EXPECT_EQ(instance_ports().size(), 3u);
  EXPECT_EQ(store_.usage().instances, 3);
  for (const char* n : {"a", "b", "c"}) c.remove(n);
  EXPECT_TRUE(instance_ports().empty());
}

TEST_F(Pipeline, StopAndStart) {
  Compute c(store_, net_store_, options());
  Instance i = c.boot(request("vm"));
  Instance s = c.stop("vm");
  EXPECT_EQ(s.status, kStatusStopped);
  EXPECT_EQ(virt_.state(i.id), PowerState::kShutoff);
  EXPECT_TRUE(store_.has_claim(i.id));  // a stopped instance keeps its resources, as in Nova
  EXPECT_THROW(c.stop("vm"), Error);
  // A lost definition and a lost export come back at start.
  virt_.undefine(i.id);
  NbdControl(nbd_.ctl()).remove_export(i.export_name);
  s = c.start("vm");
  EXPECT_EQ(s.status, kStatusActive);
  EXPECT_EQ(virt_.state(i.id), PowerState::kRunning);
  EXPECT_TRUE(NbdControl(nbd_.ctl()).has_export(i.export_name));
  EXPECT_EQ(c.console_log("vm"), "");  // the test driver runs no guest
  c.remove("vm");
  expect_nothing_left(i.id);
}

TEST_F(Pipeline, BadInputChangesNothing) {
  Compute c(store_, net_store_, options());
  BootRequest r = request("x");
  r.key_file = dir_ / "missing.pub";
  EXPECT_THROW(c.boot(r), Error);
  r = request("x");
  r.files = {{"relative/path", dir_ / "img.qcow2"}};
  EXPECT_THROW(c.boot(r), Error);
  r = request("x");
  r.flavor = "nope";
  EXPECT_THROW(c.boot(r), Error);
  ::setenv(kFailAtEnv, "no-such-step", 1);
  EXPECT_THROW(c.boot(request("x")), Error);
  ::unsetenv(kFailAtEnv);
  EXPECT_TRUE(store_.instances().empty());
  EXPECT_TRUE(instance_ports().empty());
  c.boot(request("dup"));
  try {
    c.boot(request("dup"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kExists);
  }
  EXPECT_EQ(instance_ports().size(), 1u);
  c.remove("dup");
}

// Per-instance NBD sockets, against a stand-in control socket that makes them as kiln-nbd's
// per-export sockets do (docs/kiln-nbd.md), or ignores the request's two new fields as a
// kiln-nbd without them does.
class PerInstanceSockets : public Pipeline {
 protected:
  ComputeOptions socket_options(const std::string& ctl) {
    ComputeOptions o = options();
    o.nbd_control = ctl;
    o.nbd_socket.clear();
    o.nbd_socket_dir = dir_ / "run/nbd";
    return o;
  }
  static struct stat stat_of(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) ADD_FAILURE() << "no " << path;
    return st;
  }
};

TEST_F(PerInstanceSockets, EachInstanceGetsItsOwnSocket) {
  testing::FakeNbdControl fake(dir_ / "fake-ctl.sock");
  Compute c(store_, net_store_, socket_options(fake.path()));
  Instance i = c.boot(request("vm1"));
  const std::string sock = dir_ / ("run/nbd/" + i.id + ".sock");
  EXPECT_EQ(i.nbd_socket, sock);
  EXPECT_EQ(c.get("vm1").nbd_socket, sock);  // recorded, for start and delete

  // The request, as kiln-nbd reads it: the instance's socket, owned by QEMU's user (here the
  // user running the test: test:///default starts no QEMU).
  auto adds = fake.requests("add-export");
  ASSERT_EQ(adds.size(), 1u);
  EXPECT_EQ(adds[0]["name"], i.export_name);
  EXPECT_EQ(adds[0]["path"], i.dir + "/disk");
  EXPECT_EQ(adds[0]["socket"], sock);
  const HostUser me = current_host_user();
  EXPECT_EQ(adds[0]["owner"], me.spec());

  // The socket exists, QEMU's user's, closed to others; its directory only lets them through.
  struct stat st = stat_of(sock);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_uid, me.uid);
  EXPECT_EQ(stat_of(dir_ / "run/nbd").st_mode & 07777, 0711u);

  // The domain reaches the export through that socket, not a shared one.
  std::string xml = virt_.xml(i.id);
  EXPECT_NE(xml.find("protocol='nbd' name='" + i.export_name + "'"), std::string::npos) << xml;
  EXPECT_NE(xml.find("<host transport='unix' socket='" + sock + "'/>"), std::string::npos) << xml;
  EXPECT_EQ(xml.find(nbd_.sock()), std::string::npos) << xml;

  // A second instance: another socket.
  Instance j = c.boot(request("vm2"));
  EXPECT_NE(j.nbd_socket, i.nbd_socket);
  EXPECT_EQ(fake.requests("add-export").at(1)["socket"], j.nbd_socket);

  // A lost export comes back at start on the same socket.
  c.stop("vm1");
  NbdControl(fake.path()).remove_export(i.export_name);
  EXPECT_FALSE(fs::exists(sock));
  c.start("vm1");
  EXPECT_EQ(fake.requests("add-export").back()["socket"], sock);
  EXPECT_TRUE(S_ISSOCK(stat_of(sock).st_mode));

  // delete: remove-export (which unlinks the socket), nothing left.
  c.remove("vm1");
  c.remove("vm2");
  EXPECT_FALSE(fs::exists(sock));
  EXPECT_FALSE(fs::exists(j.nbd_socket));
  EXPECT_EQ(fake.export_count(), 0u);
  EXPECT_EQ(fake.requests("remove-export").back()["name"], j.export_name);
  expect_nothing_left(i.id);
}

TEST_F(PerInstanceSockets, AKilnNbdWithoutThemIsAClearErrorNotTheSharedSocket) {
  testing::FakeNbdControl fake(dir_ / "fake-ctl.sock", testing::FakeNbdControl::Sockets::kIgnored);
  Compute c(store_, net_store_, socket_options(fake.path()));
  try {
    c.boot(request("old"));
    FAIL() << "booted without the instance's socket";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("made no socket at " + dir_ / "run/nbd/"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("update kiln-nbd, or give --nbd-socket"),
              std::string::npos)
        << e.what();
  }
  Instance i = c.get("old");
  EXPECT_EQ(i.status, kStatusError);
  // The export kiln-nbd did add is removed again, and no domain was defined.
  EXPECT_EQ(fake.requests("remove-export").size(), 1u);
  EXPECT_EQ(fake.export_count(), 0u);
  expect_nothing_left(i.id);
}

TEST_F(PerInstanceSockets, ASocketOthersCanOpenIsRefused) {
  testing::FakeNbdControl fake(dir_ / "fake-ctl.sock", testing::FakeNbdControl::Sockets::kOpen);
  Compute c(store_, net_store_, socket_options(fake.path()));
  try {
    c.boot(request("open"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("0666"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not 0600"), std::string::npos) << e.what();
  }
  EXPECT_EQ(fake.export_count(), 0u);
  expect_nothing_left(c.get("open").id);
}

// QEMU as an unprivileged user (nobody here; libvirt-qemu on a Debian host): what it opens is
// given to it, the rest stays root's 0600, and a directory in its way is a clear error before
// libvirt is asked anything.
TEST_F(PerInstanceSockets, FilesQemuOpensAreGivenToItsUser) {
  testing::FakeNbdControl fake(dir_ / "fake-ctl.sock");
  ComputeOptions o = socket_options(fake.path());
  o.qemu_user = "nobody:nogroup";
  Compute c(store_, net_store_, o);
  if (::geteuid() != 0) {
    EXPECT_THROW(c.boot(request("q")), Error);  // chown needs root (perms_test checks the text)
    return;
  }
  // The test's directory is 0700 (mkdtemp): nobody cannot get to the config drive.
  try {
    c.boot(request("blocked"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("QEMU runs as nobody:nogroup and cannot reach the "
                                         "config drive"),
              std::string::npos)
        << e.what();
  }
  expect_nothing_left(c.get("blocked").id);
  ::chmod(dir_.str().c_str(), 0711);
  Instance i = c.boot(request("q"));
  EXPECT_EQ(fake.requests("add-export").back()["owner"], "nobody:nogroup");
  auto owned = [&](const std::string& path, uid_t uid, mode_t mode) {
    struct stat st = stat_of(path);
    EXPECT_EQ(st.st_uid, uid) << path;
    EXPECT_EQ(st.st_mode & 07777, mode) << path;
  };
  owned(i.nbd_socket, 65534, 0600);
  owned(i.dir + "/disk.config", 65534, 0600);
  owned(i.dir + "/console.log", 65534, 0600);
  owned(i.dir + "/disk", 0, 0600);  // kiln-nbd's (root), never QEMU's
  owned(i.dir, 0, 0711);
  owned(store_.dir() + "/instances", 0, 0711);
  owned(store_.dir(), 0, 0711);
  if (teststore::url().empty())
    owned(store_.dir() + "/spawn.db", 0, 0600);
  else  // the store is the shared database: no file of it here
    EXPECT_FALSE(std::filesystem::exists(store_.dir() + "/spawn.db"));
  owned(store_.dir() + "/locks", 0, 0700);
  owned(store_.dir() + "/locks/" + i.id + ".lock", 0, 0600);
  owned(store_.dir() + "/_base", 0, 0700);
  owned(ImageStore(store_).base_path(image_.digest), 0, 0400);
  c.remove("q");
  expect_nothing_left(i.id);
}

}  // namespace
}  // namespace kiln::spawn
