// The work of each build step of Compute::boot and its undo (pipeline.cpp has them in order).
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "build.h"
#include "inject.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "kiln/common/json.h"
#include "kiln/net/error.h"
#include "kiln/spawn/configdrive.h"
#include "kiln/spawn/disk_key.h"
#include "kiln/spawn/disk_transport.h"
#include "kiln/spawn/domain.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/metadata.h"
#include "kiln/spawn/nbd_control.h"
#include "kiln/spawn/virt.h"
#include "perms.h"
#include "snapshot.h"
#include "util.h"

namespace kiln::spawn {

namespace fs = std::filesystem;

// Creates a qcow2 overlay on `base` (explicit backing format) and grows it to `size`; with
// `key`, LUKS-encrypted (the base stays plain, as QEMU allows).
void create_overlay(const std::string& path, const std::string& base, const std::string& format,
                    uint64_t base_size, uint64_t size, const ComputeOptions& opt,
                    const std::optional<std::string>& key) {
  auto& reactor = block::Reactor::current();
  block::qcow2::CreateOptions o;
  o.size = base_size;
  o.cluster_size = opt.overlay_cluster_size;
  o.extended_l2 = opt.overlay_extended_l2;
  o.backing_file = base;
  o.backing_format = format;
  if (key) set_overlay_encryption(o, *key);
  base_size = o.size;
  try {
    block::qcow2::create(reactor, path, o);
    if (size > base_size) {
      block::OpenOptions oo;
      oo.format = "qcow2";
      oo.key_secret = key;
      auto dev = reactor.run(block::open_image(reactor, path, oo));
      int rc = reactor.run(dev->resize(size));
      int close_rc = reactor.run(dev->close());
      if (rc < 0) throw block::Error(-rc, "resizing to " + std::to_string(size) + " bytes");
      if (close_rc < 0) throw block::Error(-close_rc, "closing after the resize");
    }
  } catch (const block::Error& e) {
    throw system_error("overlay " + path + ": " + e.what());
  }
}

namespace {

// The instance's directory, on QEMU's way to its config drive and console log (perms.h).
void make_instance_dir(const Store& store, const Instance& inst) {
  make_dir(store.dir() + "/instances", kPassageDir);
  make_dir(inst.dir, kPassageDir);
}

std::string octal(mode_t m) {
  char b[8];
  std::snprintf(b, sizeof b, "%04o", static_cast<unsigned>(m & 07777));
  return b;
}

}  // namespace

void Compute::step_port(Build& b) {
  Instance& inst = b.inst;
  net::NetService svc(net_store_);
  net::PortSpec spec;
  spec.network = b.req.network;
  spec.name = inst.name;
  spec.tenant_id = opt_.tenant_id;
  spec.device_id = inst.id;
  spec.device_owner = "compute:" + b.req.availability_zone;
  spec.binding_host_id = inst.host;  // plumbed by the instance's host only (binding:host_id)
  spec.security_groups = b.req.security_groups;
  // The tenant's "default" group is made with its first port: asking for it by name before
  // that is asking for what netplumb gives a port without groups.
  if (spec.security_groups == std::vector<std::string>{"default"}) {
    try {
      svc.security_group("default", opt_.tenant_id);
    } catch (const net::Error&) {
      spec.security_groups.clear();
    }
  }
  net::Port port;
  try {
    port = svc.create_port(spec);
  } catch (const net::Error& e) {
    throw Error(e.reason(), std::string("port: ") + e.what(), e.error_number());
  }
  inst.port_id = port.id;
  inst.network_id = port.network_id;
  inst.mac = port.mac_address.str();
  inst.ip = port.fixed_ips.empty() ? "" : port.fixed_ips[0].ip_address.str();
  inst.tap = net::port_device_name(port);
  save(inst, "port " + port.id + " mac " + inst.mac + " ip " + inst.ip + " tap " + inst.tap);
  plumb({port.id});
  sync_network_hosts(port, true);
}

// Every port whose device is this instance: also one made by a build that died before it could
// record the port's id.
void Compute::undo_port(Instance& inst) {
  std::vector<net::Port> deleted;
  std::vector<std::string> ids;
  net::NetService svc(net_store_);
  for (const auto& p : net_store_.ports())
    if (p.device_id == inst.id) {
      svc.delete_port(p.id);
      deleted.push_back(p);
      ids.push_back(p.id);
    }
  if (!ids.empty()) plumb(ids);
  for (const auto& p : deleted) sync_network_hosts(p, false);
  inst.port_id.clear();
  inst.mac.clear();
  inst.ip.clear();
  inst.tap.clear();
}

void Compute::step_overlay(Build& b) {
  Instance& inst = b.inst;
  if (auto storage = storage_host()) {
    if (!disk_transport(store_, opt_.libvirt_uri, kDefaultQemuConf, *storage).tcp_tls)
      throw invalid("a storage host (setting storage_host " + *storage +
                    ") needs disk_transport tcp-tls");
    uint64_t size = std::max<uint64_t>(b.image.virtual_size, uint64_t(b.flavor.disk_gb) * kGiB);
    make_instance_dir(store_, inst);
    // Recorded first: the undos find the host in it, also after a build that died.
    write_file(inst.dir + "/" + kStorageHostFile, *storage);
    // --encrypted: the storage host makes the key beside the overlay and gives it to its
    // kiln-nbd; this host never holds it.
    if (b.req.encrypted) write_file(inst.dir + "/" + kStorageEncryptedFile, "");
    common::Json p = {{"image_id", inst.image_id}, {"size", size}, {"encrypted", b.req.encrypted}};
    std::string where = storage_work(*storage, kWorkDiskCreate, inst.id, common::dump(p));
    save(inst, std::string(b.req.encrypted ? "encrypted " : "") + "overlay " + where + " (" +
                   std::to_string(size) + " bytes) on storage host " + *storage);
    return;
  }
  ImageStore images(store_);
  bool filled = false;
  std::string base = images.ensure_base(b.image, opt_.progress, &filled);
  inst.base_filled = filled;
  make_instance_dir(store_, inst);
  uint64_t size = std::max<uint64_t>(b.image.virtual_size, uint64_t(b.flavor.disk_gb) * kGiB);
  // Made 0600 first: the qcow2 writer keeps an existing file's mode (it would create 0644).
  make_file(inst.dir + "/disk", kPrivateFile);
  std::optional<std::string> key;
  if (b.req.encrypted) key = create_disk_key(inst.dir);
  create_overlay(inst.dir + "/disk", base, b.image.disk_format, b.image.virtual_size, size, opt_,
                 key);
  save(inst, std::string(key ? "encrypted " : "") + "overlay " + inst.dir + "/disk (" +
                 std::to_string(size) + " bytes) on base " + base +
                 (filled ? " (base cached now)" : ""));
}

// The instance's directory goes whole: what the later steps put there too, if their undo
// could not run.
void Compute::undo_overlay(Instance& inst) {
  if (auto storage = instance_storage_host(inst))
    storage_work(*storage, kWorkDiskRemove, inst.id, "{}");
  std::error_code ec;
  fs::remove_all(inst.dir, ec);
  if (ec) throw system_error("cannot remove " + inst.dir + ": " + ec.message());
}

void Compute::step_config_drive(Build& b) {
  Instance& inst = b.inst;
  net::NetService svc(net_store_);
  ConfigDriveInput in;
  in.uuid = inst.id;
  in.name = inst.name;
  in.hostname = sanitize_hostname(inst.name);
  in.availability_zone = b.req.availability_zone;
  in.project_id = opt_.tenant_id;
  in.flavor = inst.flavor;
  in.image_id = inst.image_id;
  if (!b.key_data.empty()) in.public_keys.emplace_back(b.key_name, b.key_data);
  in.has_user_data = b.has_user_data;
  in.user_data = b.user_data;
  in.files = b.files;
  net::Port port = svc.port(inst.port_id);
  for (const auto& g : port.security_groups)
    in.security_groups.push_back(svc.security_group(g).name);
  net::Network network = svc.network(port.network_id);
  for (const auto& fip : port.fixed_ips) {
    net::Subnet sn = svc.subnet(fip.subnet_id);
    ConfigDriveNetwork n;
    n.port_id = port.id;
    n.network_id = port.network_id;
    n.mac = inst.mac;
    n.tap = inst.tap;
    n.ip = fip.ip_address.str();
    n.netmask = sn.cidr.netmask().str();
    if (sn.gateway_ip) n.gateway = sn.gateway_ip->str();
    for (const auto& d : sn.dns_nameservers) n.dns.push_back(d.str());
    n.mtu = net::network_mtu(network);  // VXLAN 1450, GRE 1458
    in.networks.push_back(n);
  }
  make_instance_dir(store_, inst);
  if (b.req.config_drive) write_iso(config_drive_files(in), inst.dir + "/disk.config");
  // The metadata service answers from the same input (kiln-spawn metadata-serve).
  std::vector<std::pair<std::string, std::string>> addresses;
  for (const auto& n : in.networks) addresses.emplace_back(n.network_id, n.ip);
  store_.put_metadata(inst.id, metadata_record(in), addresses);
  if (!b.req.config_drive) {
    save(inst, "no config drive: metadata service record only");
    return;
  }
  // QEMU opens it itself (libvirt chowns it too when dynamic_ownership is on).
  give_to(inst.dir + "/disk.config", qemu_user());
  save(inst, "config drive " + inst.dir + "/disk.config");
}

void Compute::undo_config_drive(Instance& inst) {
  store_.remove_metadata(inst.id);
  remove_file(inst.dir + "/disk.config");
}

void Compute::step_inject(Build& b) {
  if (!b.req.inject) return;
  Instance& inst = b.inst;
  if (auto storage = instance_storage_host(inst)) {
    storage_work(*storage, kWorkDiskInject, inst.id, inject_payload(b));
    save(inst, "injected on storage host " + *storage);
    return;
  }
  inject_into(inst.dir + "/disk", InjectRequest{sanitize_hostname(inst.name), b.key_data, b.files},
              read_disk_key(inst.dir));
  save(inst, "injected into " + inst.dir + "/disk: hostname" +
                 std::string(b.key_data.empty() ? "" : ", root's SSH key") +
                 (b.files.empty() ? "" : ", " + std::to_string(b.files.size()) + " file(s)"));
}

void Compute::step_export(Build& b) {
  Instance& inst = b.inst;
  inst.export_name = export_name_of(inst.id);
  if (auto storage = instance_storage_host(inst)) {
    // The storage host's kiln-nbd (its nbd_tcp_address) exports it for this host's client
    // certificate only.
    DiskTransport t = disk_transport(store_, opt_.libvirt_uri, kDefaultQemuConf, *storage);
    inst.nbd_socket.clear();
    save_instance_transport(inst.dir, t);
    save(inst, "export " + inst.export_name + " on storage host " + *storage + " over NBD+TLS at " +
                   t.endpoint.str() + " for the client certificate " + t.tls_identity);
    common::Json p = {{"tls_identity", t.tls_identity}};
    storage_work(*storage, kWorkDiskExport, inst.id, common::dump(p));
    return;
  }
  NbdControl nbd(opt_.nbd_control);
  if (DiskTransport t = disk_transport(store_, opt_.libvirt_uri); t.tcp_tls) {
    // Recorded first: start and delete use it, and the undo removes it.
    inst.nbd_socket.clear();
    save_instance_transport(inst.dir, t);
    save(inst, "export " + inst.export_name + " over NBD+TLS at " + t.endpoint.str() +
                   " for the client certificate " + t.tls_identity);
    add_export(nbd, inst);
    return;
  }
  inst.nbd_socket = opt_.nbd_socket.empty() ? opt_.nbd_socket_dir + "/" + inst.id + ".sock" : "";
  save(inst, "export " + inst.export_name + " on " +
                 (inst.nbd_socket.empty() ? "the shared socket " + opt_.nbd_socket
                                          : "its socket " + inst.nbd_socket));
  add_export(nbd, inst);
}

void Compute::undo_export(Instance& inst) {
  if (auto storage = instance_storage_host(inst)) {
    storage_work(*storage, kWorkDiskUnexport, inst.id, "{}");
    remove_file(inst.dir + "/" + kTransportFile);
    inst.export_name.clear();
    inst.nbd_socket.clear();
    return;
  }
  NbdControl(opt_.nbd_control).remove_export(export_name_of(inst.id));
  // kiln-nbd unlinks the export's socket; one left by a kiln-nbd that died goes too.
  struct stat st {};
  if (!inst.nbd_socket.empty() && ::lstat(inst.nbd_socket.c_str(), &st) == 0 &&
      S_ISSOCK(st.st_mode))
    remove_file(inst.nbd_socket);
  remove_file(inst.dir + "/" + kTransportFile);
  inst.export_name.clear();
  inst.nbd_socket.clear();
}

void Compute::add_export(NbdControl& nbd, const Instance& inst) {
  // The overlay, or a layer a snapshot's failed commit left on it (snapshot.h).
  const std::string disk = active_disk(inst);
  // An encrypted overlay: kiln-nbd reads the key from its file (it checks the mode too).
  const std::string key_file = disk_encrypted(inst.dir) ? disk_key_path(inst.dir) : "";
  if (auto t = instance_transport(inst.dir)) {
    nbd.add_export(inst.export_name, disk, "qcow2", nullptr, t->tls_identity, key_file);
    // A kiln-nbd without per-export TLS identities ignores the field and answers ok: the disk
    // would then open for every client that passes its TLS check. Never leave it so.
    for (const auto& e : nbd.list_exports())
      if (e.name == inst.export_name && e.tls_identity != t->tls_identity) {
        nbd.remove_export(inst.export_name);
        throw system_error("kiln-nbd added export " + inst.export_name +
                           " without the TLS identity " + t->tls_identity +
                           ": this kiln-nbd has no per-export TLS identities; update it");
      }
    return;
  }
  if (inst.nbd_socket.empty()) {
    nbd.add_export(inst.export_name, disk, "qcow2", nullptr, "", key_file);
    return;
  }
  const std::string& path = inst.nbd_socket;
  if (path.size() >= sizeof(sockaddr_un{}.sun_path))
    throw invalid("the export's socket path " + path + " is longer than " +
                  std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) +
                  " bytes (use a shorter --nbd-socket-dir)");
  const HostUser& q = qemu_user();
  make_dir(fs::path(path).parent_path().string(), kPassageDir);
  // A socket left by a kiln-nbd that died is no proof of anything: only the one kiln-nbd
  // makes now counts below.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  ExportSocket socket{path, q.spec()};
  nbd.add_export(inst.export_name, disk, "qcow2", &socket, "", key_file);
  // A kiln-nbd without per-export sockets ignores the two fields and answers ok: never fall
  // back to its shared socket, which every guest can reach.
  if (::lstat(path.c_str(), &st) != 0)
    throw system_error("kiln-nbd added export " + inst.export_name + " but made no socket at " +
                       path +
                       ": this kiln-nbd has no per-export sockets (it ignores \"socket\"); "
                       "update kiln-nbd, or give --nbd-socket to use its one shared socket");
  if (!S_ISSOCK(st.st_mode)) throw system_error(path + " is not a socket");
  if (st.st_uid != q.uid || (st.st_mode & 077) != 0)
    throw system_error("kiln-nbd made the socket " + path + " " + octal(st.st_mode) +
                       " owned by uid " + std::to_string(st.st_uid) + ", not 0600 for " + q.spec() +
                       " (the user QEMU runs as)");
}

void Compute::step_domain(Build& b) {
  Instance& inst = b.inst;
  DomainSpec d;
  d.name = domain_name_of(inst.id);
  d.uuid = inst.id;
  d.virt_type = opt_.virt_type.empty() ? detect_virt_type() : opt_.virt_type;
  d.instance_name = inst.name;
  d.flavor = inst.flavor;
  d.vcpus = inst.vcpus;
  d.memory_mb = inst.ram_mb;
  d.nbd_socket = inst.nbd_socket.empty() ? opt_.nbd_socket : inst.nbd_socket;
  d.nbd_export = inst.export_name;
  const std::optional<DiskTransport> tcp = instance_transport(inst.dir);
  if (tcp) {
    d.nbd_socket.clear();
    d.nbd_tcp_host = tcp->endpoint.host;
    d.nbd_tcp_port = tcp->endpoint.port;
  }
  if (b.req.config_drive) d.config_drive = inst.dir + "/disk.config";
  d.mac = inst.mac;
  d.tap = inst.tap;
  d.console_log = inst.dir + "/console.log";
  d.kernel = b.req.kernel;
  d.initrd = b.req.initrd;
  d.cmdline = b.req.cmdline;
  // QEMU opens the console log (O_APPEND) and the config drive itself, and connects to the
  // socket: made its own, and checked to be within its reach, so that a mode in the way is
  // this error rather than QEMU's.
  make_file(d.console_log, kPrivateFile);
  give_to(d.console_log, qemu_user());
  if (!d.config_drive.empty()) check_reachable(d.config_drive, qemu_user(), "the config drive", 4);
  check_reachable(d.console_log, qemu_user(), "the console log", 2);
  if (tcp) {
    // QEMU reads its client credentials itself (libvirt passes the directory).
    for (const char* f : kClientCredFiles)
      check_reachable(tcp->cert_dir + "/" + f, qemu_user(),
                      std::string("the NBD client credentials' ") + f, 4);
  } else {
    check_reachable(d.nbd_socket, qemu_user(), "kiln-nbd's socket", 2);  // connect(2) writes
  }
  inst.domain_name = d.name;
  inst.domain_xml = domain_xml(d);
  save(inst, "domain " + d.name + " (" + d.virt_type + ")");
  virt().define(inst.domain_xml);
  virt().start(inst.id);
}

void Compute::undo_domain(Instance& inst) {
  virt().destroy(inst.id);
  virt().undefine(inst.id);
  remove_file(inst.dir + "/console.log");
  inst.domain_name.clear();
}

void Compute::step_wait(Build& b) { wait_for(b.inst.id, true); }

}  // namespace kiln::spawn
