// What kiln-net's commands share: the parsed command line, the service, the output format, and
// the command tables, one per resource (cmd_<resource>.cpp).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kiln/common/cli.h"
#include "kiln/common/cli_output.h"
#include "kiln/net/error.h"
#include "kiln/net/service.h"
#include "to_json.h"

namespace kiln::net::cli {

using common::cli::Args;
using common::cli::Format;
using common::cli::kFlag;
using common::cli::kValue;

struct Context {
  const Args& args;
  NetService& svc;
  Format format = Format::kTable;
  // Set by commands that change the model: the host is plumbed afterwards (unless --no-plumb).
  bool changed = false;
  // Set by the port commands: plumb just these ports instead of reconciling everything.
  std::optional<std::vector<std::string>> plumb_ports;
  // Print every change the plumbing makes (apply).
  bool verbose_plumb = false;
  // A change that this host's plumbing does not see (another host's settings).
  bool skip_plumb = false;

  std::string tenant() const;
  void show(const Json& object) const;
  void list(const std::vector<Json>& objects, const std::vector<std::string>& columns) const;
  // "Deleted network: NAME" (table format only).
  void deleted(const std::string& what, const std::string& ref) const;
};

using Command = common::cli::Command<Context>;
using CommandTable = common::cli::CommandTable<Context>;

// A command that changes the model: marks the context changed once it succeeded.
Command changing(Command c);

CommandTable network_commands();
CommandTable subnet_commands();
CommandTable port_commands();
CommandTable router_commands();
CommandTable floatingip_commands();
CommandTable security_group_commands();
CommandTable host_commands();  // config-*, agent-*, apply, teardown

}  // namespace kiln::net::cli
