// What kiln-spawn's commands share: the parsed command line, the output format, the stores and
// the compute service (each opened on first use, so that `image-list` needs no libvirt), and
// the command tables, one per resource (cmd_<resource>.cpp).
#pragma once

#include <functional>

#include "kiln/common/cli.h"
#include "kiln/common/cli_output.h"
#include "kiln/common/json.h"
#include "kiln/net/store.h"
#include "kiln/spawn/compute.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/store.h"

namespace kiln::spawn::cli {

using common::Json;
using common::cli::Args;
using common::cli::Format;
using common::cli::kFlag;
using common::cli::kValue;

struct Context {
  const Args& args;
  Format format;
  std::function<Store&()> store;
  std::function<net::Store&()> net_store;
  std::function<Compute&()> compute;
  bool progress;

  void show(const Json& object) const;
  void list(const std::vector<Json>& objects, const std::vector<std::string>& columns) const;
};

using Command = common::cli::Command<Context>;
using CommandTable = common::cli::CommandTable<Context>;

CommandTable image_commands();
// An image as image-show prints it (cmd_image.cpp).
Json image_json(const Image& image);
CommandTable flavor_commands();
CommandTable instance_commands();  // boot, list, show, console-log, stop, start, delete, snapshot
CommandTable host_commands();      // hypervisor-list/show/stats, schedule, config-set/show
CommandTable ssh_commands();       // ssh
CommandTable metadata_commands();  // metadata-serve
CommandTable host_registry_commands();  // host-register/list/show/set/delete

// A host record with its usage, as host-show shows it (cmd_hosts.cpp).
Json host_to_json(const Host& h, const Usage& u);

}  // namespace kiln::spawn::cli
