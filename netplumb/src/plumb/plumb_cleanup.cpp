// Cleanup: what netplumb made and the model no longer has (devices, namespaces, dnsmasq,
// NAT state), found by netplumb's names.
#include <dirent.h>
#include <unistd.h>

#include <cctype>
#include <functional>
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

// The entries of `dir` (none if it does not exist) that `keep` does not claim.
std::vector<std::string> stale_entries(const std::string& dir,
                                       const std::function<bool(const std::string&)>& keep) {
  std::vector<std::string> stale;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != ".." && !keep(n)) stale.push_back(n);
    }
    ::closedir(d);
  }
  return stale;
}

}  // namespace

bool is_ours(const std::string& name) {
  if ((name.starts_with("brq") || name.starts_with("tap")) && is_hex_id_prefix(name.substr(3)))
    return true;
  if (name.starts_with("vxlan-") && is_number(name.substr(6))) return true;
  if (name.starts_with("gre-")) {
    // gre-SEG, or gre-SEG-K (one per peer)
    std::string rest = name.substr(4);
    auto dash = rest.find('-');
    if (dash == std::string::npos) return is_number(rest);
    return is_number(rest.substr(0, dash)) && is_number(rest.substr(dash + 1));
  }
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
  for (auto& n :
       stale_entries(nat_dir_, [&](const std::string& n) { return wanted_nat_.contains(n); }))
    ::unlink((nat_dir_ + "/" + n).c_str());
  for (auto& l : host_.links())
    if (is_ours(l.name) && !wanted_.count(l.name)) {
      host_.del_link(l.index);
      changed("removed " + l.name);
    }
  for (auto& n :
       stale_entries(dhcp_dir_, [&](const std::string& n) { return wanted_dhcp_.contains(n); })) {
    stop_dnsmasq(dhcp_dir_ + "/" + n);
    changed("stopped dnsmasq of network " + n);
  }
  for (auto& n : stale_entries(
           metadata_dir_, [&](const std::string& n) { return wanted_metadata_.contains(n); })) {
    stop_metadata_proxy(metadata_dir_ + "/" + n);
    changed("stopped metadata proxy of " +
            (n.starts_with("qrouter-") ? "router " + n.substr(8) : "network " + n));
  }
  auto keep_ns = [&](const std::string& n) {
    return !(n.starts_with("qrouter-") || n.starts_with("qdhcp-")) || wanted_ns_.contains(n);
  };
  for (auto& n : stale_entries(ns_dir_, keep_ns)) {
    delete_named_netns(ns_dir_ + "/" + n);
    changed("removed namespace " + n);
  }
}

}  // namespace kiln::net
