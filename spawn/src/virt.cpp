#include "kiln/spawn/virt.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <mutex>

#include "kiln/spawn/error.h"

namespace kiln::spawn {

namespace {

void quiet(void*, virErrorPtr) {}

void init_libvirt() {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, quiet);
  });
}

std::string last_error() {
  const char* m = virGetLastErrorMessage();
  return m ? m : "unknown libvirt error";
}

bool no_domain_error() {
  virErrorPtr e = virGetLastError();
  return e && e->code == VIR_ERR_NO_DOMAIN;
}

}  // namespace

const char* power_state_name(PowerState s) {
  switch (s) {
    case PowerState::kNone:
      return "no domain";
    case PowerState::kRunning:
      return "running";
    case PowerState::kBlocked:
      return "blocked";
    case PowerState::kPaused:
      return "paused";
    case PowerState::kShutdown:
      return "shutting down";
    case PowerState::kShutoff:
      return "shut off";
    case PowerState::kCrashed:
      return "crashed";
    case PowerState::kOther:
      break;
  }
  return "other";
}

void Virt::DomainDeleter::operator()(_virDomain* d) const { virDomainFree(d); }

Virt::Virt(const std::string& uri) : uri_(uri) {
  init_libvirt();
  conn_ = virConnectOpen(uri.c_str());
  if (!conn_) throw system_error("cannot connect to libvirt at " + uri + ": " + last_error());
}

Virt::~Virt() {
  if (conn_) virConnectClose(conn_);
}

void Virt::fail(const std::string& what) {
  throw system_error("libvirt: " + what + ": " + last_error());
}

Virt::DomainPtr Virt::lookup(const std::string& uuid) {
  virDomainPtr d = virDomainLookupByUUIDString(conn_, uuid.c_str());
  if (!d) {
    if (no_domain_error()) return nullptr;
    fail("looking up domain " + uuid);
  }
  return DomainPtr(d);
}

bool Virt::exists(const std::string& uuid) { return lookup(uuid) != nullptr; }

void Virt::define(const std::string& xml) {
  virDomainPtr d = virDomainDefineXML(conn_, xml.c_str());
  if (!d) fail("defining the domain");
  virDomainFree(d);
}

void Virt::start(const std::string& uuid) {
  DomainPtr d = lookup(uuid);
  if (!d) throw not_found("libvirt: no domain with UUID " + uuid);
  if (virDomainCreate(d.get()) != 0) fail("starting domain " + uuid);
}

PowerState Virt::state(const std::string& uuid) {
  DomainPtr d = lookup(uuid);
  if (!d) return PowerState::kNone;
  int st = 0, reason = 0;
  if (virDomainGetState(d.get(), &st, &reason, 0) != 0) fail("state of domain " + uuid);
  switch (st) {
    case VIR_DOMAIN_RUNNING:
      return PowerState::kRunning;
    case VIR_DOMAIN_BLOCKED:
      return PowerState::kBlocked;
    case VIR_DOMAIN_PAUSED:
      return PowerState::kPaused;
    case VIR_DOMAIN_SHUTDOWN:
      return PowerState::kShutdown;
    case VIR_DOMAIN_SHUTOFF:
      return PowerState::kShutoff;
    case VIR_DOMAIN_CRASHED:
      return PowerState::kCrashed;
    default:
      return PowerState::kOther;
  }
}

std::string Virt::xml(const std::string& uuid) {
  DomainPtr d = lookup(uuid);
  if (!d) throw not_found("libvirt: no domain with UUID " + uuid);
  char* x = virDomainGetXMLDesc(d.get(), 0);
  if (!x) fail("XML of domain " + uuid);
  std::string out(x);
  free(x);
  return out;
}

bool Virt::shutdown(const std::string& uuid) {
  DomainPtr d = lookup(uuid);
  if (!d || virDomainIsActive(d.get()) != 1) return false;
  if (virDomainShutdown(d.get()) != 0) fail("shutting down domain " + uuid);
  return true;
}

void Virt::destroy(const std::string& uuid) {
  DomainPtr d = lookup(uuid);
  if (!d || virDomainIsActive(d.get()) != 1) return;
  if (virDomainDestroy(d.get()) != 0) {
    if (virDomainIsActive(d.get()) == 0) return;  // it stopped meanwhile
    fail("destroying domain " + uuid);
  }
}

void Virt::undefine(const std::string& uuid) {
  DomainPtr d = lookup(uuid);
  if (!d) return;
  if (virDomainUndefine(d.get()) != 0 && !no_domain_error()) fail("undefining domain " + uuid);
}

std::vector<std::string> Virt::domain_names() {
  virDomainPtr* list = nullptr;
  int n = virConnectListAllDomains(conn_, &list, 0);
  if (n < 0) fail("listing domains");
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    if (const char* name = virDomainGetName(list[i])) out.push_back(name);
    virDomainFree(list[i]);
  }
  free(list);
  return out;
}

}  // namespace kiln::spawn
