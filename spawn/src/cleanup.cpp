// kiln-spawn cleanup: what a kiln-spawn that died left half-done on this host (compute.h).
// An operation holds its instance's lock (a flock, released by the kernel when the process
// dies) from start to end, so an instance whose lock is free and whose record says an
// operation was under way was abandoned.
#include <exception>
#include <mutex>

#include "kiln/spawn/compute.h"
#include "kiln/spawn/error.h"
#include "kiln/spawn/resources.h"
#include "snapshot.h"
#include "util.h"

namespace kiln::spawn {

CleanupReport Compute::cleanup() {
  CleanupReport report;
  const std::string me = this_host();
  for (const Instance& listed : store_.instances()) {
    if (!listed.host.empty() && listed.host != me) continue;  // another host's to clean
    FileLock lock(lock_path(listed.id), std::try_to_lock);
    if (!lock.held()) {
      report.in_progress.push_back(listed.name);
      continue;
    }
    try {
      Instance inst = get(listed.id);  // as it is now that nothing else works on it
      if (inst.status == kStatusDeleting) {
        remove_locked(inst.id);
        report.deletes_finished.push_back(inst.name);
        continue;
      }
      // A build queued for this host's agent (or running in an agent that died: its next
      // start fails the row, then cleans) is not abandoned.
      if (inst.status == kStatusBuilding && store_.work_pending(inst.id, kWorkBuild)) {
        report.in_progress.push_back(inst.name);
        continue;
      }
      if (inst.status == kStatusBuilding) {
        const std::string step = inst.steps_done.empty() ? "" : inst.steps_done.back();
        std::vector<std::string> errors;
        undo_steps(inst, &errors);
        inst.status = kStatusError;
        inst.task_state.clear();
        inst.fault = "build interrupted after step " + step +
                     " (the kiln-spawn running it died); rolled back by cleanup";
        for (const auto& u : errors) inst.fault += "; cleanup: " + u;
        save(inst, inst.fault);
        if (!errors.empty()) throw system_error(inst.fault);
        report.builds_rolled_back.push_back(inst.name);
        continue;
      }
      if (roll_back_interrupted_snapshot(inst)) {
        report.snapshots_rolled_back.push_back(inst.name);
        continue;
      }
      // A snapshot on the storage host that no kiln-spawn here waits for any more: that host
      // ends it (or its agent's next start rolls it back); the task state here goes.
      if (inst.task_state == "image_snapshot" && instance_storage_host(inst)) {
        if (store_.work_pending(inst.id, kWorkDiskSnapshot)) {
          report.in_progress.push_back(inst.name);
          continue;
        }
        inst.task_state.clear();
        save(inst,
             "the snapshot's kiln-spawn stopped waiting for the storage host (its events "
             "say how the snapshot ended)");
        report.snapshots_rolled_back.push_back(inst.name);
      }
    } catch (const std::exception& e) {
      report.errors.push_back(listed.name + ": " + e.what());
    }
  }
  roll_back_storage_snapshots(report);
  return report;
}

}  // namespace kiln::spawn
