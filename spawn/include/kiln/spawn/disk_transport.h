// How a guest's QEMU reaches its disk, kiln-spawn's setting `disk_transport`: `unix` (the
// default), a Unix socket of kiln-nbd on this host (the instance's own, or the shared one), or
// `tcp-tls`, NBD over TCP with TLS and X.509 certificates checked both ways, for a kiln-nbd that
// listens on TCP (a storage host, or this one). Plain TCP is never offered for a guest disk: NBD
// has no authentication of its own, and whoever reaches the port could open every export.
//
// With tcp-tls, libvirt hands QEMU the client credentials of its qemu.conf
// (`nbd_tls_x509_cert_dir`: ca-cert.pem, client-cert.pem, client-key.pem); libvirt 9.0 has no
// per-disk credentials. kiln-spawn adds each export with kiln-nbd's `tls-identity` = the subject
// DN of that client certificate, so with `--tls-verify-peer` only QEMUs holding this host's
// client key reach this host's guests' disks (see docs/kiln-spawn.md, "Disks over NBD+TLS").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kiln::spawn {

class Store;

inline constexpr const char* kDiskTransportSetting = "disk_transport";
inline constexpr const char* kNbdTcpAddressSetting = "nbd_tcp_address";
inline constexpr const char* kNbdTlsCertDirSetting = "nbd_tls_x509_cert_dir";

// The three settings with what config-show prints when one is not set.
const std::vector<std::pair<std::string, std::string>>& disk_transport_settings();
// Throws Error(kInvalidArgument) unless `value` is acceptable for `key`, one of the three ("" is:
// it restores the default).
void check_disk_transport_setting(const std::string& key, const std::string& value);

struct TcpEndpoint {
  std::string host;  // an IPv4 address, an IPv6 address (no brackets) or a DNS host name
  uint16_t port = 0;
  // "host:port", "[v6]:port".
  std::string str() const;
};

// "HOST:PORT" or "[IPV6]:PORT". HOST: an IPv4 or IPv6 address (not the unspecified 0.0.0.0 or
// ::, which names no server to connect to) or a DNS name (letters, digits and '-' in labels of
// 1-63, at most 253 characters); PORT 1-65535, decimal digits only. Throws
// Error(kInvalidArgument) naming `what`.
TcpEndpoint parse_tcp_endpoint(const std::string& text, const std::string& what);
// The host part of the rule above.
bool valid_tcp_host(const std::string& host);

// The file names of QEMU's tls-creds-x509 client endpoint (and libnbd's tls-certificates).
inline constexpr const char* kClientCredFiles[] = {"ca-cert.pem", "client-cert.pem",
                                                   "client-key.pem"};

struct DiskTransport {
  bool tcp_tls = false;
  TcpEndpoint endpoint;      // tcp_tls: kiln-nbd's TCP listener
  std::string cert_dir;      // tcp_tls: the client credentials libvirt hands QEMU
  std::string tls_identity;  // tcp_tls: RFC 4514 subject DN of cert_dir/client-cert.pem
};

// The transport the settings ask for, checked (before a boot claims anything): for tcp-tls the
// address, the certificate directory (for the local qemu:///system, it must be libvirt's own,
// else libvirt would give QEMU other credentials than the ones the export admits), its three
// files (the key not open to others), and the client certificate's DN.
// `nbd_host`: the kiln-nbd is another host's (a storage host's): its address is that host's
// own nbd_tcp_address setting; the rest (the transport, the client credentials) is this
// host's.
inline constexpr const char* kDefaultQemuConf = "/etc/libvirt/qemu.conf";
DiskTransport disk_transport(Store& store, const std::string& libvirt_uri,
                             const std::string& qemu_conf = kDefaultQemuConf,
                             const std::string& nbd_host = "");

// libvirt's NBD client certificate directory: qemu.conf's nbd_tls_x509_cert_dir, else
// /etc/pki/libvirt-nbd when it exists, else qemu.conf's default_tls_x509_cert_dir, else
// /etc/pki/qemu (libvirt's own rule).
std::string libvirt_nbd_cert_dir(const std::string& qemu_conf = "/etc/libvirt/qemu.conf");

// The subject DN of the first certificate in a PEM file, as RFC 4514 writes it (GnuTLS's
// gnutls_x509_crt_get_dn3, which kiln-nbd's --tls-verify-peer identity is too).
std::string certificate_dn(const std::string& pem_path);

// An instance whose disk goes over TCP+TLS keeps how in its directory (kTransportFile, JSON,
// 0600): start and delete then use what the boot used, whatever the settings say later.
inline constexpr const char* kTransportFile = "disk.transport.json";
void save_instance_transport(const std::string& instance_dir, const DiskTransport& t);
// nullopt when the instance has no such file (its disk is on a Unix socket).
std::optional<DiskTransport> instance_transport(const std::string& instance_dir);

}  // namespace kiln::spawn
