"""kiln-fs inject against the host kernel's ext4 driver: the guest image is built with
mkfs -d, injected through a qcow2 overlay, converted to raw, checked with e2fsck -fn and
mounted read-only; the whole tree (content, modes, owners, symlinks, xattrs) must be exactly
the base tree plus what was asked, and the base image's bytes unchanged."""

import copy
import hashlib
import json
import os
import re

import pytest

from kilntest.fs import (KILN_FS, MiB, content_digest, diff_snapshots, dir_entry, e2fsck_clean,
                         extract, file_entry, kiln_fs, loop_mount, make_disk, make_fs_image,
                         make_guest_tree, make_overlay, run, snapshot, to_raw)

KEY1 = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln0000000000000000000000000000000000000001 ops@kiln\n"
KEY2 = (b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQkiln2 bob@laptop\n"
        b"# a comment line\n"
        b"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYkiln3 bob@phone\n")
HASH = "$6$kilnsalt$Yx3.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ/.abcd"
MOTD = b"Provisioned by kiln\n"
CONFIG = b'{"role": "web", "replicas": 3}\n'
HOSTS_AFTER = (b"127.0.0.1\tlocalhost\n127.0.1.1\tvm-01.example.org vm-01\n"
               b"::1\tlocalhost ip6-localhost\n")


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def inject_args(d):
    return ["--ssh-key", "alice:" + write(os.path.join(d, "k1.pub"), KEY1),
            "--ssh-key", "bob:" + write(os.path.join(d, "k2.pub"), KEY2),
            "--ssh-key", "root:" + os.path.join(d, "k1.pub"),
            "--hostname", "vm-01.example.org",
            "--file", "/etc/motd=" + write(os.path.join(d, "motd"), MOTD),
            "--file", "/opt/kiln/conf/config.json=" + write(os.path.join(d, "cfg"), CONFIG)
            + ":0600:1000:1000",
            "--mkdir", "/var/lib/kiln/cache:2750:1000:1002",
            "--delete", "/srv/many",
            "--delete", "/var/lib/big.bin",
            "--delete", "/does/not/exist",
            "--delete", "/usr/bin/tool-hardlink",
            "--password", "root:" + HASH]


def expected_after(before):
    """The base tree with the injection applied, as the kernel must show it."""
    want = copy.deepcopy(before)
    keys1 = KEY1
    keys2 = KEY2  # comment lines are kept, as given
    want["/home/alice/.ssh"] = dir_entry(0o700, 1000, 1000)
    want["/home/alice/.ssh/authorized_keys"] = file_entry(keys1, 0o600, 1000, 1000)
    want["/home/bob"] = dir_entry(0o700, 1001, 1002)
    want["/home/bob/.ssh"] = dir_entry(0o700, 1001, 1002)
    want["/home/bob/.ssh/authorized_keys"] = file_entry(keys2, 0o600, 1001, 1002)
    want["/root/.ssh"] = dir_entry(0o700, 0, 0)
    want["/root/.ssh/authorized_keys"] = file_entry(keys1, 0o600, 0, 0)
    want["/etc/hostname"] = dict(before["/etc/hostname"], sha256=hashlib.sha256(
        b"vm-01.example.org\n").hexdigest())
    # /etc/hosts keeps its mode, owner and extended attributes (the SELinux label).
    want["/etc/hosts"] = dict(before["/etc/hosts"], sha256=hashlib.sha256(HOSTS_AFTER).hexdigest())
    want["/etc/motd"] = dict(before["/etc/motd"], sha256=hashlib.sha256(MOTD).hexdigest())
    want["/opt"] = dir_entry(0o755)
    want["/opt/kiln"] = dir_entry(0o755)
    want["/opt/kiln/conf"] = dir_entry(0o755)
    want["/opt/kiln/conf/config.json"] = file_entry(CONFIG, 0o600, 1000, 1000)
    want["/var/lib/kiln"] = dir_entry(0o755)
    want["/var/lib/kiln/cache"] = dir_entry(0o2750, 1000, 1002)
    for k in [k for k in want if k == "/srv/many" or k.startswith("/srv/many/")]:
        del want[k]
    del want["/var/lib/big.bin"]
    del want["/usr/bin/tool-hardlink"]
    assert want["/usr/bin/tool"]["nlink"] == 2
    want["/usr/bin/tool"] = dict(want["/usr/bin/tool"], nlink=1)
    shadow = before["/etc/shadow"]
    want["/etc/shadow"] = dict(shadow, sha256=hashlib.sha256(
        b"root:" + HASH.encode() + b":19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        b"alice:!:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n").hexdigest())
    return want


def check_image(workdir, image, offset, length, want, tag):
    raw = to_raw(image, os.path.join(workdir, f"{tag}.raw"))
    e2fsck_clean(extract(raw, offset, length, os.path.join(workdir, f"{tag}.fs")))
    with loop_mount(raw, offset, length, workdir, f"mnt-{tag}") as mnt:
        got = snapshot(mnt)
    assert got == want, diff_snapshots(got, want)
    return got


CASES = [
    ("whole", "ext2"), ("whole", "ext3"), ("whole", "ext4"), ("whole", "ext4-nocsum"),
    ("whole", "ext4-1k"), ("whole", "ext4-inline"), ("whole", "ext4-noextents"),
    ("mbr", "ext4"), ("mbr", "ext3"), ("gpt", "ext4"), ("gpt", "ext2"), ("gpt", "ext4-nocsum"),
    ("sgdisk", "ext4"), ("sgdisk", "ext4-1k"),
]


@pytest.fixture(scope="module")
def guest_tree(module_workdir):
    """The guest tree, made once: the tests only copy it into file systems (mkfs -d)."""
    return make_guest_tree(os.path.join(module_workdir, "tree"))


@pytest.mark.parametrize("layout,variant", CASES, ids=[f"{l}-{v}" for l, v in CASES])
def test_inject_matches_kernel_view(workdir, layout, variant, guest_tree):
    tree = guest_tree
    base, number, offset, length = make_disk(workdir, layout, variant, tree)
    base_hash = content_digest(base)
    with loop_mount(base, offset, length, workdir, "mnt-before") as mnt:
        before = snapshot(mnt)
    assert "/etc/hosts" in before and before["/etc/hosts"]["xattrs"], before.get("/etc/hosts")

    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    part = ["--partition", str(number)] if number else []
    kiln_fs("inject", "--format", "qcow2", overlay, *inject_args(workdir), *part)

    want = expected_after(before)
    check_image(workdir, overlay, offset, length, want, "after")
    assert content_digest(base) == base_hash, "the base image changed"
    # The overlay passes qemu-img check (the block layer wrote it).
    run(["qemu-img", "check", "-q", overlay])

    # Without --partition kiln-fs finds the only ext filesystem itself.
    p = kiln_fs("cat", "--format", "qcow2", overlay, "/etc/hosts")
    assert p.stdout == HOSTS_AFTER


def test_inject_twice_is_idempotent_for_keys(workdir, guest_tree):
    tree = guest_tree
    base, _, offset, length = make_disk(workdir, "whole", "ext4", tree)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    key = write(os.path.join(workdir, "k.pub"), KEY1)
    kiln_fs("inject", "--format", "qcow2", overlay, "--ssh-key", "alice:" + key)
    kiln_fs("inject", "--format", "qcow2", overlay, "--ssh-key", "alice:" + key,
            "--hostname", "one")
    kiln_fs("inject", "--format", "qcow2", overlay, "--hostname", "two")
    keys = kiln_fs("cat", "--format", "qcow2", overlay, "/home/alice/.ssh/authorized_keys")
    assert keys.stdout == KEY1
    assert kiln_fs("cat", "--format", "qcow2", overlay, "/etc/hostname").stdout == b"two\n"
    hosts = kiln_fs("cat", "--format", "qcow2", overlay, "/etc/hosts").stdout
    assert hosts.count(b"127.0.1.1") == 1 and b"127.0.1.1\ttwo\n" in hosts, hosts
    raw = to_raw(overlay, os.path.join(workdir, "out.raw"))
    e2fsck_clean(raw)


@pytest.mark.parametrize("variant", ["ext2", "ext3", "ext4", "ext4-1k", "ext4-noextents"])
def test_large_file_and_full_directory(workdir, variant, guest_tree):
    """A file of several MiB (extents, or indirect and double-indirect blocks) and a directory
    that must grow to hold many new names."""
    tree = guest_tree
    base, _, offset, length = make_disk(workdir, "whole", variant, tree)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    big = os.urandom(9 * MiB + 77)
    host_big = write(os.path.join(workdir, "big"), big)
    args = ["--file", f"/data/big.bin={host_big}:0640:1000:1000"]
    small = write(os.path.join(workdir, "small"), b"x")
    for i in range(200):
        args += ["--file", f"/srv/many/new-{i:04d}-{'m' * 60}={small}"]
    kiln_fs("inject", "--format", "qcow2", overlay, *args)
    raw = to_raw(overlay, os.path.join(workdir, "out.raw"))
    e2fsck_clean(raw)
    with loop_mount(raw, offset, length, workdir) as mnt:
        with open(os.path.join(mnt, "data/big.bin"), "rb") as f:
            assert f.read() == big
        names = os.listdir(os.path.join(mnt, "srv/many"))
        assert len(names) == 500, len(names)
        for i in range(200):
            with open(os.path.join(mnt, f"srv/many/new-{i:04d}-{'m' * 60}"), "rb") as f:
                assert f.read() == b"x"


@pytest.mark.parametrize("variant", ["ext4", "ext3"])
def test_large_filesystem_keeps_untouched_bitmaps_out_of_the_overlay(workdir, variant, guest_tree):
    """A 16 GiB filesystem (128 block groups): injection reads and writes the bitmaps of the
    groups it allocates from and frees into, not every group's. In the overlay that means no
    copy of the clusters holding other groups' bitmaps (with every bitmap written back, all
    128 groups' would be there: one cluster per flex group of 16 on ext4, one per group on
    ext3). The result is checked with e2fsck -fn and read back."""
    tree = guest_tree
    base = make_fs_image(os.path.join(workdir, "base.raw"), 16 << 30, variant, tree)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    kiln_fs("inject", "--format", "qcow2", overlay, *inject_args(workdir))
    assert kiln_fs("cat", "--format", "qcow2", overlay,
                   "/home/alice/.ssh/authorized_keys").stdout == KEY1
    assert kiln_fs("cat", "--format", "qcow2", overlay, "/etc/motd").stdout == MOTD
    raw = to_raw(overlay, os.path.join(workdir, "out.raw"))
    e2fsck_clean(raw)

    # Where each group's block bitmap lives, and what the overlay holds.
    out = run(["dumpe2fs", base]).stdout.decode()
    bitmaps = [int(b) for b in re.findall(r"Block bitmap at (\d+)", out)]
    block_size = int(re.search(r"^Block size:\s+(\d+)", out, re.M).group(1))
    assert len(bitmaps) == 128, len(bitmaps)
    extents = json.loads(run(["qemu-img", "map", "--output=json", overlay]).stdout)
    held = [(e["start"], e["start"] + e["length"]) for e in extents
            if e["data"] and e["depth"] == 0]
    copied = {g for g, blk in enumerate(bitmaps)
              if any(lo <= blk * block_size < hi for lo, hi in held)}
    assert copied, "no bitmap was written at all"
    # The new files land in the groups of / , /etc, /home and /opt: a few groups at most.
    assert len(copied) <= (16 if variant == "ext4" else 4), sorted(copied)


def test_raw_image_written_in_place(workdir, guest_tree):
    """A raw image (no overlay) is written directly; the result is just as clean."""
    tree = guest_tree
    base, number, offset, length = make_disk(workdir, "gpt", "ext4", tree)
    with loop_mount(base, offset, length, workdir, "mnt-before") as mnt:
        before = snapshot(mnt)
    kiln_fs("inject", base, *inject_args(workdir))
    want = expected_after(before)
    e2fsck_clean(extract(base, offset, length, os.path.join(workdir, "p.fs")))
    with loop_mount(base, offset, length, workdir, "mnt-after") as mnt:
        got = snapshot(mnt)
    assert got == want, diff_snapshots(got, want)


def test_symlinks_refused_unless_followed(workdir, guest_tree):
    tree = guest_tree
    base, _, offset, length = make_disk(workdir, "whole", "ext4", tree)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    data = write(os.path.join(workdir, "data"), b"through the link\n")
    before = content_digest(overlay)
    from kilntest.fs import assert_one_line_error
    # A link in a parent directory, and a link as the file itself.
    for target in ["/srv/etc-rel/new-file", "/etc/hosts.link"]:
        p = kiln_fs("inject", "--format", "qcow2", overlay, "--file", f"{target}={data}",
                    check=False)
        assert_one_line_error(p, "symbolic link", "--follow-symlinks")
        assert content_digest(overlay) == before
    # With --follow-symlinks: resolved inside the guest ("../etc" from /srv, "/etc/hosts" is
    # the guest's own), never on the host.
    host_hosts = content_digest("/etc/hosts")
    kiln_fs("inject", "--format", "qcow2", overlay, "--follow-symlinks",
            "--file", f"/srv/etc-rel/new-file={data}", "--file", f"/etc/hosts.link={data}")
    assert content_digest("/etc/hosts") == host_hosts
    raw = to_raw(overlay, os.path.join(workdir, "out.raw"))
    e2fsck_clean(raw)
    with loop_mount(raw, offset, length, workdir) as mnt:
        with open(os.path.join(mnt, "etc/new-file"), "rb") as f:
            assert f.read() == b"through the link\n"
        assert os.path.islink(os.path.join(mnt, "etc/hosts.link"))
        with open(os.path.join(mnt, "etc/hosts"), "rb") as f:
            assert f.read() == b"through the link\n"
        # The label of the file written through the link is still there.
        assert os.getxattr(os.path.join(mnt, "etc/hosts"), "security.selinux") == \
            b"system_u:object_r:net_conf_t:s0\0"
        assert not os.path.exists(os.path.join(mnt, "srv/new-file"))


def test_delete_symlink_removes_the_link_only(workdir, guest_tree):
    tree = guest_tree
    base, _, offset, length = make_disk(workdir, "whole", "ext4", tree)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    kiln_fs("inject", "--format", "qcow2", overlay, "--delete", "/etc/hosts.link",
            "--delete", "/srv/slow-link", "--delete", "/srv/etc-rel")
    raw = to_raw(overlay, os.path.join(workdir, "out.raw"))
    e2fsck_clean(raw)
    with loop_mount(raw, offset, length, workdir) as mnt:
        assert not os.path.lexists(os.path.join(mnt, "etc/hosts.link"))
        assert not os.path.lexists(os.path.join(mnt, "srv/slow-link"))
        assert not os.path.lexists(os.path.join(mnt, "srv/etc-rel"))
        assert os.path.isfile(os.path.join(mnt, "etc/hosts"))
        assert os.path.isdir(os.path.join(mnt, "etc"))


def test_qcow2_backing_chain(workdir, guest_tree):
    """Overlay on a qcow2 base on a raw base: writes land in the top image only; both bases
    keep their bytes, and the result is the same as on a single overlay."""
    tree = guest_tree
    raw, number, offset, length = make_disk(workdir, "mbr", "ext4", tree)
    mid = os.path.join(workdir, "mid.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", mid])
    # Something in the middle layer too: the hostname, written through the chain.
    kiln_fs("inject", "--format", "qcow2", mid, "--hostname", "middle")
    hashes = {p: content_digest(p) for p in (raw, mid)}
    top = os.path.join(workdir, "top.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top])
    with loop_mount(raw, offset, length, workdir, "mnt-before") as mnt:
        before = snapshot(mnt)
    kiln_fs("inject", "--format", "qcow2", top, *inject_args(workdir), "--partition", str(number))
    assert {p: content_digest(p) for p in (raw, mid)} == hashes, "a backing image changed"
    want = expected_after(before)
    check_image(workdir, top, offset, length, want, "top")
    run(["qemu-img", "check", "-q", top])
    run(["qemu-img", "check", "-q", mid])


def test_indexed_directory(workdir, guest_tree):
    """Real guests' big directories are hash-indexed (htree, made by the kernel or e2fsck -D):
    names added and removed there must keep the index valid (e2fsck checks it) and be found by
    the kernel's indexed lookup."""
    tree = guest_tree
    base, _, offset, length = make_disk(workdir, "whole", "ext4", tree)
    run(["e2fsck", "-fyD", base], check=False)  # exit 1: "file system was modified"
    e2fsck_clean(base)
    htree = run(["debugfs", "-R", "htree /srv/many", base]).stdout.decode()
    assert "Root node dump" in htree, htree  # the directory is indexed
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    small = write(os.path.join(workdir, "small"), b"indexed\n")
    args = []
    for i in range(400):
        args += ["--file", f"/srv/many/added-{i:04d}-{'q' * 50}={small}"]
    for i in range(0, 300, 3):
        args += ["--delete", f"/srv/many/file-{i:04d}-{'n' * 40}"]
    kiln_fs("inject", "--format", "qcow2", overlay, *args)
    raw = to_raw(overlay, os.path.join(workdir, "out.raw"))
    e2fsck_clean(raw)
    with loop_mount(raw, offset, length, workdir) as mnt:
        d = os.path.join(mnt, "srv/many")
        for i in range(400):  # by name: the kernel's htree lookup
            with open(os.path.join(d, f"added-{i:04d}-{'q' * 50}"), "rb") as f:
                assert f.read() == b"indexed\n"
        for i in range(300):
            assert os.path.exists(os.path.join(d, f"file-{i:04d}-{'n' * 40}")) == (i % 3 != 0)
        assert len(os.listdir(d)) == 400 + 200


def test_parallel_injections_on_overlays_of_one_base(workdir, guest_tree):
    """What spawn does when several guests start from one cached base: concurrent injections
    into their own overlays succeed and do not see each other; the base stays as it was."""
    import subprocess
    from kilntest.fs import KILN_FS
    tree = guest_tree
    base, _, _, _ = make_disk(workdir, "gpt", "ext4", tree)
    base_hash = content_digest(base)
    key = write(os.path.join(workdir, "k.pub"), KEY1)
    overlays = [make_overlay(base, os.path.join(workdir, f"vm{i}.qcow2")) for i in range(6)]
    procs = [subprocess.Popen([KILN_FS, "inject", "--format", "qcow2", ov, "--hostname", f"vm{i}",
                               "--ssh-key", "root:" + key],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, ov in enumerate(overlays)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    for i, ov in enumerate(overlays):
        hostname = kiln_fs("cat", "--format", "qcow2", ov, "/etc/hostname").stdout
        assert hostname == f"vm{i}\n".encode()
        assert kiln_fs("cat", "--format", "qcow2", ov, "/root/.ssh/authorized_keys").stdout == KEY1
    assert content_digest(base) == base_hash


def test_libext2fs_checksums_go_through_the_crc32_instruction():
    """kiln-fs takes libext2fs's CRC32C calls with its own definition (fusefs/src/crc32c.cpp):
    the executable must define and export it, or the library's table-driven one does the work
    (the sums are the same; tests/fs/crc32c_test.cpp compares them)."""
    out = run(["nm", "-D", "--defined-only", KILN_FS]).stdout.decode()
    assert re.search(r"^\S+ T ext2fs_crc32c_le$", out, re.M), "ext2fs_crc32c_le not exported"
