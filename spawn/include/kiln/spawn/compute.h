// The compute path: boot (claim -> port -> overlay -> config drive -> inject -> NBD export ->
// libvirt domain -> wait until running), with the instance's state recorded at every step and
// every step undone when a later one fails; delete, stop, start, console log.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kiln/spawn/store.h"

namespace kiln::net {
class Store;
struct Port;
}  // namespace kiln::net

namespace kiln::spawn {

class Virt;
class NbdControl;
struct HostUser;

struct ComputeOptions {
  std::string libvirt_uri = "qemu:///system";
  std::string nbd_control;  // kiln-nbd's control socket
  // Where kiln-nbd makes each instance's own socket (<dir>/<uuid>.sock), which only QEMU's
  // user can connect to and which reaches that instance's export only.
  std::string nbd_socket_dir;
  // Instead: one socket of kiln-nbd for every guest (for a kiln-nbd without per-export
  // sockets; every guest's QEMU can then open every export). Empty: per-instance sockets.
  std::string nbd_socket;
  // The user (and group) libvirt runs QEMU as, "USER[:GROUP]": the owner of what QEMU opens.
  // Empty: the store's qemu_user setting, else what libvirt's configuration implies.
  std::string qemu_user;
  std::string virt_type;  // kvm, qemu, or empty: kvm if /dev/kvm works
  bool plumb = true;      // plumb the port (netplumb Plumber::apply) after changing it
  std::string tenant_id = "admin";
  bool progress = false;    // progress lines for long copies
  int wait_timeout_s = 60;  // boot: until running; stop: until shut off (then destroy)
  // The qcow2 overlays: extended L2 entries (subclusters) with 128 KiB clusters, so that a
  // guest's 4 KiB write into a fresh cluster copies one 4 KiB subcluster, not 128 KiB.
  uint32_t overlay_cluster_size = 128 * 1024;
  bool overlay_extended_l2 = true;
};

struct BootRequest {
  std::string name, image, flavor, network;
  std::string key_file, user_data_file;
  std::vector<std::pair<std::string, std::string>> files;  // guest path, host file
  std::vector<std::string> security_groups;
  bool inject = false;
  // Attach the config drive (Nova's --config-drive). Without it the guest finds its metadata
  // through the metadata service; the service's record is kept either way.
  bool config_drive = true;
  // The zone the instance must be in; empty: any (then the zone of the host it lands on).
  std::string availability_zone = "nova";
  std::string kernel, initrd, cmdline;  // optional direct kernel boot
  // Only this compute host (boot --host, or ZONE:HOST); the scheduler's filters still apply.
  std::string host;
  // The overlay encrypted (qcow2 LUKS) with a key of the instance's own (disk_key.h).
  bool encrypted = false;
  // When the scheduler picks another host (whose agent builds it): wait until the instance is
  // active or in error (at most ComputeOptions::wait_timeout_s), or return it at once
  // ("building", task state "scheduling").
  bool wait = true;
};

// The build steps in order; KILN_SPAWN_FAIL_AT=<name> makes that step fail after its work
// (a test hook: the step's undo then runs with the others).
const std::vector<std::string>& build_steps();
inline constexpr const char* kFailAtEnv = "KILN_SPAWN_FAIL_AT";
// KILN_SPAWN_PAUSE_AT=<name>: the boot stops after that step's work and waits to be killed
// (a test hook: what a build killed half-way leaves, which delete must remove).
inline constexpr const char* kPauseAtEnv = "KILN_SPAWN_PAUSE_AT";

// Asks a boot in progress (in this process) to stop: it fails before its next step, or while
// waiting for the domain, and rolls back. Async-signal-safe (the CLI calls it on SIGINT and
// SIGTERM).
void interrupt_boot();

// kiln-spawn snapshot INSTANCE IMAGE_NAME (Nova's instance snapshot, snapshot.cpp).
// What `cleanup` found and did, by instance name.
struct CleanupReport {
  std::vector<std::string> builds_rolled_back;  // left "building": undone, now in error
  std::vector<std::string> deletes_finished;    // left "deleting": removed
  std::vector<std::string> snapshots_rolled_back;
  std::vector<std::string> in_progress;  // another kiln-spawn works on them now: left alone
  std::vector<std::string> errors;       // "NAME: why" for those that could not be cleaned
};

// kiln-spawn agent (Nova's nova-compute service): takes the work queue's rows addressed to its
// host and runs them (agent.cpp).
struct AgentOptions {
  int poll_interval_ms = 200;  // between looks at an empty queue
  // Stop when the queue is empty (tests; an agent otherwise runs until SIGTERM or SIGINT).
  bool once = false;
};

// What an agent did before it stopped.
struct AgentReport {
  CleanupReport cleanup;           // at its start
  std::vector<int64_t> dead_rows;  // rows a dead agent left running: failed
  int64_t done = 0, failed = 0;    // rows it ran
};

// Work queue kinds.
inline constexpr const char* kWorkBuild = "build";
inline constexpr const char* kWorkDelete = "delete";
// A storage host's (setting storage_host): the disk of a compute host's instance.
inline constexpr const char* kWorkDiskCreate = "disk-create";      // overlay on its base
inline constexpr const char* kWorkDiskInject = "disk-inject";      // --inject into it
inline constexpr const char* kWorkDiskExport = "disk-export";      // on its kiln-nbd (TLS)
inline constexpr const char* kWorkDiskUnexport = "disk-unexport";  // the export removed
inline constexpr const char* kWorkDiskRemove = "disk-remove";      // export and overlay gone
inline constexpr const char* kWorkDiskSnapshot = "disk-snapshot";  // snapshot (result: image id)
// Another host's port changed on a network this host serves DHCP for or whose security groups
// its ports share: the host's plumbing converged with the model (instance_id: the network's id).
inline constexpr const char* kWorkNetSync = "net-sync";
// stop, start and console-log of an instance on another host, run there by its agent (the
// console log's tail comes back hex-encoded as the row's result).
inline constexpr const char* kWorkStop = "stop";
inline constexpr const char* kWorkStart = "start";
inline constexpr const char* kWorkConsoleLog = "console-log";
// snapshot of an instance on another host, run there (its result: the new image's id).
inline constexpr const char* kWorkSnapshot = "snapshot";
inline constexpr size_t kMaxConsoleLog = size_t{1} << 20;
inline constexpr int kMaxWaitTimeout = 86400;  // --wait-timeout, also in a stop or start row

struct SnapshotRequest {
  std::string image_name;
  std::string disk_format = "qcow2";  // qcow2 or raw
  std::string compress;               // "", zlib or zstd (qcow2 only): compressed clusters
};

// The snapshot's steps in order (snapshot.cpp). Test hooks like the boot's:
// KILN_SPAWN_SNAPSHOT_FAIL_AT=<step> fails after that step's work (its undo runs with the
// others); KILN_SPAWN_SNAPSHOT_STOP_AT=<step> stops the process (SIGSTOP) after that step's
// work, to be continued or killed.
const std::vector<std::string>& snapshot_steps();
inline constexpr const char* kSnapshotFailAtEnv = "KILN_SPAWN_SNAPSHOT_FAIL_AT";
inline constexpr const char* kSnapshotStopAtEnv = "KILN_SPAWN_SNAPSHOT_STOP_AT";

// How a host waits for another host's row (Compute::wait_work).
struct WaitWork {
  bool gone_is_done = false;  // the agent removes the row when it is done
  int timeout_s = 0;          // 0: --wait-timeout
  bool withdraw = false;      // a row still queued at the timeout is taken back (never run)
  // The timeout holds while the row is queued only: once an agent runs it, the wait lasts until
  // it ends (its agent's next start fails a row it died running), or until interrupted.
  bool queued_only = false;
};

class Compute {
 public:
  Compute(Store& store, net::Store& net_store, ComputeOptions options);
  ~Compute();
  Compute(const Compute&) = delete;
  Compute& operator=(const Compute&) = delete;

  // Boots an instance and returns it active. On failure every step done is undone, the
  // instance is left in status error with the reason (if it got past the claim), and the error
  // is rethrown.
  Instance boot(const BootRequest& req);
  // Removes the domain, the export, the instance's files, the port and the claim, then the
  // record. Works in any state (also after a build that was killed half-way).
  void remove(const std::string& ref);
  // On another host: through its agent (a row, waited for).
  Instance stop(const std::string& ref);
  Instance start(const std::string& ref);
  // The serial console's log (its last `max_bytes`, at most kMaxConsoleLog); on another host,
  // read there by its agent.
  std::string console_log(const std::string& ref, size_t max_bytes = kMaxConsoleLog);
  // The domain's state as libvirt sees it now ("running", "shut off", "no domain", ...), or
  // "unknown: <why>" when libvirt cannot be asked. The recorded status is not changed.
  std::string power_state(const Instance& inst);

  Instance get(const std::string& ref);
  Virt& virt();

  // Nova's instance snapshot of an active or stopped instance: a live external snapshot of its
  // disk (the guest keeps running), the frozen chain converted into a new image `req.image_name`
  // of the image store, the temporary layer committed back. Any failure undoes what was done
  // (no image, no temporary file) and rethrows; the instance keeps its status.
  Image snapshot(const std::string& ref, const SnapshotRequest& req);

  // What a kiln-spawn that died (SIGKILL, a crash, the host's power) left half-done on this host,
  // as nova-compute checks its instances when it starts (_init_instance): a build is rolled
  // back (everything it made undone; the instance stays in error with the reason, for delete),
  // a delete is finished, an interrupted snapshot is rolled back. Instances that another
  // kiln-spawn holds (its lock) are in progress, not abandoned: left alone.
  CleanupReport cleanup();

  // The agent of this host (this_host()): cleanup, rows left running by a dead agent failed,
  // then the queue's rows for this host, one at a time, until interrupt_boot() (SIGTERM):
  // the row being run then finishes or rolls back (a build fails before its next step).
  AgentReport run_agent(const AgentOptions& options);

 private:
  struct Build;
  struct Step;
  friend const std::vector<std::string>& build_steps();
  // The pipeline: its steps in order, each with its undo (pipeline.cpp).
  static std::span<const Step> steps();
  void prepare(Build& b);
  // The bounds of a boot's inputs (name, files, injection), checked where prepare() read them
  // and again where a build row brings them from the shared database.
  static void check_inputs(const Build& b);
  // Runs the steps in order from `first`, recording each in the instance before its work
  // starts. Stops after the claim when the claim put the build on another host's queue.
  void run_steps(Build& b, size_t first = 0);
  // A build that failed after its claim: every step undone, the instance left in error.
  void fail_build(Build& b, const std::exception& e);
  // The work queue (agent.cpp): the build row's payload (the request and what prepare() read)
  // and back; waiting on another host's work; the rows an agent runs.
  static std::string build_payload(const Build& b);
  void build_from_payload(const std::string& payload, Build& b);
  Instance wait_remote_build(const std::string& id, const std::string& host);
  void remove_remote(const Instance& inst);
  void run_build_row(const WorkItem& w);
  std::string run_row(const WorkItem& w);
  // Storage host (storage.cpp): the setting (none, or this host: disks are local), the host an
  // instance's disk is on (its kStorageHostFile), a disk row queued there and waited for (its
  // result, or its error thrown), and the storage agent's side of those rows.
  std::optional<std::string> storage_host();
  std::optional<std::string> instance_storage_host(const Instance& inst);
  std::string storage_work(const std::string& host, const std::string& kind,
                           const std::string& instance_id, const std::string& payload);
  // Waits for a row of another host: its result, or its error thrown (`where` names the host
  // in the messages).
  std::string wait_work(int64_t id, const std::string& kind, const std::string& where,
                        const WaitWork& how = {});
  // stop and start of an instance on another host, and its console log: a row for that host's
  // agent, waited for (agent.cpp).
  Instance remote_power(const Instance& inst, const char* kind);
  std::string remote_console_log(const Instance& inst, size_t max_bytes);
  // snapshot of an instance on another host: a row for its agent, waited for; of one whose
  // disk is on a storage host: a disk-snapshot row for that host's agent (snapshot.cpp).
  Image remote_snapshot(const Instance& inst, const SnapshotRequest& req);
  Image storage_snapshot(Instance& inst, const std::string& storage, const SnapshotRequest& req);
  // The storage agent's side: the snapshot of its overlay of another host's instance, or the
  // roll-back of one that died half-way (at its agent's start, by cleanup).
  std::string run_disk_snapshot(const WorkItem& w);
  std::string run_snapshot_row(const WorkItem& w);  // the compute host's side of remote_snapshot
  void roll_back_storage_snapshots(CleanupReport& report);
  // A port made or removed here: net-sync rows for the other hosts whose plumbing depends on it
  // (agent.cpp); with `wait`, the row of its network's DHCP host is waited for.
  void sync_network_hosts(const net::Port& port, bool wait);
  static std::string inject_payload(const Build& b);
  std::string run_disk_row(const WorkItem& w);
  // Undoes the steps recorded in inst.steps_done, newest first, each one's undo recorded (the
  // step leaves steps_done, with an event) as soon as it is done, so that a rollback that dies
  // half-way is finished by delete. An undo that fails is appended to `errors`, its step stays
  // recorded, and the older steps are still undone.
  void undo_steps(Instance& inst, std::vector<std::string>* errors);
  // The steps' work (claim in compute.cpp, the rest in build_steps.cpp) and their undos.
  void claim(Build& b);
  void step_port(Build& b);
  void step_overlay(Build& b);
  void step_config_drive(Build& b);
  void step_inject(Build& b);
  void step_export(Build& b);
  void step_domain(Build& b);
  void step_wait(Build& b);
  void unclaim(Instance& inst);
  void undo_port(Instance& inst);
  void undo_overlay(Instance& inst);
  void undo_config_drive(Instance& inst);
  void undo_export(Instance& inst);
  void undo_domain(Instance& inst);
  void nothing_to_undo(Instance& inst);
  // remove() once the instance's lock is held.
  void remove_locked(const std::string& id);
  // Rolls back a snapshot of `inst` that died half-way (snapshot.cpp); false if there is none.
  // Call with the instance's lock held.
  bool roll_back_interrupted_snapshot(Instance& inst);
  void save(Instance& inst, const std::string& message);
  void wait_for(const std::string& uuid, bool running);
  // Plumbs the given ports only (netplumb's incremental path), or the whole model if none
  // are given.
  void plumb(const std::vector<std::string>& port_ids = {});
  // The instance's lock file: one operation at a time on an instance, across processes.
  std::string lock_path(const std::string& id);
  // The user QEMU runs as (resolved once, before a boot claims anything).
  const HostUser& qemu_user();
  // add-export of the instance's overlay: on its own socket (checked to exist, owned by
  // QEMU's user, closed to others) unless it uses the shared one.
  void add_export(NbdControl& nbd, const Instance& inst);

  Store& store_;
  net::Store& net_store_;
  ComputeOptions opt_;
  std::unique_ptr<Virt> virt_;
  std::unique_ptr<HostUser> qemu_user_;
};

}  // namespace kiln::spawn
