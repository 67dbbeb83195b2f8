// A thin RAII layer over the libvirt C API: one connection, domains looked up by UUID.
// libvirt's own error printing is turned off; failures throw Error with libvirt's message.
#pragma once

#include <memory>
#include <string>
#include <vector>

struct _virConnect;
struct _virDomain;

namespace kiln::spawn {

enum class PowerState { kNone, kRunning, kBlocked, kPaused, kShutdown, kShutoff, kCrashed, kOther };
const char* power_state_name(PowerState s);

class Virt {
 public:
  explicit Virt(const std::string& uri);
  ~Virt();
  Virt(const Virt&) = delete;
  Virt& operator=(const Virt&) = delete;

  const std::string& uri() const { return uri_; }

  bool exists(const std::string& uuid);
  void define(const std::string& xml);
  void start(const std::string& uuid);
  PowerState state(const std::string& uuid);  // kNone when there is no such domain
  std::string xml(const std::string& uuid);
  // Asks the guest to shut down (ACPI); false if the domain is not running.
  bool shutdown(const std::string& uuid);
  // Hard power-off; no-op when not running or absent.
  void destroy(const std::string& uuid);
  // Removes the definition; no-op when absent.
  void undefine(const std::string& uuid);
  // Names of every domain (active and inactive).
  std::vector<std::string> domain_names();

 private:
  struct DomainDeleter {
    void operator()(_virDomain* d) const;
  };
  using DomainPtr = std::unique_ptr<_virDomain, DomainDeleter>;
  DomainPtr lookup(const std::string& uuid);  // null when absent
  [[noreturn]] void fail(const std::string& what);

  std::string uri_;
  _virConnect* conn_ = nullptr;
};

}  // namespace kiln::spawn
