// kiln-nbd: serves qcow2 and raw images over NBD. Command line as qemu-nbd's for one export,
// plus several exports (--export), a control socket and a state file.
#include <getopt.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../nbd/src/log.h"
#include "kiln/block/device.h"
#include "kiln/nbd/access.h"
#include "kiln/nbd/server.h"
#include "kiln/version.h"

using namespace kiln;
using kiln::block::Task;

namespace {

void usage(FILE* out) {
  fputs(
      "Usage: kiln-nbd [OPTIONS] [FILE]\n"
      "Serve FILE (qcow2 or raw) and/or --export images over NBD.\n\n"
      "  -k, --socket=PATH        listen on a Unix socket (mode 0600; 0660 with --socket-group)\n"
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
      "                           before its reply) or unsafe (FLUSH and FUA ignored);\n"
      "                           none and directsync (O_DIRECT) are not supported yet\n"
      "      --export=NAME=FILE[,format=FMT][,ro][,description=TEXT][,socket=PATH\n"
      "               [,owner=USER[:GROUP]]][,tls-identity=ID]\n"
      "                           another export (repeatable); socket=: a socket of its own\n"
      "                           on which clients see only this export; tls-identity=: only\n"
      "                           TLS clients with that PSK identity or certificate DN see it\n"
      "      --control=PATH       control socket (JSON lines: add/remove/list exports, stats)\n"
      "      --state-file=PATH    where control-API exports are kept across restarts\n"
      "      --socket-group=GROUP give the -k socket to GROUP (mode 0660)\n"
      "      --control-group=GROUP  let GROUP use the control socket (mode 0660)\n"
      "      --allow-dir=DIR      open images (and backing files) only under DIR (repeatable)\n"
      "      --max-memory=SIZE    bytes held for requests and replies, in total (default 1G)\n"
      "      --handshake-timeout=SECONDS  drop clients that have not finished the\n"
      "                           handshake by then (default 10; 0 = never)\n"
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
      "      --version            show the version\n",
      out);
}

[[noreturn]] void die(const std::string& msg) {
  fprintf(stderr, "kiln-nbd: %s\n", msg.c_str());
  exit(1);
}

// A whole decimal number in [min, max]; anything else ("abc", "80x", "-1", " 5", "") is an
// error naming the option, as qemu-nbd's "Invalid ..." messages do.
uint64_t parse_number(const std::string& option, const char* text, uint64_t min, uint64_t max) {
  const std::string s = text;
  const bool digits =
      !s.empty() && s.size() <= 20 && s.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  const unsigned long long v = digits ? strtoull(s.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE || v < min || v > max)
    die("Invalid " + option + " '" + s + "' (expected a whole number from " + std::to_string(min) +
        " to " + std::to_string(max) + ")");
  return v;
}

uint64_t parse_bytes(const std::string& option, const char* text, uint64_t min) {
  uint64_t v = 0;
  try {
    v = block::parse_size(text);
  } catch (const std::exception& e) {
    die("Invalid " + option + " '" + text + "' (a size such as 512M or 2G)");
  }
  if (v < min)
    die("Invalid " + option + " '" + text + "' (at least " + std::to_string(min >> 20) + "M)");
  return v;
}

nbd::ExportConfig parse_export(const std::string& spec) {
  nbd::ExportConfig c;
  auto eq = spec.find('=');
  if (eq == std::string::npos) die("--export wants NAME=FILE[,options], got '" + spec + "'");
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
    else
      die("unknown --export option '" + opt + "'");
    pos = next;
  }
  if (c.path.empty()) die("--export " + c.name + ": no file");
  if (!c.owner.empty() && c.socket.empty()) die("--export " + c.name + ": owner= needs socket=");
  return c;
}

Task<void> watch_signals(block::Reactor& r, nbd::Server& server, int sfd, bool* done) {
  struct Done {
    bool* flag;
    ~Done() { *flag = true; }
  } mark{done};
  for (;;) {
    signalfd_siginfo si;
    int n =
        co_await r.submit([&](io_uring_sqe* s) { io_uring_prep_read(s, sfd, &si, sizeof si, 0); });
    if (n != int(sizeof si)) {
      if (n == -EINTR || n == -EAGAIN) continue;
      break;
    }
    if (si.ssi_signo == SIGHUP) {
      nbd::reopen_log();
      nbd::logf(nbd::LogLevel::kInfo, "log reopened");
      continue;
    }
    server.request_shutdown();
    break;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // TCP listens on loopback unless -b says otherwise, or TLS is required (below).
  std::string socket_path, bind_addr, port_text, export_name, description, format;
  std::string control_path, state_file, pid_file, log_file, discard = "ignore", cache = "writeback";
  std::string socket_group, control_group;
  std::vector<std::string> allow_dirs;
  bool read_only = false, persistent = false, fork_bg = false, verbose = false;
  int64_t shared = -1;  // -1: not given
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  uint16_t port = 10809;
  nbd::ServerOptions so;
  std::vector<nbd::ExportConfig> exports;

  std::string tls_mode_text;
  nbd::TlsConfig tls;
  enum {
    kDiscard = 256,
    kCache,
    kExport,
    kControl,
    kStateFile,
    kThreads,
    kPidFile,
    kFork,
    kLog,
    kSocketGroup,
    kControlGroup,
    kAllowDir,
    kMaxMemory,
    kHandshakeTimeout,
    kTls,
    kTlsCreds,
    kTlsPsk,
    kTlsVerifyPeer,
    kVersion
  };
  static const option longopts[] = {
      {"socket", required_argument, nullptr, 'k'},
      {"port", required_argument, nullptr, 'p'},
      {"bind", required_argument, nullptr, 'b'},
      {"export-name", required_argument, nullptr, 'x'},
      {"description", required_argument, nullptr, 'D'},
      {"format", required_argument, nullptr, 'f'},
      {"read-only", no_argument, nullptr, 'r'},
      {"shared", required_argument, nullptr, 'e'},
      {"persistent", no_argument, nullptr, 't'},
      {"discard", required_argument, nullptr, kDiscard},
      {"cache", required_argument, nullptr, kCache},
      {"export", required_argument, nullptr, kExport},
      {"control", required_argument, nullptr, kControl},
      {"state-file", required_argument, nullptr, kStateFile},
      {"threads", required_argument, nullptr, kThreads},
      {"pid-file", required_argument, nullptr, kPidFile},
      {"fork", no_argument, nullptr, kFork},
      {"log", required_argument, nullptr, kLog},
      {"socket-group", required_argument, nullptr, kSocketGroup},
      {"control-group", required_argument, nullptr, kControlGroup},
      {"allow-dir", required_argument, nullptr, kAllowDir},
      {"max-memory", required_argument, nullptr, kMaxMemory},
      {"handshake-timeout", required_argument, nullptr, kHandshakeTimeout},
      {"tls", required_argument, nullptr, kTls},
      {"tls-creds", required_argument, nullptr, kTlsCreds},
      {"tls-psk", required_argument, nullptr, kTlsPsk},
      {"tls-verify-peer", no_argument, nullptr, kTlsVerifyPeer},
      {"verbose", no_argument, nullptr, 'v'},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, kVersion},
      {nullptr, 0, nullptr, 0}};
  for (int c; (c = getopt_long(argc, argv, "k:p:b:x:D:f:re:tvh", longopts, nullptr)) != -1;) {
    switch (c) {
      case 'k':
        socket_path = optarg;
        break;
      case 'p':
        port_text = optarg;
        port = uint16_t(parse_number("port", optarg, 1, 65535));
        break;
      case 'b':
        bind_addr = optarg;
        break;
      case 'x':
        export_name = optarg;
        break;
      case 'D':
        description = optarg;
        break;
      case 'f':
        format = optarg;
        break;
      case 'r':
        read_only = true;
        break;
      case 'e':
        shared = int64_t(parse_number("shared", optarg, 0, 1u << 20));
        break;
      case 't':
        persistent = true;
        break;
      case kDiscard:
        discard = optarg;
        break;
      case kCache:
        cache = optarg;
        break;
      case kExport:
        exports.push_back(parse_export(optarg));
        break;
      case kControl:
        control_path = optarg;
        break;
      case kStateFile:
        state_file = optarg;
        break;
      case kThreads:
        threads = unsigned(parse_number("threads", optarg, 1, 256));
        break;
      case kSocketGroup:
        socket_group = optarg;
        break;
      case kControlGroup:
        control_group = optarg;
        break;
      case kAllowDir:
        allow_dirs.push_back(optarg);
        break;
      case kMaxMemory:
        so.max_memory = parse_bytes("max-memory", optarg, so.max_block);
        break;
      case kHandshakeTimeout:
        so.handshake_timeout_ms =
            unsigned(parse_number("handshake-timeout", optarg, 0, 3600)) * 1000;
        break;
      case kPidFile:
        pid_file = optarg;
        break;
      case kFork:
        fork_bg = true;
        break;
      case kLog:
        log_file = optarg;
        break;
      case kTls:
        tls_mode_text = optarg;
        break;
      case kTlsCreds:
        tls.x509_dir = optarg;
        break;
      case kTlsPsk:
        tls.psk_file = optarg;
        break;
      case kTlsVerifyPeer:
        tls.verify_peer = true;
        break;
      case 'v':
        verbose = true;
        break;
      case 'h':
        usage(stdout);
        return 0;
      case kVersion:
        printf("kiln-nbd %s\n", KILN_VERSION);
        return 0;
      default:
        usage(stderr);
        return 1;
    }
  }
  if (optind + 1 < argc) die("too many arguments (one FILE; more with --export)");
  if (optind < argc) {
    nbd::ExportConfig c;
    c.name = export_name;
    c.path = argv[optind];
    c.format = format;
    c.read_only = read_only;
    c.description = description;
    exports.insert(exports.begin(), c);
  }
  if (discard != "ignore" && discard != "unmap" && discard != "off" && discard != "on")
    die("--discard must be ignore or unmap");
  for (auto& e : exports) e.discard = discard == "unmap" || discard == "on";
  nbd::ExportConfig::Cache cache_mode;
  if (cache == "writeback")
    cache_mode = nbd::ExportConfig::Cache::kWriteback;
  else if (cache == "writethrough")
    cache_mode = nbd::ExportConfig::Cache::kWritethrough;
  else if (cache == "unsafe")
    cache_mode = nbd::ExportConfig::Cache::kUnsafe;
  else
    die("--cache=" + cache + " is not supported (writeback, writethrough or unsafe)");
  for (auto& e : exports) e.cache = cache_mode;
  if (exports.empty() && control_path.empty())
    die("nothing to serve: give a FILE, --export, or --control");
  try {
    if (!socket_group.empty()) so.socket_access.gid = nbd::find_group(socket_group);
    if (!control_group.empty()) so.control_access.gid = nbd::find_group(control_group);
    for (const auto& c : exports)
      if (!c.owner.empty()) nbd::parse_owner(c.owner);
  } catch (const std::exception& e) {
    die(e.what());
  }
  for (const std::string& d : allow_dirs) {
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(d.c_str(), real) || stat(real, &st) < 0 || !S_ISDIR(st.st_mode))
      die("--allow-dir " + d + ": not a directory");
    so.allowed_dirs.push_back(real);
  }
  so.max_connection_bytes = std::min<uint64_t>(so.max_connection_bytes, so.max_memory);
  // Credentials turn TLS on and make it required, as qemu-nbd's --tls-creds does; --tls=on
  // serves plain clients beside TLS ones.
  const bool have_creds = !tls.x509_dir.empty() || !tls.psk_file.empty();
  try {
    tls.mode = tls_mode_text.empty() ? (have_creds ? nbd::TlsMode::kRequire : nbd::TlsMode::kOff)
                                     : nbd::parse_tls_mode(tls_mode_text);
  } catch (const std::exception& e) {
    die(e.what());
  }
  if (tls.mode != nbd::TlsMode::kOff && !have_creds)
    die("--tls=" + tls_mode_text + " needs --tls-creds or --tls-psk");
  if (tls.mode == nbd::TlsMode::kOff && have_creds)
    die("--tls=off with TLS credentials: drop the credentials or the --tls=off");
  // Plain NBD has no authentication: over TCP it stays on loopback unless -b asks for more.
  // With TLS required every client must hold a key, and the default is qemu-nbd's, every
  // address.
  if (bind_addr.empty()) bind_addr = tls.mode == nbd::TlsMode::kRequire ? "0.0.0.0" : "127.0.0.1";
  std::shared_ptr<const nbd::TlsCredentials> tls_creds;
  if (tls.mode != nbd::TlsMode::kOff) {
    try {
      tls_creds = nbd::TlsCredentials::load(tls);
    } catch (const std::exception& e) {
      die(e.what());
    }
  }
  if (verbose) nbd::set_log_level(nbd::LogLevel::kDebug);
  if (!log_file.empty()) nbd::set_log_file(log_file);

  // Fork first (an io_uring is not to be shared across fork); the parent waits until the
  // child listens, so that clients can connect as soon as the command returns.
  int ready[2] = {-1, -1};
  if (fork_bg) {
    if (pipe2(ready, O_CLOEXEC) < 0) die("pipe: " + std::string(strerror(errno)));
    pid_t pid = fork();
    if (pid < 0) die("fork: " + std::string(strerror(errno)));
    if (pid > 0) {
      close(ready[1]);
      char status = 1;
      ssize_t n = read(ready[0], &status, 1);
      _exit(n == 1 && status == 0 ? 0 : 1);
    }
    close(ready[0]);
    setsid();
  }

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0) die("signalfd: " + std::string(strerror(errno)));

  try {
    block::Reactor reactor(1024);
    // One client at a time, as qemu-nbd, unless told otherwise; a daemon with a control
    // socket serves many guests' exports, so there the default is no limit.
    if (shared < 0) shared = control_path.empty() ? 1 : 0;
    so.shared = shared != 1;
    so.max_clients = unsigned(shared);
    so.persistent = persistent || !control_path.empty();
    so.state_file = state_file;
    so.threads = threads;
    so.tls_mode = tls.mode;
    so.tls = tls_creds;
    nbd::Server server(reactor, so);
    // (Read before any export is added: adding one rewrites the file.)
    const std::vector<nbd::ExportConfig> recorded =
        state_file.empty() ? std::vector<nbd::ExportConfig>{} : nbd::load_state(state_file);
    // Exports given here must open (as qemu-nbd's one image must)...
    for (auto& c : exports) reactor.run(server.add_export(c));
    // ...but one missing image in the state file must not take every guest's disk down: it is
    // kept, listed as failed, until it is removed.
    reactor.run(server.restore_exports(recorded));
    if (!socket_path.empty()) server.listen_unix(socket_path);
    if (socket_path.empty() || !port_text.empty()) server.listen_tcp(bind_addr, port);
    if (!control_path.empty()) server.listen_control(control_path);
    if (!pid_file.empty()) {
      FILE* f = fopen(pid_file.c_str(), "we");
      if (!f) die(pid_file + ": " + strerror(errno));
      fprintf(f, "%d\n", getpid());
      fclose(f);
    }
    if (fork_bg) {
      char ok = 0;
      ssize_t ignored = write(ready[1], &ok, 1);
      (void)ignored;
      close(ready[1]);
      int devnull = open("/dev/null", O_RDWR);
      dup2(devnull, 0);
      dup2(devnull, 1);
      // The caller's stderr is let go even with --log (which writes to its own descriptor):
      // a daemon must not keep its parent's pipe open, or `$(kiln-nbd --fork ...)` never ends.
      dup2(devnull, 2);
      close(devnull);
    }
    bool watcher_done = false;
    reactor.spawn(watch_signals(reactor, server, sfd, &watcher_done));
    reactor.run(server.serve());
    if (!watcher_done) {  // stopped by other means (last client left): end the watcher too
      reactor.spawn([](block::Reactor* r, int fd) -> Task<void> { co_await r->cancel_fd(fd); }(
                                                      &reactor, sfd));
      reactor.run_until(watcher_done);
    }
  } catch (const std::exception& e) {
    die(e.what());
  }
  if (!pid_file.empty()) unlink(pid_file.c_str());
  return 0;
}
