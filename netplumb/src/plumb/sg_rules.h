// Security groups as nftables objects, so that a change can be applied incrementally:
// each port owns four chains and four map elements; remote groups are sets.
//
//   bridge kiln_sg: chain ports (forward hook) -> iifname vmap @from_port -> from_<tag>
//                   (anti-spoofing, mark = tag << 16); oifname vmap @to_port -> to_<tag>
//                   (mark |= tag)
//   inet kiln_sg:   chain forward -> mark & 0xffff0000 vmap @egress_by_mark -> egress_<tag>,
//                   mark & 0xffff vmap @ingress_by_mark -> ingress_<tag>; sets rg_<group>
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "kiln/net/model.h"

namespace kiln::net {

struct SgPortRules {
  std::string dev;                        // the port's device
  std::string from, to, egress, ingress;  // chain bodies, one rule per line
  uint64_t digest = 0;                    // digest_of_bodies(), set with them
  bool operator==(const SgPortRules&) const = default;
  uint64_t digest_of_bodies() const;  // FNV-1a over the four bodies, stable across builds
};

struct SgState {
  std::map<uint32_t, SgPortRules> ports;              // by tag
  std::map<std::string, std::set<std::string>> sets;  // remote-group sets by name
  bool operator==(const SgState&) const = default;
};

// What was applied, as remembered in $KILN_RUN_DIR/security-groups: enough to compute the next
// change. A port's chains are remembered by digest, so the file stays small (it is read and
// written by every plumbing command).
struct SgApplied {
  struct Port {
    std::string dev;
    uint64_t digest = 0;
    bool operator==(const Port&) const = default;
  };
  std::map<uint32_t, Port> ports;
  std::map<std::string, std::set<std::string>> sets;
  bool operator==(const SgApplied&) const = default;
};

SgState security_group_state(const Snapshot& snap);
SgApplied sg_applied(const SgState& s);

// Both tables from scratch, replacing whatever is there, in one transaction.
std::string sg_full_script(const SgState& s);
// The commands that turn `old` (what was applied) into `now`. Ports and set members that
// only came cost additions only (no flush or delete).
std::string sg_incremental_script(const SgApplied& old, const SgState& now);

std::string sg_serialize(const SgApplied& s);
// Returns false if the text is not a serialized state (or is too big to be one).
bool sg_deserialize(const std::string& text, SgApplied& out);

}  // namespace kiln::net
