// A client of kiln-nbd's control socket (JSON lines, see docs/kiln-nbd.md): add, remove and
// list exports.
#pragma once

#include <string>
#include <vector>

namespace kiln::spawn {

struct NbdExport {
  std::string name, path, format;
  bool read_only = false;
  int connections = 0;
};

// An export's own Unix socket: kiln-nbd creates it 0600, owned by `owner` ("USER[:GROUP]"),
// and a client connected through it sees that export only (under its name and as "").
// remove-export unlinks it.
struct ExportSocket {
  std::string path, owner;
};

class NbdControl {
 public:
  explicit NbdControl(std::string socket_path, int timeout_ms = 30000)
      : path_(std::move(socket_path)), timeout_ms_(timeout_ms) {}

  // With `socket`, the request carries "socket" and "owner". A kiln-nbd without per-export
  // sockets ignores unknown fields and answers ok without making the socket: the caller
  // checks that the socket exists.
  void add_export(const std::string& name, const std::string& path, const std::string& format,
                  const ExportSocket* socket = nullptr);
  // The request line add_export sends (JSON, without the newline).
  static std::string add_export_request(const std::string& name, const std::string& path,
                                        const std::string& format, const ExportSocket* socket);
  // Removes the export; returns false if there was none of that name.
  bool remove_export(const std::string& name);
  std::vector<NbdExport> list_exports();
  bool has_export(const std::string& name);

  const std::string& path() const { return path_; }

 private:
  // Sends one request line and returns the reply line.
  std::string call(const std::string& request);
  std::string path_;
  int timeout_ms_;
};

}  // namespace kiln::spawn
