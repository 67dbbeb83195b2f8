// Live snapshot of a served export (QEMU's blockdev-snapshot-sync): a new qcow2 overlay over the
// export's image, switched in while clients stay connected.
//
// The order keeps every acknowledged write whatever moment the process dies at: the overlay is
// created and synced (off the reactors) and opened; the state file names it (written, synced,
// renamed); only then the export's gate closes (new requests wait, those in flight finish),
// the device is switched and the gate opens again; so requests wait only for that switch. The
// old top, which nothing writes any more, is then flushed, left clean and made read-only.
#include "kiln/block/live.h"

#include <sys/stat.h>
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
                                   const SnapshotOptions& so) {
  Export* e = find_export(name);
  if (!e) throw common::not_found("no export named '" + name + "'");
  if (e->config.read_only)
    throw common::invalid("export '" + name + "' is read-only: there is nothing to snapshot");
  if (e->live_busy)
    throw common::busy("export '" + name + "': a snapshot or commit is already running");
  // The new layer would take the guest's writes in plaintext over its encrypted disk.
  if (e->config.key_secret || !e->config.key_secret_file.empty())
    throw common::unsupported("export '" + name +
                              "' is encrypted: a live snapshot would store new writes "
                              "unencrypted, and encrypted overlays are not made yet");
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
                         // The guest's next writes land here: no wider access than the image
                         // they went to before (created by the umask, often 0644).
                         struct stat st {};
                         if (::stat(top->filename().c_str(), &st) == 0 &&
                             ::chmod(path.c_str(), st.st_mode & 0777) != 0)
                           throw common::Error(common::reason_of_errno(errno),
                                               path + ": cannot set its mode: " + strerror(errno),
                                               errno);
                       }};
    created = true;
  } catch (...) {
    error = std::current_exception();
  }

  std::unique_ptr<block::BlockDevice> overlay;
  if (!error) {
    // Opened before the pause: it reads only its own file, and checks that it names the top.
    co_await e->home->schedule();
    try {
      block::OpenOptions o;
      o.l2_cache_bytes = e->config.l2_cache_bytes;
      o.direct = e->config.direct;
      o.allowed_dirs = options_.allowed_dirs;
      overlay = co_await block::open_overlay(*e->home, path, o, *top);
    } catch (...) {
      error = std::current_exception();
    }
    co_await reactor_.schedule();
  }
  const std::string old_path = e->config.path, old_format = e->config.format;
  if (!error) {
    // The state file names the overlay before any write can land in it. A crash before the
    // switch leaves the overlay empty over the top, which holds every write: the same disk.
    e->config.path = path;
    e->config.format = "qcow2";
    // (No co_await under a condition that calls a function: GCC 12 gets it wrong at -O0.)
    const bool saved = save_state();
    if (!saved) {
      e->config.path = old_path;
      e->config.format = old_format;
      error = std::make_exception_ptr(
          common::Error(common::Reason::kIo, "cannot write the state file " + options_.state_file +
                                                 ": the export stays on " + old_path));
    }
  }
  if (error && overlay) {
    co_await e->home->schedule();
    (void)co_await overlay->close();
    overlay.reset();
    co_await reactor_.schedule();
  }
  if (!error) {
    co_await e->home->schedule();
    const auto t0 = std::chrono::steady_clock::now();
    co_await e->gate->close();
    co_await reactor_.schedule();
    // The home reactor runs no request of this export now: the device changes hands here,
    // where handshakes read it.
    std::unique_ptr<block::BlockDevice> old = std::move(e->device);
    block::attach_backing(*overlay, std::move(old));
    e->device = std::move(overlay);
    co_await e->home->schedule();
    e->gate->open();
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    // Nothing writes the old top any more: flushed, left clean and its write locks released
    // while requests go on (they only read it). A failure leaves it writable, and the
    // snapshot made: it is reported in the log.
    std::string warning;
    try {
      co_await top->set_read_only(true);
    } catch (const std::exception& x) {
      warning = x.what();
    }
    co_await reactor_.schedule();
    logf(LogLevel::kInfo, "export '%s': live snapshot, now on %s (requests held %lld us)",
         name.c_str(), path.c_str(), (long long)us);
    if (!warning.empty())
      logf(LogLevel::kWarn, "export '%s': the old top %s stays writable: %s", name.c_str(),
           old_path.c_str(), warning.c_str());
  }
  if (error && created) ::unlink(path.c_str());  // ours, never used
  e->live_busy = false;
  changed_.notify_all();
  if (error) std::rethrow_exception(error);
}

}  // namespace kiln::nbd
