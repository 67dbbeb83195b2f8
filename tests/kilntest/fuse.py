"""Helpers for the FUSE mount's tests: images of every ext variant, a mount that is always
undone, the host kernel's ext4 driver as the oracle (read-only loop mounts, always undone),
a generated tree with everything `cp -a` must carry, and a tree comparison."""

import contextlib
import ctypes
import errno
import os
import random
import shutil
import signal
import stat
import subprocess
import time

from kilntest import SANITIZED, SCALE, KiB, MiB, scaled, sha256  # noqa: F401  (re-exported)
from kilntest import content_digest  # noqa: F401  (re-exported)
from kilntest import run as _run

KILN_FS = os.environ.get("KILN_FS") or shutil.which("kiln-fs") or "kiln-fs"
KILN_FUSE_DEV = os.environ.get("KILN_FUSE_DEV") or shutil.which("kiln-fuse-dev") or ""

# name -> mkfs command (the image path is appended).
FS_VARIANTS = {
    "ext2": ["mkfs.ext2", "-q", "-F", "-b", "4096", "-I", "256"],
    "ext3": ["mkfs.ext3", "-q", "-F", "-b", "4096", "-I", "256"],
    # metadata_csum, 64bit, extents, flex_bg, dir_nlink, extra_isize (Debian 12 defaults)
    "ext4": ["mkfs.ext4", "-q", "-F", "-b", "4096"],
    "ext4-nocsum": ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^metadata_csum,^64bit"],
    # small files and directories inside the inode
    "ext4-inline": ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "inline_data"],
}
# Variants for the per-operation tests only (the tree has symlinks longer than 1 KiB).
OPS_VARIANTS = {
    # 1 KiB blocks: deeper extent trees and more directory blocks for the same data
    "ext4-1k": ["mkfs.ext4", "-q", "-F", "-b", "1024"],
    # 128-byte inodes: no extra fields, timestamps in whole seconds
    "ext2-128": ["mkfs.ext2", "-q", "-F", "-b", "4096", "-I", "128"],
}

REQUIRED_TOOLS = ["mkfs.ext4", "e2fsck", "fusermount3", "setfattr", "getfattr", "qemu-img",
                  "tar", "cp", "mount", "umount", "losetup", "unshare"]


def require_tools():
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
    assert not missing, f"missing tools (see fusefs/packages.txt): {missing}"
    assert os.path.exists(KILN_FS) or shutil.which(KILN_FS), f"{KILN_FS} not found (run through ctest)"


def run(args, check=True, input=None, timeout=600, cwd=None):
    """A command whose output stays bytes (file contents go through it)."""
    return _run(args, check=check, input=input, timeout=timeout, text=False, cwd=cwd)


def make_fs(path, variant="ext4", size=256 * MiB, extra=()):
    with open(path, "wb") as f:
        f.truncate(size)
    run({**FS_VARIANTS, **OPS_VARIANTS}[variant] + list(extra) + [path])


def e2fsck_clean(raw):
    """e2fsck -fn must find nothing (exit 0)."""
    p = run(["e2fsck", "-fn", raw], check=False)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    assert p.returncode == 0, f"e2fsck -fn {raw}: exit {p.returncode}\n{out}"
    return out


# ---------------------------------------------------------------------------------------------
# Mounts

def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def mount_type(path):
    path = os.path.realpath(path)
    kind = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                kind = fields[fields.index("-") + 1]
    return kind


# As root, kiln-fs mounts as fuseblk (over a placeholder loop device) so that umount waits for
# its write-back; otherwise, or without a loop device, as plain fuse.
MOUNT_TYPES = ("fuse.kiln-fs", "fuseblk.kiln-fs")


@contextlib.contextmanager
def private_mount_namespace():
    """Runs the block in a mount namespace of this process's own, with private propagation.
    A mount namespace that another process creates (ip netns exec, unshare -m: other tests on
    the host) copies every mount of the moment, and while that copy lives an unmount here does
    not end the filesystem: a test that needs the unmount itself to end it makes its mounts
    where no one can copy them. Back in the original namespace afterwards; what is still
    mounted in the private one goes with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, ms_rec, ms_private = 0x00020000, 0x4000, 0x40000
    original = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(clone_newns) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        try:
            if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
                raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
            yield
        finally:
            # EINVAL while another thread shares this one's filesystem attributes: a thread
            # the block started and joined may still be on its way out of the kernel (join()
            # returns before the thread has exited).
            deadline = time.monotonic() + 10
            while libc.setns(original, clone_newns) != 0:
                err = ctypes.get_errno()
                if err != errno.EINVAL or time.monotonic() > deadline:
                    raise OSError(err, "setns back to the original mount namespace")
                time.sleep(0.01)
    finally:
        os.close(original)


def force_unmount(path):
    """Last resort when a test failed with the mount still there."""
    if is_mounted(path):
        run(["fusermount3", "-u", path], check=False)
    if is_mounted(path):
        run(["umount", "-l", path], check=False)


def unmount_fuse(mountpoint, tries=300):
    """fusermount3 -u, retried while the mount is busy: the kernel releases a closed file in
    the background and keeps the mount until the daemon has answered, which can take a moment
    while the daemon flushes to a slow disk. Returns the errors seen."""
    errors = []
    for _ in range(tries):
        if not is_mounted(mountpoint):
            break
        p = run(["fusermount3", "-u", mountpoint], check=False)
        if p.returncode == 0:
            break
        errors.append(p.stderr.decode(errors="replace").strip())
        time.sleep(0.1)
    return errors


class Image:
    """The filesystem image a test mounts with kiln-fs: a qcow2 base converted from the raw
    image and an overlay on it (writes land in the overlay; the base must not change)."""

    def __init__(self, workdir, raw):
        self.workdir = workdir
        self.raw = raw
        self.base = os.path.join(workdir, "base.qcow2")
        self.overlay = os.path.join(workdir, "overlay.qcow2")
        run(["qemu-img", "convert", "-O", "qcow2", raw, self.base])
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base, "-F", "qcow2",
             self.overlay])
        self.base_digest = content_digest(self.base)
        self.target = self.overlay

    def result_raw(self):
        """The filesystem as raw bytes, for e2fsck and the kernel."""
        out = os.path.join(self.workdir, "result.raw")
        run(["qemu-img", "convert", "-O", "raw", self.overlay, out])
        assert content_digest(self.base) == self.base_digest, "the qcow2 base changed"
        return out

    def mount_command(self, mountpoint, *opts):
        # The overlay's format is given: a probed image that names a backing file is refused.
        return [KILN_FS, "mount", "--format", "qcow2", self.target, mountpoint, *opts]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def fuse_mount(image, mountpoint, *opts, env=None):
    """Mounts in the foreground (a child process of the test), yields the Popen; unmounts and
    waits for the process on the way out, failure or not. The process's own exit status is
    checked by the caller through `proc.returncode` after the block (0 expected)."""
    os.makedirs(mountpoint, exist_ok=True)
    proc = subprocess.Popen(image.mount_command(mountpoint, "-f", *opts),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=None if env is None else {**os.environ, **env})
    try:
        deadline = time.monotonic() + 30
        while mount_type(mountpoint) not in MOUNT_TYPES:
            if proc.poll() is not None:
                raise AssertionError(f"mount exited with {proc.returncode}: "
                                     f"{proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError("the mount did not appear")
            time.sleep(0.02)
        yield proc
    finally:
        unmount_log = []
        try:
            if proc.poll() is None:
                unmount_log += unmount_fuse(mountpoint)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                unmount_log.append(f"still mounted: {is_mounted(mountpoint)}; killed")
                proc.kill()
                proc.wait()
        finally:
            force_unmount(mountpoint)
            proc.stderr_text = proc.stderr.read().decode(errors="replace") + "".join(
                f"\n[unmount] {line}" for line in unmount_log)
            proc.stdout.close()
            proc.stderr.close()


def check_exit(proc):
    assert proc.returncode == 0, f"kiln-fs exited {proc.returncode}: {proc.stderr_text}"
    assert "Sanitizer" not in proc.stderr_text and "runtime error" not in proc.stderr_text, \
        proc.stderr_text


@contextlib.contextmanager
def kernel_mount_ro(raw, mountpoint):
    """The oracle: the host kernel's ext4 driver, read-only, on a loop device that is always
    detached again."""
    os.makedirs(mountpoint, exist_ok=True)
    # noload: never replay a journal (there must be nothing to replay, and ro means ro).
    run(["mount", "-t", "ext4", "-o", "ro,loop,noload", raw, mountpoint])
    try:
        yield mountpoint
    finally:
        run(["umount", mountpoint], check=False)
        if is_mounted(mountpoint):
            run(["umount", "-l", mountpoint], check=False)
        for line in run(["losetup", "-j", raw], check=False).stdout.decode().splitlines():
            run(["losetup", "-d", line.split(":")[0]], check=False)


# ---------------------------------------------------------------------------------------------
# A tree with what `cp -a` and `tar` must carry: nested directories, files of many sizes (0,
# around block boundaries, over 1 MiB), fast and slow symlinks, hard-link groups, modes with
# set-ID and sticky bits, owners, extended attributes (an SELinux label, a capability-sized
# binary value, trusted.*), a fifo, empty directories and timestamps with nanoseconds.

SIZES = [0, 1, 100, 4095, 4096, 4097, 12288, 65536, 200000]
BIG_SIZES = [1 * MiB + 1, 3 * MiB + 12345]
MODES = [0o644, 0o600, 0o755, 0o444, 0o640, 0o4755, 0o2755, 0o700]
DIR_MODES = [0o755, 0o700, 0o1777, 0o2775, 0o750]
OWNERS = [(0, 0), (1000, 1000), (33, 33), (65534, 65534), (123456, 654321)]


def generate_tree(root, files, seed=1):
    rng = random.Random(seed)
    os.makedirs(root)
    dirs = [root]
    for i in range(max(4, files // 25)):
        parent = rng.choice(dirs)
        d = os.path.join(parent, f"dir{i:04d}")
        os.mkdir(d)
        dirs.append(d)
    regular = []
    for i in range(files):
        d = rng.choice(dirs)
        path = os.path.join(d, f"file{i:05d}.dat")
        if i < len(BIG_SIZES):
            size = BIG_SIZES[i]
        else:
            size = rng.choice(SIZES) if rng.random() < 0.6 else rng.randrange(0, 20000)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
        uid, gid = rng.choice(OWNERS)
        os.chown(path, uid, gid)
        os.chmod(path, rng.choice(MODES))
        regular.append(path)
    # Extended attributes on some files and directories.
    for path in rng.sample(regular, max(4, files // 10)):
        os.setxattr(path, "user.kiln.note", rng.randbytes(rng.randrange(1, 64)))
        if rng.random() < 0.5:
            os.setxattr(path, "security.selinux", b"system_u:object_r:etc_t:s0\0")
        if rng.random() < 0.3:
            os.setxattr(path, "user.big", rng.randbytes(1500))  # needs the xattr block
        if rng.random() < 0.2:
            os.setxattr(path, "trusted.kiln", b"t")
    os.setxattr(dirs[1], "user.dir", b"on a directory")
    # Hard-link groups of 2 and 3.
    for i, path in enumerate(rng.sample(regular, max(2, files // 50))):
        for k in range(1 + i % 2):
            os.link(path, os.path.join(rng.choice(dirs), f"hard{i:04d}-{k}"))
    # Symlinks: fast (in the inode), slow (a block), dangling, to directories.
    for i in range(max(4, files // 20)):
        d = rng.choice(dirs)
        if i % 4 == 0:
            target = "x" * rng.randrange(61, 1500) + f"/{i}"
        elif i % 4 == 1:
            target = os.path.relpath(rng.choice(regular), d)
        elif i % 4 == 2:
            target = f"/nonexistent/{i}"
        else:
            target = os.path.relpath(rng.choice(dirs), d)
        link = os.path.join(d, f"link{i:04d}")
        os.symlink(target, link)
        os.lchown(link, *rng.choice(OWNERS))
    os.mkfifo(os.path.join(dirs[2], "fifo"), 0o620)
    for i in range(3):
        os.mkdir(os.path.join(rng.choice(dirs), f"empty{i}"))
    for d in dirs[1:]:
        os.chown(d, *rng.choice(OWNERS))
        os.chmod(d, rng.choice(DIR_MODES))
    # Timestamps with nanoseconds, deepest first so that setting them sticks.
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            t = 1_600_000_000 * 10**9 + rng.randrange(0, 10**17)
            os.utime(p, ns=(t + 7, t), follow_symlinks=False)
    return root


def snapshot(root, with_mtime=True, with_atime=False):
    """path -> properties for every entry under root (root itself excluded); hard links are
    reduced to the groups of paths that share an inode."""
    entries = {}
    by_inode = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            e = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                e["size"] = st.st_size
                e["sha256"] = sha256(p)
                by_inode.setdefault(st.st_ino, []).append(rel)
                e["nlink"] = st.st_nlink
            elif stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            if not stat.S_ISDIR(st.st_mode) and with_mtime:
                e["mtime_ns"] = st.st_mtime_ns
            if with_atime:
                e["atime_ns"] = st.st_atime_ns
            if not stat.S_ISLNK(st.st_mode) and not stat.S_ISFIFO(st.st_mode):
                names = sorted(os.listxattr(p, follow_symlinks=False))
                e["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False) for n in names}
            entries[rel] = e
    groups = sorted(sorted(g) for g in by_inode.values() if len(g) > 1)
    return entries, groups


def assert_same_tree(expected_root, actual_root, with_mtime=True):
    exp, exp_groups = snapshot(expected_root, with_mtime)
    act, act_groups = snapshot(actual_root, with_mtime)
    missing = sorted(set(exp) - set(act))
    extra = sorted(set(act) - set(exp))
    assert not missing, f"missing under {actual_root}: {missing[:10]}"
    assert not extra, f"unexpected under {actual_root}: {extra[:10]}"
    diffs = [(k, exp[k], act[k]) for k in sorted(exp) if exp[k] != act[k]]
    assert not diffs, "differences (path, expected, actual):\n" + "\n".join(
        f"{k}: {e} != {a}" for k, e, a in diffs[:10])
    assert exp_groups == act_groups, "hard-link groups differ"
    return len(exp)


def expect_errno(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as e:
        assert e.errno == code, f"{fn.__name__}: {errno.errorcode.get(e.errno)} " \
                                f"instead of {errno.errorcode[code]}"
        return
    raise AssertionError(f"{fn.__name__} succeeded, expected {errno.errorcode[code]}")


def exited(pid):
    """The process has ended: gone, or a zombie. A daemon's parent is init, which may reap it
    seconds later (this machine's init does so about every two seconds); a zombie holds no
    file, lock or mount any more."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def daemon_pids(mountpoint):
    """PIDs of kiln-fs processes serving mountpoint (daemon mode has no child of ours)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if mountpoint.encode() in args and any(b"kiln-f" in a for a in args[:1]):
            pids.append(int(d))
    return pids


def stop_pid(pid):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
