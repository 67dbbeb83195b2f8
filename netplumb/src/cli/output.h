// Printing objects as Neutron-style tables or as JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kiln/net/model.h"

namespace kiln::net::cli {

enum class Format { kTable, kJson };

nlohmann::ordered_json to_json(const Network& n, const std::vector<Subnet>& subnets);
nlohmann::ordered_json to_json(const Subnet& s);
nlohmann::ordered_json to_json(const Port& p);
nlohmann::ordered_json to_json(const Router& r, const Port* gw_port);
nlohmann::ordered_json to_json(const FloatingIp& f);
nlohmann::ordered_json to_json(const SecurityGroup& g, const std::vector<SecurityGroupRule>& rules);
nlohmann::ordered_json to_json(const SecurityGroupRule& r);

// One object: a Field/Value table, or a JSON object.
void print_object(const nlohmann::ordered_json& obj, Format f);
// Several objects: a table of `columns`, or a JSON array of whole objects.
void print_list(const std::vector<nlohmann::ordered_json>& objs,
                const std::vector<std::string>& columns, Format f);

}  // namespace kiln::net::cli
