// fuse_mount(): the session, the mount, daemon mode, the request loop and the final flush.
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "inode_util.h"
#include "kiln/fs/fuse.h"
#include "mount_table.h"
#include "placeholder_device.h"
#include "raw_request.h"
#include "request_stats.h"
#include "volume.h"

namespace kiln::fs {
namespace {

using fuse_detail::Volume;

constexpr unsigned kMaxIo = 1u << 20;  // largest read and write request: 1 MiB
constexpr unsigned kInodeCacheEntries = 64;

void op_init(void* userdata, fuse_conn_info* conn) {
  Volume& vol = *static_cast<Volume*>(userdata);
  conn->max_write = kMaxIo;
  // The kernel's writeback cache: writes land in the page cache and reach us as WRITEs of up
  // to max_write, whatever size the program wrote; this process is the only writer, so the
  // kernel's view of size and times is right. The kernel then keeps mtime/ctime itself and
  // sends them (SETATTR) after the data (op_write leaves them alone), handles O_APPEND, and may
  // READ around a partial-page write, also on a file opened write-only. Its mtime and ctime
  // stand while it caches the inode, whatever we answer: not for 128-byte inodes, which store
  // whole seconds up to 2038 only.
  if (!vol.read_only() && (conn->capable & FUSE_CAP_WRITEBACK_CACHE) &&
      EXT2_INODE_SIZE(vol.fs()->super) > EXT2_GOOD_OLD_INODE_SIZE) {
    conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    vol.set_writeback_cache(true);
  }
  conn->max_readahead = kMaxIo;
  // Zero-message opens: op_open answers ENOSYS once, and the kernel opens files without asking
  // from then on, and sends no RELEASE for them (two requests less per file read). op_open
  // only refuses what the kernel refuses itself (writes on this ro mount, directories), and
  // writes to encrypted files: keep it where the filesystem can hold them. The kernel's lookup
  // reference keeps an unlinked open file alive (Volume::forget), with or without opens.
  if ((conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) && !ext2fs_has_feature_encrypt(vol.fs()->super)) {
    conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
    vol.set_no_open(true);
  }
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  // This mount is the filesystem's only writer: cached pages are never stale, so a changed
  // mtime must not throw them away.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  // Without it the kernel truncates an existing file opened with O_TRUNC by a SETATTR of size
  // 0 (op_setattr); with it (libfuse's default) O_TRUNC would come to op_open, which does not
  // truncate: the old length and bytes stayed on disk.
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
}

// FUSE_DESTROY: for a fuseblk mount the kernel sends it from umount(2) and returns only once
// it is answered (libfuse answers after this returns), so the image is written and released
// here. libfuse also calls this when the session ends without one (a plain fuse mount).
void op_destroy(void* userdata) { static_cast<Volume*>(userdata)->finish(); }

// Why a filesystem must not be written by libext2fs, or nullptr.
const char* unwritable_reason(ext2_filsys fs) {
  if (!(fs->flags & EXT2_FLAG_RW)) return "the filesystem was opened read-only";
  if (ext2fs_has_feature_journal_needs_recovery(fs->super)) {
    return "its journal needs recovery (libext2fs does not replay journals)";
  }
  if (fs->super->s_state & EXT2_ERROR_FS) return "it has errors recorded; run e2fsck first";
  if (ext2fs_has_feature_mmp(fs->super)) return "multi-mount protection is not supported";
  if (ext2fs_has_feature_bigalloc(fs->super)) return "bigalloc is not supported for writing";
  return nullptr;
}

// Mount options are comma-separated: escape commas and backslashes in values.
std::string escape_option(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

struct SessionDeleter {
  void operator()(fuse_session* se) const { fuse_session_destroy(se); }
};
using Session = std::unique_ptr<fuse_session, SessionDeleter>;

// DEVICE: the block device of a fuseblk mount, or empty for a plain fuse mount.
Session new_session(const FuseMountOptions& opts, const fuse_lowlevel_ops& ops, Volume& vol,
                    const std::string& device) {
  std::string o = "default_permissions,subtype=kiln-fs,fsname=" +
                  escape_option(device.empty() ? opts.fsname : device);
  if (!device.empty()) o += ",blkdev";
  if (vol.read_only()) o += ",ro";
  if (opts.allow_other) o += ",allow_other";
  std::vector<std::string> argv = {"kiln-fs", "-o", o};
  if (opts.debug) argv.push_back("-d");
  std::vector<char*> ptrs;
  for (auto& a : argv) ptrs.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(ptrs.size()), ptrs.data());
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &vol);
  fuse_opt_free_args(&args);
  return Session(se);
}

// Page-cache read-ahead of the mount: the kernel's default (128 KiB) holds sequential reads
// well below what 1 MiB requests give. Best effort (needs root) and only for this mount's
// device (found in /proc/self/mountinfo: a stat() of the mount point would wait for this very
// process to answer).
void raise_readahead(const std::string& bdi) {
  const std::string path = "/sys/class/bdi/" + bdi + "/read_ahead_kb";
  if (FILE* f = std::fopen(path.c_str(), "w")) {
    std::fprintf(f, "%u\n", kMaxIo / 1024);
    std::fclose(f);
  }
}

void unmount_quietly(fuse_session* se) {
  std::fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  const int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (saved >= 0 && null >= 0) dup2(null, STDERR_FILENO);
  fuse_session_unmount(se);
  if (saved >= 0) {
    dup2(saved, STDERR_FILENO);
    close(saved);
  }
  if (null >= 0) close(null);
}

// The session's I/O (fuse_session_custom_io, set once the mount is made): plain read and
// writev, except that the INIT reply takes FUSE_HANDLE_KILLPRIV_V2 when the kernel offers it.
// libfuse 3.14 builds that reply's flags from its own list, which lacks the flag; with it the
// kernel stops asking for the mode (GETATTR) before each chown (one request per file in
// `tar x`) and leaves the dropping of set-ID bits to us (Volume::kill_suidgid).
ssize_t read_request(int fd, void* buf, size_t len, void*) { return read(fd, buf, len); }

ssize_t write_reply(int fd, iovec* iov, int count, void* userdata) {
  Volume& vol = *static_cast<Volume*>(userdata);
  if (vol.init_unique() != 0) {
    if (fuse_detail::add_killpriv_v2(iov, count, vol.init_unique())) vol.set_killpriv_v2(true);
    vol.set_init_unique(0);
  }
  return writev(fd, iov, count);
}

enum class LoopEnd { kUnmounted, kLeftMountTable, kError };

// An unmount here ends the session at once (the kernel aborts the connection during the
// umount call); when it has not after this long, another namespace holds a copy of the mount.
constexpr int kUnmountGraceMs = 250;

// Whether waiting for requests awake (FuseMountOptions::busy_wait_us) can pay here: with
// O_NONBLOCK set on the session's device, a read without a request fails with EAGAIN.
bool can_busy_wait(int fd, int busy_wait_us) {
  if (busy_wait_us <= 0 || sysconf(_SC_NPROCESSORS_ONLN) < 2) return false;
  const int flags = fcntl(fd, F_GETFL);
  return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

// The next request read within BUDGET: its size, 0 when unmounted, -errno, or -EAGAIN when
// none came in time.
int receive_awake(fuse_session* se, fuse_buf& buf, std::chrono::microseconds budget) {
  const auto until = std::chrono::steady_clock::now() + budget;
  int res;
  do {
    res = fuse_session_receive_buf(se, &buf);
  } while (res == -EAGAIN && std::chrono::steady_clock::now() < until);
  return res;
}

// The request loop, on this thread only. While metadata is pending, an idle second writes it.
LoopEnd serve(fuse_session* se, Volume& vol, fuse_detail::MountWatch& watch, int idle_flush_ms,
              int busy_wait_us, fuse_detail::RequestStats& stats) {
  using Clock = std::chrono::steady_clock;
  const int fd = fuse_session_fd(se);
  const bool busy_wait = can_busy_wait(fd, busy_wait_us);
  fuse_buf buf{};
  LoopEnd end = LoopEnd::kUnmounted;
  bool left_table = false;
  bool just_replied = false;
  Clock::time_point left_at;
  while (!fuse_session_exited(se)) {
    int res = -EAGAIN;
    if (busy_wait && just_replied && !left_table)
      res = receive_awake(se, buf, std::chrono::microseconds(busy_wait_us));
    just_replied = false;
    if (res == -EAGAIN) {  // sleep until a request comes (or the idle flush is due)
      pollfd p[2] = {{fd, POLLIN, 0}, {watch.fd(), POLLPRI, 0}};
      int timeout = idle_flush_ms > 0 && vol.dirty() && !vol.finished() ? idle_flush_ms : -1;
      if (left_table) {
        const auto waited =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - left_at).count();
        if (waited >= kUnmountGraceMs) {
          end = LoopEnd::kLeftMountTable;
          break;
        }
        const int rest = kUnmountGraceMs - static_cast<int>(waited);
        timeout = timeout < 0 ? rest : std::min(timeout, rest);
      }
      const int n = poll(p, watch.fd() >= 0 && !left_table ? 2 : 1, timeout);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::fprintf(stderr, "kiln-fs: poll: %s\n", strerror(errno));
        end = LoopEnd::kError;
        break;
      }
      if (n == 0) {
        if (vol.dirty() && !vol.finished()) {
          if (errcode_t rc = vol.flush(false)) fuse_detail::fail("flush", 0, rc);
        }
        continue;
      }
      if (!left_table && (p[1].revents & (POLLPRI | POLLERR)) && !watch.still_mounted()) {
        left_table = true;
        left_at = Clock::now();
      }
      if (!(p[0].revents & (POLLIN | POLLERR | POLLHUP))) continue;
      res = fuse_session_receive_buf(se, &buf);
    }
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0) {  // 0: unmounted
      if (res < 0) {
        std::fprintf(stderr, "kiln-fs: reading /dev/fuse: %s\n", strerror(-res));
        end = LoopEnd::kError;
      }
      break;
    }
    fuse_detail::RawHeader header;
    const bool have_header = fuse_detail::raw_header(buf, res, header);
    if (have_header && fuse_detail::is_init(header) && header.offers_killpriv_v2 &&
        !vol.read_only()) {
      vol.set_init_unique(header.unique);  // see write_reply
    }
    vol.set_kill_suidgid(have_header && header.kill_suidgid && vol.killpriv_v2());
    const auto t0 = stats.enabled() ? Clock::now() : Clock::time_point{};
    const int64_t cpu0 = stats.enabled() ? fuse_detail::RequestStats::thread_cpu_nanos() : 0;
    if (have_header && fuse_detail::is_syncfs(header)) {
      // sync(2)/syncfs(2): the kernel has written its dirty pages back; now everything of
      // ours (metadata, buffered blocks, the image's flush) goes to the image.
      int err = 0;
      if (!vol.finished()) {
        if (errcode_t rc = vol.flush(false)) err = fuse_detail::fail("syncfs", 0, rc);
      }
      fuse_detail::reply_raw(se, header, err);
    } else {
      fuse_session_process_buf(se, &buf);
    }
    vol.set_kill_suidgid(false);
    if (errcode_t rc = vol.write_back_if_full()) fuse_detail::fail("write-back", 0, rc);
    just_replied = true;
    if (!stats.enabled()) continue;
    stats.add(have_header ? header.opcode : 0, static_cast<size_t>(res),
              std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count(),
              fuse_detail::RequestStats::thread_cpu_nanos() - cpu0);
  }
  std::free(buf.mem);
  return end;
}

// Checks that the filesystem can be served as asked and readies libext2fs for it.
bool prepare(ext2_filsys fs, const FuseMountOptions& opts) {
  if (opts.mountpoint.empty()) {
    std::fprintf(stderr, "kiln-fs: mount: no mount point given\n");
    return false;
  }
  if (!opts.read_only) {
    if (const char* why = unwritable_reason(fs)) {
      std::fprintf(stderr, "kiln-fs: mount: cannot write this filesystem: %s (mount with --ro)\n",
                   why);
      return false;
    }
    if (errcode_t rc = ext2fs_read_bitmaps(fs)) {
      std::fprintf(stderr, "kiln-fs: mount: reading bitmaps: %s\n", error_message(rc));
      return false;
    }
  }
  // libext2fs caches 4 inodes by default; a mount touches the same few (a directory and its
  // newest entries) over and over, and every miss is a read through the io_manager and an
  // inode checksum. But the cache is searched from end to end on every inode read and write,
  // and libext2fs reads an inode about 50 times per file in `tar x`: 1024 entries made that
  // search a third of the mount's instructions, while 64 miss two reads in a hundred
  // more (docs/kiln-fs-performance.md, part 9).
  if (fs->icache) {
    ext2fs_free_inode_cache(fs->icache);
    fs->icache = nullptr;
  }
  if (errcode_t rc = ext2fs_create_inode_cache(fs, kInodeCacheEntries)) {
    std::fprintf(stderr, "kiln-fs: mount: inode cache: %s\n", error_message(rc));
    return false;
  }
  return true;
}

}  // namespace

int fuse_mount(ext2_filsys fs, const FuseMountOptions& opts) {
  initialize_ext2_error_table();
  if (!prepare(fs, opts)) return 1;
  Volume vol(fs, opts);
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.destroy = op_destroy;
  fuse_detail::register_attr_ops(ops);
  fuse_detail::register_namespace_ops(ops);
  fuse_detail::register_file_ops(ops);
  fuse_detail::register_dir_ops(ops);
  fuse_detail::register_xattr_ops(ops);

  std::unique_ptr<fuse_detail::PlaceholderDevice> device;
  if (opts.wait_at_unmount && geteuid() == 0) {
    device = std::make_unique<fuse_detail::PlaceholderDevice>(opts.fsname);
    if (device->path().empty()) {
      std::fprintf(stderr,
                   "kiln-fs: mount: no block device for a fuseblk mount (%s): umount will return "
                   "before the image is written; wait for this process to exit\n",
                   device->error().c_str());
      device.reset();
    }
  }
  Session se = new_session(opts, ops, vol, device ? device->path() : "");
  if (!se) {
    std::fprintf(stderr, "kiln-fs: mount: cannot create the FUSE session\n");
    return 1;
  }
  vol.set_session(se.get());
  if (fuse_set_signal_handlers(se.get()) != 0) {
    std::fprintf(stderr, "kiln-fs: mount: cannot install signal handlers\n");
    return 1;
  }
  if (errcode_t rc = vol.begin_writes()) {
    std::fprintf(stderr, "kiln-fs: mount: writing the superblock: %s\n", error_message(rc));
    fuse_remove_signal_handlers(se.get());
    return 1;
  }
  char resolved[PATH_MAX];
  const bool have_resolved = realpath(opts.mountpoint.c_str(), resolved) != nullptr;
  if (fuse_session_mount(se.get(), opts.mountpoint.c_str()) != 0) {
    std::fprintf(stderr, "kiln-fs: mount: cannot mount on %s\n", opts.mountpoint.c_str());
    fuse_remove_signal_handlers(se.get());
    vol.flush(true);
    return 1;
  }
  if (!vol.read_only()) {
    fuse_custom_io io{};
    io.read = read_request;
    io.writev = write_reply;
    // Without it the mount works as before, with the kernel's GETATTR before each chown.
    if (fuse_session_custom_io(se.get(), &io, fuse_session_fd(se.get())) != 0) {
      std::fprintf(stderr,
                   "kiln-fs: mount: custom session I/O refused; serving without "
                   "FUSE_HANDLE_KILLPRIV_V2\n");
    }
  }
  // The mount holds the device now; ours goes, so that autoclear detaches it at unmount.
  if (device) device->release();
  // Only now, with the mount in place, may the parent exit.
  if (fuse_daemonize(opts.foreground || opts.debug) != 0) {
    std::fprintf(stderr, "kiln-fs: mount: cannot go to the background\n");
    fuse_session_unmount(se.get());
    fuse_remove_signal_handlers(se.get());
    vol.flush(true);
    return 1;
  }
  // Opened by the process that serves (/proc/self is the opener's).
  fuse_detail::MountWatch watch(have_resolved ? resolved : "");
  // A fuseblk mount's backing device info is named after its block device, "7:3-fuseblk".
  if (watch.found()) raise_readahead(watch.device() + (device ? "-fuseblk" : ""));
  fuse_detail::RequestStats stats;
  const LoopEnd end = serve(se.get(), vol, watch, opts.idle_flush_ms, opts.busy_wait_us, stats);
  // After a signal the mount is still there: unmount it (libfuse closes the session's device
  // first, so no FUSE_DESTROY comes; the session's end below finishes instead). When the mount
  // left this namespace's table while another namespace keeps a copy, libfuse's unmount only
  // closes the session's device (which ends the copies) and frees its state; its umount of the
  // path then fails, as expected, and says so on stderr: silence that. Nothing is done if the
  // path holds another mount by now.
  if (end != LoopEnd::kLeftMountTable) {
    fuse_session_unmount(se.get());
  } else {
    std::fprintf(stderr,
                 "kiln-fs: unmounted here, but another mount namespace still had the mount; "
                 "ending the session\n");
    if (!watch.is_mount_point(resolved)) unmount_quietly(se.get());
  }
  fuse_remove_signal_handlers(se.get());
  se.reset();  // calls op_destroy if the kernel sent no FUSE_DESTROY
  const int status = vol.finish();
  if (stats.enabled()) {
    uint64_t read = 0, written = 0;
    vol.io_bytes(read, written);
    stats.print(stderr, read, written);
  }
  return end == LoopEnd::kError ? 1 : status;
}

}  // namespace kiln::fs
