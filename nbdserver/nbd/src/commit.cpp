// Live commit (QEMU's block-commit of the active layer, mirror style): the export's top image
// is copied into its backing while clients go on writing to the top; their writes are applied
// to the backing too once they have reached the top (QEMU's write-blocking copy mode), and the
// chunks where two writers of the backing may have raced are tracked (DirtyMap) and copied
// again; a last short pause of the export's requests copies what is left, and the export
// switches to the backing. The top is left as a file.
//
// Until the switch the top stays complete and the state file names it: a crash at any moment
// leaves a chain that reads as the clients wrote it (the backing only changed under ranges the
// top allocates). After the switch the state file names the backing, written before any
// request goes on.
#include "commit.h"

#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "buffer.h"
#include "kiln/block/live.h"
#include "kiln/common/error.h"
#include "kiln/nbd/server.h"
#include "log.h"

namespace kiln::nbd {

using block::Task;

namespace {

constexpr uint64_t kCopyPiece = 1u << 20;       // bytes read and written at a time
constexpr uint64_t kStatusWindow = 1ull << 30;  // block status asked per window
constexpr int kMaxDirtyRounds = 16;             // before the final pause, whatever is left
constexpr uint64_t kFinalChunks = 64;           // few enough chunks to copy while paused

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// Copies what `top` reads in [off, off+len) into `base`: zeros as zeros, data as data.
Task<int> copy_range(block::BlockDevice& top, block::BlockDevice& base, uint64_t off, uint64_t len,
                     AlignedBuffer& buf) {
  std::vector<block::Extent> ext;
  if (int rc = co_await top.block_status(off, len, &ext); rc < 0) co_return rc;
  for (const block::Extent& x : ext) {
    const uint64_t s = std::max(x.offset, off), t = std::min(x.offset + x.length, off + len);
    if (s >= t) continue;
    if (x.zero) {
      if (int rc = co_await base.write_zeroes(s, t - s, 0); rc < 0) co_return rc;
      continue;
    }
    auto span = buf.span().subspan(0, t - s);
    if (int rc = co_await top.read(s, span); rc < 0) co_return rc;
    if (int rc = co_await base.write(s, span, 0); rc < 0) co_return rc;
  }
  co_return 0;
}

}  // namespace

Task<void> mirror_write(DirtyMap& d, bool zeroes, uint64_t offset, uint64_t length,
                        std::span<const uint8_t> data) {
  block::BlockDevice* base = d.mirror;
  if (length == 0) co_return;
  if (d.begin_mirror(offset, length)) d.mark(offset, length);
  const int rc = zeroes ? co_await base->write_zeroes(offset, length, 0)
                        : co_await base->write(offset, data, 0);
  d.end_mirror(offset, length);
  if (rc < 0) {
    // The client's write is on the top, where it counts; the commit will fail.
    d.mark(offset, length);
    if (!d.mirror_error) d.mirror_error = rc;
    d.mirror = nullptr;
  }
}

namespace {

void set_error(CommitJob& job, const std::string& msg) {
  std::lock_guard<std::mutex> g(job.mu);
  job.error = msg;
}

}  // namespace

Task<void> Server::start_commit(const std::string& name, const std::string& base) {
  Export* e = find_export(name);
  if (!e) throw common::not_found("no export named '" + name + "'");
  if (e->config.read_only) throw common::invalid("export '" + name + "' is read-only");
  if (e->live_busy)
    throw common::busy("export '" + name + "': a snapshot or commit is already running");
  block::BlockDevice* top = e->device.get();
  block::BlockDevice* below = block::backing_of(*top);
  if (!below)
    throw common::invalid("export '" + name + "': its image " + top->filename() +
                          " has no backing image to commit into");
  if (!base.empty() && real(base) != real(below->filename()))
    throw common::unsupported("export '" + name + "': only the top image's own backing (" +
                              below->filename() + ") can be the base");
  if (below->size() != top->size())
    throw common::unsupported("export '" + name +
                              "': the backing image's size differs from the top's");
  e->live_busy = true;
  auto job = std::make_shared<CommitJob>();
  job->export_name = name;
  job->top = top->filename();
  job->base = below->filename();
  // The base becomes writable (and the dirty map starts) with no request in flight.
  std::exception_ptr error;
  co_await e->home->schedule();
  co_await e->gate->close();
  try {
    co_await below->set_read_only(false);
  } catch (...) {
    error = std::current_exception();
  }
  co_await reactor_.schedule();
  if (!error) {
    e->dirty = new DirtyMap(top->size());
    e->dirty->mirror = below;
    e->job = job;
  }
  co_await e->home->schedule();
  e->gate->open();
  co_await reactor_.schedule();
  if (error) {
    e->live_busy = false;
    changed_.notify_all();
    std::rethrow_exception(error);
  }
  logf(LogLevel::kInfo, "export '%s': committing %s into %s", name.c_str(), job->top.c_str(),
       job->base.c_str());
  reactor_.spawn(run_commit(e, job), &background_);
}

Task<void> Server::run_commit(Export* e, std::shared_ptr<CommitJob> job) {
  co_await e->home->schedule();
  block::BlockDevice& top = *e->device;
  block::BlockDevice& base = *block::backing_of(top);
  DirtyMap& dirty = *e->dirty;
  const uint64_t size = top.size();
  AlignedBuffer buf(kCopyPiece);
  // A copy of the job: a mirrored write to the same chunks during it (seen by either side)
  // makes them dirty again.
  auto copy = [&](uint64_t off, uint64_t n) -> Task<int> {
    const bool busy_before = dirty.mirroring(off, n);
    dirty.copy_start = off;
    dirty.copy_end = off + n;
    const int rc = co_await copy_range(top, base, off, n, buf);
    dirty.copy_start = dirty.copy_end = 0;
    if (busy_before) dirty.mark(off, n);
    if (rc == 0 && dirty.mirror_error) co_return dirty.mirror_error;
    co_return rc;
  };
  std::string err;
  auto failed = [&](int rc, const char* what) {
    err = std::string(what) + ": " + strerror(-rc);
    return true;
  };

  // Pass 1: every range the top allocates.
  for (uint64_t w = 0; w < size && err.empty() && !job->cancel; w += kStatusWindow) {
    std::vector<block::Extent> ext;
    const uint64_t wlen = std::min(kStatusWindow, size - w);
    if (int rc = co_await top.block_status(w, wlen, &ext); rc < 0) {
      failed(rc, "reading the top image's allocation");
      break;
    }
    for (const auto& x : ext)
      if (x.present && x.depth == 0) job->total += x.length;
    for (const auto& x : ext) {
      if (!x.present || x.depth != 0) continue;
      for (uint64_t o = x.offset; o < x.offset + x.length && !job->cancel; o += kCopyPiece) {
        const uint64_t n = std::min(kCopyPiece, x.offset + x.length - o);
        if (int rc = co_await copy(o, n); rc < 0) {
          failed(rc, "copying into the base image");
          break;
        }
        job->done += n;
      }
      if (!err.empty() || job->cancel) break;
    }
  }
  // Then what clients wrote meanwhile, until little enough is left to copy while paused.
  auto copy_dirty = [&](uint64_t limit) -> Task<int> {
    uint64_t c;
    for (uint64_t i = 0; i < limit && !job->cancel && dirty.take(&c); ++i) {
      const uint64_t off = c * DirtyMap::kChunk, n = std::min(DirtyMap::kChunk, size - off);
      job->total += n;
      if (int rc = co_await copy(off, n); rc < 0) co_return rc;
      job->done += n;
    }
    co_return 0;
  };
  for (int round = 0;
       err.empty() && !job->cancel && round < kMaxDirtyRounds && dirty.count() > kFinalChunks;
       ++round)
    if (int rc = co_await copy_dirty(dirty.count()); rc < 0) failed(rc, "copying into the base");
  if (err.empty() && dirty.mirror_error) failed(dirty.mirror_error, "writing to the base image");
  if (err.empty() && !job->cancel) {
    // Flushed before the pause: what is left for it is small.
    if (int rc = co_await base.flush(); rc < 0) failed(rc, "flushing the base image");
  }

  std::unique_ptr<block::BlockDevice> old_top;
  std::chrono::steady_clock::time_point t0;
  long long held_us = 0;  // how long the final pause held the export's requests
  if (err.empty() && !job->cancel) {
    job->state = CommitJob::kReady;
    t0 = std::chrono::steady_clock::now();
    co_await e->gate->close();
    if (int rc = co_await copy_dirty(UINT64_MAX); rc < 0) failed(rc, "copying into the base");
    if (err.empty())
      if (int rc = co_await base.flush(); rc < 0) failed(rc, "flushing the base image");
    co_await reactor_.schedule();
    if (err.empty() && !job->cancel) {
      // The state file names the base before any request goes on, on it.
      const std::string old_path = e->config.path, old_format = e->config.format;
      e->config.path = base.filename();
      e->config.format = base.format();
      if (save_state()) {
        old_top = std::move(e->device);
        e->device = block::take_backing(*old_top);
        delete e->dirty;
        e->dirty = nullptr;
      } else {
        e->config.path = old_path;
        e->config.format = old_format;
        err = "cannot write the state file " + options_.state_file;
      }
    }
    co_await e->home->schedule();
    e->gate->open();
    held_us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
            .count();
  }
  if (old_top) {
    // The top is left as a file (consistent: its writes were flushed into it as they came);
    // closing it releases its locks.
    if (int rc = co_await old_top->close(); rc < 0)
      logf(LogLevel::kWarn, "export '%s': closing the committed top %s: %s",
           job->export_name.c_str(), job->top.c_str(), strerror(-rc));
    old_top.reset();
    job->state = CommitJob::kCompleted;
  } else {
    // Failed or cancelled: the export goes on on its old chain, the base read-only again.
    co_await e->gate->close();
    std::string relock;
    try {
      co_await base.set_read_only(true);
    } catch (const std::exception& x) {
      relock = x.what();
    }
    co_await reactor_.schedule();
    delete e->dirty;
    e->dirty = nullptr;
    co_await e->home->schedule();
    e->gate->open();
    if (!relock.empty())
      logf(LogLevel::kWarn, "export '%s': making the base read-only again: %s",
           job->export_name.c_str(), relock.c_str());
    if (err.empty()) {
      job->state = CommitJob::kCancelled;
    } else {
      set_error(*job, err);
      job->state = CommitJob::kFailed;
    }
  }
  co_await reactor_.schedule();
  if (job->state == CommitJob::kCompleted)
    logf(LogLevel::kInfo, "export '%s': commit completed, now on %s (requests held %lld us)",
         job->export_name.c_str(), job->base.c_str(), held_us);
  else
    logf(LogLevel::kWarn, "export '%s': commit %s%s%s", job->export_name.c_str(),
         CommitJob::state_name(job->state), err.empty() ? "" : ": ", err.c_str());
  e->live_busy = false;
  changed_.notify_all();
}

bool Server::cancel_commit(const std::string& name) {
  auto it = exports_.find(name);
  if (it == exports_.end() || !it->second->job || it->second->job->finished()) return false;
  it->second->job->cancel = true;
  return true;
}

Task<void> Server::end_live_ops(Export* e) {
  if (e->job) e->job->cancel = true;
  while (e->live_busy) co_await changed_.wait();
}

}  // namespace kiln::nbd
