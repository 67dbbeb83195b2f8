// kiln-spawn snapshot INSTANCE IMAGE_NAME: Nova's instance snapshot (compute manager's
// snapshot_instance, the libvirt driver's live snapshot), as a table of steps, each with its
// undo, recorded in the instance's directory before its work starts (snapshot.h) so that a
// snapshot that fails, or dies half-way, is rolled back — at once, or by the instance's next
// snapshot or its delete:
//
//   freeze   image_snapshot        kiln-nbd's live snapshot: the export goes on on a temporary
//                                  layer (snapshot-<image id>.qcow2 in the instance's
//                                  directory); the chain below it is frozen, read-only, and no
//                                  longer locked by kiln-nbd. Skipped for a stopped instance
//                                  whose disk kiln-nbd does not serve: it is frozen already.
//   convert  image_pending_upload  the frozen chain converted (block::convert, optionally into
//                                  compressed clusters) into a new standalone image file under
//                                  the image store's temporary name
//   merge    image_pending_upload  the temporary layer committed back into the chain while the
//                                  guest runs (kiln-nbd's commit, waited for), then deleted
//   upload   image_uploading       the file hashed and registered as the new image, with
//                                  Glance's fields and Nova's snapshot properties
//
// The undo of freeze is a merge: if the commit fails there too, the export keeps the layer and
// the record lists it (start serves it, delete removes it with the directory).
//
// An instance on another host is snapshotted there (a `snapshot` row for its agent). One whose
// disk is an export of a storage host is snapshotted on that host (a `disk-snapshot` row): the
// same steps against its kiln-nbd and its copy of the instance's directory, the events added to
// the instance's record, the record itself (the task state) left to the compute host; the
// storage agent's start (cleanup) rolls back one that died half-way, as disk-remove discards
// what it left.
#include "snapshot.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "build.h"
#include "kiln/block/convert.h"
#include "kiln/block/device.h"
#include "kiln/block/qcow2.h"
#include "kiln/block/worker_pool.h"
#include "kiln/common/json.h"
#include "kiln/common/random.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/images.h"
#include "kiln/spawn/nbd_control.h"
#include "kiln/spawn/resources.h"
#include "perms.h"
#include "util.h"

namespace kiln::spawn {

namespace {

namespace fs = std::filesystem;

// Everything one snapshot carries from step to step.
struct Run {
  Store& store;
  NbdControl& nbd;
  Instance& inst;
  SnapshotRequest req;
  SnapshotRecord rec;
  std::function<void(const std::string&)> event;  // an instance event (status, task state)
  bool live = false;   // kiln-nbd serves the disk: freeze and merge through it
  std::string frozen;  // the top of the frozen chain
  Image image;

  void record() { save_snapshot_record(inst.dir, rec); }
};

struct Step {
  const char* name;
  const char* task_state;
  void (*work)(Run&);
  void (*undo)(Run&);
};

// The same file (kiln-nbd names a chain's images by their real paths).
bool same_file(const std::string& a, const std::string& b) {
  if (a == b) return true;
  std::error_code ec;
  return !a.empty() && !b.empty() && fs::equivalent(a, b, ec);
}

// The image kiln-nbd serves the export from; "" if there is no such export.
std::string served_image(NbdControl& nbd, const std::string& export_name) {
  for (const auto& e : nbd.list_exports())
    if (e.name == export_name) return e.path;
  return "";
}

// Commits the export's top `layer` into its backing and waits until kiln-nbd has switched the
// export back (or says why not).
void commit_layer(NbdControl& nbd, const std::string& export_name, const std::string& layer) {
  nbd.commit(export_name);
  auto pause = std::chrono::milliseconds(10);
  for (;;) {
    NbdJob j = nbd.job(export_name);
    if (!same_file(j.top, layer))
      throw system_error("kiln-nbd lists no commit of " + layer + " for export " + export_name);
    if (j.state == "completed") return;
    if (j.state == "failed" || j.state == "cancelled")
      throw system_error("commit of " + layer + " " + j.state +
                         (j.error.empty() ? "" : ": " + j.error));
    if (interrupted()) {
      try {
        nbd.cancel_job(export_name);
      } catch (const std::exception&) {
        // It may have finished meanwhile; the export is on one chain or the other either way.
      }
      throw system_error("interrupted while committing " + layer);
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(200));
  }
}

// Converts the chain whose top is `frozen` into the new file `out` (qcow2 or raw, the source's
// virtual size): block::convert, as kiln-img convert does it.
void convert_chain(const std::string& frozen, const std::string& out, const SnapshotRequest& req) {
  auto& reactor = block::Reactor::current();
  block::OpenOptions so;
  so.format = "qcow2";
  so.read_only = true;
  std::unique_ptr<block::BlockDevice> src, dst;
  try {
    src = reactor.run(block::open_image(reactor, frozen, so));
  } catch (const block::Error& e) {
    throw Error(e.reason(), "cannot open the frozen chain " + frozen + ": " + e.what());
  }
  const uint64_t size = src->size();
  try {
    // 0600 before the writer opens it (it keeps an existing file's mode).
    make_file(out, kPrivateFile);
    if (req.disk_format == "qcow2") {
      block::qcow2::CreateOptions co;
      co.size = size;
      if (!req.compress.empty()) co.compression_type = req.compress;
      block::qcow2::create(reactor, out, co);
    } else if (::truncate(out.c_str(), static_cast<off_t>(size)) != 0) {
      throw errno_error("cannot size " + out, errno);
    }
    block::OpenOptions dopt;
    dopt.format = req.disk_format;
    dst = reactor.run(block::open_image(reactor, out, dopt));
    block::ConvertOptions co;
    std::unique_ptr<block::WorkerPool> pool;
    if (!req.compress.empty()) {
      reactor.enable_remote();
      pool = std::make_unique<block::WorkerPool>(std::max(1u, std::thread::hardware_concurrency()));
      co.compress = true;
      co.pool = pool.get();
    }
    reactor.run(block::convert(reactor, *src, *dst, co));
    int rc = reactor.run(dst->close());
    dst.reset();
    if (rc < 0) throw block::Error(-rc, "closing " + out);
    reactor.run(src->close());
  } catch (const std::exception& e) {
    // A device is closed before it goes, on this path too.
    if (dst) reactor.run(dst->close());
    reactor.run(src->close());
    if (dynamic_cast<const block::Error*>(&e))
      throw Error(static_cast<const block::Error&>(e).reason(),
                  "converting " + frozen + " into " + out + ": " + e.what());
    throw;
  }
}

// --- the steps ---------------------------------------------------------------------------------

void step_freeze(Run& r) {
  SnapshotRecord& rec = r.rec;
  r.frozen = rec.layers.empty() ? r.inst.dir + "/disk" : rec.layers.back();
  if (!r.live) {
    r.event("no live snapshot: the instance's disk is not served, " + r.frozen + " is frozen");
    return;
  }
  if (rec.layers.size() >= kMaxSnapshotLayers)
    throw busy("instance " + r.inst.name + " already runs on " + std::to_string(rec.layers.size()) +
               " layers that failed commits left (see its events); no more snapshots of it");
  rec.layer = r.inst.dir + "/snapshot-" + rec.image_id + ".qcow2";
  r.record();  // before kiln-nbd makes the file: the undo finds it whatever happens next
  r.nbd.snapshot(r.inst.export_name, rec.layer);
  // Tenant data: kiln-nbd creates overlays by the umask (0644 under the usual one).
  if (::chmod(rec.layer.c_str(), kPrivateFile) != 0)
    throw errno_error("cannot chmod " + rec.layer, errno);
  r.event("live snapshot: export " + r.inst.export_name + " goes on on " + rec.layer + ", " +
          r.frozen + " frozen");
}

// Merges the temporary layer back if the export runs on it; a layer that holds nothing of the
// guest's is deleted; one that cannot be merged stays, recorded as a layer of the chain.
void undo_freeze(Run& r) {
  SnapshotRecord& rec = r.rec;
  if (rec.layer.empty()) return;
  const std::string layer = rec.layer;
  if (::access(layer.c_str(), F_OK) == 0) {
    const std::string served = served_image(r.nbd, r.inst.export_name);
    if (same_file(served, layer)) {
      try {
        commit_layer(r.nbd, r.inst.export_name, layer);
      } catch (const std::exception& e) {
        // The export stays on the layer: the guest's writes since the freeze are there.
        rec.layers.push_back(layer);
        rec.layer.clear();
        r.record();
        r.event("the export stays on " + layer + " (its commit failed: " + e.what() + ")");
        return;
      }
    } else if (served.empty()) {
      // No export (kiln-nbd lost it): the layer may hold the guest's writes; keep it.
      rec.layers.push_back(layer);
      rec.layer.clear();
      r.record();
      r.event("kept " + layer + " as a layer of the disk: no export serves it to merge it");
      return;
    }
  }
  rec.layer.clear();
  r.record();
  remove_file(layer);
}

void step_convert(Run& r) {
  const std::string out = ImageStore(r.store).temp_path(r.rec.image_id);
  convert_chain(r.frozen, out, r.req);
  r.event("converted " + r.frozen + " and its chain into " + out + " (" + r.req.disk_format +
          (r.req.compress.empty() ? "" : ", " + r.req.compress + " compressed") + ")");
}

void undo_convert(Run& r) { remove_file(ImageStore(r.store).temp_path(r.rec.image_id)); }

void step_merge(Run& r) {
  SnapshotRecord& rec = r.rec;
  if (rec.layer.empty()) return;
  const std::string layer = rec.layer;
  commit_layer(r.nbd, r.inst.export_name, layer);
  rec.layer.clear();
  r.record();
  remove_file(layer);
  r.event("committed " + layer + " back into " + r.frozen + " and deleted it");
}

void nothing_to_undo(Run&) {}

void step_upload(Run& r) {
  ImageOptions o;
  o.disk_format = r.req.disk_format;
  o.min_disk = r.inst.disk_gb;
  o.interrupted = [] { return interrupted(); };
  // Nova's snapshot keeps the base image's properties and says where it comes from.
  if (auto base = r.store.find_image(r.inst.image_id)) {
    o.properties = base->properties;
    o.min_ram = base->min_ram;
  }
  o.properties["image_type"] = "snapshot";
  o.properties["instance_uuid"] = r.inst.id;
  o.properties["base_image_ref"] = r.inst.image_id;
  r.image = ImageStore(r.store).adopt(r.rec.image_name, r.rec.image_id, o);
  r.event("image " + r.image.name + " (" + r.image.id + ") registered: " + r.image.disk_format +
          ", " + std::to_string(r.image.size) + " bytes");
}

void undo_upload(Run& r) {
  if (r.store.find_image(r.rec.image_id)) ImageStore(r.store).remove(r.rec.image_id);
}

// Nova's task states of a snapshot, in order.
constexpr Step kSteps[] = {
    {"freeze", "image_snapshot", step_freeze, undo_freeze},
    {"convert", "image_pending_upload", step_convert, undo_convert},
    // Its failure leaves the layer to the freeze's undo, which tries once more.
    {"merge", "image_pending_upload", step_merge, nothing_to_undo},
    {"upload", "image_uploading", step_upload, undo_upload},
};

bool hook_names(const char* env, const char* step) {
  const char* v = std::getenv(env);
  return v && std::string(v) == step;
}

void run_snapshot_steps(Run& r) {
  for (const Step& s : kSteps) {
    if (interrupted()) throw system_error(std::string("interrupted before step ") + s.name);
    r.rec.steps.emplace_back(s.name);
    r.record();
    r.inst.task_state = s.task_state;
    r.event("snapshot " + r.rec.image_name + ": step " + s.name);
    s.work(r);
    if (hook_names(kSnapshotFailAtEnv, s.name))
      throw system_error(std::string("fault injected at snapshot step ") + s.name + " (" +
                         kSnapshotFailAtEnv + ")");
    if (hook_names(kSnapshotStopAtEnv, s.name)) {
      // Test hook: stand still (the test may look at the frozen chain, then continue or kill).
      std::fprintf(stderr, "kiln-spawn: stopped after snapshot step %s (%s)\n", s.name,
                   kSnapshotStopAtEnv);
      std::fflush(stderr);
      ::raise(SIGSTOP);
    }
  }
}

// Undoes the recorded steps, newest first, each one's end recorded at once; an undo that fails
// is appended to `errors` and stays recorded, and the older ones are still undone.
void undo_snapshot_steps(Run& r, std::vector<std::string>* errors) {
  for (auto s = std::rbegin(kSteps); s != std::rend(kSteps); ++s) {
    auto done = [&] { return std::find(r.rec.steps.begin(), r.rec.steps.end(), s->name); };
    if (done() == r.rec.steps.end()) continue;
    try {
      s->undo(r);
      r.rec.steps.erase(done());
      r.record();
      r.event("snapshot " + r.rec.image_name + ": undid step " + s->name);
    } catch (const std::exception& e) {
      errors->push_back(std::string(s->name) + ": " + e.what());
    }
  }
  for (const auto& name : r.rec.steps)
    if (std::none_of(std::begin(kSteps), std::end(kSteps),
                     [&](const Step& s) { return name == s.name; }))
      errors->push_back(name + ": no such snapshot step here; its work cannot be undone");
  if (errors->empty()) {
    r.rec.image_id.clear();
    r.rec.image_name.clear();
    r.rec.steps.clear();
    r.record();
  }
}

std::string joined(const std::vector<std::string>& v) {
  std::string all;
  for (const auto& e : v) all += (all.empty() ? "" : "; ") + e;
  return all;
}

void check_request(const SnapshotRequest& req) {
  check_name("image", req.image_name);
  if (req.disk_format != "qcow2" && req.disk_format != "raw")
    throw invalid("--disk-format must be qcow2 or raw, not '" + req.disk_format + "'");
  if (!req.compress.empty() && req.compress != "zlib" && req.compress != "zstd")
    throw invalid("--compress must be zlib or zstd, not '" + req.compress + "'");
  if (!req.compress.empty() && req.disk_format != "qcow2")
    throw invalid("--compress needs --disk-format qcow2 (raw images have no compressed clusters)");
  for (const char* env : {kSnapshotFailAtEnv, kSnapshotStopAtEnv})
    if (const char* v = std::getenv(env); v && *v) {
      const auto& s = snapshot_steps();
      if (std::find(s.begin(), s.end(), v) == s.end())
        throw invalid(std::string(env) + "=" + v + " names no snapshot step");
    }
}

// What may be snapshotted, checked where the instance is and before a row is queued for it.
void check_snapshot_of(Store& store, const Instance& inst, const SnapshotRequest& req) {
  if (inst.status != kStatusActive && inst.status != kStatusStopped)
    throw busy("instance " + inst.name + " is " + inst.status + ", not active or stopped");
  if (store.find_image(req.image_name))
    throw exists("image '" + req.image_name + "' already exists");
}

// Rolls back the snapshot that r.rec (loaded from the instance's directory) says was under
// way; false if none was. Throws if an undo failed (it stays recorded, for the next try).
bool roll_back(Run& r) {
  if (r.rec.image_id.empty()) return false;
  std::vector<std::string> errors;
  r.event("rolling back the interrupted snapshot " + r.rec.image_name);
  undo_snapshot_steps(r, &errors);
  if (!errors.empty())
    throw system_error("instance " + r.inst.name + ": cannot roll back the interrupted snapshot " +
                       r.rec.image_name + ": " + joined(errors));
  return true;
}

// The steps of a new snapshot `r.rec.image_id`; on failure, every step undone and the error
// rethrown (with the undo's errors, if any), after `failed` is told the whole fault.
void take_snapshot(Run& r, const std::function<void(const std::string&)>& failed) {
  try {
    run_snapshot_steps(r);
  } catch (const std::exception& e) {
    std::string reason = e.what();
    std::vector<std::string> errors;
    undo_snapshot_steps(r, &errors);
    r.inst.task_state.clear();
    std::string fault = reason + (errors.empty() ? "" : "; cleanup: " + joined(errors));
    failed("snapshot " + r.rec.image_name + " failed: " + fault);
    if (errors.empty()) throw;
    const auto* err = dynamic_cast<const Error*>(&e);
    throw Error(err ? err->reason() : Reason::kIo, fault);
  }
  r.rec.image_id.clear();
  r.rec.image_name.clear();
  r.rec.steps.clear();
  r.record();
  r.inst.task_state.clear();
}

// The storage host's copy of another host's instance: its own directory and export, the
// instance's other fields from the shared record. Its events are added to the record's; the
// record itself is the compute host's to save.
Instance storage_disk_of(Store& store, const std::string& id, const std::string& dir) {
  auto found = store.find_instance(id);
  Instance inst = found ? *found : Instance{};
  inst.id = id;
  if (inst.name.empty()) inst.name = id;
  inst.dir = dir;
  inst.export_name = export_name_of(id);
  return inst;
}

std::function<void(const std::string&)> storage_events(Store& store, const Instance& inst) {
  return [&store, &inst](const std::string& message) {
    // An instance already deleted has no record to add to.
    if (store.find_instance(inst.id))
      store.add_event(inst.id, inst.status, inst.task_state,
                      "storage host " + this_host() + ": " + message);
  };
}

}  // namespace

const std::vector<std::string>& snapshot_steps() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> v;
    for (const Step& s : kSteps) v.emplace_back(s.name);
    return v;
  }();
  return kNames;
}

bool Compute::roll_back_interrupted_snapshot(Instance& inst) {
  SnapshotRecord rec = load_snapshot_record(inst.dir);
  if (rec.image_id.empty()) return false;
  NbdControl nbd(opt_.nbd_control);
  Run r{store_, nbd, inst, SnapshotRequest{}, std::move(rec), {}, false, "", {}};
  r.event = [&](const std::string& message) { save(inst, message); };
  roll_back(r);
  if (!inst.task_state.empty()) {
    inst.task_state.clear();
    save(inst, "interrupted snapshot rolled back");
  }
  return true;
}

Image Compute::snapshot(const std::string& ref, const SnapshotRequest& req) {
  check_request(req);
  const Instance found = get(ref);
  if (!found.host.empty() && found.host != this_host()) return remote_snapshot(found, req);
  // Held throughout, rollback included: stop, start, delete and other snapshots wait.
  FileLock lock(lock_path(found.id));
  Instance inst = get(found.id);
  check_snapshot_of(store_, inst, req);
  // A snapshot that died half-way: rolled back before anything else.
  roll_back_interrupted_snapshot(inst);
  if (auto storage = instance_storage_host(inst)) return storage_snapshot(inst, *storage, req);
  NbdControl nbd(opt_.nbd_control);
  Run r{store_, nbd, inst, req, load_snapshot_record(inst.dir), {}, false, "", {}};
  r.event = [&](const std::string& message) { save(inst, message); };

  r.rec.image_id = common::new_uuid();
  r.rec.image_name = req.image_name;
  r.live = !inst.export_name.empty() && nbd.has_export(inst.export_name);
  take_snapshot(r, r.event);
  save(inst, "snapshot image " + r.image.name + " (" + r.image.id + ") created");
  return r.image;
}

// Nova casts a snapshot to the instance's compute host; the image is there when the row is done.
// The queued row has --wait-timeout to be taken; a snapshot runs as long as its copy takes.
Image Compute::remote_snapshot(const Instance& inst, const SnapshotRequest& req) {
  check_snapshot_of(store_, inst, req);
  WorkItem w;
  w.host = inst.host;
  w.kind = kWorkSnapshot;
  w.instance_id = inst.id;
  w.payload = common::dump(common::Json{{"image_name", req.image_name},
                                        {"disk_format", req.disk_format},
                                        {"compress", req.compress}});
  const int64_t id = store_.enqueue(w);
  const std::string image_id =
      wait_work(id, kWorkSnapshot, "host " + inst.host, {.withdraw = true, .queued_only = true});
  store_.remove_work(id);
  auto image = store_.find_image(image_id);
  if (!image) throw not_found("snapshot on host " + inst.host + ": its image is gone");
  return *image;
}

// The instance's disk is an export of its storage host: the snapshot is that host's (the
// freeze and the commit are its kiln-nbd's, the new image file goes into its image store, where
// the disks booted from it will be made). The record here shows the task state meanwhile.
Image Compute::storage_snapshot(Instance& inst, const std::string& storage,
                                const SnapshotRequest& req) {
  const std::string image_id = common::new_uuid();
  inst.task_state = "image_snapshot";
  save(inst, "snapshot " + req.image_name + ": queued for storage host " + storage);
  WorkItem w;
  w.host = storage;
  w.kind = kWorkDiskSnapshot;
  w.instance_id = inst.id;
  w.payload = common::dump(common::Json{{"image_name", req.image_name},
                                        {"image_id", image_id},
                                        {"disk_format", req.disk_format},
                                        {"compress", req.compress}});
  try {
    const int64_t id = store_.enqueue(w);
    wait_work(id, kWorkDiskSnapshot, "storage host " + storage,
              {.withdraw = true, .queued_only = true});
    store_.remove_work(id);
  } catch (const std::exception& e) {
    inst.task_state.clear();
    save(inst, "snapshot " + req.image_name + " failed: " + e.what());
    throw;
  }
  inst.task_state.clear();
  auto image = store_.find_image(image_id);
  if (!image) throw not_found("snapshot on storage host " + storage + ": its image is gone");
  save(inst,
       "snapshot image " + image->name + " (" + image->id + ") created on storage host " + storage);
  return *image;
}

namespace {

common::Json payload_of(const WorkItem& w) {
  common::Json j = common::parse_json(w.payload, 4096, w.kind + " row");
  if (!j.is_object()) throw invalid(w.kind + " row: not an object");
  return j;
}

// A snapshot or disk-snapshot row's request, checked as the command line's is.
SnapshotRequest request_of_row(const WorkItem& w, const common::Json& j) {
  auto text = [&](const char* key) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string() || it->get<std::string>().size() > 255)
      throw invalid(w.kind + " row: " + key + " is not a string of at most 255 bytes");
    return it->get<std::string>();
  };
  SnapshotRequest req;
  req.image_name = text("image_name");
  req.disk_format = text("disk_format");
  req.compress = text("compress");
  try {
    check_request(req);
  } catch (const Error& e) {
    throw invalid(w.kind + " row: " + e.what());
  }
  return req;
}

}  // namespace

std::string Compute::run_snapshot_row(const WorkItem& w) {
  return snapshot(w.instance_id, request_of_row(w, payload_of(w))).id;
}

std::string Compute::run_disk_snapshot(const WorkItem& w) {
  const common::Json j = payload_of(w);
  const SnapshotRequest req = request_of_row(w, j);
  auto id_it = j.find("image_id");
  if (id_it == j.end() || !id_it->is_string() || !common::is_uuid(id_it->get<std::string>()))
    throw invalid("disk-snapshot row: image_id is not a UUID");
  const std::string dir = store_.dir() + "/instances/" + w.instance_id;
  if (::access((dir + "/disk").c_str(), F_OK) != 0)
    throw not_found("disk-snapshot row: no disk " + dir + "/disk");
  if (store_.find_image(req.image_name))
    throw exists("image '" + req.image_name + "' already exists");
  FileLock lock(lock_path(w.instance_id));
  Instance inst = storage_disk_of(store_, w.instance_id, dir);
  NbdControl nbd(opt_.nbd_control);
  Run r{store_, nbd, inst, req, load_snapshot_record(dir), {}, false, "", {}};
  r.event = storage_events(store_, inst);
  roll_back(r);
  r.rec.image_id = id_it->get<std::string>();
  r.rec.image_name = req.image_name;
  r.live = nbd.has_export(inst.export_name);
  take_snapshot(r, r.event);
  r.event("snapshot image " + r.image.name + " (" + r.image.id + ") created");
  return r.image.id;
}

// Storage disks (directories of instances that are not this host's) with a snapshot that died
// half-way: rolled back, as cleanup() does it for this host's instances.
void Compute::roll_back_storage_snapshots(CleanupReport& report) {
  const std::string instances = store_.dir() + "/instances";
  std::error_code ec;
  if (!fs::is_directory(instances, ec)) return;
  const std::string me = this_host();
  for (const auto& entry : fs::directory_iterator(instances, ec)) {
    const std::string id = entry.path().filename().string();
    if (!common::is_uuid(id)) continue;
    const std::string dir = entry.path().string();
    // The file first: the store is asked only about disks with a record (few, if any).
    if (::access(snapshot_record_path(dir).c_str(), F_OK) != 0) continue;
    auto listed = store_.find_instance(id);
    if (listed && (listed->host.empty() || listed->host == me)) continue;  // cleanup()'s own
    const std::string name = listed ? listed->name : id;
    try {
      if (load_snapshot_record(dir).image_id.empty()) continue;
      FileLock lock(lock_path(id), std::try_to_lock);
      if (!lock.held()) {
        report.in_progress.push_back(name);
        continue;
      }
      Instance inst = storage_disk_of(store_, id, dir);
      NbdControl nbd(opt_.nbd_control);
      Run r{store_, nbd, inst, SnapshotRequest{}, load_snapshot_record(dir), {}, false, "", {}};
      r.event = storage_events(store_, inst);
      if (roll_back(r)) report.snapshots_rolled_back.push_back(name);
    } catch (const std::exception& e) {
      report.errors.push_back(name + ": " + e.what());
    }
  }
}

}  // namespace kiln::spawn
