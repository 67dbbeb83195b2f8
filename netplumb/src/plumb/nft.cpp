#include "plumb/nft.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <nftables/libnftables.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "kiln/net/error.h"

namespace kiln::net {
namespace {

struct CtxDeleter {
  void operator()(nft_ctx* c) const { nft_ctx_free(c); }
};

// A context opens its netlink socket in the namespace that is current when it is made.
std::unique_ptr<nft_ctx, CtxDeleter> new_ctx() {
  std::unique_ptr<nft_ctx, CtxDeleter> ctx(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!ctx) throw system_error("libnftables: cannot create a context");
  nft_ctx_buffer_output(ctx.get());
  nft_ctx_buffer_error(ctx.get());
  return ctx;
}

}  // namespace

void run_nft(const std::string& script) {
  auto ctx = new_ctx();
  if (nft_run_cmd_from_buffer(ctx.get(), script.c_str()) != 0) {
    std::string err = nft_ctx_get_error_buffer(ctx.get());
    while (!err.empty() && err.back() == '\n') err.pop_back();
    throw system_error("nftables refused the ruleset: " + err);
  }
}

std::string nft_output(const std::string& command) {
  auto ctx = new_ctx();
  if (nft_run_cmd_from_buffer(ctx.get(), command.c_str()) != 0) return "";
  return nft_ctx_get_output_buffer(ctx.get());
}

std::string nft_set(const std::set<std::string>& elements) {
  std::string s;
  for (auto& e : elements) {
    if (!s.empty()) s += ", ";
    s += e;
  }
  return "{ " + s + " }";
}

uint32_t nft_generation() {
  mnl_socket* nl = mnl_socket_open(NETLINK_NETFILTER);
  if (!nl) throw system_error(std::string("netfilter socket: ") + std::strerror(errno));
  std::unique_ptr<mnl_socket, int (*)(mnl_socket*)> guard(nl, mnl_socket_close);
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
    throw system_error(std::string("netfilter bind: ") + std::strerror(errno));
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  nlh->nlmsg_seq = static_cast<uint32_t>(::getpid());
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = AF_UNSPEC;
  nfg->version = NFNETLINK_V0;
  nfg->res_id = 0;
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
    throw system_error(std::string("netfilter send: ") + std::strerror(errno));
  std::optional<uint32_t> gen;
  auto cb = [](const nlmsghdr* m, void* data) -> int {
    mnl_attr_parse(
        m, sizeof(nfgenmsg),
        [](const nlattr* a, void* d) -> int {
          if (mnl_attr_get_type(a) == NFTA_GEN_ID && mnl_attr_get_payload_len(a) == 4)
            *static_cast<std::optional<uint32_t>*>(d) = ntohl(mnl_attr_get_u32(a));
          return MNL_CB_OK;
        },
        data);
    return MNL_CB_OK;
  };
  std::vector<char> rx(MNL_SOCKET_BUFFER_SIZE);
  uint32_t portid = mnl_socket_get_portid(nl);
  while (true) {
    ssize_t n = mnl_socket_recvfrom(nl, rx.data(), rx.size());
    if (n < 0) throw system_error(std::string("netfilter receive: ") + std::strerror(errno));
    int rc = mnl_cb_run(rx.data(), n, nlh->nlmsg_seq, portid, cb, &gen);
    if (rc < 0) throw system_error(std::string("nftables generation: ") + std::strerror(errno));
    if (rc == MNL_CB_STOP || gen) break;
  }
  if (!gen) throw system_error("nftables generation: no answer");
  return *gen;
}

}  // namespace kiln::net
