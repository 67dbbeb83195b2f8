"""The mount's operations one by one, each checked through the mount, then with e2fsck -fn and
through the host kernel's ext4 driver after the unmount: renames (over a target, directories
with '..', RENAME_NOREPLACE and RENAME_EXCHANGE), unlink of open files, hard links, symlinks
of every storage kind, truncate, timestamps with nanoseconds, owners and modes, extended
attributes, device nodes, sparse and large files, big and hashed directories, ENOSPC."""

import contextlib
import ctypes
import errno
import json
import os
import random
import re
import stat
import time

import pytest

from kilntest.fuse import (Image, MiB, check_exit, content_digest, e2fsck_clean, expect_errno,
                           fuse_mount, kernel_mount_ro, make_fs, run, scaled, sha256)

libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextlib.contextmanager
def mounted(workdir, variant="ext4", size=128 * MiB, mkfs_extra=(), raw=None, opts=()):
    """Yields the mount point of a fresh filesystem; after the block, the image is checked
    with e2fsck and loop-mounted read-only, and the kernel's view is handed back through
    the `kernel` attribute of the returned holder."""
    if raw is None:
        raw = os.path.join(workdir, "fs.raw")
        make_fs(raw, variant, size=size, extra=mkfs_extra)
    image = Image(workdir, raw)
    holder = type("Holder", (), {})()
    holder.image = image
    mnt = os.path.join(workdir, "mnt")
    with fuse_mount(image, mnt, *opts) as proc:
        holder.mnt = mnt
        yield holder
    check_exit(proc)
    holder.raw = image.result_raw()
    e2fsck_clean(holder.raw)


@contextlib.contextmanager
def kernel_view(workdir, holder):
    with kernel_mount_ro(holder.raw, os.path.join(workdir, "kernel")) as k:
        yield k


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_rename(workdir):
    with mounted(workdir) as h:
        m = h.mnt
        write(f"{m}/a", b"A")
        write(f"{m}/b", b"B")
        os.rename(f"{m}/a", f"{m}/b")  # over an existing file
        assert read(f"{m}/b") == b"A" and not os.path.exists(f"{m}/a")
        os.makedirs(f"{m}/p1/d/sub")
        os.makedirs(f"{m}/p2")
        write(f"{m}/p1/d/sub/f", b"deep")
        os.rename(f"{m}/p1/d", f"{m}/p2/d")  # a directory to another parent
        assert os.stat(f"{m}/p2/d/..").st_ino == os.stat(f"{m}/p2").st_ino
        assert os.stat(f"{m}/p1").st_nlink == 2 and os.stat(f"{m}/p2").st_nlink == 3
        os.makedirs(f"{m}/p2/empty")
        os.rename(f"{m}/p2/d", f"{m}/p2/empty")  # a directory over an empty directory
        assert os.stat(f"{m}/p2").st_nlink == 3
        os.makedirs(f"{m}/full/x")
        expect_errno(errno.ENOTEMPTY, os.rename, f"{m}/p2/empty", f"{m}/full")
        expect_errno(errno.ENOTDIR, os.rename, f"{m}/p2/empty", f"{m}/b")
        expect_errno(errno.EISDIR, os.rename, f"{m}/b", f"{m}/full")
        write(f"{m}/c", b"C")
        expect_errno(errno.EEXIST, renameat2, f"{m}/b", f"{m}/c", RENAME_NOREPLACE)
        renameat2(f"{m}/b", f"{m}/c", RENAME_EXCHANGE)
        assert read(f"{m}/b") == b"C" and read(f"{m}/c") == b"A"
        renameat2(f"{m}/p2/empty", f"{m}/full/x", RENAME_EXCHANGE)  # two directories
        assert os.path.exists(f"{m}/full/x/sub/f") and os.path.isdir(f"{m}/p2/empty")
        assert os.stat(f"{m}/full/x/..").st_ino == os.stat(f"{m}/full").st_ino
        os.link(f"{m}/c", f"{m}/c2")
        os.rename(f"{m}/c", f"{m}/c2")  # two names of one inode: nothing happens
        assert os.path.exists(f"{m}/c") and os.stat(f"{m}/c").st_nlink == 2
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/full/x/sub/f") == b"deep"
        assert os.stat(f"{k}/full/x/..").st_ino == os.stat(f"{k}/full").st_ino
        assert sorted(os.listdir(k)) == ["b", "c", "c2", "full", "lost+found", "p1", "p2"]
        assert os.stat(f"{k}/p2").st_nlink == 3 and os.stat(f"{k}/full").st_nlink == 3


def test_unlink_open_file_and_hard_links(workdir):
    with mounted(workdir, size=64 * MiB) as h:
        m = h.mnt
        free0 = os.statvfs(m).f_bfree
        payload = os.urandom(8 * MiB)
        fd = os.open(f"{m}/open", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, payload)
            os.unlink(f"{m}/open")
            assert not os.path.exists(f"{m}/open")
            assert os.pread(fd, len(payload), 0) == payload  # still readable
            os.pwrite(fd, b"more", len(payload))
            assert os.fstat(fd).st_size == len(payload) + 4
        finally:
            os.close(fd)
        # Freed once closed (and forgotten by the kernel): give the kernel a moment.
        for _ in range(100):
            if os.statvfs(m).f_bfree >= free0 - 16:
                break
            os.sync()
            time.sleep(0.05)
        assert os.statvfs(m).f_bfree >= free0 - 16, "unlinked file's blocks not freed"
        write(f"{m}/f", b"shared")
        os.link(f"{m}/f", f"{m}/g")
        os.mkdir(f"{m}/d")
        os.link(f"{m}/f", f"{m}/d/h")
        assert os.stat(f"{m}/f").st_nlink == 3
        os.unlink(f"{m}/g")
        assert os.stat(f"{m}/d/h").st_nlink == 2
        expect_errno(errno.EPERM, os.link, f"{m}/d", f"{m}/dlink")
        expect_errno(errno.EEXIST, os.link, f"{m}/f", f"{m}/d/h")
    with kernel_view(workdir, h) as k:
        assert os.stat(f"{k}/f").st_ino == os.stat(f"{k}/d/h").st_ino
        assert os.stat(f"{k}/f").st_nlink == 2 and not os.path.exists(f"{k}/g")


@pytest.mark.parametrize("variant", ["ext4", "ext2", "ext4-inline"])
def test_symlinks(workdir, variant):
    targets = {"fast": "t" * 59, "edge": "e" * 60, "slow": "s" * 1000,
               "longest": "l" * 4095, "abs": "/etc/passwd"}
    with mounted(workdir, variant) as h:
        m = h.mnt
        for name, target in targets.items():
            os.symlink(target, f"{m}/{name}")
            assert os.readlink(f"{m}/{name}") == target
        expect_errno(errno.ENAMETOOLONG, os.symlink, "x" * 4096, f"{m}/toolong")
        os.unlink(f"{m}/slow")
    with kernel_view(workdir, h) as k:
        for name, target in targets.items():
            if name != "slow":
                assert os.readlink(f"{k}/{name}") == target, name
        assert not os.path.lexists(f"{k}/slow")


@pytest.mark.parametrize("variant", ["ext4", "ext4-1k", "ext3"])
def test_truncate_and_sparse_files(workdir, variant):
    with mounted(workdir, variant, size=192 * MiB) as h:
        m = h.mnt
        data = os.urandom(3 * 4096 + 100)
        write(f"{m}/f", data)
        os.truncate(f"{m}/f", 5000)  # inside a block: the tail must read back as zeros
        os.truncate(f"{m}/f", 9000)
        assert read(f"{m}/f") == data[:5000] + b"\0" * 4000
        os.truncate(f"{m}/f", 0)
        assert read(f"{m}/f") == b""
        with open(f"{m}/sparse", "wb") as f:
            f.seek(100 * MiB)
            f.write(b"end")
        st = os.stat(f"{m}/sparse")
        assert st.st_size == 100 * MiB + 3 and st.st_blocks * 512 < MiB
        with open(f"{m}/sparse", "rb") as f:
            f.seek(50 * MiB)
            assert f.read(4096) == b"\0" * 4096
        big = os.urandom(20 * MiB + 777)
        write(f"{m}/big", big)
        assert sha256(f"{m}/big") == __import__("hashlib").sha256(big).hexdigest()
        # Overwrite in the middle, unaligned.
        with open(f"{m}/big", "r+b") as f:
            f.seek(5 * MiB + 3)
            f.write(b"X" * 10000)
            os.fsync(f.fileno())
        big = big[:5 * MiB + 3] + b"X" * 10000 + big[5 * MiB + 10003:]
        with open(f"{m}/grow", "wb") as f:
            f.write(b"a")
        os.truncate(f"{m}/grow", 2 * MiB)
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/f") == b""
        assert read(f"{k}/big") == big
        assert os.stat(f"{k}/sparse").st_size == 100 * MiB + 3
        with open(f"{k}/sparse", "rb") as f:
            f.seek(100 * MiB)
            assert f.read() == b"end"
        assert read(f"{k}/grow") == b"a" + b"\0" * (2 * MiB - 1)


@pytest.mark.parametrize("variant", ["ext4", "ext4-1k", "ext3"])
def test_holes_between_extents(workdir, variant):
    """A sparse file written in pieces, in random order, aligned and not: runs of blocks and
    holes of every length, then holes partly filled. Reads of any size through the mount, and
    the kernel's view after the unmount, must match a model of the file."""
    rng = random.Random(7)
    size = 24 * MiB
    model = bytearray(size)
    with mounted(workdir, variant, size=192 * MiB) as h:
        path = f"{h.mnt}/sparse"
        with open(path, "wb") as f:
            f.truncate(size)
        with open(path, "r+b") as f:
            for _ in range(60):
                off = rng.randrange(0, size - 1)
                if rng.random() < 0.5:
                    off -= off % 4096
                n = min(rng.choice([1, 100, 4096, 8192, 65536, 300000, MiB + 5]), size - off)
                data = rng.randbytes(n)
                f.seek(off)
                f.write(data)
                model[off:off + n] = data
        with open(path, "rb") as f:
            for _ in range(40):
                off = rng.randrange(0, size)
                n = rng.choice([1, 4096, 70000, 2 * MiB])
                f.seek(off)
                assert f.read(n) == bytes(model[off:off + n]), (off, n)
        assert sha256(path) == __import__("hashlib").sha256(model).hexdigest()
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/sparse") == bytes(model)


def leaf_extents(raw, path):
    """The leaf extents of PATH as debugfs lists them ("(0-255):1234-1489"; tree blocks, the
    "(ETB0):..." entries, left out)."""
    out = run(["debugfs", "-R", f"stat {path}", raw]).stdout.decode()
    listing = out.split("EXTENTS:", 1)[1]
    return re.findall(r"\((\d+)(?:-(\d+))?\):(\d+)(?:-(\d+))?", listing)


@pytest.mark.parametrize("variant", ["ext4", "ext4-1k"])
def test_sequential_writes_make_few_extents(workdir, variant):
    """A 96 MiB file written in 1 MiB pieces reaches kiln-fs as 1 MiB WRITEs that follow each
    other; their blocks must join the file's last extent instead of making one extent per
    WRITE (96 before). Two files written in turn (their blocks interleave on disk) and an
    append after the close must still read back right, through the mount and the kernel."""
    rng = random.Random(5)
    big = rng.randbytes(96 * MiB)
    a, b = bytearray(), bytearray()
    with mounted(workdir, variant, size=384 * MiB) as h:
        m = h.mnt
        with open(f"{m}/big", "wb") as f:
            for i in range(96):
                f.write(big[i * MiB:(i + 1) * MiB])
        with open(f"{m}/a", "wb") as fa, open(f"{m}/b", "wb") as fb:
            for _ in range(8):
                for f, model in ((fa, a), (fb, b)):
                    data = rng.randbytes(MiB)
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                    model += data
        tail = rng.randbytes(3 * MiB + 5)
        with open(f"{m}/big", "ab") as f:
            f.write(tail)
        big += tail
        assert read(f"{m}/big") == big
    extents = leaf_extents(h.raw, "/big")
    print(variant, len(extents), "extents:", extents)
    # Block groups that start with a backup superblock (every 8 MiB with 1 KiB blocks: 1, 3,
    # 5, 7, 9, 25, 27), extent tree blocks and the longest extent (32768 blocks) still split
    # it; one extent per WRITE would be about a hundred.
    assert 1 <= len(extents) <= (8 if variant == "ext4" else 16), extents
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/big") == big
        assert read(f"{k}/a") == a
        assert read(f"{k}/b") == b


def test_open_with_o_trunc_empties_the_file(workdir):
    """Rewriting an existing file (`>` in a shell, open("wb"), cp over it) opens it with
    O_TRUNC: the file on disk must end where the new data ends. The kernel passes O_TRUNC to
    the daemon when the daemon takes FUSE_CAP_ATOMIC_O_TRUNC, and then shows size 0 itself, so
    a daemon that ignores the flag looks right through the mount until the attributes expire
    and keeps the old length (and the old bytes after the new ones) on disk."""
    with mounted(workdir) as h:
        m = h.mnt
        for name, size in (("small", 5000), ("big", 3 * MiB + 5), ("inline", 100)):
            write(f"{m}/{name}", b"o" * size)
        write(f"{m}/small", b"new")
        write(f"{m}/big", b"N" * (MiB + 1))
        os.close(os.open(f"{m}/inline", os.O_WRONLY | os.O_TRUNC))
        with open(f"{m}/small", "rb") as f:
            assert f.read() == b"new"
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/small") == b"new"
        assert read(f"{k}/big") == b"N" * (MiB + 1)
        assert read(f"{k}/inline") == b""


@pytest.mark.parametrize("variant", ["ext4", "ext3"])
def test_times_modes_owners(workdir, variant):
    t = 1_700_000_000_123_456_789
    future = 4_200_000_000_987_654_321  # beyond 2038: the epoch bits of the extra field
    with mounted(workdir, variant) as h:
        m = h.mnt
        write(f"{m}/f", b"x")
        os.utime(f"{m}/f", ns=(t, t + 1))
        st = os.stat(f"{m}/f")
        assert (st.st_atime_ns, st.st_mtime_ns) == (t, t + 1)
        write(f"{m}/future", b"x")
        os.utime(f"{m}/future", ns=(future, future))
        assert os.stat(f"{m}/future").st_mtime_ns == future
        before = os.stat(f"{m}/f").st_ctime_ns
        os.chmod(f"{m}/f", 0o4751)
        os.chown(f"{m}/f", 4242, 4343)
        st = os.stat(f"{m}/f")
        assert stat.S_IMODE(st.st_mode) == 0o751  # chown clears set-user-ID, as on ext4
        assert (st.st_uid, st.st_gid) == (4242, 4343) and st.st_ctime_ns >= before
        os.chmod(f"{m}/f", 0o4751)
        os.mkdir(f"{m}/sgid")
        os.chown(f"{m}/sgid", 0, 777)
        os.chmod(f"{m}/sgid", 0o2775)
        write(f"{m}/sgid/inherits", b"")
        os.mkdir(f"{m}/sgid/sub")
        assert os.stat(f"{m}/sgid/inherits").st_gid == 777
        assert os.stat(f"{m}/sgid/sub").st_mode & stat.S_ISGID
        mtime = os.stat(f"{m}/sgid").st_mtime_ns
        write(f"{m}/sgid/later", b"")
        assert os.stat(f"{m}/sgid").st_mtime_ns >= mtime
    with kernel_view(workdir, h) as k:
        st = os.stat(f"{k}/f")
        assert (st.st_atime_ns, st.st_mtime_ns) == (t, t + 1)
        assert os.stat(f"{k}/future").st_mtime_ns == future
        assert stat.S_IMODE(st.st_mode) == 0o4751 and (st.st_uid, st.st_gid) == (4242, 4343)
        assert os.stat(f"{k}/sgid/inherits").st_gid == 777


def test_xattrs(workdir):
    with mounted(workdir) as h:
        m = h.mnt
        write(f"{m}/f", b"x")
        p = f"{m}/f"
        os.setxattr(p, "security.selinux", b"system_u:object_r:ssh_home_t:s0\0")
        os.setxattr(p, "user.small", b"1")
        os.setxattr(p, "user.big", b"B" * 3000)  # does not fit in the inode: xattr block
        os.setxattr(p, "trusted.t", b"")
        assert os.getxattr(p, "user.big") == b"B" * 3000
        assert sorted(os.listxattr(p)) == ["security.selinux", "trusted.t", "user.big",
                                           "user.small"]
        expect_errno(errno.EEXIST, os.setxattr, p, "user.small", b"2", os.XATTR_CREATE)
        expect_errno(errno.ENODATA, os.setxattr, p, "user.none", b"2", os.XATTR_REPLACE)
        os.setxattr(p, "user.small", b"22", os.XATTR_REPLACE)
        expect_errno(errno.ENODATA, os.getxattr, p, "user.none")
        expect_errno(errno.ENODATA, os.removexattr, p, "user.none")
        os.removexattr(p, "trusted.t")
        os.mkdir(f"{m}/d")
        os.setxattr(f"{m}/d", "user.on-dir", b"yes")
        # Many attributes spill from the inode into the block; all must stay.
        for i in range(40):
            os.setxattr(f"{m}/d", f"user.n{i:02d}", bytes([i]) * 20)
        # An ACL equivalent to the mode changes the mode and is not stored (as ext4 does).
        acl = (b"\x02\x00\x00\x00" + b"\x01\x00\x07\x00\xff\xff\xff\xff"
               + b"\x04\x00\x05\x00\xff\xff\xff\xff" + b"\x20\x00\x01\x00\xff\xff\xff\xff")
        os.setxattr(p, "system.posix_acl_access", acl)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o751
        expect_errno(errno.ENODATA, os.getxattr, p, "system.posix_acl_access")
        # A named user needs the ACL stored; the mask becomes the group bits.
        acl2 = (b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff"
                + b"\x02\x00\x04\x00\xe8\x03\x00\x00" + b"\x04\x00\x04\x00\xff\xff\xff\xff"
                + b"\x10\x00\x06\x00\xff\xff\xff\xff" + b"\x20\x00\x00\x00\xff\xff\xff\xff")
        write(f"{m}/acl", b"")
        os.setxattr(f"{m}/acl", "system.posix_acl_access", acl2)
        assert stat.S_IMODE(os.stat(f"{m}/acl").st_mode) == 0o660
        assert os.getxattr(f"{m}/acl", "system.posix_acl_access") == acl2
    with kernel_view(workdir, h) as k:
        p = f"{k}/f"
        assert os.getxattr(p, "security.selinux") == b"system_u:object_r:ssh_home_t:s0\0"
        assert os.getxattr(p, "user.small") == b"22"
        assert os.getxattr(p, "user.big") == b"B" * 3000
        assert "trusted.t" not in os.listxattr(p)
        assert os.getxattr(f"{k}/d", "user.n39") == bytes([39]) * 20
        assert os.getxattr(f"{k}/acl", "system.posix_acl_access") == acl2
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o751


def test_special_files(workdir):
    with mounted(workdir) as h:
        m = h.mnt
        os.mknod(f"{m}/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(f"{m}/big", 0o600 | stat.S_IFBLK, os.makedev(259, 70000))  # new encoding
        os.mkfifo(f"{m}/fifo", 0o640)
        os.mknod(f"{m}/sock", 0o755 | stat.S_IFSOCK)
        assert os.stat(f"{m}/null").st_rdev == os.makedev(1, 3)
    with kernel_view(workdir, h) as k:
        assert os.stat(f"{k}/null").st_rdev == os.makedev(1, 3)
        assert stat.S_ISCHR(os.stat(f"{k}/null").st_mode)
        assert os.stat(f"{k}/big").st_rdev == os.makedev(259, 70000)
        assert stat.S_ISFIFO(os.stat(f"{k}/fifo").st_mode)
        assert stat.S_ISSOCK(os.stat(f"{k}/sock").st_mode)


@pytest.mark.parametrize("variant", ["ext4", "ext4-1k"])
def test_big_directory(workdir, variant):
    n = scaled(4000, 500)
    with mounted(workdir, variant) as h:
        m = h.mnt
        os.mkdir(f"{m}/big")
        for i in range(n):
            write(f"{m}/big/entry-with-a-long-name-{i:06d}", str(i).encode())
        for i in range(0, n, 3):
            os.unlink(f"{m}/big/entry-with-a-long-name-{i:06d}")
        for i in range(1, n, 3):
            os.rename(f"{m}/big/entry-with-a-long-name-{i:06d}", f"{m}/big/r{i}")
        names = set(os.listdir(f"{m}/big"))
        assert len(names) == n - len(range(0, n, 3))
        for i in range(50):
            os.mkdir(f"{m}/big/sub{i}")
        assert os.stat(f"{m}/big").st_nlink == 52
    with kernel_view(workdir, h) as k:
        assert set(os.listdir(f"{k}/big")) == names | {f"sub{i}" for i in range(50)}
        assert read(f"{k}/big/r1") == b"1"


def test_hashed_directory(workdir):
    """A directory indexed by the kernel's scheme (htree): entries added through the mount
    must be found by the kernel's hashed lookups, not only by listing."""
    n = scaled(3000, 600)
    seed = os.path.join(workdir, "seed")
    os.makedirs(f"{seed}/h")
    for i in range(n):
        write(f"{seed}/h/orig-{i:05d}", b"o")
    raw = os.path.join(workdir, "fs.raw")
    with open(raw, "wb") as f:
        f.truncate(128 * MiB)
    run(["mkfs.ext4", "-q", "-F", "-d", seed, raw])
    run(["e2fsck", "-fyD", raw], check=False)  # -D builds the index
    e2fsck_clean(raw)
    rng = random.Random(5)
    added = [f"new-{rng.randrange(10**9):09d}-{i}" for i in range(n)]
    with mounted(workdir, raw=raw) as h:
        m = h.mnt
        for name in added:
            write(f"{m}/h/{name}", name.encode())
        for i in range(0, n, 2):
            os.unlink(f"{m}/h/orig-{i:05d}")
        os.rename(f"{m}/h/orig-00001", f"{m}/h/renamed")
    with kernel_view(workdir, h) as k:
        for name in added:  # each a hashed lookup by the kernel
            assert read(f"{k}/h/{name}") == name.encode(), name
        assert not os.path.exists(f"{k}/h/orig-00000") and os.path.exists(f"{k}/h/renamed")
        assert len(os.listdir(f"{k}/h")) == n + n // 2


def test_enospc_leaves_a_clean_filesystem(workdir):
    with mounted(workdir, size=32 * MiB) as h:
        m = h.mnt
        with pytest.raises(OSError) as e:
            with open(f"{m}/fill", "wb") as f:
                for _ in range(64):
                    f.write(b"\xab" * MiB)
        assert e.value.errno == errno.ENOSPC
        size = os.stat(f"{m}/fill").st_size
        assert size > 16 * MiB
        os.unlink(f"{m}/fill")
        # The blocks come back when kiln-fs drops the inode: at the kernel's last RELEASE or
        # FORGET, which can come after the unlink returns (docs/kiln-fs-fuse.md). On a loaded
        # machine the next write can come first: it may see ENOSPC for a moment, never for good.
        deadline = time.monotonic() + 10
        while True:
            try:
                write(f"{m}/after", b"space again")
                break
            except OSError as e:
                if e.errno != errno.ENOSPC or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/after") == b"space again"
        assert not os.path.exists(f"{k}/fill")


def test_names_and_errors(workdir):
    with mounted(workdir) as h:
        m = h.mnt
        expect_errno(errno.ENAMETOOLONG, write, f"{m}/{'n' * 256}", b"")
        write(f"{m}/{'n' * 255}", b"max")
        expect_errno(errno.ENOENT, os.stat, f"{m}/missing")
        os.mkdir(f"{m}/d")
        write(f"{m}/d/f", b"")
        expect_errno(errno.ENOTEMPTY, os.rmdir, f"{m}/d")
        expect_errno(errno.EEXIST, os.mkdir, f"{m}/d")
        expect_errno(errno.ENOTDIR, os.rmdir, f"{m}/d/f")
        expect_errno(errno.EISDIR, os.unlink, f"{m}/d")
        os.unlink(f"{m}/d/f")
        os.rmdir(f"{m}/d")
        assert os.stat(m).st_nlink == 3  # '.', '..' of lost+found, and the parent entry
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/{'n' * 255}") == b"max"


def as_user(uid, fn):
    """Runs fn() in a child process with uid/gid `uid`; returns its errno (0: success)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()
            code = 0
        except OSError as e:
            code = e.errno
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("allow_other", [True, False])
def test_permissions_and_allow_other(workdir, allow_other):
    opts = ("--allow-other",) if allow_other else ()
    os.chmod(workdir, 0o755)  # let the other users reach the mount point
    with mounted(workdir, opts=opts) as h:
        m = h.mnt
        os.chmod(m, 0o755)
        os.mkdir(f"{m}/open", 0o755)
        write(f"{m}/open/readme", b"r")
        os.mkdir(f"{m}/private", 0o700)
        os.chown(f"{m}/private", 1000, 1000)
        os.mkdir(f"{m}/shared")
        os.chmod(f"{m}/shared", 0o1777)
        if allow_other:
            # The kernel checks modes and owners (default_permissions), as on ext4.
            assert as_user(2000, lambda: os.listdir(f"{m}/open")) == 0
            assert as_user(2000, lambda: read(f"{m}/open/readme")) == 0
            assert as_user(2000, lambda: os.listdir(f"{m}/private")) == errno.EACCES
            assert as_user(1000, lambda: os.listdir(f"{m}/private")) == 0
            assert as_user(2000, lambda: write(f"{m}/open/new", b"")) == errno.EACCES
            assert as_user(2000, lambda: write(f"{m}/shared/mine", b"2000")) == 0
            assert os.stat(f"{m}/shared/mine").st_uid == 2000
            # The sticky directory keeps others from removing it.
            assert as_user(1000, lambda: os.unlink(f"{m}/shared/mine")) == errno.EPERM
        else:
            # Without allow_other only the mounting user gets in, whatever the modes.
            assert as_user(2000, lambda: os.listdir(f"{m}/open")) == errno.EACCES
    with kernel_view(workdir, h) as k:
        if allow_other:
            assert os.stat(f"{k}/shared/mine").st_uid == 2000


def test_inline_data_files_and_directories(workdir):
    """Files and directories that live inside their inode (made by mke2fs -d) are read,
    appended to, truncated, renamed and grown out of the inode."""
    seed = os.path.join(workdir, "seed")
    os.makedirs(f"{seed}/small/dir")
    write(f"{seed}/small/tiny", b"inline seed\n")
    write(f"{seed}/small/forty", os.urandom(40))
    write(f"{seed}/small/dir/x", b"x")
    raw = os.path.join(workdir, "fs.raw")
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    run(["mkfs.ext4", "-q", "-F", "-O", "inline_data", "-d", seed, raw])
    forty = read(f"{seed}/small/forty")
    with mounted(workdir, raw=raw) as h:
        m = h.mnt
        assert read(f"{m}/small/tiny") == b"inline seed\n"
        with open(f"{m}/small/tiny", "ab") as f:
            f.write(b"appended\n")
        os.truncate(f"{m}/small/forty", 10)
        for i in range(100):  # grows the inline directory into blocks
            write(f"{m}/small/dir/f{i}", b"%d" % i)
        os.rename(f"{m}/small/dir", f"{m}/moved")
        os.symlink("t" * 70, f"{m}/small/sym70")
    with kernel_view(workdir, h) as k:
        assert read(f"{k}/small/tiny") == b"inline seed\nappended\n"
        assert read(f"{k}/small/forty") == forty[:10]
        assert len(os.listdir(f"{k}/moved")) == 101
        assert os.stat(f"{k}/moved/..").st_ino == os.stat(k).st_ino
        assert os.readlink(f"{k}/small/sym70") == "t" * 70


def test_refuses_to_write_a_filesystem_with_errors(workdir):
    """fuse_mount itself refuses a read-write mount that libext2fs must not write (here: errors
    recorded in the superblock), with one clear line; --ro still works. Driven through the
    raw-image driver, since kiln-fs's opener refuses such images before the mount is reached."""
    from kilntest.fuse import KILN_FUSE_DEV
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=32 * MiB)
    run(["debugfs", "-w", "-R", "ssv state 3", raw])  # valid + errors
    before = content_digest(raw)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    p = run([KILN_FUSE_DEV, raw, mnt, "-f"], check=False, timeout=60)
    err = p.stderr.decode()
    assert p.returncode != 0 and "errors recorded" in err and "--ro" in err, err
    assert "Sanitizer" not in err
    assert content_digest(raw) == before
    image = type("Raw", (), {"mount_command": lambda self, m, *o: [KILN_FUSE_DEV, raw, m, *o]})()
    with fuse_mount(image, mnt, "--ro") as proc:
        assert sorted(os.listdir(mnt)) == ["lost+found"]
    check_exit(proc)
    assert content_digest(raw) == before


def test_times_without_extra_inode_fields(workdir):
    """128-byte inodes hold whole seconds up to 2038: nanoseconds are dropped and later times
    clamped, as the kernel's driver does."""
    t = 1_700_000_000_123_456_789
    with mounted(workdir, "ext2-128") as h:
        m = h.mnt
        write(f"{m}/f", b"x")
        os.utime(f"{m}/f", ns=(t, t))
        assert os.stat(f"{m}/f").st_mtime_ns == t // 10**9 * 10**9
        write(f"{m}/future", b"x")
        os.utime(f"{m}/future", (4_200_000_000, 4_200_000_000))
        assert os.stat(f"{m}/future").st_mtime == 2**31 - 1
    with kernel_view(workdir, h) as k:
        assert os.stat(f"{k}/f").st_mtime_ns == t // 10**9 * 10**9
        assert os.stat(f"{k}/future").st_mtime == 2**31 - 1


# Files whose set-ID bits a chown, or a write or truncate by their (unprivileged) owner, must
# drop as ext4 does: name -> (mode, owner, what is done to it).
SETID_CASES = {
    "chown_suid": (0o4755, 1000, "chown"),
    "chown_sgid_gx": (0o2755, 1000, "chown"),
    "chown_sgid_no_gx": (0o2745, 1000, "chown"),  # mandatory-locking bit: kept
    "chown_both": (0o6711, 1000, "chown"),
    "user_write": (0o6775, 1000, "user_write"),
    "user_write_sgid_no_gx": (0o2766, 1000, "user_write"),
    "user_truncate": (0o4766, 1000, "user_truncate"),
    "root_write": (0o4666, 1000, "root_write"),  # CAP_FSETID keeps it
    "root_truncate": (0o6777, 1000, "root_truncate"),
}


def apply_setid_cases(root):
    """Runs SETID_CASES under ROOT (plus a set-group-ID directory that a chown leaves alone);
    returns {name: mode} as seen through the mount afterwards."""
    for name, (mode, owner, _) in SETID_CASES.items():
        write(f"{root}/{name}", b"0123456789")
        os.chown(f"{root}/{name}", owner, owner)
        os.chmod(f"{root}/{name}", mode)
    os.mkdir(f"{root}/dir")
    os.chmod(f"{root}/dir", 0o2775)
    for name, (_, owner, action) in SETID_CASES.items():
        path = f"{root}/{name}"
        if action == "chown":
            os.chown(path, 4242, 4343)
        elif action == "user_write":
            assert as_user(owner, lambda: write(path, b"changed")) == 0
        elif action == "user_truncate":
            assert as_user(owner, lambda: os.truncate(path, 3)) == 0
        elif action == "root_write":
            with open(path, "r+b") as f:
                f.write(b"root")
        elif action == "root_truncate":
            os.truncate(path, 2)
    os.chown(f"{root}/dir", 4242, 4343)
    return {n: stat.S_IMODE(os.stat(f"{root}/{n}").st_mode) for n in [*SETID_CASES, "dir"]}


def test_set_id_bits_dropped_as_on_ext4(workdir):
    """kiln-fs takes FUSE_HANDLE_KILLPRIV_V2 (the kernel then leaves the dropping of set-ID
    bits on chown, write and truncate to the filesystem): the modes after each case are the
    ones the kernel's ext4 gives for the same steps, through the mount and on disk."""
    os.chmod(workdir, 0o755)  # let the file owners reach the mount point
    oracle_raw = os.path.join(workdir, "oracle.raw")
    make_fs(oracle_raw, "ext4", size=32 * MiB)
    oracle_mnt = os.path.join(workdir, "oracle")
    os.makedirs(oracle_mnt)
    run(["mount", "-t", "ext4", "-o", "loop", oracle_raw, oracle_mnt])
    try:
        os.chmod(oracle_mnt, 0o755)
        expected = apply_setid_cases(oracle_mnt)
    finally:
        run(["umount", oracle_mnt], check=False)
        if os.path.ismount(oracle_mnt):
            run(["umount", "-l", oracle_mnt], check=False)
    # What ext4 does, so that the comparison below is with known rules.
    assert expected["chown_suid"] == 0o755 and expected["chown_sgid_no_gx"] == 0o2745
    assert expected["user_write"] == 0o775 and expected["root_write"] == 0o4666
    with mounted(workdir, opts=("--allow-other",)) as h:
        os.chmod(h.mnt, 0o755)
        assert apply_setid_cases(h.mnt) == expected
    with kernel_view(workdir, h) as k:
        assert {n: stat.S_IMODE(os.stat(f"{k}/{n}").st_mode) for n in expected} == expected


def count_requests(workdir, name, chown):
    """Per-opcode request counts (KILN_FS_STATS) of a mount in which 200 files are made and
    written and, if CHOWN, chowned."""
    raw = os.path.join(workdir, f"{name}.raw")
    make_fs(raw, "ext4", size=64 * MiB)
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, name)
    with fuse_mount(image, mnt, env={"KILN_FS_STATS": "1"}) as proc:
        for i in range(200):
            # os.open, not open(): Python's open() asks for the attributes (fstat) itself.
            fd = os.open(f"{mnt}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b"x")
            if chown:
                os.fchown(fd, 1000 + i, 1000)
            os.close(fd)
    check_exit(proc)
    e2fsck_clean(image.result_raw())
    counts = {op: int(n) for op, n in re.findall(r"kiln-fs: (\w+) +(\d+) ", proc.stderr_text)}
    assert counts.get("CREATE") == 200, proc.stderr_text
    return counts


def test_chown_does_not_ask_for_the_mode(workdir):
    """With FUSE_HANDLE_KILLPRIV_V2 the kernel does not read a file's attributes back (GETATTR)
    before a chown to work out which set-ID bits to drop (tar x chowns every file it makes):
    200 chowns add 200 SETATTRs and (almost) no GETATTR. Without it they add 200 GETATTRs."""
    plain = count_requests(workdir, "plain", chown=False)
    chowned = count_requests(workdir, "chowned", chown=True)
    assert chowned.get("SETATTR", 0) - plain.get("SETATTR", 0) >= 200, (plain, chowned)
    assert chowned.get("GETATTR", 0) - plain.get("GETATTR", 0) < 20, (plain, chowned)


def test_open_and_close_cost_no_requests(workdir):
    """The kernel opens files without an OPEN (nor a RELEASE at the end) and closes them
    without a FLUSH, after one of each was answered ENOSYS: reading 200 files three times sends
    no OPEN, FLUSH or RELEASE each (without it: 600, 800 and 800), and reads the right bytes;
    a file unlinked while open stays readable until closed, and is freed then."""
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=64 * MiB)
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, "mnt")
    with fuse_mount(image, mnt, env={"KILN_FS_STATS": "1"}) as proc:
        for i in range(200):
            write(f"{mnt}/f{i}", b"%d" % i * 100)
        for _ in range(3):
            for i in range(200):
                assert read(f"{mnt}/f{i}") == b"%d" % i * 100
        fd = os.open(f"{mnt}/f7", os.O_RDONLY)
        os.unlink(f"{mnt}/f7")
        assert os.read(fd, 100) == (b"7" * 100)
        os.close(fd)
    check_exit(proc)
    counts = {op: int(n) for op, n in re.findall(r"kiln-fs: (\w+) +(\d+) ", proc.stderr_text)}
    assert counts.get("CREATE") == 200, proc.stderr_text
    assert counts.get("OPEN", 0) <= 1 and counts.get("FLUSH", 0) <= 1, proc.stderr_text
    assert counts.get("RELEASE", 0) <= 200, proc.stderr_text  # those of the CREATEs
    raw = image.result_raw()
    e2fsck_clean(raw)  # the unlinked inode was freed, not leaked
    with kernel_mount_ro(raw, os.path.join(workdir, "kernel")) as k:
        names = set(os.listdir(k)) - {"lost+found"}
        assert names == {f"f{i}" for i in range(200)} - {"f7"}
        assert read(f"{k}/f8") == b"8" * 100


def test_encrypt_feature_keeps_open(workdir):
    """On a filesystem with the encrypt feature OPEN stays a request (op_open refuses writes to
    encrypted files): reading 20 files twice sends an OPEN each time."""
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=64 * MiB, extra=("-O", "encrypt"))
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, "mnt")
    with fuse_mount(image, mnt, env={"KILN_FS_STATS": "1"}) as proc:
        for i in range(20):
            write(f"{mnt}/f{i}", b"%d" % i)
        for _ in range(2):
            for i in range(20):
                assert read(f"{mnt}/f{i}") == b"%d" % i
    check_exit(proc)
    counts = {op: int(n) for op, n in re.findall(r"kiln-fs: (\w+) +(\d+) ", proc.stderr_text)}
    assert counts.get("OPEN", 0) >= 40, proc.stderr_text
    e2fsck_clean(image.result_raw())


def test_large_filesystem_writes_only_what_changed(workdir):
    """On a 16 GiB filesystem (128 block groups), the flush points (here `sync -f` and the
    unmount) write the bitmaps of the groups that changed only, and leave the backup
    superblocks and group descriptors as they were, as the kernel does: the qcow2 overlay holds
    the first flex group's bitmaps, not a copy of every flex group's bitmap cluster (128 groups'
    bitmaps before) nor of the backups (12 of them)."""
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=16 << 30)
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, "mnt")
    with fuse_mount(image, mnt) as proc:
        write(f"{mnt}/one", b"1\n")
        run(["sync", "-f", f"{mnt}/one"])  # a flush point of its own
        os.mkdir(f"{mnt}/dir")
        write(f"{mnt}/dir/two", os.urandom(3 * MiB))
    check_exit(proc)
    raw_after = image.result_raw()
    e2fsck_clean(raw_after)
    with kernel_mount_ro(raw_after, os.path.join(workdir, "kernel")) as k:
        assert read(f"{k}/one") == b"1\n"
        assert len(read(f"{k}/dir/two")) == 3 * MiB

    out = run(["dumpe2fs", raw]).stdout.decode()
    block_size = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    bitmaps = [int(b) for b in re.findall(r"Block bitmap at (\d+)", out)]
    backups = [int(b) for b in re.findall(r"Backup superblock at (\d+)", out)]
    assert len(bitmaps) == 128 and len(backups) >= 10, (len(bitmaps), backups)
    extents = json.loads(run(["qemu-img", "map", "--output=json", image.overlay]).stdout)
    held = [(e["start"], e["start"] + e["length"]) for e in extents
            if e["data"] and e["depth"] == 0]

    def in_overlay(block):
        return any(lo <= block * block_size < hi for lo, hi in held)

    copied = [g for g, b in enumerate(bitmaps) if in_overlay(b)]
    assert copied and len(copied) <= 16, copied
    assert not [b for b in backups if in_overlay(b)], "backup superblocks were rewritten"
