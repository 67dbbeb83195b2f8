// Live snapshot of a served export (QEMU's blockdev-snapshot-sync): a new qcow2 overlay over the
// export's image, switched in while clients stay connected.
//
// The order keeps every acknowledged flush durable whatever moment the process dies at: the
// overlay is created and synced first (off the reactors); the export's gate is closed (new
// requests wait, those in flight finish) and the old top flushed and made read-only; the
// export switches to the overlay and the state file names it (written and renamed) before the
// gate opens, so that no write lands in the overlay before a restart would open it.
#include "kiln/block/live.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "kiln/common/error.h"
#include "kiln/nbd/server.h"
#include "log.h"
#include "off_thread.h"

namespace kiln::nbd {

using block::Task;

Task<void> Server::snapshot_export(const std::string& name, const std::string& path,
                                   SnapshotOptions so) {
  Export* e = find_export(name);
  if (!e) throw common::not_found("no export named '" + name + "'");
  if (e->config.read_only)
    throw common::invalid("export '" + name + "' is read-only: there is nothing to snapshot");
  if (e->live_busy)
    throw common::busy("export '" + name + "': a snapshot or commit is already running");
  if (path.empty() || path[0] != '/' || path.size() > 4096)
    throw common::invalid("the overlay path must be absolute (and at most 4096 bytes)");
  const uint32_t cs = so.cluster_size ? so.cluster_size : 65536;
  e->live_busy = true;
  block::BlockDevice* top = e->device.get();
  std::exception_ptr error;
  bool created = false;
  try {
    co_await OffThread{&reactor_, [&] {
                         block::create_overlay(path, top->filename(), top->format(), top->size(),
                                               cs, so.extended_l2, options_.allowed_dirs);
                       }};
    created = true;
  } catch (...) {
    error = std::current_exception();
  }

  std::unique_ptr<block::BlockDevice> overlay;
  if (!error) {
    co_await e->home->schedule();
    // Most dirty data goes out before the gate closes, so that the flush under it is short.
    (void)co_await top->flush();
    const auto t0 = std::chrono::steady_clock::now();
    co_await e->gate->close();
    try {
      block::OpenOptions o;
      o.l2_cache_bytes = e->config.l2_cache_bytes;
      o.direct = e->config.direct;
      o.allowed_dirs = options_.allowed_dirs;
      overlay = co_await block::open_overlay(*e->home, path, o, *top);
    } catch (...) {
      error = std::current_exception();
    }
    if (!error) {
      try {
        co_await top->set_read_only(true);  // flushed, clean, its write locks released
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error && overlay) {
      (void)co_await overlay->close();
      overlay.reset();
    }
    co_await reactor_.schedule();
    if (!error) {
      // The home reactor runs no request of this export now: the device changes hands here,
      // where handshakes read it.
      std::unique_ptr<block::BlockDevice> old = std::move(e->device);
      block::attach_backing(*overlay, std::move(old));
      e->device = std::move(overlay);
      e->config.path = path;
      e->config.format = "qcow2";
      save_state();
    }
    co_await e->home->schedule();
    e->gate->open();
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    co_await reactor_.schedule();
    if (!error)
      logf(LogLevel::kInfo, "export '%s': live snapshot, now on %s (requests held %lld us)",
           name.c_str(), path.c_str(), (long long)us);
  }
  if (error && created) ::unlink(path.c_str());  // ours, never used
  e->live_busy = false;
  changed_.notify_all();
  if (error) std::rethrow_exception(error);
}

}  // namespace kiln::nbd
