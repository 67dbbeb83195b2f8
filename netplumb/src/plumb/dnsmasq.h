// One dnsmasq per network (a range per DHCP subnet), inside the network's DHCP namespace,
// serving only the ports' fixed MAC -> IP entries. Host and option files are reloaded with SIGHUP;
// dnsmasq is restarted only when its command line changes (a subnet came or went).
#pragma once

#include <string>
#include <vector>

namespace kiln::net {

struct DnsmasqConfig {
  std::string binary;               // /usr/sbin/dnsmasq
  std::string dir;                  // $KILN_RUN_DIR/dhcp/<network id>: pid, host, opts files
  std::string netns_path;           // namespace to run in
  std::string interface;            // the DHCP port's device inside it
  std::vector<std::string> ranges;  // --dhcp-range values
  std::string hosts;                // contents of the host file
  std::string opts;                 // contents of the options file
};

// Starts, reloads or restarts as needed; appends what it did to `changes`.
void ensure_dnsmasq(const DnsmasqConfig& cfg, std::vector<std::string>& changes);

// True if the dnsmasq of `cfg.dir` runs with the command line that `cfg` asks for (so that a
// change of its host or option files needs only a SIGHUP).
bool dnsmasq_current(const DnsmasqConfig& cfg);

// Stops the dnsmasq whose files are in `dir` (if it runs) and removes the directory.
void stop_dnsmasq(const std::string& dir);

}  // namespace kiln::net
