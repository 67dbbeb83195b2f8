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
  bool operator==(const SgPortRules&) const = default;
};

struct SgState {
  std::map<uint32_t, SgPortRules> ports;              // by tag
  std::map<std::string, std::set<std::string>> sets;  // remote-group sets by name
  bool operator==(const SgState&) const = default;
};

SgState security_group_state(const Snapshot& snap);

// Both tables from scratch, replacing whatever is there, in one transaction.
std::string sg_full_script(const SgState& s);
// The commands that turn `old` (what was applied) into `now`.
std::string sg_incremental_script(const SgState& old, const SgState& now);

std::string sg_serialize(const SgState& s);
// Returns false if the text is not a serialized state.
bool sg_deserialize(const std::string& text, SgState& out);

}  // namespace kiln::net
