// Security groups: the nftables tables of the host namespace, changed incrementally from what
// this host applied last, or reloaded whole.
#include <unistd.h>

#include "kiln/net/error.h"
#include "plumb/netns.h"
#include "plumb/nft.h"
#include "plumb/reconciler.h"
#include "plumb/sg_rules.h"

namespace kiln::net {

void Reconciler::ensure_security_groups() {
  SgState want = security_group_state(snap_);
  std::string cache = run_dir() + "/security-groups";
  if (want.ports.empty()) {
    std::string tables = nft_output("list tables");
    if (tables.find("table inet kiln_sg") != std::string::npos ||
        tables.find("table bridge kiln_sg") != std::string::npos) {
      run_nft(sg_full_script(want));
      changed("removed security group tables");
    }
    ::unlink(cache.c_str());
    return;
  }
  try {
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1");
  } catch (const Error&) {
    throw system_error("security groups need br_netfilter (net.bridge.bridge-nf-call-iptables)");
  }
  // The cache holds the nftables generation after our last change, then the state we
  // applied. It is trusted only if no one changed this namespace's nftables since.
  std::string text = read_state_file(cache);
  size_t nl = text.find('\n');
  SgApplied have;
  bool trusted = nl != std::string::npos &&
                 text.substr(0, nl) == std::to_string(nft_generation()) &&
                 sg_deserialize(text.substr(nl + 1), have);
  if (trusted && have == sg_applied(want)) return;
  ::unlink(cache.c_str());  // until the kernel matches `want` again
  bool done = false;
  if (trusted) {
    try {
      run_nft(sg_incremental_script(have, want));
      done = true;
      changed("updated security group rules");
    } catch (const Error&) {
      // The tables are not what the cache says: reload them whole below.
    }
  }
  if (!done) {
    run_nft(sg_full_script(want));
    changed("loaded security group rules");
  }
  write_state_file(cache, std::to_string(nft_generation()) + "\n" + sg_serialize(sg_applied(want)));
}

}  // namespace kiln::net
