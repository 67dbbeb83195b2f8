#include "kiln/spawn/disk_transport.h"

#include <arpa/inet.h>
#include <gnutls/x509.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kiln/spawn/error.h"
#include "kiln/spawn/store.h"
#include "perms.h"
#include "util.h"

namespace kiln::spawn {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr size_t kMaxPath = 4096;
constexpr size_t kMaxPem = 64 * 1024;     // one certificate (a chain would still fit)
constexpr size_t kMaxRecord = 16 * 1024;  // the instance's transport record
constexpr size_t kMaxDnsName = 253;       // RFC 1035, without the trailing dot
constexpr size_t kMaxDnsLabel = 63;

bool has_control_chars(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

bool dns_name(const std::string& h) {
  if (h.empty() || h.size() > kMaxDnsName) return false;
  size_t start = 0;
  bool all_numeric = true;  // "1.2.3" is a mistyped address, not a name
  while (start <= h.size()) {
    size_t dot = h.find('.', start);
    size_t end = dot == std::string::npos ? h.size() : dot;
    size_t len = end - start;
    if (len == 0 || len > kMaxDnsLabel) return false;
    if (h[start] == '-' || h[end - 1] == '-') return false;
    for (size_t i = start; i < end; ++i) {
      char c = h[i];
      bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
      if (!alnum && c != '-') return false;
      if (!(c >= '0' && c <= '9')) all_numeric = false;
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return !all_numeric;
}

std::string read_qemu_conf(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return "";
  return read_file(path, 1 << 20, "libvirt's QEMU configuration");
}

// The same directory, whatever the spelling (symlinks, "..", a trailing slash).
bool same_dir(const std::string& a, const std::string& b) {
  auto norm = [](std::string p) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    std::error_code ec;
    fs::path c = fs::weakly_canonical(p, ec);
    return ec ? fs::path(p).lexically_normal() : c;
  };
  return norm(a) == norm(b);
}

void check_cert_dir_value(const std::string& v, const std::string& what) {
  if (v.empty() || v[0] != '/') throw invalid(what + " must be an absolute path: '" + v + "'");
  if (v.size() > kMaxPath) throw invalid(what + " is longer than 4096 bytes");
  if (has_control_chars(v)) throw invalid(what + " has control characters");
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& disk_transport_settings() {
  static const std::vector<std::pair<std::string, std::string>> kSettings = {
      {kDiskTransportSetting, "unix"},
      {kNbdTcpAddressSetting, "(none)"},
      {kNbdTlsCertDirSetting, "(libvirt's)"},
  };
  return kSettings;
}

void check_disk_transport_setting(const std::string& key, const std::string& value) {
  if (value.empty()) return;
  if (key == kDiskTransportSetting) {
    if (value == "unix" || value == "tcp-tls") return;
    if (value == "tcp" || value == "nbd" || value == "tcp-plain")
      throw invalid("disk_transport '" + value +
                    "' is refused: plain NBD over TCP has no authentication, and whoever reaches "
                    "the port could open every guest's disk (use tcp-tls)");
    throw invalid("disk_transport must be unix or tcp-tls, not '" + value + "'");
  }
  if (key == kNbdTcpAddressSetting) {
    parse_tcp_endpoint(value, kNbdTcpAddressSetting);
    return;
  }
  if (key == kNbdTlsCertDirSetting) {
    check_cert_dir_value(value, kNbdTlsCertDirSetting);
    return;
  }
  throw invalid("unknown setting '" + key + "'");
}

std::string TcpEndpoint::str() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool valid_tcp_host(const std::string& host) {
  unsigned char buf[16];
  if (::inet_pton(AF_INET, host.c_str(), buf) == 1) return std::memcmp(buf, "\0\0\0\0", 4) != 0;
  if (::inet_pton(AF_INET6, host.c_str(), buf) == 1) {
    static const unsigned char kZero[16] = {};
    return std::memcmp(buf, kZero, 16) != 0;
  }
  return host.find(':') == std::string::npos && dns_name(host);
}

TcpEndpoint parse_tcp_endpoint(const std::string& text, const std::string& what) {
  const std::string form = " (expected HOST:PORT or [IPV6]:PORT, e.g. 192.0.2.10:10809)";
  if (text.size() > kMaxDnsName + 10 || has_control_chars(text))
    throw invalid(what + ": not an address" + form);
  TcpEndpoint e;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw invalid(what + ": '" + text + "' is not an address" + form);
    e.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    unsigned char buf[16];
    if (::inet_pton(AF_INET6, e.host.c_str(), buf) != 1)
      throw invalid(what + ": '" + e.host + "' in brackets is not an IPv6 address");
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string::npos) throw invalid(what + ": '" + text + "' has no port" + form);
    e.host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (e.host.find(':') != std::string::npos)
      throw invalid(what + ": an IPv6 address goes in brackets: '[" + e.host + "]:" + port + "'");
  }
  if (!valid_tcp_host(e.host))
    throw invalid(what + ": '" + e.host +
                  "' is not an IP address or host name to connect to (0.0.0.0 and :: name no "
                  "server)");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw invalid(what + ": port '" + port + "' is not a whole number from 1 to 65535");
  unsigned long p = std::stoul(port);
  if (p < 1 || p > 65535)
    throw invalid(what + ": port '" + port + "' is not a whole number from 1 to 65535");
  e.port = static_cast<uint16_t>(p);
  return e;
}

std::string libvirt_nbd_cert_dir(const std::string& qemu_conf) {
  const std::string text = read_qemu_conf(qemu_conf);
  std::string dir = qemu_conf_value(text, "nbd_tls_x509_cert_dir");
  if (!dir.empty()) return dir;
  std::error_code ec;
  if (fs::exists("/etc/pki/libvirt-nbd", ec)) return "/etc/pki/libvirt-nbd";
  dir = qemu_conf_value(text, "default_tls_x509_cert_dir");
  return dir.empty() ? "/etc/pki/qemu" : dir;
}

std::string certificate_dn(const std::string& pem_path) {
  const std::string pem = read_file(pem_path, kMaxPem, "the client certificate");
  gnutls_x509_crt_t crt = nullptr;
  if (gnutls_x509_crt_init(&crt) < 0) throw system_error("GnuTLS: cannot make a certificate");
  std::string out, error;
  gnutls_datum_t in{reinterpret_cast<unsigned char*>(const_cast<char*>(pem.data())),
                    static_cast<unsigned>(pem.size())};
  gnutls_datum_t dn{};
  int rc = gnutls_x509_crt_import(crt, &in, GNUTLS_X509_FMT_PEM);
  if (rc < 0) {
    error = std::string("not a PEM certificate (") + gnutls_strerror(rc) + ")";
  } else if (rc = gnutls_x509_crt_get_dn3(crt, &dn, 0); rc < 0) {
    error = std::string("no subject name (") + gnutls_strerror(rc) + ")";
  } else {
    out.assign(reinterpret_cast<const char*>(dn.data), dn.size);
    gnutls_free(dn.data);
  }
  gnutls_x509_crt_deinit(crt);
  if (!error.empty()) throw invalid("the client certificate " + pem_path + ": " + error);
  if (out.empty()) throw invalid("the client certificate " + pem_path + " has an empty subject");
  return out;
}

DiskTransport disk_transport(Store& store, const std::string& libvirt_uri,
                             const std::string& qemu_conf, const std::string& nbd_host) {
  DiskTransport t;
  const std::string kind = store.setting(kDiskTransportSetting).value_or("");
  check_disk_transport_setting(kDiskTransportSetting, kind);  // a value stored by hand
  if (kind.empty() || kind == "unix") return t;
  t.tcp_tls = true;
  const std::string addr = (nbd_host.empty() ? store.setting(kNbdTcpAddressSetting)
                                             : store.host_setting(nbd_host, kNbdTcpAddressSetting))
                               .value_or("");
  if (addr.empty() && nbd_host.empty())
    throw invalid(
        "disk_transport is tcp-tls but nbd_tcp_address is not set (kiln-spawn config-set "
        "nbd_tcp_address HOST:PORT, kiln-nbd's TCP listener)");
  if (addr.empty())
    throw invalid("storage host " + nbd_host +
                  " has no nbd_tcp_address (set it on that host: kiln-spawn config-set "
                  "nbd_tcp_address HOST:PORT, its kiln-nbd's TCP listener)");
  t.endpoint = parse_tcp_endpoint(addr, kNbdTcpAddressSetting);
  const std::string set = store.setting(kNbdTlsCertDirSetting).value_or("");
  const bool local = is_local_system_qemu(libvirt_uri);
  if (set.empty()) {
    if (!local)
      throw invalid(
          "disk_transport is tcp-tls: set nbd_tls_x509_cert_dir to the directory whose "
          "client certificate the libvirt of " +
          libvirt_uri + " gives QEMU");
    t.cert_dir = libvirt_nbd_cert_dir(qemu_conf);
  } else {
    check_cert_dir_value(set, kNbdTlsCertDirSetting);
    t.cert_dir = set;
    if (local) {
      const std::string libvirts = libvirt_nbd_cert_dir(qemu_conf);
      if (!same_dir(libvirts, set))
        throw invalid("nbd_tls_x509_cert_dir is " + set +
                      " but libvirt gives QEMU the client "
                      "certificate in " +
                      libvirts + " (" + qemu_conf + ": nbd_tls_x509_cert_dir); make them the same");
    }
  }
  for (const char* f : kClientCredFiles) {
    const std::string p = t.cert_dir + "/" + f;
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0)
      throw invalid("NBD+TLS client credentials: cannot use " + p + ": " + std::strerror(errno) +
                    " (scripts/kiln-tls-setup client makes " + f + ")");
    if (!S_ISREG(st.st_mode)) throw invalid("NBD+TLS client credentials: " + p + " is not a file");
  }
  const std::string key = t.cert_dir + "/client-key.pem";
  struct stat st {};
  if (::stat(key.c_str(), &st) == 0 && (st.st_mode & 007) != 0)
    throw invalid("the NBD client key " + key + " is open to others (mode " +
                  std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
                  std::to_string(st.st_mode & 7) +
                  "): chmod o-rwx it (QEMU's user must still read it)");
  t.tls_identity = certificate_dn(t.cert_dir + "/client-cert.pem");
  return t;
}

void save_instance_transport(const std::string& instance_dir, const DiskTransport& t) {
  json j = {{"transport", "tcp-tls"},
            {"host", t.endpoint.host},
            {"port", t.endpoint.port},
            {"cert_dir", t.cert_dir},
            {"tls_identity", t.tls_identity}};
  write_file(instance_dir + "/" + kTransportFile, j.dump() + "\n");
}

std::optional<DiskTransport> instance_transport(const std::string& instance_dir) {
  const std::string path = instance_dir + "/" + kTransportFile;
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  json j = json::parse(read_file(path, kMaxRecord, "the disk transport record"), nullptr, false);
  auto str = [&](const char* k) {
    return j.is_object() && j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : "";
  };
  if (!j.is_object() || str("transport") != "tcp-tls" || !j.contains("port") ||
      !j["port"].is_number_unsigned() || j["port"].get<uint64_t>() < 1 ||
      j["port"].get<uint64_t>() > 65535 || !valid_tcp_host(str("host")) ||
      str("tls_identity").empty())
    throw corrupt("the disk transport record " + path + " is malformed");
  DiskTransport t;
  t.tcp_tls = true;
  t.endpoint.host = str("host");
  t.endpoint.port = static_cast<uint16_t>(j["port"].get<uint64_t>());
  t.cert_dir = str("cert_dir");
  t.tls_identity = str("tls_identity");
  return t;
}

}  // namespace kiln::spawn
