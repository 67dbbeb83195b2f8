// kiln-spawn's state: images, flavors, instances (with their build steps and events), resource
// claims and host settings, in one SQLite database under the state directory, on the common
// store base (kiln/common/store.h). Every change runs inside a BEGIN IMMEDIATE transaction, so
// concurrent kiln-spawn processes serialize; reads (a listing) never wait for a running boot.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kiln/common/store.h"

namespace kiln::spawn {

struct Image {
  std::string id, name;
  std::string disk_format;  // qcow2 or raw, checked by content
  std::string digest;       // XXH3-128, 32 hex digits
  uint64_t size = 0;        // bytes of the file
  uint64_t virtual_size = 0;
  std::string created_at;
  // Glance's fields. Images registered before kiln-spawn kept them have "" and 0.
  std::string checksum;       // MD5, 32 hex digits
  std::string os_hash_algo;   // "sha512"
  std::string os_hash_value;  // SHA-512, 128 hex digits
  int64_t min_disk = 0;       // GiB
  int64_t min_ram = 0;        // MiB
  std::map<std::string, std::string> properties;
};

struct Flavor {
  std::string name;
  int vcpus = 0;
  int64_t ram_mb = 0;
  int64_t disk_gb = 0;
  bool builtin = false;
};

// The states of Nova: status (vm_state) and task_state while building.
inline constexpr const char* kStatusBuilding = "building";
inline constexpr const char* kStatusActive = "active";
inline constexpr const char* kStatusStopped = "stopped";
inline constexpr const char* kStatusError = "error";
inline constexpr const char* kStatusDeleting = "deleting";

struct Instance {
  std::string id, name;
  std::string image_id, image_digest, image_format;
  std::string flavor;
  int vcpus = 0;
  int64_t ram_mb = 0, disk_gb = 0;
  std::string network;  // as given (name or id); network_id once the port exists
  std::string network_id;
  std::string status = kStatusBuilding, task_state, fault;
  std::string port_id, mac, ip, tap;
  std::string dir;  // instance directory: overlay, config drive, console log
  std::string export_name, domain_name, domain_xml;
  // The Unix socket QEMU reaches the export through: the instance's own, or kiln-nbd's shared
  // one (--nbd-socket; instances recorded before per-instance sockets existed have "").
  std::string nbd_socket;
  std::vector<std::string> steps_done;  // build steps whose work exists (their undo is due)
  bool base_filled = false;             // this build copied the image into the base cache
  std::string created_at, updated_at;
  // The compute host it was scheduled to (hosts table); instances from before hosts existed
  // were given the host that registered itself when the store gained hosts.
  std::string host;
};

struct Event {
  std::string at, status, task_state, message;
};

struct Usage {
  int64_t vcpus = 0, ram_mb = 0, disk_gb = 0;
  int64_t instances = 0;
};

// A compute host (Nova's compute node): where it is reached, what it has, how much of that may
// be promised ((total - reserved) * ratio, as Placement computes it), and whether it takes new
// instances.
struct Host {
  std::string name;
  std::string libvirt_uri;   // its libvirtd
  std::string nbd_endpoint;  // its kiln-nbd: control socket path or URL
  std::string availability_zone = "nova";
  int64_t vcpus = 0, memory_mb = 0, disk_gb = 0;
  double cpu_allocation_ratio = 16.0, ram_allocation_ratio = 1.5, disk_allocation_ratio = 1.0;
  int64_t reserved_vcpus = 0, reserved_memory_mb = 512, reserved_disk_mb = 0;
  bool enabled = true;
  std::string disabled_reason;
  // The capacity follows the settings (config-set) of the machine that is this host, reported
  // again whenever kiln-spawn runs there (Nova's resource tracker); false once a capacity was
  // given to host-register or host-set.
  bool from_settings = false;
  std::string heartbeat_at, created_at, updated_at;
};

// One row of the work queue (schema v5): work addressed to a host, which that host's agent
// (kiln-spawn agent) takes and runs. Nova's RPC casts to a compute host, kept in the database.
inline constexpr const char* kWorkQueued = "queued";
inline constexpr const char* kWorkRunning = "running";
inline constexpr const char* kWorkDone = "done";
inline constexpr const char* kWorkFailed = "failed";

struct WorkItem {
  int64_t id = 0;
  std::string host;         // the host whose agent runs it
  std::string kind;         // build, delete
  std::string instance_id;  // the instance it is about
  std::string payload;      // JSON (kind-specific, bounded by whoever queues it)
  std::string state = kWorkQueued;
  std::string result, error;
  int64_t taken_by = 0;  // the agent's process id while running
  std::string created_at, updated_at;
};

class Store {
 public:
  // The state directory `dir` (created) keeps images, bases and instances; the database is
  // `db_url` (a PostgreSQL URI: the schema kiln_spawn of a shared database, and no SQLite file)
  // or, when it is empty, the SQLite file dir/spawn.db. (`schema` is for tests that share
  // one database.)
  explicit Store(const std::string& dir, const std::string& db_url = "",
                 const std::string& schema = "kiln_spawn");
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& dir() const { return dir_; }

  // Runs `fn` in BEGIN IMMEDIATE .. COMMIT (rolled back if it throws); nested calls join.
  void write(const std::function<void()>& fn) { db_.write(fn); }
  // Runs `fn` in one read transaction (a consistent view; no write lock); joins a write.
  void read(const std::function<void()>& fn) { db_.read(fn); }

  void put(const Image& i);
  void put(const Flavor& f);
  void put(const Instance& i);  // updated_at is set here
  void remove_image(const std::string& id);
  void remove_flavor(const std::string& name);
  void remove_instance(const std::string& id);  // with its claim and events

  // Name-or-id lookups: nullopt when absent.
  std::optional<Image> find_image(const std::string& ref);
  std::optional<Flavor> find_flavor(const std::string& name);
  std::optional<Instance> find_instance(const std::string& ref);
  std::vector<Image> images();
  std::vector<Flavor> flavors();
  std::vector<Instance> instances();
  // Instances (any status) built from the image / using the digest's base.
  std::vector<Instance> instances_of_image(const std::string& image_id);
  std::vector<Instance> instances_of_digest(const std::string& digest);

  void add_event(const std::string& instance_id, const std::string& status,
                 const std::string& task_state, const std::string& message);
  std::vector<Event> events(const std::string& instance_id);

  // Claims: one per instance, on a host.
  void put_claim(const std::string& instance_id, int vcpus, int64_t ram_mb, int64_t disk_gb,
                 const std::string& host = "");
  void remove_claim(const std::string& instance_id);
  bool has_claim(const std::string& instance_id);
  Usage usage();  // every host's claims together
  Usage usage_of(const std::string& host);
  // Usage per host (hosts without claims are absent): one query for all.
  std::map<std::string, Usage> usage_by_host();

  // Compute hosts (store_hosts.cpp). put() inserts or replaces by name (updated_at set here).
  void put(const Host& h);
  std::optional<Host> find_host(const std::string& name);
  std::vector<Host> hosts();  // by name
  void remove_host(const std::string& name);
  // Names of the instances on the host (any status).
  std::vector<std::string> instances_on(const std::string& host);

  // The metadata service's record of an instance (metadata.h) and the (network id, fixed IP)
  // pairs that find it; replaces what the instance had. Removed with the instance.
  void put_metadata(const std::string& instance_id, const std::string& record,
                    const std::vector<std::pair<std::string, std::string>>& addresses);
  void remove_metadata(const std::string& instance_id);
  std::optional<std::string> metadata_for(const std::string& network_id, const std::string& ip);
  // The instance's record, wherever it is looked up from.
  std::optional<std::string> metadata_of(const std::string& instance_id);

  // The work queue (store_queue.cpp). enqueue() returns the row's id.
  int64_t enqueue(const WorkItem& w);
  // enqueue(), unless a row of the same host, kind and instance is still queued: that row's id
  // (work that reads the current state when it runs needs one queued row, not one per change).
  int64_t enqueue_once(const WorkItem& w);
  // A row removed (work whose done rows are not kept).
  void remove_work(int64_t id);
  // A row removed if it is still queued (its waiter gave up before an agent took it): whether
  // it was.
  bool withdraw_work(int64_t id);
  // The oldest queued row for `host`, now running (taken_by `pid`), or nullopt: in one write
  // transaction, so that two agents (or two hosts) never take the same row.
  std::optional<WorkItem> take_work(const std::string& host, int64_t pid);
  // A running row ends: done with `result`, or failed with `error`.
  void finish_work(int64_t id, bool ok, const std::string& result, const std::string& error);
  std::optional<WorkItem> find_work(int64_t id);
  // Every row (of `host` if given), oldest first.
  std::vector<WorkItem> work(const std::string& host = "");
  // Whether the instance has a row of `kind` queued or running (an agent will act on it).
  bool work_pending(const std::string& instance_id, const std::string& kind);
  // Rows of `host` left running by an agent that died: failed with `error`. Returns them.
  std::vector<WorkItem> fail_running_work(const std::string& host, const std::string& error);

  // Settings: a machine's own (capacity, ratios, QEMU's user, disk transport) are kept per
  // host and read and set for this host (KILN_HOST, else the host name); the scheduler's
  // weigher and storage_host are one for every host sharing the database.
  std::optional<std::string> setting(const std::string& key);
  std::optional<std::string> host_setting(const std::string& host, const std::string& key);
  // The value `host` runs with: its own for a per-host key, the global one otherwise.
  std::optional<std::string> setting_of(const std::string& host, const std::string& key);
  void set_setting(const std::string& key, const std::string& value);
  std::vector<std::pair<std::string, std::string>> settings();
  // The shared database dropped this process's connection (common::Database).
  bool connection_lost() const { return db_.connection_lost(); }

 private:
  std::string dir_;
  common::Database db_;
};

// The flavors every store starts with (Nova's classic m1.* set).
const std::vector<Flavor>& builtin_flavors();

// "2026-11-26T23:00:41.123Z" (events are timed to the millisecond)
std::string utc_now();

}  // namespace kiln::spawn
