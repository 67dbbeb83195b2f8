#include "kiln/spawn/domain.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <sstream>

#include "kiln/spawn/disk_transport.h"
#include "kiln/spawn/error.h"
#include "util.h"

namespace kiln::spawn {

std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

namespace {

// The rest of the NBD <source> element: the Unix socket, or TCP with TLS required (libvirt's
// tls='yes': QEMU gets a tls-creds-x509 client object, and never falls back to plain NBD).
std::string nbd_host(const DomainSpec& d) {
  if (d.nbd_tcp_host.empty())
    return ">\n        <host transport='unix' socket='" + xml_escape(d.nbd_socket) + "'/>\n";
  if (!valid_tcp_host(d.nbd_tcp_host))
    throw invalid("the NBD server '" + d.nbd_tcp_host +
                  "' is not an IP address or host name to connect to");
  if (d.nbd_tcp_port == 0) throw invalid("the NBD server's TCP port is 0");
  return " tls='yes'>\n        <host name='" + xml_escape(d.nbd_tcp_host) + "' port='" +
         std::to_string(d.nbd_tcp_port) + "'/>\n";
}

}  // namespace

std::string domain_xml(const DomainSpec& d) {
  auto e = xml_escape;
  std::ostringstream x;
  x << "<domain type='" << e(d.virt_type) << "'>\n"
    << "  <name>" << e(d.name) << "</name>\n"
    << "  <uuid>" << e(d.uuid) << "</uuid>\n"
    << "  <metadata>\n"
    << "    <kiln:instance xmlns:kiln='https://github.com/kiln/spawn/1'>\n"
    << "      <kiln:name>" << e(d.instance_name) << "</kiln:name>\n"
    << "      <kiln:flavor>" << e(d.flavor) << "</kiln:flavor>\n"
    << "    </kiln:instance>\n"
    << "  </metadata>\n"
    << "  <memory unit='MiB'>" << d.memory_mb << "</memory>\n"
    << "  <currentMemory unit='MiB'>" << d.memory_mb << "</currentMemory>\n"
    << "  <vcpu placement='static'>" << d.vcpus << "</vcpu>\n";
  // The guest's SMBIOS system table, as Nova writes it: cloud-init's ds-identify finds the
  // OpenStack metadata service only on a machine whose product name says "OpenStack Nova"
  // (without a config drive, nothing else tells it where it runs). The serial and uuid are
  // the instance's.
  x << "  <sysinfo type='smbios'>\n"
    << "    <system>\n"
    << "      <entry name='manufacturer'>Kiln</entry>\n"
    << "      <entry name='product'>OpenStack Nova</entry>\n"
    << "      <entry name='serial'>" << e(d.uuid) << "</entry>\n"
    << "      <entry name='uuid'>" << e(d.uuid) << "</entry>\n"
    << "      <entry name='family'>Virtual Machine</entry>\n"
    << "    </system>\n"
    << "  </sysinfo>\n"
    << "  <os>\n"
    << "    <type arch='x86_64' machine='pc'>hvm</type>\n"
    << "    <smbios mode='sysinfo'/>\n";
  if (!d.kernel.empty()) {
    x << "    <kernel>" << e(d.kernel) << "</kernel>\n";
    if (!d.initrd.empty()) x << "    <initrd>" << e(d.initrd) << "</initrd>\n";
    if (!d.cmdline.empty()) x << "    <cmdline>" << e(d.cmdline) << "</cmdline>\n";
  }
  x << "    <boot dev='hd'/>\n"
    << "  </os>\n"
    << "  <features><acpi/><apic/></features>\n"
    << "  <clock offset='utc'/>\n"
    << "  <on_poweroff>destroy</on_poweroff>\n"
    << "  <on_reboot>restart</on_reboot>\n"
    << "  <on_crash>destroy</on_crash>\n"
    << "  <devices>\n"
    << "    <disk type='network' device='disk'>\n"
    << "      <driver name='qemu' type='raw' cache='none'/>\n"
    << "      <source protocol='nbd' name='" << e(d.nbd_export) << "'"
    << nbd_host(d)
    // No <reconnect delay=.../>: libvirt 9.0 (Debian 12) drops it from NBD disks.
    << "      </source>\n"
    << "      <target dev='vda' bus='virtio'/>\n"
    << "    </disk>\n";
  if (!d.config_drive.empty())
    x << "    <disk type='file' device='cdrom'>\n"
      << "      <driver name='qemu' type='raw'/>\n"
      << "      <source file='" << e(d.config_drive) << "'/>\n"
      << "      <target dev='hdd' bus='ide'/>\n"
      << "      <readonly/>\n"
      << "    </disk>\n";
  if (!d.tap.empty())
    x << "    <interface type='ethernet'>\n"
      << "      <mac address='" << e(d.mac) << "'/>\n"
      << "      <target dev='" << e(d.tap) << "' managed='no'/>\n"
      << "      <model type='virtio'/>\n"
      << "    </interface>\n";
  x << "    <serial type='file'>\n"
    << "      <source path='" << e(d.console_log) << "'/>\n"
    << "      <target port='0'/>\n"
    << "    </serial>\n"
    << "    <memballoon model='none'/>\n"
    << "  </devices>\n"
    << "</domain>\n";
  return x.str();
}

std::string detect_virt_type() {
  Fd fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (fd.get() < 0) return "qemu";
  return ::ioctl(fd.get(), KVM_GET_API_VERSION, 0) == KVM_API_VERSION ? "kvm" : "qemu";
}

}  // namespace kiln::spawn
