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

class NbdControl {
 public:
  explicit NbdControl(std::string socket_path, int timeout_ms = 30000)
      : path_(std::move(socket_path)), timeout_ms_(timeout_ms) {}

  void add_export(const std::string& name, const std::string& path, const std::string& format);
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
