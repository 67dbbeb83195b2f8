// A client of kiln-nbd's control socket (JSON lines, see docs/kiln-nbd.md): add, remove and
// list exports; live snapshot and commit of a served export.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::spawn {

struct NbdExport {
  std::string name, path, format;
  bool read_only = false;
  int connections = 0;
  std::string tls_identity;  // "" when any client may open it
};

// An export's own Unix socket: kiln-nbd creates it 0600, owned by `owner` ("USER[:GROUP]"),
// and a client connected through it sees that export only (under its name and as "").
// remove-export unlinks it.
struct ExportSocket {
  std::string path, owner;
};

// A live commit, as {"cmd":"jobs"} reports it.
struct NbdJob {
  std::string export_name, top, base;
  std::string state;  // running, ready, completed, failed, cancelled
  uint64_t done = 0, total = 0;
  std::string error;  // when failed
};

class NbdControl {
 public:
  explicit NbdControl(std::string socket_path, int timeout_ms = 30000)
      : path_(std::move(socket_path)), timeout_ms_(timeout_ms) {}

  // With `socket`, the request carries "socket" and "owner". A kiln-nbd without per-export
  // sockets ignores unknown fields and answers ok without making the socket: the caller
  // checks that the socket exists.
  // With `tls_identity`, the request carries "tls-identity": kiln-nbd then shows the export
  // only to TLS clients that authenticated as that identity (with --tls-verify-peer, the RFC 4514
  // subject DN of their certificate), and refuses the request when its TLS is off.
  // `key_secret_file`: an encrypted image's passphrase file (mode 0600), which kiln-nbd reads
  // itself ("key-secret-file").
  void add_export(const std::string& name, const std::string& path, const std::string& format,
                  const ExportSocket* socket = nullptr, const std::string& tls_identity = "",
                  const std::string& key_secret_file = "");
  // The request line add_export sends (JSON, without the newline).
  static std::string add_export_request(const std::string& name, const std::string& path,
                                        const std::string& format, const ExportSocket* socket,
                                        const std::string& tls_identity = "",
                                        const std::string& key_secret_file = "");
  // Removes the export; returns false if there was none of that name.
  bool remove_export(const std::string& name);
  std::vector<NbdExport> list_exports();
  bool has_export(const std::string& name);

  // Live snapshot: a new qcow2 overlay at `overlay` (absolute, must not exist) over the
  // export's image; the export goes on on it, its clients connected. Throws on failure.
  void snapshot(const std::string& name, const std::string& overlay);
  // Starts committing the export's top image into its backing (`base`, if given, must be
  // that backing); wait for it with job().
  void commit(const std::string& name, const std::string& base = "");
  // The export's last commit (state "" if it has had none).
  NbdJob job(const std::string& name);
  void cancel_job(const std::string& name);

  const std::string& path() const { return path_; }

 private:
  // Sends one request line and returns the reply line.
  std::string call(const std::string& request);
  std::string path_;
  int timeout_ms_;
};

}  // namespace kiln::spawn
