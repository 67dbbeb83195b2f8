// Cleanup: what netplumb made and the model no longer has (devices, namespaces, dnsmasq,
// NAT state), found by netplumb's names.
#include <dirent.h>
#include <unistd.h>

#include <cctype>
#include <map>
#include <vector>

#include "plumb/reconciler.h"

namespace kiln::net {

namespace {

bool is_hex_id_prefix(const std::string& s) {
  // The first 11 characters of a UUID: 8 hex digits, '-', 2 hex digits.
  if (s.size() != 11 || s[8] != '-') return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (i != 8 && !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

bool is_number(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

}  // namespace

bool is_ours(const std::string& name) {
  if ((name.starts_with("brq") || name.starts_with("tap")) && is_hex_id_prefix(name.substr(3)))
    return true;
  if (name.starts_with("vxlan-") && is_number(name.substr(6))) return true;
  if (name.starts_with("gre-") && is_number(name.substr(4))) return true;
  return false;
}

void Reconciler::remove_stale() {
  // Devices that are not ours on our bridges (an uplink whose mapping went) are let go.
  std::map<int, std::string> bridges;
  auto links = host_.links();
  for (auto& l : links)
    if (l.kind == "bridge" && is_ours(l.name)) bridges[l.index] = l.name;
  for (auto& l : links)
    if (bridges.count(l.master) && !is_ours(l.name) && !wanted_.count(l.name)) {
      host_.set_master(l.index, 0);
      changed("detached " + l.name + " from " + bridges[l.master]);
    }
  if (DIR* d = ::opendir(nat_dir_.c_str())) {
    std::vector<std::string> stale;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != ".." && !wanted_nat_.count(n)) stale.push_back(n);
    }
    ::closedir(d);
    for (auto& n : stale) ::unlink((nat_dir_ + "/" + n).c_str());
  }
  for (auto& l : host_.links())
    if (is_ours(l.name) && !wanted_.count(l.name)) {
      host_.del_link(l.index);
      changed("removed " + l.name);
    }
  if (DIR* d = ::opendir(dhcp_dir_.c_str())) {
    std::vector<std::string> stale;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != ".." && !wanted_dhcp_.count(n)) stale.push_back(n);
    }
    ::closedir(d);
    for (auto& n : stale) {
      stop_dnsmasq(dhcp_dir_ + "/" + n);
      changed("stopped dnsmasq of network " + n);
    }
  }
  if (DIR* d = ::opendir(ns_dir_.c_str())) {
    std::vector<std::string> stale;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if ((n.starts_with("qrouter-") || n.starts_with("qdhcp-")) && !wanted_ns_.count(n))
        stale.push_back(n);
    }
    ::closedir(d);
    for (auto& n : stale) {
      delete_named_netns(ns_dir_ + "/" + n);
      changed("removed namespace " + n);
    }
  }
}

}  // namespace kiln::net
