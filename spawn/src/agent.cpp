// Builds and deletes on other hosts (issue 15): the build row a boot queues when the scheduler
// picks another host, the delete row for an instance there, and kiln-spawn agent, which runs a
// host's rows (Nova's nova-compute taking the scheduler's and the API's casts). The work queue
// itself is in the store (store_queue.cpp).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>
#include <thread>

#include "build.h"
#include "inject.h"
#include "kiln/common/json.h"
#include "kiln/common/random.h"
#include "kiln/net/store.h"
#include "kiln/spawn/configdrive.h"
#include "kiln/spawn/disk_key.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/nbd_control.h"
#include "kiln/spawn/resources.h"
#include "perms.h"
#include "snapshot.h"
#include "util.h"

namespace kiln::spawn {

using common::Json;

namespace {

// Bytes (user data, files: not necessarily UTF-8) in a JSON string.
std::string to_hex(std::string_view bytes) {
  static const char* d = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

std::string from_hex(const std::string& hex, size_t limit, const char* what,
                     const char* row = "build row: ") {
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw invalid(std::string(row) + what + " is not hex");
  };
  if (hex.size() % 2 || hex.size() / 2 > limit)
    throw invalid(std::string(row) + what + " is longer than " + std::to_string(limit) +
                  " bytes or cut");
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<char>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return out;
}

// Everything a payload may hold, hex-encoded, with room for the names and paths.
constexpr size_t kMaxPayload =
    2 * (kMaxUserData + kMaxInjectedBytes + kMaxKeyFile) + kMaxInjectedFiles * 8192 + (1 << 20);

std::string str(const Json& j, const char* key, size_t limit = 4096) {
  auto it = j.find(key);
  if (it == j.end()) return "";
  if (!it->is_string()) throw invalid(std::string("build row: ") + key + " is not a string");
  std::string v = it->get<std::string>();
  if (v.size() > limit) throw invalid(std::string("build row: ") + key + " is too long");
  return v;
}

bool flag(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return false;
  if (!it->is_boolean()) throw invalid(std::string("build row: ") + key + " is not true/false");
  return it->get<bool>();
}

bool ended(const Instance& i) { return i.status == kStatusActive || i.status == kStatusError; }

}  // namespace

std::string Compute::build_payload(const Build& b) {
  const BootRequest& r = b.req;
  Json j = Json::object();
  j["name"] = r.name;
  j["image"] = r.image;
  j["flavor"] = r.flavor;
  j["network"] = r.network;
  j["security_groups"] = r.security_groups;
  j["inject"] = r.inject;
  j["config_drive"] = r.config_drive;
  j["availability_zone"] = r.availability_zone;
  j["kernel"] = r.kernel;
  j["initrd"] = r.initrd;
  j["cmdline"] = r.cmdline;
  j["encrypted"] = r.encrypted;
  j["key_name"] = b.key_name;
  j["key_data"] = to_hex(b.key_data);
  j["has_user_data"] = b.has_user_data;
  j["user_data"] = to_hex(b.user_data);
  Json files = Json::array();
  for (const auto& [path, data] : b.files)
    files.push_back(Json{{"path", path}, {"data", to_hex(data)}});
  j["files"] = files;
  return common::dump(j);
}

// The row is the request a boot on another host checked (prepare()); it is checked again here
// against the same bounds, as anything read from the shared database is.
void Compute::build_from_payload(const std::string& payload, Build& b) {
  const Json j = common::parse_json(payload, kMaxPayload, "build row");
  if (!j.is_object()) throw invalid("build row: not an object");
  BootRequest& r = b.req;
  r.name = str(j, "name");
  r.image = str(j, "image");
  r.flavor = str(j, "flavor");
  r.network = str(j, "network");
  if (auto g = j.find("security_groups"); g != j.end()) {
    if (!g->is_array() || g->size() > 64) throw invalid("build row: security_groups");
    for (const auto& v : *g) {
      if (!v.is_string()) throw invalid("build row: security_groups");
      r.security_groups.push_back(v.get<std::string>());
    }
  }
  r.inject = flag(j, "inject");
  r.config_drive = flag(j, "config_drive");
  r.availability_zone = str(j, "availability_zone");
  r.kernel = str(j, "kernel");
  r.initrd = str(j, "initrd");
  r.cmdline = str(j, "cmdline");
  r.encrypted = flag(j, "encrypted");
  b.key_name = str(j, "key_name");
  b.key_data = from_hex(str(j, "key_data", 2 * kMaxKeyFile), kMaxKeyFile, "key_data");
  b.has_user_data = flag(j, "has_user_data");
  b.user_data = from_hex(str(j, "user_data", 2 * kMaxUserData), kMaxUserData, "user_data");
  if (auto f = j.find("files"); f != j.end()) {
    if (!f->is_array() || f->size() > kMaxInjectedFiles)
      throw invalid("build row: at most " + std::to_string(kMaxInjectedFiles) + " files");
    for (const auto& e : *f) {
      if (!e.is_object()) throw invalid("build row: files");
      b.files.emplace_back(str(e, "path"), from_hex(str(e, "data", 2 * kMaxInjectedBytes),
                                                    kMaxInjectedBytes, "a file"));
    }
  }
  try {
    check_inputs(b);  // prepare()'s bounds, on what the row brought
  } catch (const Error& e) {
    throw invalid(std::string("build row: ") + e.what());
  }
}

// `nova boot --poll`: the instance's record until its agent ends the build.
Instance Compute::wait_remote_build(const std::string& id, const std::string& host) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt_.wait_timeout_s);
  for (;;) {
    auto inst = store_.find_instance(id);
    if (!inst) throw not_found("instance " + id + " was deleted while host " + host + " built it");
    if (ended(*inst)) {
      if (inst->status == kStatusError)
        throw system_error("instance " + inst->name + " failed to build on host " + host + ": " +
                           inst->fault);
      return *inst;
    }
    if (std::chrono::steady_clock::now() > deadline)
      throw system_error("instance " + inst->name + " is still " + inst->status + " (" +
                         inst->task_state + ") on host " + host + " after " +
                         std::to_string(opt_.wait_timeout_s) +
                         " s (is kiln-spawn agent running there?); it stays queued");
    if (interrupted())
      throw system_error("interrupted while waiting; instance " + inst->name +
                         " goes on building on host " + host);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// delete of an instance on another host. One whose build row no agent has taken yet has nothing
// anywhere but its record and claim: both go here, with the row, in one transaction (the agent
// takes rows in transactions too, so it either has it or never will). Otherwise a delete row
// for its host's agent, and a wait until the record is gone.
void Compute::remove_remote(const Instance& listed) {
  bool cancelled = false;
  store_.write([&] {
    auto inst = store_.find_instance(listed.id);
    if (!inst) {
      cancelled = true;
      return;
    }
    bool only_claimed =
        inst->status == kStatusBuilding && inst->steps_done == std::vector<std::string>{"claim"};
    bool untaken = false;
    for (const auto& w : store_.work(inst->host))
      if (w.instance_id == inst->id && w.kind == kWorkBuild && w.state == kWorkQueued)
        untaken = true;
    if (only_claimed && untaken) {
      store_.remove_instance(inst->id);  // its claim, events and rows too
      cancelled = true;
      return;
    }
    if (!store_.work_pending(inst->id, kWorkDelete)) {
      WorkItem w;
      w.host = inst->host;
      w.kind = kWorkDelete;
      w.instance_id = inst->id;
      store_.enqueue(w);
      store_.add_event(inst->id, inst->status, inst->task_state,
                       "delete queued for host " + inst->host);
    }
  });
  if (cancelled) return;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt_.wait_timeout_s);
  for (;;) {
    auto inst = store_.find_instance(listed.id);
    if (!inst) return;
    // A delete row that failed: the agent's error (the instance stays, in error, as locally).
    for (const auto& w : store_.work(listed.host))
      if (w.instance_id == listed.id && w.kind == kWorkDelete && w.state == kWorkFailed)
        throw system_error("instance " + listed.name + " on host " + listed.host + ": " + w.error);
    if (std::chrono::steady_clock::now() > deadline)
      throw system_error("instance " + listed.name + " is not deleted on host " + listed.host +
                         " after " + std::to_string(opt_.wait_timeout_s) +
                         " s (is kiln-spawn agent running there?); the delete stays queued");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// A build row: the steps after the claim, here, with the request from the row.
void Compute::run_build_row(const WorkItem& w) {
  Build b;
  FileLock lock(lock_path(w.instance_id));
  b.inst = get(w.instance_id);
  Instance& inst = b.inst;
  const std::string me = this_host();
  if (inst.host != me || inst.status != kStatusBuilding ||
      inst.steps_done != std::vector<std::string>{"claim"})
    throw busy("instance " + inst.name + " is " + inst.status + " on host " + inst.host +
               " with steps " + std::to_string(inst.steps_done.size()) +
               ": not a build waiting for this host");
  try {
    build_from_payload(w.payload, b);
    auto img = store_.find_image(inst.image_id);
    if (!img) throw not_found("image " + inst.image_id + " is gone");
    auto fl = store_.find_flavor(inst.flavor);
    if (!fl) throw not_found("flavor " + inst.flavor + " is gone");
    b.image = *img;
    b.flavor = *fl;
    inst.dir = store_.dir() + "/instances/" + inst.id;
    qemu_user();
    save(inst, "build taken by the agent of host " + me);
    run_steps(b, 1);  // after the claim
  } catch (const std::exception& e) {
    fail_build(b, e);
    throw;
  }
  inst.status = kStatusActive;
  inst.task_state.clear();
  save(inst, "running");
}

// Storage host: the disks of other hosts' instances (setting storage_host).

std::optional<std::string> Compute::storage_host() {
  auto v = store_.setting("storage_host");
  if (!v || v->empty() || *v == this_host()) return std::nullopt;
  return v;
}

std::optional<std::string> Compute::instance_storage_host(const Instance& inst) {
  if (inst.dir.empty()) return std::nullopt;
  const std::string path = inst.dir + "/" + kStorageHostFile;
  if (::access(path.c_str(), F_OK) != 0) return std::nullopt;
  std::string host = read_file(path, 256, "storage host file");
  check_host_name(host);
  return host;
}

std::string Compute::storage_work(const std::string& host, const std::string& kind,
                                  const std::string& instance_id, const std::string& payload) {
  WorkItem w;
  w.host = host;
  w.kind = kind;
  w.instance_id = instance_id;
  w.payload = payload;
  return wait_work(store_.enqueue(w), kind, "storage host " + host);
}

std::string Compute::wait_work(int64_t id, const std::string& kind, const std::string& where,
                               const WaitWork& how) {
  const int timeout_s = how.timeout_s > 0 ? how.timeout_s : opt_.wait_timeout_s;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    auto row = store_.find_work(id);
    if (!row && how.gone_is_done) return "";
    if (!row) throw system_error(kind + " on " + where + ": its row is gone");
    if (row->state == kWorkDone) return row->result;
    if (row->state == kWorkFailed) throw system_error(kind + " on " + where + ": " + row->error);
    const bool timed = !how.queued_only || row->state == kWorkQueued;
    if (timed && std::chrono::steady_clock::now() > deadline) {
      const bool taken_back = how.withdraw && store_.withdraw_work(id);
      throw system_error(kind + " on " + where + ": not done after " + std::to_string(timeout_s) +
                         " s (is kiln-spawn agent running there?)" +
                         (taken_back ? "; the request is withdrawn" : ""));
    }
    if (interrupted()) {
      const bool taken_back = how.withdraw && store_.withdraw_work(id);
      throw system_error(kind + " on " + where + ": interrupted while waiting" +
                         (taken_back ? "; the request is withdrawn" : "; it goes on there"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Nova casts stop and start to the instance's compute host and calls it for the console log;
// here they are rows for its agent. The state is checked here first (the agent checks it
// again), so that a request that cannot work queues nothing. The row carries this
// --wait-timeout, which the agent's stop gives the guest's ACPI shutdown (and its start the
// domain) instead of its own; the wait here is longer than that.
Instance Compute::remote_power(const Instance& inst, const char* kind) {
  const bool stopping = std::string_view(kind) == kWorkStop;
  const char* wanted = stopping ? kStatusActive : kStatusStopped;
  if (inst.status != wanted)
    throw busy("instance " + inst.name + " is " + inst.status + ", not " + wanted);
  WorkItem w;
  w.host = inst.host;
  w.kind = kind;
  w.instance_id = inst.id;
  w.payload = common::dump(Json{{"wait_timeout", opt_.wait_timeout_s}});
  const int64_t id = store_.enqueue(w);
  wait_work(id, kind, "host " + inst.host,
            {.timeout_s = 2 * opt_.wait_timeout_s + 5, .withdraw = true});
  store_.remove_work(id);
  return get(inst.id);
}

std::string Compute::remote_console_log(const Instance& inst, size_t max_bytes) {
  WorkItem w;
  w.host = inst.host;
  w.kind = kWorkConsoleLog;
  w.instance_id = inst.id;
  w.payload = common::dump(Json{{"max_bytes", max_bytes}});
  const int64_t id = store_.enqueue(w);
  std::string hex = wait_work(id, kWorkConsoleLog, "host " + inst.host, {.withdraw = true});
  store_.remove_work(id);
  return from_hex(hex, max_bytes, "the console log", "console-log row: ");
}

// What Neutron notifies other agents of, through the queue: a port's MAC and address are
// given out by the dnsmasq of its network's DHCP port, and admitted by the remote-group sets of
// every host with a port in one of its groups or in a group whose rules name one of them. Each
// of those hosts that is a network agent (kiln-net's agents table: `kiln-net apply` ran there)
// and a registered host (its kiln-spawn agent runs the row) gets a net-sync row, at most one
// queued per host and network. A new port waits for its DHCP host, as Nova waits for the port
// to be plugged before it starts the guest; a security-group peer only learns of it.
void Compute::sync_network_hosts(const net::Port& port, bool wait) {
  const std::string me = this_host();
  std::set<std::string> groups(port.security_groups.begin(), port.security_groups.end());
  for (const auto& r : net_store_.security_group_rules())
    if (!r.remote_group_id.empty() && groups.count(r.remote_group_id))
      groups.insert(r.security_group_id);
  std::string dhcp_host;
  std::set<std::string> hosts;
  for (const auto& p : net_store_.ports()) {
    if (p.id == port.id || p.binding_host_id.empty() || p.binding_host_id == me) continue;
    const bool dhcp = p.network_id == port.network_id && p.device_owner == "network:dhcp";
    bool peer = false;
    for (const auto& g : p.security_groups) peer = peer || groups.count(g) > 0;
    if (dhcp) dhcp_host = p.binding_host_id;
    if (dhcp || peer) hosts.insert(p.binding_host_id);
  }
  std::set<std::string> agents;
  for (const auto& a : net_store_.agents()) agents.insert(a.host);
  int64_t dhcp_row = 0;
  for (const auto& host : hosts) {
    if (!agents.count(host) || !store_.find_host(host)) continue;
    WorkItem w;
    w.host = host;
    w.kind = kWorkNetSync;
    w.instance_id = port.network_id;
    w.payload = common::dump(common::Json{{"port", port.id}});
    const int64_t id = store_.enqueue_once(w);
    if (host == dhcp_host) dhcp_row = id;
  }
  if (wait && dhcp_row)
    wait_work(dhcp_row, kWorkNetSync, "host " + dhcp_host, {.gone_is_done = true});
}

std::string Compute::inject_payload(const Build& b) {
  Json files = Json::array();
  for (const auto& [path, data] : b.files)
    files.push_back(Json{{"path", path}, {"data", to_hex(data)}});
  Json j = {{"hostname", sanitize_hostname(b.req.name)},
            {"key_data", to_hex(b.key_data)},
            {"files", files}};
  return common::dump(j);
}

// The storage agent's side: everything under its own instances/ID, the export on its kiln-nbd.
// A row names only an instance id (a UUID, checked) and bounded values.
std::string Compute::run_disk_row(const WorkItem& w) {
  if (!common::is_uuid(w.instance_id))
    throw invalid("disk row: instance id '" + w.instance_id.substr(0, 64) + "' is not a UUID");
  const Json j = common::parse_json(w.payload, kMaxPayload, "disk row");
  if (!j.is_object()) throw invalid("disk row: not an object");
  const std::string dir = store_.dir() + "/instances/" + w.instance_id;
  const std::string disk = dir + "/disk";
  const std::string name = export_name_of(w.instance_id);
  if (w.kind == kWorkDiskCreate) {
    auto img = store_.find_image(str(j, "image_id"));
    if (!img) throw not_found("disk row: no such image");
    auto size_it = j.find("size");
    if (size_it == j.end() || !size_it->is_number_unsigned())
      throw invalid("disk row: size is not a number");
    const uint64_t size = size_it->get<uint64_t>();
    if (size < img->virtual_size || size > (uint64_t{1} << 42))
      throw invalid("disk row: size " + std::to_string(size) + " out of range");
    auto enc = j.find("encrypted");
    if (enc != j.end() && !enc->is_boolean()) throw invalid("disk row: encrypted is not a boolean");
    const bool encrypted = enc != j.end() && enc->get<bool>();
    ImageStore images(store_);
    bool filled = false;
    std::string base = images.ensure_base(*img, false, &filled);
    make_dir(store_.dir() + "/instances", kPassageDir);
    make_dir(dir, kPassageDir);
    make_file(disk, kPrivateFile);
    std::optional<std::string> key;
    if (encrypted) key = create_disk_key(dir);
    create_overlay(disk, base, img->disk_format, img->virtual_size, size, opt_, key);
    return disk;
  }
  if (w.kind == kWorkDiskInject) {
    InjectRequest req;
    req.hostname = str(j, "hostname", 255);
    req.key = from_hex(str(j, "key_data", 2 * kMaxKeyFile), kMaxKeyFile, "key_data");
    size_t total = 0;
    if (auto f = j.find("files"); f != j.end()) {
      if (!f->is_array() || f->size() > kMaxInjectedFiles) throw invalid("disk row: files");
      for (const auto& e : *f) {
        if (!e.is_object()) throw invalid("disk row: files");
        std::string data =
            from_hex(str(e, "data", 2 * kMaxInjectedBytes), kMaxInjectedBytes, "a file");
        total += data.size();
        if (total > kMaxInjectedBytes) throw invalid("disk row: the files are too large");
        req.files.emplace_back(str(e, "path"), std::move(data));
      }
    }
    check_injection(req);
    inject_into(disk, req, read_disk_key(dir));
    return disk;
  }
  if (w.kind == kWorkDiskExport) {
    const std::string identity = str(j, "tls_identity", 1024);
    if (identity.empty()) throw invalid("disk row: an export needs a TLS identity");
    if (::access(disk.c_str(), F_OK) != 0) throw not_found("disk row: no disk " + disk);
    NbdControl nbd(opt_.nbd_control);
    // Asked again by a start: the export stays if it is there for the same client.
    for (const auto& e : nbd.list_exports())
      if (e.name == name) {
        if (e.tls_identity == identity) return name;
        throw busy("disk row: export " + name + " is there for another TLS identity");
      }
    // An encrypted overlay: kiln-nbd reads the key from its file (it checks the mode too).
    nbd.add_export(name, disk, "qcow2", nullptr, identity,
                   disk_encrypted(dir) ? disk_key_path(dir) : "");
    for (const auto& e : nbd.list_exports())
      if (e.name == name && e.tls_identity != identity) {
        nbd.remove_export(name);
        throw system_error("kiln-nbd added export " + name + " without the TLS identity " +
                           identity + ": this kiln-nbd has no per-export TLS identities");
      }
    return name;
  }
  if (w.kind == kWorkDiskUnexport) {
    NbdControl(opt_.nbd_control).remove_export(name);
    return name;
  }
  if (w.kind == kWorkDiskSnapshot) return run_disk_snapshot(w);
  if (w.kind == kWorkDiskRemove) {
    FileLock lock(lock_path(w.instance_id));
    NbdControl(opt_.nbd_control).remove_export(name);
    // A snapshot of it that died half-way: its image file and row are outside the directory.
    discard_snapshot_leftovers(store_, dir);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    if (ec) throw system_error("cannot remove " + dir + ": " + ec.message());
    return dir;
  }
  throw unsupported("no such kind of work: " + w.kind);
}

// One row's work; its result (the row is then done, unless the work removed it).
std::string Compute::run_row(const WorkItem& w) {
  if (w.kind == kWorkBuild) {
    run_build_row(w);
  } else if (w.kind.rfind("disk-", 0) == 0) {
    return run_disk_row(w);
  } else if (w.kind == kWorkNetSync) {
    plumb();                   // the whole model, as it is now
    store_.remove_work(w.id);  // done rows are not kept: their waiter takes that as done
  } else if (w.kind == kWorkStop || w.kind == kWorkStart) {
    const Json j = common::parse_json(w.payload, kMaxPayload, w.kind + " row");
    auto t = j.is_object() ? j.find("wait_timeout") : j.end();
    if (t == j.end() || !t->is_number_unsigned() || t->get<uint64_t>() < 1 ||
        t->get<uint64_t>() > kMaxWaitTimeout)
      throw invalid(w.kind + " row: wait_timeout is not a number of seconds from 1 to " +
                    std::to_string(kMaxWaitTimeout));
    // The request's timeout for this row only: the agent's own comes back however it ends.
    struct Restore {
      int& value;
      int old;
      ~Restore() { value = old; }
    } restore{opt_.wait_timeout_s, opt_.wait_timeout_s};
    opt_.wait_timeout_s = t->get<int>();
    return (w.kind == kWorkStop ? stop(w.instance_id) : start(w.instance_id)).status;
  } else if (w.kind == kWorkSnapshot) {
    return run_snapshot_row(w);
  } else if (w.kind == kWorkConsoleLog) {
    const Json j = common::parse_json(w.payload, kMaxPayload, "console-log row");
    auto max = j.is_object() ? j.find("max_bytes") : j.end();
    if (max == j.end() || !max->is_number_unsigned() || max->get<uint64_t>() > kMaxConsoleLog)
      throw invalid("console-log row: max_bytes is not a number up to " +
                    std::to_string(kMaxConsoleLog));
    return to_hex(console_log(w.instance_id, max->get<size_t>()));
  } else if (w.kind == kWorkDelete) {
    if (store_.find_instance(w.instance_id)) remove(w.instance_id);
  } else {
    throw unsupported("no such kind of work: " + w.kind);
  }
  return "done";
}

namespace {

void append(CleanupReport& to, const CleanupReport& from) {
  auto add = [](std::vector<std::string>& a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
  };
  add(to.builds_rolled_back, from.builds_rolled_back);
  add(to.deletes_finished, from.deletes_finished);
  add(to.snapshots_rolled_back, from.snapshots_rolled_back);
  add(to.in_progress, from.in_progress);
  add(to.errors, from.errors);
}

}  // namespace

AgentReport Compute::run_agent(const AgentOptions& o) {
  AgentReport report;
  const std::string me = this_host();
  // What a dead agent was running: its row failed, then its instance rolled back by cleanup
  // (a queued row is not abandoned: cleanup leaves its instance to this loop).
  auto recover = [&](const std::string& why) {
    for (const auto& w : store_.fail_running_work(me, why)) report.dead_rows.push_back(w.id);
    append(report.cleanup, cleanup());
    ResourceTracker(store_).report();
  };
  recover("the agent running it stopped before it ended (rolled back by the next start)");
  auto last_report = std::chrono::steady_clock::now();
  const pid_t pid = ::getpid();
  auto pause = [&](int ms) {
    for (int slept = 0; slept < ms && !interrupted(); slept += 20)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  };
  // A database that went away (a PostgreSQL restart or failover) does not end the agent, as
  // it does not end nova-compute: it waits for the database, 0.2 s to 5 s between tries, and
  // then does what a new start does for the row it may have been running.
  int outage_ms = 0;
  while (!interrupted()) {
    try {
      if (outage_ms) {
        recover("the database connection was lost while it ran (rolled back)");
        std::fprintf(stderr, "kiln-spawn agent: the database is back\n");
        outage_ms = 0;
      }
      if (std::chrono::steady_clock::now() - last_report > std::chrono::seconds(30)) {
        ResourceTracker(store_).report();  // the heartbeat
        last_report = std::chrono::steady_clock::now();
      }
      std::optional<WorkItem> w = store_.take_work(me, pid);
      if (!w) {
        if (o.once) break;
        pause(o.poll_interval_ms);
        continue;
      }
      std::fprintf(stderr, "kiln-spawn agent: %s %s (row %lld)\n", w->kind.c_str(),
                   w->instance_id.c_str(), static_cast<long long>(w->id));
      try {
        std::string result = run_row(*w);
        // A delete removed the row with the instance: nothing to update then.
        if (store_.find_work(w->id)) store_.finish_work(w->id, true, result, "");
        ++report.done;
      } catch (const std::exception& e) {
        if (store_.connection_lost()) throw;  // the row stays running: recover() fails it
        std::fprintf(stderr, "kiln-spawn agent: row %lld failed: %s\n",
                     static_cast<long long>(w->id), e.what());
        if (store_.find_work(w->id)) store_.finish_work(w->id, false, "", e.what());
        ++report.failed;
      }
    } catch (const std::exception& e) {
      if (!store_.connection_lost()) throw;
      if (!outage_ms)
        std::fprintf(stderr, "kiln-spawn agent: the database is unreachable (%s); waiting for it\n",
                     e.what());
      outage_ms = std::min(std::max(2 * outage_ms, 200), 5000);
      pause(outage_ms);
    }
  }
  return report;
}

}  // namespace kiln::spawn
