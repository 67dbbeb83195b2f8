"""Bad input: each case is one clear error line, a non-zero exit, and no change to the image
(the overlay's and the base's bytes are compared before and after)."""

import fcntl
import os
import struct
import subprocess
import zlib

import pytest

from kilntest.fs import (MiB, assert_one_line_error, content_digest, kiln_fs, make_disk,
                         make_fs_image, make_guest_tree, make_overlay, run)


@pytest.fixture(scope="module")
def tree(module_workdir):
    """The guest tree, made once (its 300-file directory cost a third of the suite's CPU when
    every test made its own): the tests only copy it into file systems (mkfs -d)."""
    return make_guest_tree(os.path.join(module_workdir, "tree"))


def refused(images, args, *needles):
    """Runs kiln-fs with `args`; expects a one-line error containing `needles` and every image
    in `images` byte-identical afterwards."""
    before = {i: content_digest(i) for i in images}
    p = kiln_fs(*args, check=False)
    line = assert_one_line_error(p, *needles)
    print(f"\n  {line}")
    for i in images:
        assert content_digest(i) == before[i], f"{i} changed"
    return line


INJECT = ["--hostname", "vm1", "--mkdir", "/new"]


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


# ---------------------------------------------------------------------------------------------
# Superblocks

SB = 1024  # superblock offset inside the filesystem


def test_corrupt_superblock_checksum(workdir, tree):
    base, _, off, _ = make_disk(workdir, "whole", "ext4", tree)  # metadata_csum
    patch(base, off + SB + 0x78, b"tampered")  # the volume label, under the checksum
    ov = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    refused([base, ov], ["inject", "--format", "qcow2", ov, *INJECT], "superblock is corrupt")
    refused([base, ov], ["ls", "--format", "qcow2", ov, "/"], "superblock is corrupt")


@pytest.mark.parametrize("field,value", [(0x18, 30), (0x28, 0), (0x20, 0)],
                         ids=["log_block_size", "inodes_per_group", "blocks_per_group"])
def test_corrupt_superblock_fields(workdir, tree, field, value):
    base, number, off, _ = make_disk(workdir, "mbr", "ext2", tree)  # no checksums to trip
    patch(base, off + SB + field, struct.pack("<I", value))
    ov = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    refused([base, ov], ["inject", "--format", "qcow2", ov, *INJECT], f"partition {number}", "ext2")
    refused([base, ov], ["cat", "--format", "qcow2", ov, "/etc/passwd"], f"partition {number}")


def test_zeroed_magic_is_no_filesystem(workdir, tree):
    base, _, off, _ = make_disk(workdir, "whole", "ext4", tree)
    patch(base, off + SB + 0x38, b"\0\0")
    refused([base], ["inject", base, *INJECT], "no filesystem that kiln-fs recognises")


def test_unknown_incompat_feature(workdir, tree):
    base, _, off, _ = make_disk(workdir, "whole", "ext2", tree)
    incompat = struct.unpack("<I", read_at(base, off + SB + 0x60, 4))[0]
    patch(base, off + SB + 0x60, struct.pack("<I", incompat | 0x40000000))
    refused([base], ["inject", base, *INJECT], "incompatible features", "FEATURE_I30")
    refused([base], ["ls", base, "/"], "incompatible features")


def test_journal_needs_recovery_refused_but_readable(workdir, tree):
    base, _, _, _ = make_disk(workdir, "whole", "ext4", tree)
    run(["debugfs", "-w", "-R", "feature needs_recovery", base])
    ov = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    refused([base, ov], ["inject", "--format", "qcow2", ov, *INJECT], "journal needs recovery",
            "--ro")
    # Read-only use works (ls/cat/stat are read-only).
    assert kiln_fs("cat", "--format", "qcow2", ov, "/etc/hostname").stdout == b"debian\n"


def test_errors_recorded_refused(workdir, tree):
    base, _, _, _ = make_disk(workdir, "whole", "ext4", tree)
    run(["debugfs", "-w", "-R", "ssv state 3", base])  # valid + errors
    refused([base], ["inject", base, *INJECT], "errors recorded", "e2fsck")


def test_not_cleanly_unmounted_refused(workdir, tree):
    base, _, _, _ = make_disk(workdir, "whole", "ext2", tree)
    run(["debugfs", "-w", "-R", "ssv state 0", base])
    refused([base], ["inject", base, *INJECT], "not cleanly unmounted")


# ---------------------------------------------------------------------------------------------
# Partition tables

def test_mbr_primary_past_end(workdir, tree):
    base, _, _, _ = make_disk(workdir, "mbr", "ext4", tree)
    size_sectors = os.path.getsize(base) // 512
    # Entry 1 (FAT partition at 2048): make it run 100 sectors past the end.
    patch(base, 446 + 12, struct.pack("<I", size_sectors - 2048 + 100))
    refused([base], ["inject", base, *INJECT], "partition 1", "past the end of the disk")
    refused([base], ["list", base], "past the end")


def test_mbr_logical_past_extended(workdir, tree):
    base, _, _, _ = make_disk(workdir, "mbr", "ext4", tree)
    # The extended partition is entry 2; its first EBR holds logical 5 in its first entry.
    ext_start = struct.unpack("<I", read_at(base, 446 + 16 + 8, 4))[0]
    ebr = ext_start * 512
    patch(base, ebr + 446 + 12, struct.pack("<I", 0x7fffffff))
    refused([base], ["inject", base, *INJECT], "partition 5", "extends past the end")


def test_mbr_logical_loop(workdir, tree):
    base, _, _, _ = make_disk(workdir, "mbr", "ext4", tree)
    ext_start = struct.unpack("<I", read_at(base, 446 + 16 + 8, 4))[0]
    # The first EBR's link to the next EBR points back at itself (relative offset 0).
    patch(base, ext_start * 512 + 446 + 16 + 8, struct.pack("<I", 0))
    refused([base], ["list", base], "loop")


class Gpt:
    """Reads and rewrites a GPT (both headers and both entry arrays) with correct CRCs, so
    that a test can change one thing at a time."""

    def __init__(self, path):
        self.path = path
        self.primary = self._header(1)
        self.backup = self._header(self.primary["alternate"])

    def _header(self, lba):
        raw = bytearray(read_at(self.path, lba * 512, 512))
        assert raw[:8] == b"EFI PART"
        size = struct.unpack_from("<I", raw, 12)[0]
        h = {"lba": lba, "raw": raw, "size": size,
             "alternate": struct.unpack_from("<Q", raw, 32)[0],
             "entries_lba": struct.unpack_from("<Q", raw, 72)[0],
             "count": struct.unpack_from("<I", raw, 80)[0],
             "entry_size": struct.unpack_from("<I", raw, 84)[0]}
        h["entries"] = bytearray(read_at(self.path, h["entries_lba"] * 512,
                                         h["count"] * h["entry_size"]))
        return h

    def set_entry_field(self, index, offset, data):
        for h in (self.primary, self.backup):
            start = index * h["entry_size"] + offset
            h["entries"][start:start + len(data)] = data

    def write(self, fix_crcs=True):
        for h in (self.primary, self.backup):
            raw = h["raw"]
            if fix_crcs:
                struct.pack_into("<I", raw, 88, zlib.crc32(bytes(h["entries"])))
                struct.pack_into("<I", raw, 16, 0)
                struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw[:h["size"]])))
            patch(self.path, h["entries_lba"] * 512, bytes(h["entries"]))
            patch(self.path, h["lba"] * 512, bytes(raw))


def test_gpt_partition_past_end(workdir, tree):
    base, _, _, _ = make_disk(workdir, "gpt", "ext4", tree)
    g = Gpt(base)
    g.set_entry_field(2, 40, struct.pack("<Q", os.path.getsize(base) // 512 + 1000))
    g.write()
    refused([base], ["inject", base, *INJECT], "partition 3", "past the end of the disk")


def test_gpt_primary_header_bad_crc(workdir, tree):
    base, _, _, _ = make_disk(workdir, "gpt", "ext4", tree)
    patch(base, 512 + 16, b"\x12\x34\x56\x78")  # the header's CRC field itself
    ov = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    refused([base, ov], ["inject", "--format", "qcow2", ov, *INJECT], "primary GPT header", "CRC")
    refused([base, ov], ["list", "--format", "qcow2", ov], "primary GPT header", "CRC")


def test_gpt_entry_array_bad_crc(workdir, tree):
    base, _, _, _ = make_disk(workdir, "gpt", "ext4", tree)
    g = Gpt(base)
    g.set_entry_field(2, 56, "rootX".encode("utf-16-le"))  # the name, CRCs left stale
    g.write(fix_crcs=False)
    refused([base], ["inject", base, *INJECT], "CRC of its partition entry array")


def test_gpt_backup_header_bad_crc(workdir, tree):
    base, _, _, _ = make_disk(workdir, "gpt", "ext4", tree)
    last = os.path.getsize(base) // 512 - 1
    raw = bytearray(read_at(base, last * 512, 512))
    raw[60] ^= 0xff  # the disk GUID, covered by the CRC
    patch(base, last * 512, bytes(raw))
    refused([base], ["inject", base, *INJECT], "backup GPT header", "CRC")


def test_gpt_truncated_disk(workdir, tree):
    base, _, _, _ = make_disk(workdir, "gpt", "ext4", tree)
    os.truncate(base, os.path.getsize(base) - 1 * MiB)
    refused([base], ["inject", base, *INJECT], "GPT")


# ---------------------------------------------------------------------------------------------
# Filesystems kiln-fs does not open, partitions that do not exist

def test_vfat_whole_disk(workdir):
    img = os.path.join(workdir, "fat.img")
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    run(["mkfs.vfat", "-n", "FATDISK", img])
    refused([img], ["inject", img, *INJECT], "vfat", "ext2, ext3 and ext4 only")


def test_zeros(workdir):
    img = os.path.join(workdir, "zeros.img")
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    refused([img], ["inject", img, *INJECT], "no filesystem that kiln-fs recognises")


def test_vfat_partition_chosen(workdir, tree):
    base, _, _, _ = make_disk(workdir, "mbr", "ext4", tree)
    refused([base], ["inject", base, "--partition", "1", *INJECT], "partition 1", "no filesystem")
    refused([base], ["inject", base, "--partition", "4", *INJECT], "no partition 4",
            "1, 5, 6, 7")


def test_no_ext_partition(workdir):
    disk = os.path.join(workdir, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    run(["sfdisk", "-q", disk], input=b"label: gpt\nsize=32MiB\n")
    refused([disk], ["inject", disk, *INJECT], "no ext2, ext3 or ext4 filesystem")


# ---------------------------------------------------------------------------------------------
# Operations that cannot be done: checked before anything is written

def test_missing_user_for_ssh_key(workdir, tree):
    base, _, _, _ = make_disk(workdir, "gpt", "ext4", tree)
    ov = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    key = os.path.join(workdir, "k.pub")
    with open(key, "w") as f:
        f.write("ssh-ed25519 AAAAC3Nza carol@host\n")
    # Earlier operations of the same call are not applied either.
    refused([base, ov], ["inject", "--format", "qcow2", ov, "--hostname", "vm1", "--mkdir", "/a/b",
                         "--ssh-key", "carol:" + key], "no user 'carol'", "/etc/passwd")
    assert kiln_fs("cat", "--format", "qcow2", ov, "/etc/hostname").stdout == b"debian\n"


def test_missing_user_for_password(workdir, tree):
    base, _, _, _ = make_disk(workdir, "whole", "ext4", tree)
    refused([base], ["inject", base, "--password", "carol:$6$x$y"], "no user 'carol'",
            "/etc/shadow")


@pytest.mark.parametrize("args,needles", [
    (["--file", "relative/path=/etc/hostname"], ["not absolute"]),
    (["--file", "/a/../b=/etc/hostname"], [".."]),
    (["--file", "/x=/nonexistent/host/file"], ["cannot open"]),
    (["--hostname", "bad_name!"], ["not a valid host name"]),
    (["--mkdir", "/"], ["root directory"]),
    (["--password", "root:has:colon"], ["invalid character"]),
    (["--ssh-key", "root"], ["USER:FILE"]),
    (["--file", "/etc=/etc/hostname"], ["not a regular file"]),
    (["--file", "/etc/passwd/x=/etc/hostname"], ["not a directory"]),
    (["--mkdir", "/etc/passwd"], ["not a directory"]),
], ids=["relative", "dotdot", "no-host-file", "hostname", "mkdir-root", "hash", "ssh-form",
        "file-over-dir", "file-under-file", "mkdir-over-file"])
def test_bad_operations(workdir, tree, args, needles):
    base, _, _, _ = make_disk(workdir, "whole", "ext4", tree)
    ov = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    refused([base, ov], ["inject", "--format", "qcow2", ov, "--hostname", "first", *args], *needles)


def test_image_locked_by_another_writer(workdir, tree):
    base, _, _, _ = make_disk(workdir, "whole", "ext4", tree)
    ov = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    with open(ov, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused([base, ov], ["inject", "--format", "qcow2", ov, *INJECT],
                "in use by another process")
        # Readers do not lock.
        assert kiln_fs("cat", "--format", "qcow2", ov, "/etc/hostname").stdout == b"debian\n"


def test_missing_image(workdir):
    p = kiln_fs("ls", os.path.join(workdir, "nope.qcow2"), "/", check=False)
    assert_one_line_error(p, "nope.qcow2")


def test_ext_partition_larger_than_fs_container(workdir, tree):
    """A filesystem that claims more blocks than its partition holds is refused (a write
    could otherwise land in the next partition)."""
    fs = make_fs_image(os.path.join(workdir, "fs.img"), 64 * MiB, "ext4", tree)
    disk = os.path.join(workdir, "disk.raw")
    with open(disk, "wb") as f:
        f.truncate(128 * MiB)
    run(["sfdisk", "-q", disk], input=b"label: dos\nstart=2048, size=32MiB, type=83\n"
                                     b"size=32MiB, type=83\n")
    with open(fs, "rb") as s, open(disk, "r+b") as d:
        d.seek(2048 * 512)
        d.write(s.read(32 * MiB))  # the first half only: the superblock says 64 MiB
    refused([disk], ["inject", disk, "--partition", "1", *INJECT], "larger than its partition")


def test_scribbled_metadata_never_crashes(workdir, tree):
    """Random bytes over the first 4 MiB of an ext4 filesystem (group descriptors, bitmaps,
    inode tables, directory blocks): kiln-fs may succeed or fail, but never crashes, never
    trips a sanitizer, and never prints more than one line."""
    import random
    base, _, _, _ = make_disk(workdir, "whole", "ext4", tree)
    img = os.path.join(workdir, "scribbled.raw")
    rng = random.Random(4)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(25):
        # A sparse copy, then the scribbles in place: rewriting the whole 96 MiB image each
        # time made this test a few seconds of disk writes.
        subprocess.run(["cp", "--sparse=always", base, img], check=True)
        with open(img, "r+b") as f:
            for _ in range(rng.randint(1, 40)):
                f.seek(rng.randrange(4096, 4 * MiB))
                f.write(bytes([rng.randrange(256)]))
        for args in (["ls", img, "/etc"], ["cat", img, "/etc/passwd"],
                     ["inject", img, "--hostname", "x", "--mkdir", "/a/b", "--delete",
                      "/srv/many", "--file", "/etc/motd=/etc/hostname"]):
            p = kiln_fs(*args, check=False)
            err = p.stderr.decode(errors="replace")
            assert p.returncode >= 0, f"{args[0]} killed by signal {-p.returncode}: {err}"
            assert "Sanitizer" not in err and "runtime error" not in err, err
            if p.returncode:
                assert_one_line_error(p)
                outcomes["error"] += 1
            else:
                outcomes["ok"] += 1
    print(f"\n  outcomes: {outcomes}")
    assert outcomes["ok"] and outcomes["error"], outcomes  # both paths were exercised
