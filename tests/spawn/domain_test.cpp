#include "kiln/spawn/domain.h"

#include <gtest/gtest.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>

#include <memory>
#include <vector>

#include "kiln/spawn/error.h"
#include "kiln/spawn/virt.h"

namespace kiln::spawn {
namespace {

// XPath queries on an XML document.
class Xml {
 public:
  explicit Xml(const std::string& text)
      : doc_(xmlReadMemory(text.data(), static_cast<int>(text.size()), "domain.xml", nullptr,
                           XML_PARSE_NONET)) {
    if (!doc_) throw std::runtime_error("XML does not parse");
  }
  ~Xml() { xmlFreeDoc(doc_); }
  // The string value of the expression ("" when it matches nothing).
  std::string str(const std::string& xpath) {
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc_);
    xmlXPathObjectPtr obj = xmlXPathEvalExpression(
        reinterpret_cast<const xmlChar*>(("string(" + xpath + ")").c_str()), ctx);
    std::string out = obj && obj->stringval ? reinterpret_cast<const char*>(obj->stringval) : "";
    xmlXPathFreeObject(obj);
    xmlXPathFreeContext(ctx);
    return out;
  }
  double count(const std::string& xpath) { return std::stod(str("count(" + xpath + ")")); }

 private:
  xmlDocPtr doc_;
};

DomainSpec domain_sample() {
  DomainSpec d;
  d.name = "kiln-0b9c4a52-9a3f-4a51-9b44-5f1f1c1f2e3d";
  d.uuid = "0b9c4a52-9a3f-4a51-9b44-5f1f1c1f2e3d";
  d.virt_type = "qemu";
  d.instance_name = "vm<1>&'x'";
  d.flavor = "m1.small";
  d.vcpus = 2;
  d.memory_mb = 2048;
  // The instance's own socket (kiln-nbd makes it for this export only).
  d.nbd_socket = "/run/kiln/nbd/0b9c4a52-9a3f-4a51-9b44-5f1f1c1f2e3d.sock";
  d.nbd_export = "kiln-0b9c4a52-9a3f-4a51-9b44-5f1f1c1f2e3d";
  d.config_drive = "/var/lib/kiln/spawn/instances/x/disk.config";
  d.mac = "fa:16:3e:12:34:56";
  d.tap = "tap0b9c4a52-9a";
  d.console_log = "/var/lib/kiln/spawn/instances/x/console.log";
  return d;
}

void check_domain(Xml& x, const DomainSpec& d) {
  EXPECT_EQ(x.str("/domain/@type"), d.virt_type);
  EXPECT_EQ(x.str("/domain/name"), d.name);
  EXPECT_EQ(x.str("/domain/uuid"), d.uuid);
  EXPECT_EQ(x.str("/domain/vcpu"), std::to_string(d.vcpus));
  // cloud-init's OpenStack datasource looks for Nova's SMBIOS product name.
  EXPECT_EQ(x.str("/domain/os/smbios/@mode"), "sysinfo");
  EXPECT_EQ(x.str("/domain/sysinfo/system/entry[@name='product']"), "OpenStack Nova");
  EXPECT_EQ(x.str("/domain/sysinfo/system/entry[@name='uuid']"), d.uuid);
  // libvirt normalises memory to KiB.
  std::string unit = x.str("/domain/memory/@unit");
  long long mem = std::stoll(x.str("/domain/memory"));
  if (unit == "KiB")
    EXPECT_EQ(mem, d.memory_mb * 1024);
  else
    EXPECT_EQ(mem, d.memory_mb);
  const std::string disk = "/domain/devices/disk[@device='disk']";
  EXPECT_EQ(x.str(disk + "/@type"), "network");
  EXPECT_EQ(x.str(disk + "/driver/@type"), "raw");
  EXPECT_EQ(x.str(disk + "/source/@protocol"), "nbd");
  EXPECT_EQ(x.str(disk + "/source/@name"), d.nbd_export);
  EXPECT_EQ(x.str(disk + "/source/host/@transport"), "unix");
  EXPECT_EQ(x.str(disk + "/source/host/@socket"), d.nbd_socket);
  EXPECT_EQ(x.str(disk + "/target/@dev"), "vda");
  const std::string cd = "/domain/devices/disk[@device='cdrom']";
  EXPECT_EQ(x.str(cd + "/source/@file"), d.config_drive);
  EXPECT_EQ(x.count(cd + "/readonly"), 1);
  const std::string nic = "/domain/devices/interface";
  EXPECT_EQ(x.str(nic + "/@type"), "ethernet");
  EXPECT_EQ(x.str(nic + "/mac/@address"), d.mac);
  EXPECT_EQ(x.str(nic + "/target/@dev"), d.tap);
  EXPECT_EQ(x.str(nic + "/target/@managed"), "no");
  EXPECT_EQ(x.str("/domain/devices/serial/@type"), "file");
  EXPECT_EQ(x.str("/domain/devices/serial/source/@path"), d.console_log);
}

TEST(DomainXml, Content) {
  DomainSpec d = domain_sample();
  Xml x(domain_xml(d));
  check_domain(x, d);
  EXPECT_EQ(x.str("/domain/memory/@unit"), "MiB");
  EXPECT_EQ(x.count("/domain/os/kernel"), 0);
}

TEST(DomainXml, EscapingAndKernelBoot) {
  DomainSpec d = domain_sample();
  d.kernel = "/boot/vmlinuz";
  d.initrd = "/boot/initrd.img";
  d.cmdline = "console=ttyS0 kiln.test=info,configdrive a<b";
  Xml x(domain_xml(d));
  EXPECT_EQ(x.str("/domain/os/kernel"), d.kernel);
  EXPECT_EQ(x.str("/domain/os/initrd"), d.initrd);
  EXPECT_EQ(x.str("/domain/os/cmdline"), d.cmdline);
  EXPECT_EQ(xml_escape("<a href='x'>&\"</a>"), "&lt;a href=&apos;x&apos;&gt;&amp;&quot;&lt;/a&gt;");
}

TEST(DomainXml, NoNicWithoutTap) {
  DomainSpec d = domain_sample();
  d.tap.clear();
  Xml x(domain_xml(d));
  EXPECT_EQ(x.count("/domain/devices/interface"), 0);
}

// libvirt itself accepts the XML: defined in the test driver and read back, the devices are
// still what was asked for.
TEST(DomainXml, LibvirtTestDriverRoundTrip) {
  DomainSpec d = domain_sample();
  Virt v("test:///default");
  v.define(domain_xml(d));
  ASSERT_TRUE(v.exists(d.uuid));
  EXPECT_EQ(v.state(d.uuid), PowerState::kShutoff);
  Xml x(v.xml(d.uuid));
  check_domain(x, d);
  v.start(d.uuid);
  EXPECT_EQ(v.state(d.uuid), PowerState::kRunning);
  v.destroy(d.uuid);
  v.undefine(d.uuid);
  EXPECT_FALSE(v.exists(d.uuid));
  EXPECT_EQ(v.state(d.uuid), PowerState::kNone);
  // Idempotent undo.
  v.destroy(d.uuid);
  v.undefine(d.uuid);
}

// The disk over NBD on TCP with TLS: libvirt's network source with tls='yes' and a TCP host,
// no Unix socket left in it.
DomainSpec tcp_sample() {
  DomainSpec d = domain_sample();
  d.nbd_socket.clear();
  d.nbd_tcp_host = "192.0.2.10";
  d.nbd_tcp_port = 10809;
  return d;
}

void check_tcp_disk(Xml& x, const DomainSpec& d) {
  const std::string src = "/domain/devices/disk[@device='disk']/source";
  EXPECT_EQ(x.str(src + "/@protocol"), "nbd");
  EXPECT_EQ(x.str(src + "/@name"), d.nbd_export);
  EXPECT_EQ(x.str(src + "/@tls"), "yes");
  EXPECT_EQ(x.count(src + "/host"), 1);
  EXPECT_EQ(x.str(src + "/host/@name"), d.nbd_tcp_host);
  EXPECT_EQ(x.str(src + "/host/@port"), std::to_string(d.nbd_tcp_port));
  // libvirt's default transport for a host with a name is tcp; no socket anywhere.
  const std::string transport = x.str(src + "/host/@transport");
  EXPECT_TRUE(transport.empty() || transport == "tcp") << transport;
  EXPECT_EQ(x.count(src + "/host/@socket"), 0);
}

TEST(DomainXml, NbdOverTcpWithTls) {
  DomainSpec d = tcp_sample();
  Xml x(domain_xml(d));
  check_tcp_disk(x, d);
  d.nbd_tcp_host = "2001:db8::7";
  Xml v6(domain_xml(d));
  check_tcp_disk(v6, d);
  d.nbd_tcp_host = "storage-1.example.org";
  Xml name(domain_xml(d));
  check_tcp_disk(name, d);
}

TEST(DomainXml, TcpSourceEscapesTheExportName) {
  DomainSpec d = tcp_sample();
  d.nbd_export = "kiln-'x'<&>\"";
  const std::string text = domain_xml(d);
  EXPECT_EQ(text.find("'x'<"), std::string::npos);
  Xml x(text);
  check_tcp_disk(x, d);
}

TEST(DomainXml, TcpHostThatIsNoAddressIsRefused) {
  for (const std::string& host : std::vector<std::string>{
           "0.0.0.0", "::", "a'b", "host name", "x<y", "-a.example", "a..b", "1.2.3", "256.1.1.1",
           "fe80::1%eth0' socket='/x", std::string(300, 'a')}) {
    DomainSpec d = tcp_sample();
    d.nbd_tcp_host = host;
    try {
      domain_xml(d);
      ADD_FAILURE() << host << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.reason(), Reason::kInvalidArgument) << host;
    }
  }
  DomainSpec d = tcp_sample();
  d.nbd_tcp_port = 0;
  EXPECT_THROW(domain_xml(d), Error);
}

TEST(DomainXml, TcpSourceRoundTripsThroughLibvirt) {
  DomainSpec d = tcp_sample();
  Virt v("test:///default");
  v.define(domain_xml(d));
  Xml x(v.xml(d.uuid));
  check_tcp_disk(x, d);
  v.undefine(d.uuid);
}

TEST(Virt, BadUriIsAClearError) {
  try {
    Virt v("nosuchdriver:///x");
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("nosuchdriver:///x"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::spawn
