// kiln-nbd's options: parsed by the common CLI layer into a Config, and checked.
#include "options.h"

#include <limits.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <ostream>
#include <thread>

#include "kiln/block/device.h"
#include "kiln/block/secret.h"
#include "kiln/nbd/access.h"

namespace kiln::nbd::cli {

namespace {

using common::cli::ExitError;
using common::cli::kValue;
using common::cli::parse_number;

const std::vector<common::cli::Option> kOptions = {
    {"-k|--socket", kValue},
    {"-p|--port", kValue},
    {"-b|--bind", kValue},
    {"-x|--export-name", kValue},
    {"-D|--description", kValue},
    {"-f|--format", kValue},
    {"-r|--read-only"},
    {"-e|--shared", kValue},
    {"-t|--persistent"},
    {"--discard", kValue},
    {"--cache", kValue},
    {"-n|--nocache"},
    {"--export", kValue},
    {"--object", kValue},
    {"--image-opts"},
    {"--control", kValue},
    {"--state-file", kValue},
    {"--threads", kValue},
    {"--pid-file", kValue},
    {"--fork"},
    {"--log", kValue},
    {"--socket-group", kValue},
    {"--control-group", kValue},
    {"--allow-dir", kValue},
    {"--max-memory", kValue},
    {"--handshake-timeout", kValue},
    {"--batch-wait", kValue},
    {"--tls", kValue},
    {"--tls-creds", kValue},
    {"--tls-psk", kValue},
    {"--tls-verify-peer"},
    {"-v|--verbose"},
    {"-h|--help"},
    {"--version"},
};

uint64_t parse_bytes(const std::string& option, const std::string& text, uint64_t min) {
  uint64_t v = 0;
  try {
    v = block::parse_size(text);
  } catch (const std::exception& e) {
    throw ExitError("Invalid " + option + " '" + text + "' (a size such as 512M or 2G)");
  }
  if (v < min)
    throw ExitError("Invalid " + option + " '" + text + "' (at least " + std::to_string(min >> 20) +
                    "M)");
  return v;
}

nbd::ExportConfig parse_export(const std::string& spec) {
  nbd::ExportConfig c;
  auto eq = spec.find('=');
  if (eq == std::string::npos)
    throw ExitError("--export wants NAME=FILE[,options], got '" + spec + "'");
  c.name = spec.substr(0, eq);
  std::string rest = spec.substr(eq + 1);
  size_t pos = rest.find(',');
  c.path = rest.substr(0, pos);
  while (pos != std::string::npos) {
    size_t next = rest.find(',', pos + 1);
    std::string opt = rest.substr(pos + 1, next == std::string::npos ? next : next - pos - 1);
    if (opt == "ro" || opt == "read-only")
      c.read_only = true;
    else if (opt.rfind("format=", 0) == 0)
      c.format = opt.substr(7);
    else if (opt.rfind("description=", 0) == 0)
      c.description = opt.substr(12);
    else if (opt.rfind("socket=", 0) == 0)
      c.socket = opt.substr(7);
    else if (opt.rfind("owner=", 0) == 0)
      c.owner = opt.substr(6);
    else if (opt.rfind("tls-identity=", 0) == 0)
      c.tls_identity = opt.substr(13);
    else if (opt.rfind("key-secret-file=", 0) == 0)
      c.key_secret_file = opt.substr(16);
    else
      throw ExitError("unknown --export option '" + opt + "'");
    pos = next;
  }
  if (c.path.empty()) throw ExitError("--export " + c.name + ": no file");
  if (!c.owner.empty() && c.socket.empty())
    throw ExitError("--export " + c.name + ": owner= needs socket=");
  return c;
}

// qemu's cache modes are two switches: whether the host page cache is bypassed (O_DIRECT) and
// whether a write is made durable before its reply (or FLUSH ignored, for unsafe).
struct CacheMode {
  nbd::ExportConfig::Cache cache;
  bool direct;
};
CacheMode parse_cache(const std::string& cache) {
  using C = nbd::ExportConfig::Cache;
  if (cache == "writeback") return {C::kWriteback, false};
  if (cache == "writethrough") return {C::kWritethrough, false};
  if (cache == "unsafe") return {C::kUnsafe, false};
  if (cache == "none" || cache == "off") return {C::kWriteback, true};
  if (cache == "directsync") return {C::kWritethrough, true};
  throw ExitError("Invalid cache mode '" + cache +
                  "' (none, directsync, writeback, writethrough or unsafe)");
}

// The exports: FILE (with -x, -D, -f, -r) first, then each --export; --discard and --cache
// apply to all of them.
std::vector<nbd::ExportConfig> exports(const common::cli::Args& a) {
  std::vector<nbd::ExportConfig> out;
  if (a.positional().size() > 1)
    throw ExitError("too many arguments (one FILE; more with --export)");
  if (a.positional().size() == 1) {
    nbd::ExportConfig c;
    c.name = a.get_or("--export-name", "");
    c.path = a.positional()[0];
    // qemu-nbd's way to name an encrypted image and its key: --object secret,... with
    // --image-opts driver=qcow2,file.filename=IMG,encrypt.key-secret=ID.
    try {
      block::ImageSpec spec = block::resolve_image_arg(c.path, a.flag("--image-opts"),
                                                       a.get("--format"), a.all("--object"));
      c.path = std::move(spec.path);
      c.format = std::move(spec.format);
      c.key_secret = std::move(spec.key_secret);
    } catch (const block::Error& e) {
      throw ExitError(e.what());
    }
    c.read_only = a.flag("--read-only");
    c.description = a.get_or("--description", "");
    out.push_back(c);
  }
  for (const auto& spec : a.all("--export")) out.push_back(parse_export(spec));
  const std::string discard = a.get_or("--discard", "ignore");
  if (discard != "ignore" && discard != "unmap" && discard != "off" && discard != "on")
    throw ExitError("--discard must be ignore or unmap");
  if (a.flag("--nocache") && a.get("--cache") && *a.get("--cache") != "none")
    throw ExitError("-n (--nocache) is --cache=none: it cannot go with --cache=" +
                    *a.get("--cache"));
  const CacheMode cache =
      parse_cache(a.get_or("--cache", a.flag("--nocache") ? "none" : "writeback"));
  for (auto& e : out) {
    e.discard = discard == "unmap" || discard == "on";
    e.cache = cache.cache;
    e.direct = cache.direct;
  }
  return out;
}

// Groups, owners and directories are looked up now, so that a typo fails at start.
void resolve_access(const common::cli::Args& a, Config& c) {
  try {
    if (auto g = a.get("--socket-group")) c.server.socket_access.gid = nbd::find_group(*g);
    if (auto g = a.get("--control-group")) c.server.control_access.gid = nbd::find_group(*g);
    for (const auto& e : c.exports)
      if (!e.owner.empty()) nbd::parse_owner(e.owner);
  } catch (const ExitError&) {
    throw;
  } catch (const std::exception& e) {
    throw ExitError(e.what());
  }
  for (const std::string& d : a.all("--allow-dir")) {
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(d.c_str(), real) || stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
      throw ExitError("--allow-dir " + d + ": not a directory");
    c.server.allowed_dirs.push_back(real);
  }
}

// Credentials turn TLS on and make it required, as qemu-nbd's --tls-creds does; --tls=on
// serves plain clients beside TLS ones.
void resolve_tls(Config& c) {
  const bool have_creds = !c.tls.x509_dir.empty() || !c.tls.psk_file.empty();
  try {
    c.tls.mode = c.tls_mode_text.empty()
                     ? (have_creds ? nbd::TlsMode::kRequire : nbd::TlsMode::kOff)
                     : nbd::parse_tls_mode(c.tls_mode_text);
  } catch (const std::exception& e) {
    throw ExitError(e.what());
  }
  if (c.tls.mode != nbd::TlsMode::kOff && !have_creds)
    throw ExitError("--tls=" + c.tls_mode_text + " needs --tls-creds or --tls-psk");
  if (c.tls.mode == nbd::TlsMode::kOff && have_creds)
    throw ExitError("--tls=off with TLS credentials: drop the credentials or the --tls=off");
  // Plain NBD has no authentication: over TCP it stays on loopback unless -b asks for more.
  // With TLS required every client must hold a key, and the default is qemu-nbd's, every
  // address.
  if (c.bind_addr.empty())
    c.bind_addr = c.tls.mode == nbd::TlsMode::kRequire ? "0.0.0.0" : "127.0.0.1";
}

}  // namespace

void help(std::ostream& out) {
  out << "Usage: kiln-nbd [OPTIONS] [FILE]\n"
         "Serve FILE (qcow2 or raw) and/or --export images over NBD.\n\n"
         "  -k, --socket=PATH        listen on a Unix socket (mode 0600; 0660 with "
         "--socket-group)\n"
         "  -p, --port=PORT          listen on TCP PORT (default 10809 when no -k)\n"
         "  -b, --bind=ADDR          TCP address to bind (default 127.0.0.1, loopback only;\n"
         "                           0.0.0.0 when TLS is required)\n"
         "  -x, --export-name=NAME   name of FILE's export (default \"\")\n"
         "  -D, --description=TEXT   description of FILE's export\n"
         "  -f, --format=FMT         qcow2 or raw (default: probe FILE; backings never probed)\n"
         "  -r, --read-only          export read-only\n"
         "  -e, --shared=N           allow N clients at a time (0 = unlimited; default 1,\n"
         "                           unlimited with --control)\n"
         "  -t, --persistent         keep serving after the last client disconnects\n"
         "      --discard=MODE       ignore (default) or unmap: whether TRIM frees space\n"
         "      --cache=MODE         writeback (default), writethrough (every write durable\n"
         "                           before its reply), unsafe (FLUSH and FUA ignored), none\n"
         "                           (O_DIRECT, no host page cache; FLUSH/FUA as writeback) or\n"
         "                           directsync (O_DIRECT and writethrough)\n"
         "  -n, --nocache            the same as --cache=none\n"
         "      --export=NAME=FILE[,format=FMT][,ro][,description=TEXT][,socket=PATH\n"
         "               [,owner=USER[:GROUP]]][,tls-identity=ID][,key-secret-file=F]\n"
         "                           another export (repeatable); socket=: a socket of its own\n"
         "                           on which clients see only this export; tls-identity=: only\n"
         "                           TLS clients with that PSK identity or certificate DN see it\n"
         "      --object=secret,id=ID,file=F  a secret (qemu's syntax), for --image-opts\n"
         "      --image-opts         FILE is driver=qcow2,file.filename=IMG,encrypt.key-secret=ID\n"
         "                           (an encrypted image and its key)\n"
         "      --control=PATH       control socket (JSON lines: add/remove/list exports, stats)\n"
         "      --state-file=PATH    where control-API exports are kept across restarts\n"
         "      --socket-group=GROUP give the -k socket to GROUP (mode 0660)\n"
         "      --control-group=GROUP  let GROUP use the control socket (mode 0660)\n"
         "      --allow-dir=DIR      open images (and backing files) only under DIR (repeatable)\n"
         "      --max-memory=SIZE    bytes held for requests and replies, in total (default 1G)\n"
         "      --handshake-timeout=SECONDS  drop clients that have not finished the\n"
         "                           handshake by then (default 10; 0 = never)\n"
         "      --batch-wait=USEC    longest wait for a connection's requests to gather before\n"
         "                           the next receive, tuned to what serves the client best\n"
         "                           (default 200; 0 = receive at once)\n"
         "      --threads=N          reactor threads (default: one per CPU); each export is\n"
         "                           served by one of them\n"
         "      --pid-file=PATH      write the server's PID here\n"
         "      --fork               go to the background once listening\n"
         "      --log=FILE           log to FILE (reopened on SIGHUP) instead of stderr\n"
         "      --tls=MODE           off, on (clients may upgrade) or require (default with\n"
         "                           credentials: only TLS clients are served)\n"
         "      --tls-creds=DIR      X.509: DIR/server-cert.pem, server-key.pem [, ca-cert.pem,\n"
         "                           ca-crl.pem, dh-params.pem] (qemu's file names)\n"
         "      --tls-psk=FILE       pre-shared keys, IDENTITY:HEXKEY lines (psktool's format)\n"
         "      --tls-verify-peer    X.509: require client certificates signed by ca-cert.pem\n"
         "  -v, --verbose            log every request\n"
         "  -h, --help               show this help\n"
         "      --version            show the version\n";
}

Config parse_command_line(const std::vector<std::string>& argv) {
  const common::cli::Args a = common::cli::parse(argv, kOptions);
  Config c;
  c.help = a.flag("--help");
  c.version = a.flag("--version");
  if (c.help || c.version) return c;
  // Numbers first, in the order qemu-nbd checks them.
  if (auto p = a.get("--port")) {
    c.port = static_cast<uint16_t>(parse_number(*p, "port", 1, 65535));
    c.port_given = true;
  }
  if (auto e = a.get("--shared"))
    c.shared = static_cast<int64_t>(parse_number(*e, "shared", 0, 1u << 20));
  c.server.threads = std::max(1u, std::thread::hardware_concurrency());
  if (auto t = a.get("--threads"))
    c.server.threads = static_cast<unsigned>(parse_number(*t, "threads", 1, 256));
  if (auto m = a.get("--max-memory"))
    c.server.max_memory = parse_bytes("max-memory", *m, c.server.max_block);
  if (auto w = a.get("--batch-wait"))
    c.server.batch_wait_us = static_cast<unsigned>(parse_number(*w, "batch-wait", 0, 1000));
  if (auto h = a.get("--handshake-timeout"))
    c.server.handshake_timeout_ms =
        static_cast<unsigned>(parse_number(*h, "handshake-timeout", 0, 3600)) * 1000;
  c.socket_path = a.get_or("--socket", "");
  c.bind_addr = a.get_or("--bind", "");
  c.control_path = a.get_or("--control", "");
  c.state_file = a.get_or("--state-file", "");
  c.pid_file = a.get_or("--pid-file", "");
  c.log_file = a.get_or("--log", "");
  c.persistent = a.flag("--persistent");
  c.fork_bg = a.flag("--fork");
  c.verbose = a.flag("--verbose");
  c.tls_mode_text = a.get_or("--tls", "");
  c.tls.x509_dir = a.get_or("--tls-creds", "");
  c.tls.psk_file = a.get_or("--tls-psk", "");
  c.tls.verify_peer = a.flag("--tls-verify-peer");

  c.exports = exports(a);
  if (c.exports.empty() && c.control_path.empty())
    throw ExitError("nothing to serve: give a FILE, --export, or --control");
  resolve_access(a, c);
  c.server.max_connection_bytes =
      std::min<uint64_t>(c.server.max_connection_bytes, c.server.max_memory);
  resolve_tls(c);
  return c;
}

}  // namespace kiln::nbd::cli
