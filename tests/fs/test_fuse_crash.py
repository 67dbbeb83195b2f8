"""Crashes of the mount: the kiln-fs daemon is killed with SIGKILL in the middle of `tar x`,
of a large write and of `rm -r`. After the kernel has let go of the dead mount, `e2fsck -fn`
of the image may report only the classes a crash of a non-journaling writer is expected to
leave (see EXPECTED_AFTER_CRASH and docs/kiln-fs-fuse.md, "After a crash"), and every file
that was fsynced before the kill must be in the image with its bytes (read by debugfs from
the image itself, not through a repair)."""

import contextlib
import os
import random
import re
import signal
import subprocess
import threading

import pytest

from kilntest.fuse import (KILN_FS, MiB, fuse_mount, is_mounted, make_fs,
                           private_mount_namespace, run, scaled, wait_for)

# What e2fsck -fn may say about an image whose kiln-fs was killed, and why. kiln-fs does not
# journal; it keeps metadata (bitmaps, group descriptors, the superblock's counters) and its
# 64 MiB write buffer in memory and writes them at flush points (fsync, sync, an idle second,
# the unmount), so the image holds the state of the last flush point, or of a flush cut short:
EXPECTED_AFTER_CRASH = [
    # A file unlinked while the kernel still held it (open, or a lookup not yet forgotten):
    # kiln-fs keeps the inode, with no links, until the last reference goes (as ext4 does with
    # its orphan list) and a flush in between writes it so. e2fsck -y frees it.
    r"^Deleted inode \d+ has zero dtime\.  Fix\? no$",
    # Leaks: blocks and inodes marked in use in the bitmaps that nothing uses (the orphans
    # above, or a removal whose inode reached the image before its bitmaps), and the free
    # counts that follow from them. The bitmap lines are checked further (only "-": marked
    # in use but free; a "+" would be a block in use that could be handed out twice).
    r"^(Block|Inode) bitmap differences: ",
    r"^Free (blocks|inodes) count wrong( for group #\d+)? \(\d+, counted=\d+\)\.$",
    r"^Directories count wrong for group #\d+ \(\d+, counted=\d+\)\.$",
    r"^Fix\? no$",
    r"^Padding at end of inode bitmap is not set\. Fix\? no$",
]


def e2fsck_after_crash(raw):
    """e2fsck -fn; returns (lines not in the expected classes, whole output)."""
    p = run(["e2fsck", "-fn", raw], check=False)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    assert p.returncode in (0, 4), f"e2fsck -fn {raw}: exit {p.returncode}\n{out}"
    unexpected = []
    for line in out.splitlines():
        line = line.rstrip()
        if not line or line.startswith(("e2fsck ", "Pass ", raw + ":")):
            continue
        if not any(re.search(p, line) for p in EXPECTED_AFTER_CRASH):
            unexpected.append(line)
        elif "bitmap differences:" in line:
            if any(not t.startswith("-") for t in line.split(":", 1)[1].split()):
                unexpected.append(line)
    return unexpected, out


class SameImage:
    """For fuse_mount(): the raw image the test made, mounted in the foreground."""

    def __init__(self, raw):
        self.raw = raw

    def mount_command(self, mountpoint, *opts):
        return [KILN_FS, "mount", "--format", "raw", self.raw, mountpoint, *opts]


def write_fsynced(mnt, rng, count):
    """Files written and fsynced one by one (the directory too): what must survive a crash.
    Returns name -> bytes."""
    os.makedirs(os.path.join(mnt, "keep", "sub"))
    kept = {}
    for i in range(count):
        name = f"keep/{'sub/' if i % 2 else ''}k{i:03d}"
        data = rng.randbytes(rng.choice([0, 1, 700, 4096, 5000, 70000, 1 * MiB + 3]))
        fd = os.open(os.path.join(mnt, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        kept[name] = data
    for d in ("keep", "keep/sub"):
        fd = os.open(os.path.join(mnt, d), os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    return kept


def kill_daemon(proc, mnt, workload):
    """SIGKILL to the daemon; then the workload (which sees ENOTCONN) ends, and the dead mount
    is taken off: `umount` of an aborted FUSE connection works at once, and the placeholder
    loop device of a fuseblk mount goes with it (autoclear)."""
    device = mount_source(mnt)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    try:
        workload.wait(timeout=120)
    except subprocess.TimeoutExpired:
        workload.kill()
        workload.wait()
        raise AssertionError("the workload did not end after the daemon was killed")
    p = run(["umount", mnt], check=False)
    assert p.returncode == 0, p.stderr
    assert not is_mounted(mnt)
    if device.startswith("/dev/loop"):
        wait_for(lambda: not os.path.exists(f"/sys/block/{os.path.basename(device)}/loop"), 30,
                 f"{device} to be detached")


def mount_source(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return fields[fields.index("-") + 2]
    raise AssertionError(f"{path} is not mounted")


def check_after_crash(raw, kept, workdir):
    """The image as the crash left it: e2fsck -fn reports expected classes only, and every
    fsynced file is there with its bytes (dumped from the image by debugfs)."""
    unexpected, out = e2fsck_after_crash(raw)
    assert not unexpected, f"e2fsck -fn found more than the expected classes: {unexpected[:8]}" \
                           f"\n{out}"
    print(out)  # what the crash left, for the log (pytest -s)
    dump = os.path.join(workdir, "dump")
    os.mkdir(dump)
    run(["debugfs", "-R", f"rdump /keep {dump}", raw])
    for name, data in kept.items():
        path = os.path.join(dump, name)
        assert os.path.exists(path), f"{name} was fsynced before the kill and is gone"
        with open(path, "rb") as f:
            got = f.read()
        if isinstance(data, tuple):  # (prefix that was fsynced, whole size is at least that)
            assert got[:len(data[0])] == data[0], f"{name}: the fsynced part changed"
        else:
            assert got == data, f"{name}: not the bytes that were fsynced"
    return out


class Periodic:
    """ACTION() every INTERVAL seconds while the block runs, until it returns False; `count`
    says how many times it succeeded."""

    def __init__(self, interval, action):
        self.interval, self.action = interval, action
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.wait(self.interval):
            if not self.action():
                return
            self.count += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=130)


class PeriodicSyncfs(Periodic):
    """`sync -f MNT` over and over while a workload runs: flush points (bitmaps, group
    descriptors, inodes and data written out) land in the middle of the workload, as the idle
    flush and a user's `sync` do, so that the kill finds a half-written state on disk and not
    only kiln-fs's buffers lost. Stops when the mount is gone."""

    def __init__(self, mnt, interval):
        super().__init__(interval, lambda: subprocess.run(
            ["sync", "-f", mnt], capture_output=True, timeout=120).returncode == 0)


def statfs_answers(mnt):
    """One STATFS request (the kernel never caches them); False once the mount is gone."""
    try:
        os.statvfs(mnt)
        return True
    except OSError:
        return False


def lines_until(stream, count):
    """Reads COUNT lines of a workload's progress (tar -v, rm -v); False if it ended first."""
    for _ in range(count):
        if not stream.readline():
            return False
    return True


class NoSync(contextlib.nullcontext):
    count = 0


@pytest.fixture
def crash_setup(workdir):
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=512 * MiB)
    mnt = os.path.join(workdir, "mnt")
    with private_mount_namespace():
        yield raw, mnt


def small_tree_tar(workdir, rng, files):
    src = os.path.join(workdir, "src")
    for i in range(files):
        d = os.path.join(src, f"d{i % 40:02d}", f"e{i % 7}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(rng.randbytes(rng.choice([0, 100, 4096, 9000, 20000])))
    tarball = os.path.join(workdir, "tree.tar")
    run(["tar", "-cf", tarball, "-C", src, "."])
    return tarball


@pytest.mark.parametrize("round_no", range(scaled(3, 2)))
def test_sigkill_during_tar_x(workdir, crash_setup, round_no):
    raw, mnt = crash_setup
    rng = random.Random(100 + round_no)
    files = scaled(3000, 600)
    tarball = small_tree_tar(workdir, rng, files)
    with fuse_mount(SameImage(raw), mnt) as proc:
        kept = write_fsynced(mnt, rng, 40)
        os.mkdir(os.path.join(mnt, "x"))
        tar = subprocess.Popen(["tar", "-xvf", tarball, "-C", os.path.join(mnt, "x")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # Round 0 loses only what kiln-fs held in memory; the others have flush points
        # all through the unpacking.
        with PeriodicSyncfs(mnt, 0.05 + 0.1 * round_no) if round_no else NoSync() as syncer:
            # Somewhere in the middle, different for every round.
            assert lines_until(tar.stdout, rng.randrange(files // 3, files * 2 // 3)), "tar ended"
            assert round_no == 0 or syncer.count > 0, "no syncfs before the kill"
            kill_daemon(proc, mnt, tar)
        tar.stdout.close()
    check_after_crash(raw, kept, workdir)


def test_sigkill_during_a_large_write(workdir, crash_setup):
    """A 400 MiB file written in 1 MiB pieces; its first 48 MiB are fsynced, then the daemon
    is killed while the rest streams in. The fsynced part must be in the image."""
    raw, mnt = crash_setup
    rng = random.Random(7)
    with fuse_mount(SameImage(raw), mnt) as proc:
        kept = write_fsynced(mnt, rng, 10)
        prefix = rng.randbytes(48 * MiB)
        big = os.path.join(mnt, "keep", "big")
        writer = subprocess.Popen(
            ["python3", "-c",
             "import os, sys\n"
             "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
             "data = sys.stdin.buffer.read(48 << 20)\n"
             "os.write(fd, data); os.fsync(fd)\n"
             "print('fsynced', flush=True)\n"
             "block = os.urandom(1 << 20)\n"
             "for i in range(352):\n"
             "    os.write(fd, block)\n"
             "    if i % 16 == 0: print(i, flush=True)\n",
             big],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        writer.stdin.write(prefix)
        writer.stdin.close()
        assert writer.stdout.readline() == b"fsynced\n"
        # Well past the fsync and past kiln-fs's 64 MiB write buffer, which has spilled to
        # the image in between, with write-back of the rest going on.
        assert lines_until(writer.stdout, 14), "the writer ended"
        kill_daemon(proc, mnt, writer)
        writer.stdout.close()
    kept["keep/big"] = (prefix,)
    check_after_crash(raw, kept, workdir)


def test_sigkill_during_rm_r(workdir, crash_setup):
    """A tree unpacked and synced, then `rm -r` of it killed half-way; the fsynced files
    elsewhere must be untouched."""
    raw, mnt = crash_setup
    rng = random.Random(11)
    files = scaled(3000, 600)
    tarball = small_tree_tar(workdir, rng, files)
    with fuse_mount(SameImage(raw), mnt) as proc:
        kept = write_fsynced(mnt, rng, 40)
        os.mkdir(os.path.join(mnt, "doomed"))
        run(["tar", "-xf", tarball, "-C", os.path.join(mnt, "doomed")])
        run(["sync", "-f", mnt])
        rm = subprocess.Popen(["rm", "-rv", os.path.join(mnt, "doomed")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        with PeriodicSyncfs(mnt, 0.1) as syncer:
            assert lines_until(rm.stdout, files // 2), "rm ended"
            assert syncer.count > 0, "no syncfs before the kill"
            kill_daemon(proc, mnt, rm)
        rm.stdout.close()
    check_after_crash(raw, kept, workdir)


def test_sigkill_after_a_file_is_deleted_and_its_blocks_rewritten(workdir):
    """File data goes to the image as it is written, before the metadata that points at it
    (which waits for a flush point), but never into blocks freed since the last flush point:
    until then the image's metadata still gives them to their old owner. Here a fsynced file
    fills most of a small filesystem; it is deleted and, within the idle flush's second, a new
    file of the same size is written and closed, so that its blocks can only be the deleted
    file's. The daemon is killed before any flush point: the image must still hold the deleted
    file, with its bytes."""
    raw = os.path.join(workdir, "small.raw")
    make_fs(raw, "ext4", size=64 * MiB)
    mnt = os.path.join(workdir, "mnt")
    rng = random.Random(13)
    first, second = rng.randbytes(40 * MiB), rng.randbytes(40 * MiB)
    with private_mount_namespace():
        with fuse_mount(SameImage(raw), mnt) as proc:
            kept = write_fsynced(mnt, rng, 2)
            path = os.path.join(mnt, "keep", "first")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, first)
            os.fsync(fd)
            os.close(fd)
            kept["keep/first"] = first
            free_before = os.statvfs(mnt).f_bfree * os.statvfs(mnt).f_frsize
            assert free_before < len(second), "the new file would fit beside the old one"
            # A second without requests would make a flush point (the idle flush) and put the
            # deletion on the image; STATFS, which the kernel never caches, keeps it from
            # coming however slow the machine is.
            with Periodic(0.2, lambda: statfs_answers(mnt)):
                os.unlink(path)
                fd = os.open(os.path.join(mnt, "second"), os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, second)
                os.close(fd)  # the kernel writes its cached pages back (WRITE) first
                kill_daemon(proc, mnt, subprocess.Popen(["true"]))
    check_after_crash(raw, kept, workdir)
