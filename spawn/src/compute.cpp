#include "kiln/spawn/compute.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "build.h"
#include "inject.h"
#include "kiln/common/json.h"
#include "kiln/common/random.h"
#include "kiln/net/store.h"
#include "kiln/spawn/configdrive.h"
#include "kiln/spawn/disk_transport.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/nbd_control.h"
#include "kiln/spawn/resources.h"
#include "kiln/spawn/scheduler.h"
#include "kiln/spawn/virt.h"
#include "perms.h"
#include "snapshot.h"
#include "util.h"

namespace kiln::spawn {

namespace fs = std::filesystem;

Compute::Compute(Store& store, net::Store& net_store, ComputeOptions options)
    : store_(store), net_store_(net_store), opt_(std::move(options)) {}

Compute::~Compute() = default;

Virt& Compute::virt() {
  if (!virt_) virt_ = std::make_unique<Virt>(opt_.libvirt_uri);
  return *virt_;
}

std::string Compute::lock_path(const std::string& id) {
  std::string dir = store_.dir() + "/locks";
  make_dir(dir, kPrivateDir);
  return dir + "/" + id + ".lock";
}

const HostUser& Compute::qemu_user() {
  if (!qemu_user_) {
    std::string spec = opt_.qemu_user;
    const char* what = "--qemu-user";
    if (spec.empty()) {
      spec = store_.setting("qemu_user").value_or("");
      what = "setting qemu_user";
    }
    qemu_user_ = std::make_unique<HostUser>(spec.empty() ? default_qemu_user(opt_.libvirt_uri)
                                                         : parse_host_user(spec, what));
  }
  return *qemu_user_;
}

Instance Compute::get(const std::string& ref) {
  auto i = store_.find_instance(ref);
  if (!i) throw not_found("instance '" + ref + "' not found");
  return *i;
}

void Compute::save(Instance& inst, const std::string& message) {
  inst.updated_at = utc_now();
  store_.write([&] {
    store_.put(inst);
    store_.add_event(inst.id, inst.status, inst.task_state, message);
  });
}

void Compute::plumb(const std::vector<std::string>& port_ids) {
  if (!opt_.plumb) return;
  net::NetService svc(net_store_);
  net::Plumber plumber(net::host_config(svc));
  net::ApplyResult r =
      port_ids.empty() ? plumber.apply(net_store_) : plumber.plumb_ports(net_store_, port_ids);
  if (!r.errors.empty()) {
    std::string all;
    for (const auto& e : r.errors) all += (all.empty() ? "" : "; ") + e;
    throw system_error("network plumbing failed: " + all);
  }
}

void Compute::wait_for(const std::string& uuid, bool running) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt_.wait_timeout_s);
  auto pause = std::chrono::milliseconds(5);
  for (;;) {
    PowerState s = virt().state(uuid);
    if (running && s == PowerState::kRunning) return;
    if (!running && (s == PowerState::kShutoff || s == PowerState::kNone)) return;
    if (running &&
        (s == PowerState::kShutoff || s == PowerState::kCrashed || s == PowerState::kNone))
      throw system_error(std::string("the domain stopped while starting (") + power_state_name(s) +
                         ")");
    if (std::chrono::steady_clock::now() > deadline)
      throw system_error(std::string("the domain is not ") + (running ? "running" : "shut off") +
                         " after " + std::to_string(opt_.wait_timeout_s) + " s (" +
                         power_state_name(s) + ")");
    if (interrupted()) throw system_error("interrupted while waiting for the domain");
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(200));
  }
}

namespace {

void check_guest_path(const std::string& guest) {
  if (guest.empty() || guest[0] != '/')
    throw invalid("--file: the guest path must be absolute: '" + guest + "'");
}

}  // namespace

// Checks the request and reads its inputs, before anything is claimed: bad input changes
// nothing.
void Compute::prepare(Build& b) {
  const BootRequest& req = b.req;
  check_name("instance", req.name);
  if (req.image.empty() || req.flavor.empty() || req.network.empty())
    throw invalid("boot needs --image, --flavor and --net");
  qemu_user();  // a user that does not exist is bad input too
  // So are disk transport settings that cannot work (no address, credentials missing); with a
  // storage host, the address is that host's kiln-nbd's.
  disk_transport(store_, opt_.libvirt_uri, kDefaultQemuConf, storage_host().value_or(""));
  if (const char* f = std::getenv(kFailAtEnv); f && *f) {
    const auto& s = build_steps();
    if (std::find(s.begin(), s.end(), f) == s.end())
      throw invalid(std::string(kFailAtEnv) + "=" + f + " names no build step");
  }
  if (!req.key_file.empty()) {
    b.key_data = read_file(req.key_file, kMaxKeyFile, "key file");
    while (!b.key_data.empty() && (b.key_data.back() == '\n' || b.key_data.back() == '\r'))
      b.key_data.pop_back();
    if (b.key_data.empty()) throw invalid("key file " + req.key_file + " is empty");
    b.key_name = fs::path(req.key_file).stem().string();
  }
  if (!req.user_data_file.empty()) {
    b.user_data = read_file(req.user_data_file, kMaxUserData, "user data");
    b.has_user_data = true;
  }
  for (const auto& [guest, host] : req.files) {
    check_guest_path(guest);  // before its host file is read
    b.files.emplace_back(guest, read_file(host, kMaxInjectedBytes, "file"));
  }
  check_inputs(b);
}

void Compute::check_inputs(const Build& b) {
  check_name("instance", b.req.name);
  size_t total = 0;
  for (const auto& [guest, data] : b.files) {
    check_guest_path(guest);
    total += data.size();
  }
  if (b.files.size() > kMaxInjectedFiles)
    throw invalid("at most " + std::to_string(kMaxInjectedFiles) + " files can be given");
  if (b.req.inject)
    check_injection(InjectRequest{sanitize_hostname(b.req.name), b.key_data, b.files});
  if (total > kMaxInjectedBytes)
    throw invalid("the files given are larger than " + std::to_string(kMaxInjectedBytes) +
                  " bytes in total");
}

// The claim step: the scheduler's choice of a host, the claim there and the record (with the
// step, which the runner set), in one transaction, so that a boot beyond capacity leaves nothing
// at all.
void Compute::claim(Build& b) {
  const BootRequest& req = b.req;
  Instance& inst = b.inst;
  inst.name = req.name;
  inst.network = req.network;
  inst.dir = store_.dir() + "/instances/" + inst.id;
  inst.created_at = inst.updated_at = utc_now();
  ScheduleRequest sr;
  split_zone_and_host(req.availability_zone, &sr.availability_zone, &sr.host);
  if (!req.host.empty()) {
    if (!sr.host.empty() && sr.host != req.host)
      throw invalid("--host " + req.host + " and --availability-zone " + req.availability_zone +
                    " name different hosts");
    sr.host = req.host;
  }
  const std::string me = this_host();
  ResourceTracker tracker(store_);
  store_.write([&] {
    if (store_.find_instance(req.name)) throw exists("instance '" + req.name + "' already exists");
    auto img = store_.find_image(req.image);
    if (!img) throw not_found("image '" + req.image + "' not found");
    auto fl = store_.find_flavor(req.flavor);
    if (!fl) throw not_found("flavor '" + req.flavor + "' not found");
    b.image = *img;
    b.flavor = *fl;
    if (fl->disk_gb > 0 && uint64_t(fl->disk_gb) * kGiB < img->virtual_size)
      throw invalid("flavor " + fl->name + "'s disk (" + std::to_string(fl->disk_gb) +
                    " GiB) is smaller than image " + img->name + " (" +
                    std::to_string(img->virtual_size) + " bytes)");
    inst.image_id = img->id;
    inst.image_digest = img->digest;
    inst.image_format = img->disk_format;
    inst.flavor = fl->name;
    inst.vcpus = fl->vcpus;
    inst.ram_mb = fl->ram_mb;
    inst.disk_gb = fl->disk_gb;
    inst.status = kStatusBuilding;
    // This host's capacity as its settings say now, then the choice among all hosts.
    tracker.report();
    sr.flavor = *fl;
    sr.image = *img;
    Host host = Scheduler(store_).claim(sr, inst.id);
    inst.host = host.name;
    // (Nova's instance.availability_zone: the host's, which is the one asked for if any.)
    b.req.availability_zone = host.availability_zone;
    if (host.name != me) {
      // Another host's agent builds it, from the request in its build row (queued in this
      // transaction: no claim without the row, no row without the claim). Its directory is
      // that host's, which its agent records.
      b.remote = true;
      inst.dir.clear();
      WorkItem w;
      w.host = host.name;
      w.kind = kWorkBuild;
      w.instance_id = inst.id;
      w.payload = build_payload(b);
      store_.enqueue(w);
    }
    store_.put(inst);
    store_.add_event(inst.id, inst.status, inst.task_state,
                     "claimed " + std::to_string(fl->vcpus) + " vCPU, " +
                         std::to_string(fl->ram_mb) + " MiB, " + std::to_string(fl->disk_gb) +
                         " GiB on host " + host.name + (b.remote ? " (queued for its agent)" : ""));
  });
}

void Compute::unclaim(Instance& inst) { ResourceTracker(store_).release(inst.id); }

Instance Compute::boot(const BootRequest& req) {
  Build b;
  b.req = req;
  prepare(b);
  Instance& inst = b.inst;
  inst.id = common::new_uuid();
  {
    // Held for the whole build (and its rollback): delete, stop and start of this instance
    // wait.
    FileLock lock(lock_path(inst.id));
    try {
      run_steps(b);
    } catch (const std::exception& e) {
      // Nothing recorded (the claim failed or was not reached): nothing exists to undo or to
      // leave in error, and no instance without a claim has a lock file either.
      if (inst.steps_done.empty()) {
        ::unlink(lock_path(inst.id).c_str());
        throw;
      }
      fail_build(b, e);
      throw;
    }
    // Built elsewhere: nothing of it is on this host, its lock file neither.
    if (b.remote) ::unlink(lock_path(inst.id).c_str());
  }
  if (b.remote) return req.wait ? wait_remote_build(inst.id, inst.host) : inst;
  inst.status = kStatusActive;
  inst.task_state.clear();
  save(inst, "running");
  return inst;
}

void Compute::fail_build(Build& b, const std::exception& e) {
  Instance& inst = b.inst;
  std::string reason = e.what();
  std::vector<std::string> undo_errors;
  undo_steps(inst, &undo_errors);
  inst.status = kStatusError;
  inst.task_state.clear();
  inst.fault = reason;
  for (const auto& u : undo_errors) inst.fault += "; cleanup: " + u;
  save(inst, "build failed: " + inst.fault);
}

void Compute::remove(const std::string& ref) {
  const Instance listed = get(ref);
  if (!listed.host.empty() && listed.host != this_host()) return remove_remote(listed);
  std::string id = listed.id;
  FileLock lock(lock_path(id));
  remove_locked(id);
}

void Compute::remove_locked(const std::string& id) {
  Instance inst = get(id);  // as it is now that nothing else works on it
  inst.status = kStatusDeleting;
  inst.task_state = "deleting";
  save(inst, "delete");
  std::vector<std::string> errors;
  // A snapshot killed half-way may have left its image outside the instance's directory.
  try {
    discard_snapshot_leftovers(store_, inst.dir);
  } catch (const std::exception& e) {
    errors.push_back(std::string("snapshot: ") + e.what());
  }
  // The steps recorded are exactly those whose work may exist (each is recorded before its
  // work starts), also for a build that was killed half-way.
  undo_steps(inst, &errors);
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += (all.empty() ? "" : "; ") + e;
    inst.status = kStatusError;
    inst.task_state.clear();
    inst.fault = "delete failed: " + all;
    save(inst, inst.fault);
    throw system_error("instance " + inst.name + ": " + inst.fault);
  }
  std::string digest = inst.image_digest;
  store_.remove_instance(inst.id);
  ImageStore(store_).prune_base(digest);
  // Whoever waits on this lock is about to find the instance gone.
  ::unlink(lock_path(inst.id).c_str());
}

namespace {

// Stop, start and the console log act on this host's libvirt and files: an instance elsewhere
// is its host's agent's to act on.
bool elsewhere(const Instance& inst) { return !inst.host.empty() && inst.host != this_host(); }

}  // namespace

Instance Compute::stop(const std::string& ref) {
  if (Instance found = get(ref); elsewhere(found)) return remote_power(found, kWorkStop);
  std::string id = get(ref).id;
  FileLock lock(lock_path(id));
  Instance inst = get(id);
  if (inst.status != kStatusActive)
    throw busy("instance " + inst.name + " is " + inst.status + ", not active");
  if (virt().shutdown(inst.id)) {
    try {
      wait_for(inst.id, false);
    } catch (const Error&) {
      virt().destroy(inst.id);  // the guest ignored ACPI: power it off, as Nova does
    }
  }
  virt().destroy(inst.id);
  inst.status = kStatusStopped;
  inst.task_state.clear();
  save(inst, "stopped");
  return inst;
}

Instance Compute::start(const std::string& ref) {
  if (Instance found = get(ref); elsewhere(found)) return remote_power(found, kWorkStart);
  std::string id = get(ref).id;
  FileLock lock(lock_path(id));
  Instance inst = get(id);
  if (inst.status != kStatusStopped)
    throw busy("instance " + inst.name + " is " + inst.status + ", not stopped");
  // A disk on a storage host: its agent exports it again if its kiln-nbd lost it (a
  // disk-export row for an export that is there with the same identity changes nothing).
  if (auto storage = instance_storage_host(inst)) {
    auto t = instance_transport(inst.dir);
    if (!t) throw system_error("instance " + inst.name + " has no " + kTransportFile);
    storage_work(*storage, kWorkDiskExport, inst.id,
                 common::dump(common::Json{{"tls_identity", t->tls_identity}}));
  } else {
    NbdControl nbd(opt_.nbd_control);
    if (!nbd.has_export(inst.export_name)) add_export(nbd, inst);
  }
  if (!virt().exists(inst.id)) virt().define(inst.domain_xml);
  virt().start(inst.id);
  wait_for(inst.id, true);
  inst.status = kStatusActive;
  inst.task_state.clear();
  save(inst, "started");
  return inst;
}

std::string Compute::power_state(const Instance& inst) {
  if (elsewhere(inst)) return "unknown: on host " + inst.host;
  try {
    return power_state_name(virt().state(inst.id));
  } catch (const std::exception& e) {
    return std::string("unknown: ") + e.what();
  }
}

std::string Compute::console_log(const std::string& ref, size_t max_bytes) {
  Instance inst = get(ref);
  max_bytes = std::min(max_bytes, kMaxConsoleLog);
  if (elsewhere(inst)) return remote_console_log(inst, max_bytes);
  std::string path = inst.dir + "/console.log";
  std::error_code ec;
  if (!fs::exists(path, ec)) return "";
  uint64_t size = fs::file_size(path, ec);
  if (ec) throw system_error("cannot stat " + path + ": " + ec.message());
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw errno_error("cannot open " + path, errno);
  uint64_t off = size > max_bytes ? size - max_bytes : 0;
  std::string out(static_cast<size_t>(size - off), '\0');
  ssize_t n = ::pread(fd.get(), out.data(), out.size(), static_cast<off_t>(off));
  if (n < 0) throw errno_error("cannot read " + path, errno);
  out.resize(static_cast<size_t>(n));
  return out;
}

}  // namespace kiln::spawn
