// The libvirt domain of an instance, as XML: the root disk is a kiln-nbd export reached over a
// Unix socket, or over TCP with TLS (<disk type='network'><source protocol='nbd'>), the config
// drive an IDE cdrom,
// the NIC the port's tap (type='ethernet', managed='no') with the port's MAC, the serial
// console a log file.
#pragma once

#include <cstdint>
#include <string>

namespace kiln::spawn {

struct DomainSpec {
  std::string name, uuid;
  std::string virt_type = "qemu";  // kvm or qemu
  std::string instance_name, flavor;
  int vcpus = 1;
  int64_t memory_mb = 512;
  std::string nbd_socket, nbd_export;
  std::string config_drive;  // ISO path; empty: none
  std::string mac, tap;      // empty tap: no NIC
  std::string console_log;
  // Direct kernel boot (optional).
  std::string kernel, initrd, cmdline;
  // The disk over NBD on TCP with TLS instead of the Unix socket (when nbd_tcp_host is set):
  // <source protocol='nbd' name=EXPORT tls='yes'><host name= port=/>. libvirt gives QEMU the
  // client certificate of qemu.conf's nbd_tls_x509_cert_dir. There is no plain-TCP form.
  std::string nbd_tcp_host;  // IPv4, IPv6 (no brackets) or DNS name; checked by domain_xml
  uint16_t nbd_tcp_port = 0;
};

// Throws Error(kInvalidArgument) for a TCP host that is not an address or host name
// (disk_transport.h), or port 0.
std::string domain_xml(const DomainSpec& spec);

// Escapes &, <, >, ' and " for XML text and attributes.
std::string xml_escape(const std::string& s);

// "kvm" if /dev/kvm can be opened and answers KVM_GET_API_VERSION, else "qemu".
std::string detect_virt_type();

}  // namespace kiln::spawn
