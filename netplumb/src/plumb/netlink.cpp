#include "plumb/netlink.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/if.h>
#include <linux/if_bridge.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/if_tunnel.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "kiln/net/error.h"

namespace kiln::net {
namespace {

constexpr size_t kDumpBuf = 32768;

uint32_t be32(Ipv4 ip) { return htonl(ip.value()); }

// libmnl's iteration macros do not compile as C++; its parse callbacks do.
template <class F>
void for_each_nested(const nlattr* nest, F fn) {
  mnl_attr_parse_nested(
      nest,
      [](const nlattr* a, void* d) -> int {
        (*static_cast<F*>(d))(a);
        return MNL_CB_OK;
      },
      &fn);
}

template <class F>
void for_each_attr(const nlmsghdr* nlh, unsigned int offset, F fn) {
  mnl_attr_parse(
      nlh, offset,
      [](const nlattr* a, void* d) -> int {
        (*static_cast<F*>(d))(a);
        return MNL_CB_OK;
      },
      &fn);
}

struct LinkParse {
  const nlattr* tb[IFLA_MAX + 1] = {};
};

int link_attr_cb(const nlattr* attr, void* data) {
  auto* p = static_cast<LinkParse*>(data);
  int type = mnl_attr_get_type(attr);
  if (mnl_attr_type_valid(attr, IFLA_MAX) < 0) return MNL_CB_OK;
  p->tb[type] = attr;
  return MNL_CB_OK;
}

Link parse_link(const nlmsghdr* nlh) {
  auto* ifm = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  LinkParse p;
  mnl_attr_parse(nlh, sizeof(*ifm), link_attr_cb, &p);
  Link l;
  l.index = ifm->ifi_index;
  l.up = ifm->ifi_flags & IFF_UP;
  if (p.tb[IFLA_IFNAME]) l.name = mnl_attr_get_str(p.tb[IFLA_IFNAME]);
  if (p.tb[IFLA_MASTER]) l.master = static_cast<int>(mnl_attr_get_u32(p.tb[IFLA_MASTER]));
  if (p.tb[IFLA_MTU]) l.mtu = mnl_attr_get_u32(p.tb[IFLA_MTU]);
  if (p.tb[IFLA_ADDRESS] && mnl_attr_get_payload_len(p.tb[IFLA_ADDRESS]) == 6)
    std::memcpy(l.mac.b.data(), mnl_attr_get_payload(p.tb[IFLA_ADDRESS]), 6);
  if (p.tb[IFLA_LINKINFO]) {
    const nlattr* data = nullptr;
    const nlattr* slave_data = nullptr;
    std::string slave_kind;
    for_each_nested(p.tb[IFLA_LINKINFO], [&](const nlattr* info) {
      if (mnl_attr_get_type(info) == IFLA_INFO_KIND) l.kind = mnl_attr_get_str(info);
      if (mnl_attr_get_type(info) == IFLA_INFO_DATA) data = info;
      if (mnl_attr_get_type(info) == IFLA_INFO_SLAVE_KIND) slave_kind = mnl_attr_get_str(info);
      if (mnl_attr_get_type(info) == IFLA_INFO_SLAVE_DATA) slave_data = info;
    });
    if (data && l.kind == "gretap")
      for_each_nested(data, [&](const nlattr* a) {
        if (mnl_attr_get_type(a) == IFLA_GRE_IKEY && mnl_attr_get_payload_len(a) == 4)
          l.gre_key = ntohl(mnl_attr_get_u32(a));
        if (mnl_attr_get_type(a) == IFLA_GRE_REMOTE && mnl_attr_get_payload_len(a) == 4 &&
            mnl_attr_get_u32(a) != 0)
          l.gre_remote = Ipv4(ntohl(mnl_attr_get_u32(a)));
      });
    if (slave_data && slave_kind == "bridge")
      for_each_nested(slave_data, [&](const nlattr* a) {
        if (mnl_attr_get_type(a) == IFLA_BRPORT_ISOLATED && mnl_attr_get_payload_len(a) >= 1)
          l.bridge_port_isolated = mnl_attr_get_u8(a) != 0;
      });
    if (data && l.kind == "vxlan")
      for_each_nested(data, [&](const nlattr* a) {
        if (mnl_attr_get_type(a) == IFLA_VXLAN_ID) l.vxlan_id = mnl_attr_get_u32(a);
      });
  }
  return l;
}

nlmsghdr* new_msg(char* buf, uint16_t type, uint16_t flags) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = NLM_F_REQUEST | flags;
  return nlh;
}

ifinfomsg* put_ifinfo(nlmsghdr* nlh, int index) {
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  ifm->ifi_index = index;
  return ifm;
}

}  // namespace

Rtnl::Rtnl() {
  nl_ = mnl_socket_open(NETLINK_ROUTE);
  if (!nl_) throw system_error(std::string("netlink socket: ") + std::strerror(errno));
  if (mnl_socket_bind(nl_, 0, MNL_SOCKET_AUTOPID) < 0) {
    int e = errno;
    mnl_socket_close(nl_);
    throw system_error(std::string("netlink bind: ") + std::strerror(e));
  }
  portid_ = mnl_socket_get_portid(nl_);
  seq_ = static_cast<uint32_t>(::getpid()) << 8;
}

Rtnl::~Rtnl() { mnl_socket_close(nl_); }

int Rtnl::request(nlmsghdr* nlh) {
  nlh->nlmsg_flags |= NLM_F_ACK;
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0) return -errno;
  std::vector<char> buf(kDumpBuf);
  while (true) {
    ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
    if (n < 0) return -errno;
    int rc = mnl_cb_run(buf.data(), n, nlh->nlmsg_seq, portid_, nullptr, nullptr);
    if (rc < 0) return -errno;
    if (rc == MNL_CB_STOP) return 0;
  }
}

void Rtnl::check(int rc, const std::string& what) {
  if (rc < 0) throw system_error(what + ": " + std::strerror(-rc));
}

std::vector<Link> Rtnl::links() {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_GETLINK, NLM_F_DUMP);
  put_ifinfo(nlh, 0);
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0)
    throw system_error(std::string("netlink: ") + std::strerror(errno));
  std::vector<Link> out;
  std::vector<char> buf(kDumpBuf);
  auto cb = [](const nlmsghdr* m, void* data) -> int {
    static_cast<std::vector<Link>*>(data)->push_back(parse_link(m));
    return MNL_CB_OK;
  };
  while (true) {
    ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
    if (n < 0) throw system_error(std::string("netlink: ") + std::strerror(errno));
    int rc = mnl_cb_run(buf.data(), n, nlh->nlmsg_seq, portid_, cb, &out);
    if (rc < 0) throw system_error(std::string("netlink dump: ") + std::strerror(errno));
    if (rc == MNL_CB_STOP) break;
  }
  return out;
}

std::optional<Link> Rtnl::link(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) return std::nullopt;
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_GETLINK, 0);
  put_ifinfo(nlh, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0)
    throw system_error(std::string("netlink: ") + std::strerror(errno));
  std::vector<char> buf(kDumpBuf);
  std::optional<Link> out;
  auto cb = [](const nlmsghdr* m, void* data) -> int {
    *static_cast<std::optional<Link>*>(data) = parse_link(m);
    return MNL_CB_STOP;
  };
  ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
  if (n < 0) throw system_error(std::string("netlink: ") + std::strerror(errno));
  int rc = mnl_cb_run(buf.data(), n, nlh->nlmsg_seq, portid_, cb, &out);
  if (rc < 0) {
    if (errno == ENODEV) return std::nullopt;
    throw system_error("netlink get " + name + ": " + std::strerror(errno));
  }
  return out;
}

void Rtnl::add_bridge(const std::string& name) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  put_ifinfo(nlh, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "bridge");
  mnl_attr_nest_end(nlh, info);
  check(request(nlh), "create bridge " + name);
}

void Rtnl::add_vxlan(const std::string& name, uint32_t vni, std::optional<Ipv4> local) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  put_ifinfo(nlh, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "vxlan");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  mnl_attr_put_u32(nlh, IFLA_VXLAN_ID, vni);
  if (local) mnl_attr_put_u32(nlh, IFLA_VXLAN_LOCAL, be32(*local));
  mnl_attr_put_u16(nlh, IFLA_VXLAN_PORT, htons(4789));
  mnl_attr_put_u8(nlh, IFLA_VXLAN_LEARNING, 1);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);
  check(request(nlh), "create VXLAN device " + name);
}

void Rtnl::add_vlan(const std::string& name, int parent_index, uint16_t vid) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  put_ifinfo(nlh, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  mnl_attr_put_u32(nlh, IFLA_LINK, static_cast<uint32_t>(parent_index));
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "vlan");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  mnl_attr_put_u16(nlh, IFLA_VLAN_ID, vid);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);
  int rc = request(nlh);
  if (rc == -EOPNOTSUPP)
    throw system_error("cannot create VLAN device " + name +
                       ": this kernel has no 802.1Q VLAN support");
  check(rc, "create VLAN device " + name);
}

void Rtnl::add_gretap(const std::string& name, uint32_t key, std::optional<Ipv4> local,
                      std::optional<Ipv4> remote) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  put_ifinfo(nlh, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "gretap");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  mnl_attr_put_u32(nlh, IFLA_GRE_IKEY, htonl(key));
  mnl_attr_put_u32(nlh, IFLA_GRE_OKEY, htonl(key));
  mnl_attr_put_u16(nlh, IFLA_GRE_IFLAGS, htons(0x2000));  // GRE_KEY
  mnl_attr_put_u16(nlh, IFLA_GRE_OFLAGS, htons(0x2000));
  if (local) mnl_attr_put_u32(nlh, IFLA_GRE_LOCAL, be32(*local));
  if (remote) mnl_attr_put_u32(nlh, IFLA_GRE_REMOTE, be32(*remote));
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);
  int rc = request(nlh);
  if (rc == -EOPNOTSUPP)
    throw system_error("cannot create GRE device " + name +
                       ": this kernel has no GRE tunnel devices (use vxlan)");
  check(rc, "create GRE device " + name);
}

void Rtnl::add_veth(const std::string& name, const std::optional<Mac>& mac,
                    const std::string& peer_name, const std::optional<Mac>& peer_mac,
                    int peer_netns_fd) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  put_ifinfo(nlh, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  if (mac) mnl_attr_put(nlh, IFLA_ADDRESS, 6, mac->b.data());
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  nlattr* peer = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
  // The peer's attributes follow its own ifinfomsg.
  auto* pifm = static_cast<ifinfomsg*>(mnl_nlmsg_get_payload_tail(nlh));
  std::memset(pifm, 0, sizeof(*pifm));
  pifm->ifi_family = AF_UNSPEC;
  nlh->nlmsg_len += MNL_ALIGN(sizeof(ifinfomsg));
  mnl_attr_put_strz(nlh, IFLA_IFNAME, peer_name.c_str());
  if (peer_mac) mnl_attr_put(nlh, IFLA_ADDRESS, 6, peer_mac->b.data());
  if (peer_netns_fd >= 0)
    mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, static_cast<uint32_t>(peer_netns_fd));
  mnl_attr_nest_end(nlh, peer);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);
  int rc = request(nlh);
  if (rc == -EEXIST)
    throw system_error("create veth " + name + " / " + peer_name + ": a device named " + name +
                       " or " + peer_name + " exists already");
  check(rc, "create veth " + name + " / " + peer_name);
}

void Rtnl::del_link(int index) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_DELLINK, 0);
  put_ifinfo(nlh, index);
  int rc = request(nlh);
  if (rc == -ENODEV) return;
  check(rc, "delete link " + std::to_string(index));
}

void Rtnl::set_master(int index, int master_index) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, 0);
  put_ifinfo(nlh, index);
  mnl_attr_put_u32(nlh, IFLA_MASTER, static_cast<uint32_t>(master_index));
  check(request(nlh), "set master of link " + std::to_string(index));
}

void Rtnl::set_up(int index) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, 0);
  ifinfomsg* ifm = put_ifinfo(nlh, index);
  ifm->ifi_flags = IFF_UP;
  ifm->ifi_change = IFF_UP;
  check(request(nlh), "set link " + std::to_string(index) + " up");
}

void Rtnl::set_mac(int index, const Mac& mac) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, 0);
  put_ifinfo(nlh, index);
  mnl_attr_put(nlh, IFLA_ADDRESS, 6, mac.b.data());
  check(request(nlh), "set MAC of link " + std::to_string(index));
}

void Rtnl::set_mtu(int index, uint32_t mtu) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, 0);
  put_ifinfo(nlh, index);
  mnl_attr_put_u32(nlh, IFLA_MTU, mtu);
  check(request(nlh), "set MTU of link " + std::to_string(index) + " to " + std::to_string(mtu));
}

void Rtnl::set_bridge_port_isolated(int index) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWLINK, 0);
  put_ifinfo(nlh, index);
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_SLAVE_KIND, "bridge");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_SLAVE_DATA);
  mnl_attr_put_u8(nlh, IFLA_BRPORT_ISOLATED, 1);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);
  check(request(nlh), "isolate bridge port " + std::to_string(index));
}

std::vector<Address> Rtnl::addresses(int index) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_GETADDR, NLM_F_DUMP);
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0)
    throw system_error(std::string("netlink: ") + std::strerror(errno));
  struct Ctx {
    int index;
    std::vector<Address> out;
  } ctx{index, {}};
  auto cb = [](const nlmsghdr* m, void* data) -> int {
    auto* c = static_cast<Ctx*>(data);
    auto* a = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(m));
    if (static_cast<int>(a->ifa_index) != c->index || a->ifa_family != AF_INET) return MNL_CB_OK;
    for_each_attr(m, sizeof(*a), [&](const nlattr* attr) {
      if (mnl_attr_get_type(attr) == IFA_LOCAL && mnl_attr_get_payload_len(attr) == 4)
        c->out.push_back({Ipv4(ntohl(mnl_attr_get_u32(attr))), a->ifa_prefixlen});
    });
    return MNL_CB_OK;
  };
  std::vector<char> buf(kDumpBuf);
  while (true) {
    ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
    if (n < 0) throw system_error(std::string("netlink: ") + std::strerror(errno));
    int rc = mnl_cb_run(buf.data(), n, nlh->nlmsg_seq, portid_, cb, &ctx);
    if (rc < 0) throw system_error(std::string("netlink dump: ") + std::strerror(errno));
    if (rc == MNL_CB_STOP) break;
  }
  return ctx.out;
}

static void put_addr(nlmsghdr* nlh, int index, Ipv4 ip, int prefix) {
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  ifa->ifa_prefixlen = static_cast<unsigned char>(prefix);
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = static_cast<uint32_t>(index);
  mnl_attr_put_u32(nlh, IFA_LOCAL, htonl(ip.value()));
  mnl_attr_put_u32(nlh, IFA_ADDRESS, htonl(ip.value()));
}

void Rtnl::add_address(int index, Ipv4 ip, int prefix) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
  put_addr(nlh, index, ip, prefix);
  if (prefix < 31) {
    Cidr c{Ipv4(ip.value() & (prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix))), prefix};
    mnl_attr_put_u32(nlh, IFA_BROADCAST, htonl(c.broadcast().value()));
  }
  check(request(nlh), "add address " + ip.str() + "/" + std::to_string(prefix));
}

void Rtnl::del_address(int index, Ipv4 ip, int prefix) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_DELADDR, 0);
  put_addr(nlh, index, ip, prefix);
  int rc = request(nlh);
  if (rc == -EADDRNOTAVAIL) return;
  check(rc, "delete address " + ip.str());
}

std::optional<Ipv4> Rtnl::default_gateway() {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_GETROUTE, NLM_F_DUMP);
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = AF_INET;
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0)
    throw system_error(std::string("netlink: ") + std::strerror(errno));
  std::optional<Ipv4> gw;
  auto cb = [](const nlmsghdr* m, void* data) -> int {
    auto* r = static_cast<const rtmsg*>(mnl_nlmsg_get_payload(m));
    if (r->rtm_dst_len != 0 || r->rtm_table != RT_TABLE_MAIN) return MNL_CB_OK;
    for_each_attr(m, sizeof(*r), [&](const nlattr* attr) {
      if (mnl_attr_get_type(attr) == RTA_GATEWAY && mnl_attr_get_payload_len(attr) == 4)
        *static_cast<std::optional<Ipv4>*>(data) = Ipv4(ntohl(mnl_attr_get_u32(attr)));
    });
    return MNL_CB_OK;
  };
  std::vector<char> buf(kDumpBuf);
  while (true) {
    ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
    if (n < 0) throw system_error(std::string("netlink: ") + std::strerror(errno));
    int rc = mnl_cb_run(buf.data(), n, nlh->nlmsg_seq, portid_, cb, &gw);
    if (rc < 0) throw system_error(std::string("netlink dump: ") + std::strerror(errno));
    if (rc == MNL_CB_STOP) break;
  }
  return gw;
}

static rtmsg* put_default_route(nlmsghdr* nlh) {
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = AF_INET;
  rtm->rtm_dst_len = 0;
  rtm->rtm_table = RT_TABLE_MAIN;
  rtm->rtm_protocol = RTPROT_STATIC;
  rtm->rtm_scope = RT_SCOPE_UNIVERSE;
  rtm->rtm_type = RTN_UNICAST;
  return rtm;
}

void Rtnl::replace_default_route(Ipv4 gateway) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE);
  put_default_route(nlh);
  mnl_attr_put_u32(nlh, RTA_GATEWAY, htonl(gateway.value()));
  check(request(nlh), "set default route via " + gateway.str());
}

void Rtnl::del_default_route() {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_DELROUTE, 0);
  put_default_route(nlh)->rtm_scope = RT_SCOPE_NOWHERE;
  int rc = request(nlh);
  if (rc == -ESRCH) return;
  check(rc, "delete default route");
}

static void put_fdb_flood(nlmsghdr* nlh, int index, Ipv4 dst) {
  auto* nd = static_cast<ndmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ndmsg)));
  nd->ndm_family = AF_BRIDGE;
  nd->ndm_ifindex = index;
  nd->ndm_state = NUD_PERMANENT | NUD_NOARP;
  nd->ndm_flags = NTF_SELF;
  uint8_t zero[6] = {};
  mnl_attr_put(nlh, NDA_LLADDR, 6, zero);
  mnl_attr_put_u32(nlh, NDA_DST, htonl(dst.value()));
}

void Rtnl::append_fdb_flood(int index, Ipv4 dst) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_APPEND);
  put_fdb_flood(nlh, index, dst);
  int rc = request(nlh);
  if (rc == -EEXIST) return;
  check(rc, "add VXLAN flood entry to " + dst.str());
}

void Rtnl::del_fdb_flood(int index, Ipv4 dst) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_DELNEIGH, 0);
  put_fdb_flood(nlh, index, dst);
  int rc = request(nlh);
  if (rc == -ENOENT) return;
  check(rc, "delete VXLAN flood entry to " + dst.str());
}

std::vector<Ipv4> Rtnl::fdb_flood_entries(int index) {
  char req[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = new_msg(req, RTM_GETNEIGH, NLM_F_DUMP);
  auto* nd = static_cast<ndmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ndmsg)));
  nd->ndm_family = AF_BRIDGE;
  nlh->nlmsg_seq = ++seq_;
  if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0)
    throw system_error(std::string("netlink: ") + std::strerror(errno));
  struct Ctx {
    int index;
    std::vector<Ipv4> out;
  } ctx{index, {}};
  auto cb = [](const nlmsghdr* m, void* data) -> int {
    auto* c = static_cast<Ctx*>(data);
    auto* n = static_cast<const ndmsg*>(mnl_nlmsg_get_payload(m));
    if (n->ndm_ifindex != c->index) return MNL_CB_OK;
    bool zero_mac = false;
    std::optional<Ipv4> dst;
    for_each_attr(m, sizeof(*n), [&](const nlattr* a) {
      if (mnl_attr_get_type(a) == NDA_LLADDR && mnl_attr_get_payload_len(a) == 6) {
        auto* b = static_cast<const uint8_t*>(mnl_attr_get_payload(a));
        zero_mac = !(b[0] | b[1] | b[2] | b[3] | b[4] | b[5]);
      }
      if (mnl_attr_get_type(a) == NDA_DST && mnl_attr_get_payload_len(a) == 4)
        dst = Ipv4(ntohl(mnl_attr_get_u32(a)));
    });
    if (zero_mac && dst) c->out.push_back(*dst);
    return MNL_CB_OK;
  };
  std::vector<char> buf(kDumpBuf);
  while (true) {
    ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
    if (n < 0) throw system_error(std::string("netlink: ") + std::strerror(errno));
    int rc = mnl_cb_run(buf.data(), n, nlh->nlmsg_seq, portid_, cb, &ctx);
    if (rc < 0) throw system_error(std::string("netlink dump: ") + std::strerror(errno));
    if (rc == MNL_CB_STOP) break;
  }
  return ctx.out;
}

void create_persistent_tap(const std::string& name) {
  int fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) throw system_error(std::string("open /dev/net/tun: ") + std::strerror(errno));
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  if (::ioctl(fd, TUNSETIFF, &ifr) < 0 || ::ioctl(fd, TUNSETPERSIST, 1) < 0) {
    int e = errno;
    ::close(fd);
    throw system_error("create tap " + name + ": " + std::strerror(e));
  }
  ::close(fd);
}

}  // namespace kiln::net
