// The disk transport settings (unix, tcp-tls), the TCP address rule, libvirt's certificate
// directory, the client certificate's DN (kiln-nbd's TLS identity) and an instance's record.
#include "kiln/spawn/disk_transport.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "kiln/spawn/error.h"
#include "test_util.h"

namespace kiln::spawn {
namespace {

using testing::TempDir;
using testing::TestStore;
using testing::write_text;

// A self-signed client certificate (certtool, ECDSA) whose subject is O=Kiln, CN=compute-1.
constexpr const char* kClientCert = R"(-----BEGIN CERTIFICATE-----
MIIBnDCCAUKgAwIBAgIUGQ8qZVZfB5Vu6f2lz2MLU1jLVeAwCgYIKoZIzj0EAwIw
IzENMAsGA1UEChMES2lsbjESMBAGA1UEAxMJY29tcHV0ZS0xMB4XDTI2MTIwMzIy
MDEyMVoXDTM2MTEzMDIyMDEyMVowIzENMAsGA1UEChMES2lsbjESMBAGA1UEAxMJ
Y29tcHV0ZS0xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETsSvlY9KCwVLQ9S1
OKIj+FqZ0YLgYa8KpyPXlJSNffpT84DRfIkA10JXC6HjxnqqJrA8DcjpYGauXNdY
M8K6s6NUMFIwDAYDVR0TAQH/BAIwADATBgNVHSUEDDAKBggrBgEFBQcDAjAOBgNV
HQ8BAf8EBAMCB4AwHQYDVR0OBBYEFBPqnLrP5RMBIp+693FulRUKFD9hMAoGCCqG
SM49BAMCA0gAMEUCIQCGuYkw2dht8GeADPzjJtRrxjsFeost/wUrPfCfvmIOogIg
Yox5aF1SBhVL23urp+CyH6hkvOTWlYpFk8uhPYvLemc=
-----END CERTIFICATE-----
)";

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kInvalidArgument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(DiskTransport, TcpAddresses) {
  auto e = parse_tcp_endpoint("127.0.0.1:10809", "x");
  EXPECT_EQ(e.host, "127.0.0.1");
  EXPECT_EQ(e.port, 10809);
  EXPECT_EQ(e.str(), "127.0.0.1:10809");
  e = parse_tcp_endpoint("[2001:db8::1]:1", "x");
  EXPECT_EQ(e.host, "2001:db8::1");
  EXPECT_EQ(e.port, 1);
  EXPECT_EQ(e.str(), "[2001:db8::1]:1");
  e = parse_tcp_endpoint("storage-1.example.org:65535", "x");
  EXPECT_EQ(e.host, "storage-1.example.org");
  EXPECT_EQ(e.port, 65535);
  for (const char* bad : {"",
                          "127.0.0.1",
                          "127.0.0.1:",
                          "127.0.0.1:0",
                          "127.0.0.1:65536",
                          "127.0.0.1:+80",
                          "127.0.0.1:80x",
                          "127.0.0.1: 80",
                          "0.0.0.0:10809",
                          "[::]:10809",
                          "2001:db8::1:10809",
                          "[2001:db8::1]10809",
                          "[nohost]:80",
                          "host name:80",
                          "a'b:80",
                          "<x>:80",
                          "-a:80",
                          "a..b:80",
                          "1.2.3:80",
                          "x\n:80",
                          ":80"}) {
    std::string msg = error_of([&] { parse_tcp_endpoint(bad, "nbd_tcp_address"); });
    EXPECT_NE(msg.find("nbd_tcp_address"), std::string::npos) << bad << ": " << msg;
  }
}

TEST(DiskTransport, SettingsRefusePlainTcp) {
  check_disk_transport_setting(kDiskTransportSetting, "unix");
  check_disk_transport_setting(kDiskTransportSetting, "tcp-tls");
  check_disk_transport_setting(kDiskTransportSetting, "");
  std::string msg = error_of([] { check_disk_transport_setting(kDiskTransportSetting, "tcp"); });
  EXPECT_NE(msg.find("no authentication"), std::string::npos) << msg;
  error_of([] { check_disk_transport_setting(kDiskTransportSetting, "TCP-TLS"); });
  error_of([] { check_disk_transport_setting(kNbdTcpAddressSetting, "localhost"); });
  check_disk_transport_setting(kNbdTcpAddressSetting, "localhost:10809");
  check_disk_transport_setting(kNbdTlsCertDirSetting, "/etc/pki/libvirt-nbd");
  error_of([] { check_disk_transport_setting(kNbdTlsCertDirSetting, "pki/libvirt-nbd"); });
  error_of([] { check_disk_transport_setting(kNbdTlsCertDirSetting, "/etc/pki\n"); });
}

TEST(DiskTransport, LibvirtsCertificateDirectory) {
  TempDir d;
  write_text(
      d / "qemu.conf",
      "# nbd_tls_x509_cert_dir = \"/commented\"\nnbd_tls_x509_cert_dir = \"/srv/nbd-pki\"\n");
  EXPECT_EQ(libvirt_nbd_cert_dir(d / "qemu.conf"), "/srv/nbd-pki");
  if (!std::filesystem::exists("/etc/pki/libvirt-nbd")) {
    write_text(d / "qemu.conf", "default_tls_x509_cert_dir = \"/srv/pki\"\n");
    EXPECT_EQ(libvirt_nbd_cert_dir(d / "qemu.conf"), "/srv/pki");
    EXPECT_EQ(libvirt_nbd_cert_dir(d / "absent.conf"), "/etc/pki/qemu");
  }
}

TEST(DiskTransport, ClientCertificateDn) {
  TempDir d;
  write_text(d / "client-cert.pem", kClientCert);
  // RFC 4514 order (most specific first), as kiln-nbd's --tls-verify-peer identity.
  EXPECT_EQ(certificate_dn(d / "client-cert.pem"), "CN=compute-1,O=Kiln");
  write_text(d / "junk.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  std::string msg = error_of([&] { certificate_dn(d / "junk.pem"); });
  EXPECT_NE(msg.find("junk.pem"), std::string::npos) << msg;
}

TEST(DiskTransport, FromTheSettings) {
  TempDir d;
  TestStore store(d / "state");
  const std::string uri = "test:///default";
  EXPECT_FALSE(disk_transport(store, uri).tcp_tls);  // unix by default
  store.set_setting(kDiskTransportSetting, "tcp-tls");
  std::string msg = error_of([&] { disk_transport(store, uri); });
  EXPECT_NE(msg.find("nbd_tcp_address is not set"), std::string::npos) << msg;
  store.set_setting(kNbdTcpAddressSetting, "127.0.0.1:10809");
  msg = error_of([&] { disk_transport(store, uri); });
  EXPECT_NE(msg.find("nbd_tls_x509_cert_dir"), std::string::npos) << msg;
  const std::string pki = d / "pki";
  std::filesystem::create_directory(pki);
  store.set_setting(kNbdTlsCertDirSetting, pki);
  msg = error_of([&] { disk_transport(store, uri); });
  EXPECT_NE(msg.find(pki + "/ca-cert.pem"), std::string::npos) << msg;
  write_text(pki + "/ca-cert.pem", kClientCert);
  write_text(pki + "/client-cert.pem", kClientCert);
  write_text(pki + "/client-key.pem", "key");
  ::chmod((pki + "/client-key.pem").c_str(), 0644);
  msg = error_of([&] { disk_transport(store, uri); });
  EXPECT_NE(msg.find("open to others"), std::string::npos) << msg;
  ::chmod((pki + "/client-key.pem").c_str(), 0600);
  DiskTransport t = disk_transport(store, uri);
  EXPECT_TRUE(t.tcp_tls);
  EXPECT_EQ(t.endpoint.str(), "127.0.0.1:10809");
  EXPECT_EQ(t.cert_dir, pki);
  EXPECT_EQ(t.tls_identity, "CN=compute-1,O=Kiln");
  // For the local system daemon the directory must be the one libvirt hands QEMU.
  write_text(d / "qemu.conf", "nbd_tls_x509_cert_dir = \"/srv/elsewhere\"\n");
  msg = error_of([&] { disk_transport(store, "qemu:///system", d / "qemu.conf"); });
  EXPECT_NE(msg.find("/srv/elsewhere"), std::string::npos) << msg;
  write_text(d / "qemu.conf", "nbd_tls_x509_cert_dir = \"" + pki + "/\"\n");
  EXPECT_EQ(disk_transport(store, "qemu:///system", d / "qemu.conf").tls_identity,
            "CN=compute-1,O=Kiln");
  // A stored value that config-set would refuse is refused at boot too.
  store.set_setting(kDiskTransportSetting, "tcp");
  error_of([&] { disk_transport(store, uri); });
}

TEST(DiskTransport, InstanceRecordRoundTrip) {
  TempDir d;
  EXPECT_FALSE(instance_transport(d.path()).has_value());
  DiskTransport t;
  t.tcp_tls = true;
  t.endpoint = parse_tcp_endpoint("[2001:db8::5]:10809", "x");
  t.cert_dir = "/etc/pki/libvirt-nbd";
  t.tls_identity = "CN=compute-1,O=Kiln";
  save_instance_transport(d.path(), t);
  struct stat st {};
  ASSERT_EQ(::stat((d / kTransportFile).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  auto back = instance_transport(d.path());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->endpoint.str(), "[2001:db8::5]:10809");
  EXPECT_EQ(back->cert_dir, t.cert_dir);
  EXPECT_EQ(back->tls_identity, t.tls_identity);
  write_text(d / kTransportFile,
             R"({"transport":"tcp-tls","host":"a'b","port":1,"tls_identity":"x"})");
  try {
    instance_transport(d.path());
    ADD_FAILURE() << "a malformed record was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.reason(), Reason::kCorrupt);
  }
}

}  // namespace
}  // namespace kiln::spawn
