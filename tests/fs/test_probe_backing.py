"""A guest that owns a raw disk writes a qcow2 header into it (into the first 512 bytes, which
ext4 leaves unused) naming a host file as backing file, format raw: here another tenant's disk,
whose filesystem holds a secret. When an admin later runs kiln-fs on the guest's disk without
--format, the disk must not be opened as that qcow2 (the host file would show through the
guest's disk, and copy-on-write would copy it in): kiln-fs refuses with one line naming the
backing file, the secret reaches neither the output nor the disk, and the disk is unchanged.
With --format raw (what the disk really is) the guest's own filesystem is read."""

import os
import struct

import pytest

from kilntest.fs import (KILN_FS, MiB, assert_one_line_error, content_digest, kiln_fs,
                         make_fs_image, run)

SECRET = b"TENANT-B-SECRET-7f3e9a0c41d2"
DISK_SIZE = 64 * MiB


def write_tree(root, files):
    for path, data in files.items():
        full = os.path.join(root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
    return root


def zero_run(path, length, start, step=65536):
    """A cluster-aligned offset from `start` where `length` bytes read as zeros."""
    with open(path, "rb") as f:
        for off in range(start, os.path.getsize(path) - length, step):
            f.seek(off)
            if f.read(length) == bytes(length):
                return off
    raise AssertionError("no run of zeros in the guest disk")


def forge_qcow2_header(disk, backing):
    """What a hostile guest writes at offset 0 of its raw disk: a version 3 qcow2 header with
    512-byte clusters, the refcount table in the second cluster (zeros), an L1 table over a run
    of zeros in the filesystem's free space, and `backing` (format raw) as backing file."""
    cluster_bits = 9
    l1_size = DISK_SIZE // (512 * 64)  # one L2 table maps 64 clusters of 512 bytes
    l1_offset = zero_run(disk, l1_size * 8, DISK_SIZE // 2)
    name = backing.encode()
    ext = struct.pack(">II", 0xE2792ACA, 3) + b"raw\0\0\0\0\0" + struct.pack(">II", 0, 0)
    name_offset = 104 + len(ext)
    assert name_offset + len(name) <= 510, "backing name does not fit in the boot area"
    header = struct.pack(">IIQIIQIIQQIIQQQQII", 0x514649FB, 3, name_offset, len(name),
                         cluster_bits, DISK_SIZE, 0, l1_size, l1_offset, 512, 1, 0, 0, 0, 0, 0,
                         4, 104)
    assert len(header) == 104
    with open(disk, "r+b") as f:
        assert f.read(1024) == bytes(1024), "ext4 left its first 1024 bytes unused"
        f.seek(0)
        f.write(header + ext + name)


@pytest.fixture
def disks(workdir):
    other = write_tree(os.path.join(workdir, "tree-b"), {"/etc/secret-token": SECRET + b"\n"})
    secret_disk = make_fs_image(os.path.join(workdir, "tenant-b.raw"), DISK_SIZE, "ext4", other)
    mine = write_tree(os.path.join(workdir, "tree-a"), {"/etc/hostname": b"guest-a\n",
                                                        "/etc/secret-token": b"mine\n"})
    disk = make_fs_image(os.path.join(workdir, "guest-a.raw"), DISK_SIZE, "ext4", mine)
    forge_qcow2_header(disk, os.path.abspath(secret_disk))
    return disk, secret_disk


def no_secret(path):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if SECRET in chunk:
                return False
    return True


@pytest.mark.parametrize("args", [
    ["cat", "{disk}", "/etc/secret-token"],
    ["ls", "{disk}", "/etc"],
    ["list", "{disk}"],
    ["inject", "{disk}", "--hostname", "pwned", "--file", "/etc/copy={host}"],
], ids=["cat", "ls", "list", "inject"])
def test_probed_disk_naming_a_backing_file_is_refused(workdir, disks, args):
    disk, secret_disk = disks
    host_file = os.path.join(workdir, "host-file")
    with open(host_file, "wb") as f:
        f.write(b"x" * 10000)
    before, secret_before = content_digest(disk), content_digest(secret_disk)
    # (Bounded: before the fix, inject through the forged header could run for minutes.)
    p = run([KILN_FS, *[a.format(disk=disk, host=host_file) for a in args]], check=False,
            timeout=120)
    assert SECRET not in p.stdout and SECRET not in p.stderr, p.stdout + p.stderr
    line = assert_one_line_error(p, "backing file", secret_disk, "--format=qcow2")
    print(f"\n  {line}")
    assert content_digest(disk) == before, "the guest's disk changed"
    assert no_secret(disk)
    assert content_digest(secret_disk) == secret_before


def test_explicit_raw_reads_the_guests_own_filesystem(disks):
    disk, _ = disks
    before = content_digest(disk)
    assert kiln_fs("cat", "--format", "raw", disk, "/etc/secret-token").stdout == b"mine\n"
    assert kiln_fs("cat", "--format", "raw", disk, "/etc/hostname").stdout == b"guest-a\n"
    assert content_digest(disk) == before
    assert no_secret(disk)
