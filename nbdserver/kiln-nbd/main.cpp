// kiln-nbd: serves qcow2 and raw images over NBD. The command line (qemu-nbd's for one export,
// plus several exports, a control socket and a state file) is read in options.cpp; this file
// forks if asked, sets up the signals, and runs the server until SIGTERM.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "../nbd/src/log.h"
#include "kiln/block/device.h"
#include "kiln/nbd/server.h"
#include "options.h"

using namespace kiln;
using kiln::block::Task;
using kiln::common::cli::ExitError;

namespace {

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

// Forks into the background; the parent waits until the child listens (so that clients can
// connect as soon as the command returns) and exits. Returns the pipe end the child reports on.
int fork_background() {
  int ready[2] = {-1, -1};
  if (pipe2(ready, O_CLOEXEC) < 0) throw ExitError("pipe: " + std::string(strerror(errno)));
  pid_t pid = fork();
  if (pid < 0) throw ExitError("fork: " + std::string(strerror(errno)));
  if (pid > 0) {
    close(ready[1]);
    char status = 1;
    ssize_t n = read(ready[0], &status, 1);
    _exit(n == 1 && status == 0 ? 0 : 1);
  }
  close(ready[0]);
  setsid();
  return ready[1];
}

// Tells the waiting parent that the server listens and lets go of the caller's terminal.
void detach(int ready) {
  char ok = 0;
  ssize_t ignored = write(ready, &ok, 1);
  (void)ignored;
  close(ready);
  int devnull = open("/dev/null", O_RDWR);
  dup2(devnull, 0);
  dup2(devnull, 1);
  // The caller's stderr is let go even with --log (which writes to its own descriptor): a
  // daemon must not keep its parent's pipe open, or `$(kiln-nbd --fork ...)` never ends.
  dup2(devnull, 2);
  close(devnull);
}

int serve(nbd::cli::Config& cfg) {
  std::shared_ptr<const nbd::TlsCredentials> tls_creds;
  if (cfg.tls.mode != nbd::TlsMode::kOff) tls_creds = nbd::TlsCredentials::load(cfg.tls);
  if (cfg.verbose) nbd::set_log_level(nbd::LogLevel::kDebug);
  if (!cfg.log_file.empty()) nbd::set_log_file(cfg.log_file);

  // Fork first: an io_uring is not to be shared across fork.
  const int ready = cfg.fork_bg ? fork_background() : -1;

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0) throw ExitError("signalfd: " + std::string(strerror(errno)));

  block::Reactor reactor(1024);
  nbd::ServerOptions& so = cfg.server;
  // One client at a time, as qemu-nbd, unless told otherwise; a daemon with a control socket
  // serves many guests' exports, so there the default is no limit.
  const int64_t shared = cfg.shared >= 0 ? cfg.shared : cfg.control_path.empty() ? 1 : 0;
  so.shared = shared != 1;
  so.max_clients = unsigned(shared);
  so.persistent = cfg.persistent || !cfg.control_path.empty();
  so.state_file = cfg.state_file;
  so.tls_mode = cfg.tls.mode;
  so.tls = tls_creds;
  nbd::Server server(reactor, so);
  // (Read before any export is added: adding one rewrites the file.)
  const std::vector<nbd::ExportConfig> recorded =
      cfg.state_file.empty() ? std::vector<nbd::ExportConfig>{} : nbd::load_state(cfg.state_file);
  // Exports given here must open (as qemu-nbd's one image must)...
  for (auto& c : cfg.exports) reactor.run(server.add_export(c));
  // ...but one missing image in the state file must not take every guest's disk down: it is
  // kept, listed as failed, until it is removed.
  reactor.run(server.restore_exports(recorded));
  if (!cfg.socket_path.empty()) server.listen_unix(cfg.socket_path);
  if (cfg.socket_path.empty() || cfg.port_given) server.listen_tcp(cfg.bind_addr, cfg.port);
  if (!cfg.control_path.empty()) server.listen_control(cfg.control_path);
  if (!cfg.pid_file.empty()) {
    FILE* f = fopen(cfg.pid_file.c_str(), "we");
    if (!f) throw ExitError(cfg.pid_file + ": " + strerror(errno));
    fprintf(f, "%d\n", getpid());
    fclose(f);
  }
  if (cfg.fork_bg) detach(ready);
  bool watcher_done = false;
  reactor.spawn(watch_signals(reactor, server, sfd, &watcher_done));
  reactor.run(server.serve());
  if (!watcher_done) {  // stopped by other means (last client left): end the watcher too
    reactor.spawn(
        [](block::Reactor* r, int fd) -> Task<void> { co_await r->cancel_fd(fd); }(&reactor, sfd));
    reactor.run_until(watcher_done);
  }
  if (!cfg.pid_file.empty()) unlink(cfg.pid_file.c_str());
  return 0;
}

int run(const std::vector<std::string>& argv) {
  nbd::cli::Config cfg = nbd::cli::parse_command_line(argv);
  if (cfg.help) {
    nbd::cli::help(std::cout);
    return 0;
  }
  if (cfg.version) {
    common::cli::print_version(std::cout, "kiln-nbd");
    return 0;
  }
  return serve(cfg);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kiln::common::cli;
  return run_main({"kiln-nbd", nbd::cli::help, 1, false, &exit_one}, argc, argv, run);
}
