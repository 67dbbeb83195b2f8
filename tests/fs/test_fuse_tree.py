"""A real mount used with ordinary tools: cp -a of a generated tree of a few thousand files,
tar x, mv, ln -s, chmod, df; then unmount, e2fsck -fn clean, and the host kernel's ext4 driver
(read-only loop mount) must see the same tree as the source."""

import contextlib
import errno
import os
import random
import shutil
import signal
import stat
import subprocess

import pytest

from kilntest.fuse import (FS_VARIANTS, Image, KILN_FS, MOUNT_TYPES, MiB, assert_same_tree,
                           check_exit, content_digest, daemon_pids, e2fsck_clean, exited,
                           expect_errno, fuse_mount, generate_tree, is_mounted, kernel_mount_ro,
                           make_fs, mount_type, private_mount_namespace, run, scaled, stop_pid,
                           unmount_fuse, wait_for)


@pytest.mark.parametrize("variant", list(FS_VARIANTS))
def test_cp_tar_mv_ln_chmod_df(workdir, variant):
    src = generate_tree(os.path.join(workdir, "src"), scaled(3000 if variant == "ext4" else 1200))
    tarball = os.path.join(workdir, "src.tar")
    run(["tar", "--xattrs", "--xattrs-include=*", "-cf", tarball, "-C", src, "."])
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, variant, size=512 * MiB)
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, "mnt")

    with fuse_mount(image, mnt) as proc:
        df_before = os.statvfs(mnt)
        run(["cp", "-a", src, os.path.join(mnt, "copy")])
        os.mkdir(os.path.join(mnt, "untar"))
        run(["tar", "--xattrs", "--xattrs-include=*", "-xpf", tarball, "-C",
             os.path.join(mnt, "untar")])
        # mv: a directory to another parent, and a file over an existing one.
        os.mkdir(os.path.join(mnt, "moved"))
        run(["mv", os.path.join(mnt, "untar", "dir0001"), os.path.join(mnt, "moved", "d")])
        with open(os.path.join(mnt, "victim"), "wb") as f:
            f.write(b"old")
        with open(os.path.join(mnt, "newer"), "wb") as f:
            f.write(b"new content")
        run(["mv", "-f", os.path.join(mnt, "newer"), os.path.join(mnt, "victim")])
        run(["ln", "-s", "copy/dir0000", os.path.join(mnt, "shortcut")])
        run(["ln", "-s", "y" * 300, os.path.join(mnt, "long-link")])
        run(["chmod", "-R", "go-w", os.path.join(mnt, "moved")])
        run(["chmod", "4711", os.path.join(mnt, "victim")])
        df = run(["df", "-P", mnt]).stdout.decode().splitlines()
        assert len(df) == 2 and df[1].split()[-1] == os.path.realpath(mnt), df
        df_after = os.statvfs(mnt)
        used = (df_before.f_bfree - df_after.f_bfree) * df_after.f_frsize
        assert used > 2 * 4 * MiB, f"df: only {used} bytes used after two copies"
        assert df_after.f_files - df_after.f_ffree > 2 * len(os.listdir(src))
        # The mount sees what it wrote.
        assert_same_tree(src, os.path.join(mnt, "copy"))
    check_exit(proc)
    assert not is_mounted(mnt)

    result = image.result_raw()
    e2fsck_clean(result)
    with kernel_mount_ro(result, os.path.join(workdir, "kernel")) as k:
        n = assert_same_tree(src, os.path.join(k, "copy"))
        assert n >= scaled(1200)
        # tar x, minus the directory moved away, which must be whole in its new place.
        moved = os.path.join(k, "moved", "d")
        assert os.path.isdir(moved) and not os.path.exists(os.path.join(k, "untar", "dir0001"))
        for dirpath, _, filenames in os.walk(moved):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), moved)
                a = os.path.join(src, "dir0001", rel)
                b = os.path.join(dirpath, name)
                if os.path.islink(a):
                    assert os.readlink(a) == os.readlink(b)
                elif os.path.isfile(a):
                    assert content_digest(a) == content_digest(b), rel
        assert os.stat(os.path.join(moved, "..")).st_ino == os.stat(
            os.path.join(k, "moved")).st_ino
        st = os.lstat(os.path.join(k, "victim"))
        assert stat.S_IMODE(st.st_mode) == 0o4711 and st.st_nlink == 1
        with open(os.path.join(k, "victim"), "rb") as f:
            assert f.read() == b"new content"
        assert not os.path.exists(os.path.join(k, "newer"))
        assert os.readlink(os.path.join(k, "shortcut")) == "copy/dir0000"
        assert os.readlink(os.path.join(k, "long-link")) == "y" * 300
        for dirpath, dirnames, filenames in os.walk(os.path.join(k, "moved")):
            for name in dirnames + filenames:
                m = os.lstat(os.path.join(dirpath, name)).st_mode
                assert stat.S_ISLNK(m) or not (m & 0o022), os.path.join(dirpath, name)


def test_daemon_mode_mount_is_ready_when_parent_exits(workdir):
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=64 * MiB)
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    pids = []
    try:
        p = run(image.mount_command(mnt), timeout=60)
        # No waiting: the parent's exit means the mount is there.
        assert mount_type(mnt) in MOUNT_TYPES
        pids = daemon_pids(mnt)
        assert len(pids) == 1, pids
        with open(os.path.join(mnt, "hello"), "w") as f:
            f.write("from the daemon\n")
        unmount_fuse(mnt)
        assert not is_mounted(mnt)
        # The daemon flushes after the kernel let go of the mount, then exits.
        wait_for(lambda: exited(pids[0]), 60, "the daemon to exit")
    finally:
        if is_mounted(mnt):
            run(["fusermount3", "-u", mnt], check=False)
            run(["umount", "-l", mnt], check=False)
        for pid in pids:
            stop_pid(pid)
    assert p.stderr == b"", p.stderr
    result = image.result_raw()
    e2fsck_clean(result)
    with kernel_mount_ro(result, os.path.join(workdir, "kernel")) as k:
        with open(os.path.join(k, "hello")) as f:
            assert f.read() == "from the daemon\n"


def write_round(rng, mnt, model, round_no):
    """A write-heavy round: a few large files (new and rewritten), a hundred or so small ones,
    some removed and renamed. MODEL maps relative paths to contents (what must be read back)."""
    for i in range(3):
        name = f"big{(round_no + i) % 4}"
        data = rng.randbytes(rng.randrange(scaled(4 * MiB), scaled(12 * MiB) + 1))
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data)
        model[name] = data
    d = f"r{round_no}"
    os.makedirs(os.path.join(mnt, d, "sub"))
    for i in range(scaled(150, 20)):
        name = f"{d}/{'sub/' if i % 3 else ''}f{i:04d}"
        data = rng.randbytes(rng.choice([0, 1, 700, 4096, 5000, 20000]))
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data)
        model[name] = data
    for name in rng.sample(sorted(k for k in model if k.startswith(f"{d}/")), 10):
        os.unlink(os.path.join(mnt, name))
        del model[name]
    old = sorted(k for k in model if k.startswith(f"{d}/sub/"))[0]
    os.rename(os.path.join(mnt, old), os.path.join(mnt, d, "renamed"))
    model[f"{d}/renamed"] = model.pop(old)


def read_tree(root):
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.relpath(path, root).startswith("lost+found"):
                continue
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


class SameImage:
    """For fuse_mount(): the image the test mounts itself, mounted again (read-only)."""

    def __init__(self, mount):
        self.mount = mount

    def mount_command(self, mountpoint, *opts):
        return self.mount + [mountpoint, *opts]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_image_is_complete_when_umount_returns(workdir, fmt):
    """The default (background) mount, a write-heavy round, a plain `umount DIR` and, at once,
    without waiting for anything: e2fsck -fn of the image must be clean (the qcow2 overlay is
    first converted with qemu-img, which also needs the image released), and a second,
    read-only mount must show every file with its bytes. Many rounds on the same image (12
    at KILN_TEST_SCALE=1): a race between umount and the write-back shows up only sometimes."""
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=256 * MiB)
    target = raw
    if fmt == "qcow2":
        target = os.path.join(workdir, "fs.qcow2")
        run(["qemu-img", "convert", "-O", "qcow2", raw, target])
    mount = [KILN_FS, "mount", "--format", fmt, target]
    image = SameImage(mount)
    mnt = os.path.join(workdir, "mnt")
    check_mnt = os.path.join(workdir, "check")
    os.mkdir(mnt)
    model = {}
    kinds = set()
    with private_mount_namespace():
        umount_rounds(mount, image, target, raw, fmt, mnt, check_mnt, workdir, model, kinds)
    # As root, umount waits because the mount is a fuseblk one.
    assert kinds == {"fuseblk.kiln-fs"}, kinds


def umount_rounds(mount, image, target, raw, fmt, mnt, check_mnt, workdir, model, kinds):
    rng = random.Random(16)
    for round_no in range(scaled(12, 4)):
        pids = []
        try:
            p = run(mount + [mnt], timeout=60)
            assert p.stderr == b"", p.stderr
            pids = daemon_pids(mnt)
            kinds.add(mount_type(mnt))
            write_round(rng, mnt, model, round_no)
            run(["umount", mnt])
            # Nothing in between: the image must be complete now.
            checked = raw
            if fmt == "qcow2":
                checked = os.path.join(workdir, "converted.raw")
                run(["qemu-img", "convert", "-O", "raw", target, checked])
            e2fsck_clean(checked)
            with fuse_mount(image, check_mnt, "--ro") as proc:
                got = read_tree(check_mnt)
            check_exit(proc)
            assert sorted(got) == sorted(model), f"round {round_no}: the names differ"
            bad = [k for k in model if got[k] != model[k]]
            assert not bad, f"round {round_no}: wrong content in {bad[:5]}"
            for pid in pids:
                wait_for(lambda: exited(pid), 60, "the daemon to exit")
        finally:
            if is_mounted(mnt):
                run(["umount", "-l", mnt], check=False)
            for pid in pids:
                stop_pid(pid)


def test_sync_writes_the_image_while_mounted(workdir):
    """`sync -f DIR` (syncfs) with the mount still up: the kernel writes back its pages and
    sends FUSE_SYNCFS, after which the image must hold everything written so far: e2fsck -fn
    of the raw image clean, and every file's bytes read by debugfs from the image."""
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=256 * MiB)
    mount = [KILN_FS, "mount", "--format", "raw", raw]
    mnt = os.path.join(workdir, "mnt")
    rng = random.Random(3)
    model = {}
    with fuse_mount(SameImage(mount), mnt) as proc:
        for round_no in range(2):
            write_round(rng, mnt, model, round_no)
            run(["sync", "-f", mnt])
            e2fsck_clean(raw)
            for name in rng.sample(sorted(model), 30) + ["big1"]:
                got = run(["debugfs", "-R", f"cat /{name}", raw]).stdout
                assert got == model[name], f"round {round_no}: {name} is not in the image"
    check_exit(proc)
    e2fsck_clean(raw)


def test_sigterm_unmounts_and_flushes(workdir):
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=64 * MiB)
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, "mnt")
    with fuse_mount(image, mnt) as proc:
        os.makedirs(os.path.join(mnt, "a", "b"))
        with open(os.path.join(mnt, "a", "b", "f"), "wb") as f:
            f.write(b"z" * 100000)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert not is_mounted(mnt)
    check_exit(proc)
    result = image.result_raw()
    e2fsck_clean(result)
    with kernel_mount_ro(result, os.path.join(workdir, "kernel")) as k:
        assert os.path.getsize(os.path.join(k, "a", "b", "f")) == 100000


def test_read_only_mount_refuses_writes(workdir):
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=64 * MiB)
    seed = os.path.join(workdir, "seed")
    os.makedirs(os.path.join(seed, "etc"))
    with open(os.path.join(seed, "etc", "hostname"), "w") as f:
        f.write("guest\n")
    os.setxattr(os.path.join(seed, "etc", "hostname"), "user.x", b"1")
    run(["mkfs.ext4", "-q", "-F", "-d", seed, raw, "64M"])
    image = Image(workdir, raw)
    before = content_digest(image.target)
    mnt = os.path.join(workdir, "mnt")
    with fuse_mount(image, mnt, "--ro") as proc:
        path = os.path.join(mnt, "etc", "hostname")
        with open(path) as f:
            assert f.read() == "guest\n"
        assert os.getxattr(path, "user.x") == b"1"
        expect_errno(errno.EROFS, open, path, "w")
        expect_errno(errno.EROFS, open, os.path.join(mnt, "new"), "w")
        expect_errno(errno.EROFS, os.mkdir, os.path.join(mnt, "d"))
        expect_errno(errno.EROFS, os.chmod, path, 0o600)
        expect_errno(errno.EROFS, os.unlink, path)
        expect_errno(errno.EROFS, os.rename, path, path + ".2")
        expect_errno(errno.EROFS, os.symlink, "x", os.path.join(mnt, "l"))
        expect_errno(errno.EROFS, os.setxattr, path, "user.y", b"2")
        expect_errno(errno.EROFS, os.truncate, path, 0)
        assert os.statvfs(mnt).f_flag & os.ST_RDONLY
    check_exit(proc)
    assert content_digest(image.target) == before, "a read-only mount changed the image"


def test_unmount_while_another_namespace_holds_a_copy(workdir):
    """A mount namespace made while the filesystem is mounted (ip netns, unshare -m) keeps a
    copy of the mount that an unmount here does not remove; the kernel then never ends the
    FUSE session. kiln-fs must still finish (flush, exit) once the mount left its own table."""
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=64 * MiB)
    image = Image(workdir, raw)
    mnt = os.path.join(workdir, "mnt")
    holder = None
    try:
        with fuse_mount(image, mnt) as proc:
            with open(os.path.join(mnt, "f"), "wb") as f:
                f.write(b"written before the unmount")
            holder = subprocess.Popen(["unshare", "-m", "--propagation", "private",
                                       "sleep", "300"])
            own_ns = os.readlink("/proc/self/ns/mnt")

            def copied():
                # unshare execs sleep once the new namespace (with its copy) exists.
                with open(f"/proc/{holder.pid}/comm") as f:
                    if f.read().strip() != "sleep":
                        return False
                with open(f"/proc/{holder.pid}/mountinfo", "rb") as f:
                    return (os.readlink(f"/proc/{holder.pid}/ns/mnt") != own_ns and
                            os.path.realpath(mnt).encode() in f.read())

            wait_for(copied, 30, "the other namespace")
        check_exit(proc)
        assert "another mount namespace" in proc.stderr_text, proc.stderr_text
        # The copy in the other namespace is dead now, not hanging.
        assert holder.poll() is None
    finally:
        if holder:
            holder.kill()
            holder.wait()
    result = image.result_raw()
    e2fsck_clean(result)
    with kernel_mount_ro(result, os.path.join(workdir, "kernel")) as k:
        with open(os.path.join(k, "f"), "rb") as f:
            assert f.read() == b"written before the unmount"


USER_UID = 65534  # nobody: an ordinary user with no rights to the images of others


def as_user_cmd(args, **kw):
    """A command run as USER_UID (no supplementary groups)."""
    def drop():
        os.setgroups([])
        os.setgid(USER_UID)
        os.setuid(USER_UID)
    return subprocess.run([str(a) for a in args], preexec_fn=drop, capture_output=True,
                          timeout=120, **kw)


@contextlib.contextmanager
def fuse_device_for_users(workdir):
    """/dev/fuse as distributions ship it (mode 0666): libfuse opens it itself before it falls
    back to the setuid fusermount3, so a user cannot mount with a root-only /dev/fuse (some
    containers and VMs). Then, in this test's private mount namespace only, a node of the same
    device with mode 0666 is bound over it (on a tmpfs, which allows device nodes)."""
    st = os.stat("/dev/fuse")
    if st.st_mode & 0o006 == 0o006:
        yield
        return
    d = os.path.join(workdir, "dev")
    os.mkdir(d)
    run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=755", "kiln-test-dev", d])
    node = os.path.join(d, "fuse")
    os.mknod(node, 0o666 | stat.S_IFCHR, st.st_rdev)
    os.chmod(node, 0o666)
    run(["mount", "--bind", node, "/dev/fuse"])
    try:
        yield
    finally:
        run(["umount", "/dev/fuse"], check=False)
        run(["umount", d], check=False)


def test_mount_as_an_unprivileged_user(workdir):
    """`kiln-fs mount` run by an ordinary user on an image that user owns, in the default
    background mode: a plain fuse mount made through the setuid fusermount3; the user writes
    files, unmounts with `fusermount3 -u` and waits for the daemon to exit (a user's mount
    cannot make umount wait, see docs/kiln-fs-fuse.md); then the image is clean and holds the
    files, owned by the user."""
    fusermount = shutil.which("fusermount3")
    st = os.stat(fusermount)
    if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        pytest.skip(f"{fusermount} is not setuid root here: users cannot mount FUSE")
    os.chmod(workdir, 0o755)
    raw = os.path.join(workdir, "fs.raw")
    make_fs(raw, "ext4", size=64 * MiB, extra=["-E", f"root_owner={USER_UID}:{USER_UID}"])
    os.chown(raw, USER_UID, USER_UID)
    os.chmod(raw, 0o600)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    os.chown(mnt, USER_UID, USER_UID)
    with private_mount_namespace(), fuse_device_for_users(workdir):
        user_mount_round(raw, mnt)
    e2fsck_clean(raw)
    with kernel_mount_ro(raw, os.path.join(workdir, "kernel")) as k:
        with open(os.path.join(k, "home", "u", "notes"), "rb") as f:
            assert f.read() == b"user data\n" * 1000
        with open(os.path.join(k, "big"), "rb") as f:
            assert f.read() == bytes(range(256)) * 20000
        assert os.readlink(os.path.join(k, "link")) == "home/u/notes"
        assert os.stat(os.path.join(k, "home", "u", "notes")).st_uid == USER_UID


def user_mount_round(raw, mnt):
    script = ("import os, sys\n"
              "m = sys.argv[1]\n"
              "os.makedirs(m + '/home/u')\n"
              "open(m + '/home/u/notes', 'wb').write(b'user data\\n' * 1000)\n"
              "open(m + '/big', 'wb').write(bytes(range(256)) * 20000)\n"
              "os.symlink('home/u/notes', m + '/link')\n")
    pids = []
    try:
        p = as_user_cmd([KILN_FS, "mount", "--format", "raw", raw, mnt])
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        assert p.stderr == b"", p.stderr
        # Not fuseblk: fusermount3 does not give users block-device mounts.
        assert mount_type(mnt) == "fuse.kiln-fs", mount_type(mnt)
        pids = daemon_pids(mnt)
        assert len(pids) == 1, pids
        assert os.stat(f"/proc/{pids[0]}").st_uid == USER_UID
        p = as_user_cmd(["/usr/bin/python3", "-c", script, mnt])
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        # Only the user who mounted may enter (no allow_other): root is refused too.
        expect_errno(errno.EACCES, os.listdir, mnt)
        p = as_user_cmd(["fusermount3", "-u", mnt])
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        wait_for(lambda: exited(pids[0]), 60, "the daemon to exit")
    finally:
        if is_mounted(mnt):
            run(["umount", "-l", mnt], check=False)
        for pid in pids:
            stop_pid(pid)
