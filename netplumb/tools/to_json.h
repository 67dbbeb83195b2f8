// The model's objects as the JSON that kiln-net prints (Neutron's field names), for
// common::cli::print_object and print_list.
#pragma once

#include <vector>

#include "kiln/common/json.h"
#include "kiln/net/model.h"

namespace kiln::net::cli {

using common::Json;

Json to_json(const Network& n, const std::vector<Subnet>& subnets);
Json to_json(const Subnet& s);
Json to_json(const Port& p);
Json to_json(const Router& r, const Port* gw_port);
Json to_json(const FloatingIp& f);
Json to_json(const SecurityGroup& g, const std::vector<SecurityGroupRule>& rules);
Json to_json(const SecurityGroupRule& r);
// Neutron's agent fields; alive from the last report (kAgentDownTime), tunnel IP in
// configurations.tunneling_ip.
Json to_json(const Agent& a);

}  // namespace kiln::net::cli
