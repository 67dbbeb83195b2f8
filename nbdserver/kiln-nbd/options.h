// kiln-nbd's command line: qemu-nbd's options for one export, plus --export, the control socket,
// TLS and limits, read into a Config that main() wires into a server.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "kiln/common/cli.h"
#include "kiln/nbd/server.h"
#include "kiln/nbd/tls.h"

namespace kiln::nbd::cli {

struct Config {
  nbd::ServerOptions server;  // limits, access, TLS and threads (shared and persistent: main)
  std::vector<nbd::ExportConfig> exports;  // FILE first, then each --export
  std::string socket_path, bind_addr, control_path, state_file, pid_file, log_file;
  uint16_t port = 10809;
  bool port_given = false;
  int64_t shared = -1;  // -1: not given
  bool persistent = false, fork_bg = false, verbose = false;
  nbd::TlsConfig tls;
  std::string tls_mode_text;
  bool help = false, version = false;
};

void help(std::ostream& out);

// Reads the arguments after the program name. Mistakes throw (one line, exit 1 as qemu-nbd):
// common::cli::UsageError for the syntax, common::cli::ExitError for what the values say
// (an unknown group, a directory that is not one, a TLS mode without credentials).
Config parse_command_line(const std::vector<std::string>& argv);

}  // namespace kiln::nbd::cli
